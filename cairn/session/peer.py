"""
The local end of every session: identity, limits, handlers, registry.

A L{Peer} is shared by the server node and by client applications: both
sides of a session run the same code. Services (mailbox, relay, ...)
register handlers for their type codes; applications register handlers
for custom types and set the C{on_*} callbacks.
"""

from collections import Counter

from twisted.logger import Logger

from cairn.crypto.handshake import HandshakeResult
from cairn.session.connection import Connection
from cairn.session.guards import log_only
from cairn.session.keepalive import KeepaliveWheel
from cairn.session.rekey import REKEY_ENVELOPES, REKEY_INTERVAL
from cairn.session.session import Session
from cairn.wire.constants import SESSION_LAYER_TYPES, MessageType

log = Logger()

#: Resend buffer bound per session: envelopes, bytes.
DEFAULT_RESEND_LIMITS = (4096, 8 * 1024 * 1024)
#: Envelopes that may come first on an accepted connection instead of a
#: handshake or Reconnect, and take it over (L{Peer.register_preface}).
PREFACE_TYPES = frozenset({MessageType.RELAY_ATTACH})


class Peer:
    """
    Local identity plus the settings and registries its sessions share.

    @param clock: an C{IReactorTime}; every timer goes through it.
    @param is_trusted: C{(peer_id) -> bool}, given by the node: whether a
        remote peer is paired. None (client applications): every peer
        counts as trusted.
    @param pinning: the device's node pins, given by a
        L{cairn.client.Client} (its C{pin} and C{pinned}, which pairing
        uses through a session's peer); None on a node.
    """

    #: When a session updates its sending key (KeyUpdate, §8.3).
    rekey_envelopes = REKEY_ENVELOPES
    rekey_interval = REKEY_INTERVAL

    def __init__(
        self,
        identity,
        clock,
        *,
        max_payload=1_000_000,
        keepalive_interval=30.0,
        keepalive_timeout=90.0,
        handshake_timeout=10.0,
        session_ttl=3600.0,
        unpaired_session_ttl=None,
        resend_limits=DEFAULT_RESEND_LIMITS,
        log_addresses=False,
        is_trusted=None,
        pinning=None,
    ):
        self.identity = identity
        self.clock = clock
        self.max_payload = max_payload
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        #: Every session's keepalive ticks, on one timer (issue 20).
        self.keepalives = KeepaliveWheel(clock)
        self.handshake_timeout = handshake_timeout
        self.session_ttl = session_ttl
        #: Detached lifetime of a session whose peer L{is_trusted} refuses
        #: (None: the same as C{session_ttl}); never longer than it.
        self.unpaired_session_ttl = unpaired_session_ttl
        self.is_trusted = is_trusted
        self.pinning = pinning
        self._restoring = False
        self.resend_limits = resend_limits
        #: Name the peer's network address in session log lines (an operator's opt-in).
        self.log_addresses = log_addresses
        #: Live sessions (attached or detached) by session id.
        self.sessions = {}
        #: Set once sessions were saved for a stop: no new session may start.
        self.frozen = False
        #: Set when a stop begins (L{drain}): no envelope is accepted any more.
        self.draining = False
        self.unknown_types = Counter()
        self._handlers = {}
        self._prefaces = {}
        #: Application callbacks; each may be None.
        self.on_session = None  # (session)
        self.on_channel = None  # (session, channel)
        self.on_data = None  # (session, channel, data)
        self._observers = []
        #: The observers' C{channels_allowed} methods, looked up once per
        #: L{add_observer} rather than on every Data envelope (issue 19).
        self._gates = ()
        self._extensions = {}

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def extension(self, factory):
        """
        The one C{factory(self)} of this peer, made on first use: how a
        client's mailbox, sync, TURN and pairing dispatchers attach to it
        (each registers its handlers once; see C{cairn.client.Client}).
        """
        found = self._extensions.get(factory)
        if found is None:
            found = self._extensions[factory] = factory(self)
        return found

    # Handlers

    def register_handler(self, type_code: int, handler) -> None:
        """
        Handle C{type_code} on every session with C{handler(session, body)}.

        Applications use the custom range 0xF000-0xFFFF; services register
        their own families (below 0xF000) but never the session layer's.
        """
        if not 0 <= type_code < 0x10000:
            raise ValueError(f"type code {type_code} is not a u16")
        if type_code in SESSION_LAYER_TYPES:
            raise ValueError(f"0x{type_code:04x} is handled by the session layer")
        self._handlers[type_code] = handler

    def register_guarded(self, handlers, name: str, failed=None) -> None:
        """
        Register a client's C{handlers} ({type: fn(session, body)}) behind
        L{cairn.session.guards.log_only}: a malformed body or a bug in a
        handler is logged under C{name} and never raised into the session
        layer; C{failed(session, error)}, if given, is told after. The
        node's services use L{cairn.session.guards.register_service}.
        """
        for type_code, handler in handlers.items():
            self.register_handler(type_code, log_only(handler, name, failed))

    def handler_for(self, type_code: int):
        return self._handlers.get(type_code)

    def register_preface(self, type_code: int, handler) -> None:
        """
        Take an accepted connection whose first envelope is of C{type_code}
        with C{handler(connection, envelope)} instead of answering it as an
        unexpected message. The one such preface is a RelayAttach (the
        node's relay service, for attached circuits; docs/protocol.md §25.8):
        the handler hands the connection over or fails it with a Close.
        """
        if type_code not in PREFACE_TYPES:
            raise ValueError(f"0x{type_code:04x} cannot open a connection")
        self._prefaces[type_code] = handler

    def preface_handler(self, type_code: int):
        """The L{register_preface} handler for C{type_code}, or None."""
        return self._prefaces.get(type_code)

    def unknown_type(self, type_code: int) -> None:
        self.unknown_types[type_code] += 1
        log.debug("ignored envelope of unknown type 0x{type:04x}", type=type_code)

    def add_observer(self, observer) -> None:
        """Notify C{observer} of session events (any subset of the hook methods)."""
        self._observers.append(observer)
        gate = getattr(observer, "channels_allowed", None)
        if gate is not None:
            self._gates += (gate,)
            # One gate (a node's pairing service) is asked directly, not
            # through the loop below: a call fewer per Data (issue 19).
            if len(self._gates) == 1:
                self.channels_allowed = gate
            else:
                self.__dict__.pop("channels_allowed", None)

    def channels_allowed(self, session) -> bool:
        """
        Whether C{session}'s peer may open channels and send Data here.

        Every observer with a C{channels_allowed(session)} method is asked
        (the node's pairing service: only paired peers); one refusal is
        enough. Without such an observer (a client) every peer may.
        """
        for allowed in self._gates:
            if not allowed(session):
                return False
        return True

    def _notify(self, name, *args):
        for observer in list(self._observers):
            method = getattr(observer, name, None)
            if method is not None:
                try:
                    method(*args)
                except Exception:
                    log.failure("observer {name} failed", name=name)

    # Connections and session events

    def connection(self, initiator=False, resume=None, session_id=None) -> Connection:
        """A new L{Connection} for one transport."""
        return Connection(self, initiator=initiator, resume=resume, session_id=session_id)

    def session_established(self, session) -> None:
        self.sessions[session.session_id] = session
        if self.log_addresses:
            log.info(
                "session {sid} established with {peer} from {address}",
                sid=session.session_id.hex()[:8],
                peer=session.remote_peer_id,
                address=_address_of(session),
            )
        else:
            log.info(
                "session {sid} established with {peer}",
                sid=session.session_id.hex()[:8],
                peer=session.remote_peer_id,
            )
        self._notify("session_established", session)
        if self.on_session is not None and session.closed is None:
            self.on_session(session)

    def session_resumed(self, session) -> None:
        if self.log_addresses:
            log.info(
                "session {sid} resumed from {address}", sid=session.session_id.hex()[:8], address=_address_of(session)
            )
        else:
            log.info("session {sid} resumed", sid=session.session_id.hex()[:8])
        self._notify("session_resumed", session)

    def trusted(self, session) -> bool:
        """Whether C{session}'s peer is trusted (paired, on a node)."""
        return self.is_trusted is None or self.is_trusted(session.remote_peer_id)

    def detached_ttl(self, session) -> float:
        """
        How long C{session} stays resumable once detached: C{session_ttl},
        or the (shorter) unpaired TTL for a peer that is not trusted, so
        that handshakes from throw-away identities do not pile up
        (docs/reliability.md, "Unpaired peers"). Restored sessions were
        paired when saved and the trust store is not loaded yet: full TTL.
        """
        if self.unpaired_session_ttl is None or self._restoring or self.trusted(session):
            return self.session_ttl
        return min(self.unpaired_session_ttl, self.session_ttl)

    def session_detached(self, session) -> None:
        self._notify("session_detached", session)

    def peer_paired(self, peer_id: str) -> None:
        """
        C{peer_id} has just become paired (its PairConfirm is sent): the
        services start serving the sessions it already has (§20.1).
        """
        self._notify("peer_paired", peer_id)

    def session_closed(self, session) -> None:
        self.sessions.pop(session.session_id, None)
        log.info(
            "session {sid} closed: {code} {reason}",
            sid=session.session_id.hex()[:8],
            code=int(session.closed.code),
            reason=session.closed.reason,
        )
        self._notify("session_closed", session)

    def channel_opened(self, session, channel) -> None:
        if self.on_channel is not None:
            self.on_channel(session, channel)

    def data_received(self, session, channel, data) -> None:
        if self.on_data is not None:
            self.on_data(session, channel, data)

    # Persistence

    def drain(self) -> None:
        """
        Accept nothing more, the first step of a clean stop: envelopes that
        arrive from now on are dropped unopened (the last accepted sequence
        number does not move, so their senders resend them after resuming),
        and no session is established or resumed. What was accepted before
        is still answered: the services finish it before L{freeze}.
        """
        self.draining = True

    def freeze(self) -> None:
        """
        Stop every session without a Close, after a snapshot was taken.

        Frozen sessions refuse to send (their state now lives in the
        snapshot) and their transports are closed without a Close, so that
        peers resume with Reconnect once the node is back.
        """
        self.frozen = True
        for session in list(self.sessions.values()):
            session.freeze()
        self.sessions.clear()

    def snapshot_sessions(self) -> list:
        """
        Snapshots of every open session of a trusted peer, for a clean
        shutdown. Sessions of unpaired peers are never saved: they would
        let anyone who completes a handshake fill the file and the next
        start's memory.
        """
        return [s.snapshot() for s in self.sessions.values() if s.closed is None and self.trusted(s)]

    def restore_sessions(self, snapshots) -> int:
        """Recreate detached sessions from L{snapshot_sessions} output; return how many."""
        self._restoring = True
        try:
            return self._restore(snapshots)
        finally:
            self._restoring = False

    def _restore(self, snapshots) -> int:
        restored = 0
        for state in snapshots:
            result = HandshakeResult(
                remote_identity=state["remote_identity"],
                handshake_hash=state["handshake_hash"],
                key_i2r=state["key_i2r"],
                key_r2i=state["key_r2i"],
                initiator=state["initiator"],
            )
            session = Session(
                self, state["session_id"], result, state["version"], state["send_seq"], state["recv_seq"]
            )
            try:
                session.restore(state)
            except ValueError as e:
                log.warn("session {sid} not restored: {why}", sid=session.session_id.hex()[:8], why=str(e))
                continue
            self.sessions[session.session_id] = session
            session.detach(None)
            restored += 1
        return restored


def _address_of(session) -> str:
    transport = getattr(session.connection, "transport", None)
    return str(getattr(transport, "peer_address", "unknown"))
