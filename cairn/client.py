"""
The peer-side API: connect to a node (or any cairn peer) and use sessions.

    client = Client(reactor, Identity.generate())
    session = yield client.connect("tcp:host=127.0.0.1:port=7400")
    # or client.connect("ws://127.0.0.1:7401/")
    chat = session.open_channel("chat")
    chat.send(b"hello")
    ...
    session = yield client.resume(session)      # after the transport dropped

With C{auto_resume=True} the client resumes by itself whenever a
session's transport drops, retrying with exponential backoff (1 s
doubling to 60 s, on the injected clock) until the session is attached
again or has ended. Each wait is shortened by a random share of up to
half (C{resume_jitter}): the devices a node dropped all at once (its
restart, a network blip) then come back spread over each backoff step
instead of in waves at 1 s, 3 s, 7 s ... that refill its listen queue
each time (issue 20, the reconnect storm).

Several nodes, one server (docs/scaling.md): C{connect()} also takes a
list of addresses -- the nodes of one deployment, which share one
identity -- and dials them in order until one answers. A dropped session
is resumed at the address that served it last, then at the others in
turn, each round of the list once per backoff delay. A node that does
not know the session (it died and the device reached another one) refuses
the Reconnect with Close 9 (docs/protocol.md §14.1); the client then runs
a new handshake there by itself: the old session ends with Close 9 once
the new one is established, C{current(old)} is the new one and
C{on_session_replaced(old, new)} is called.

Sessions are the same L{cairn.session.session.Session} objects the server
uses; a client can also C{listen()} and take sessions from other clients.

Node pinning (docs/protocol.md §20.7.1): once a pairing through a session
this client dialled succeeds, the node's peer id is pinned under every
address the session was connected with (in C{pins}: a
L{cairn.pins.MemoryPins} unless given, a L{cairn.pins.FilePins} for a
device that must remember across runs), and C{connect()} with any of
those addresses fails with L{cairn.pins.NodeMismatch} whenever another
peer id answers; the same check applies to the new session of a failover.
"""

import random

from twisted.internet.defer import fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from cairn.crypto.identity import Identity
from cairn.dial import OneConnectionFactory, Target, Unreachable, error_text, node_addresses, websocket_endpoint
from cairn.pairing.codes import dial_string
from cairn.pins import MemoryPins, NodeMismatch
from cairn.session.peer import Peer
from cairn.session.session import SessionClosed
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory
from cairn.transport.websocket import client_factory, server_factory
from cairn.wire.constants import CloseCode

log = Logger()

#: Automatic resume backoff: first delay, factor, ceiling (seconds).
RESUME_BACKOFF = (1.0, 2.0, 60.0)
#: Each backoff wait d is drawn uniformly from [(1 - RESUME_JITTER) d, d]:
#: never longer than the backoff says, and spread over its second half.
RESUME_JITTER = 0.5
#: Parsed client endpoints kept for reuse (by address string).
ENDPOINT_CACHE = 32


class Client:
    """
    A cairn peer that initiates sessions (and may accept them).

    Keyword arguments are the L{Peer} settings (keepalive, limits).

    @param auto_resume: resume dropped sessions automatically, at each of
        the addresses they were connected with in turn; when a node refuses
        the Reconnect (Close 9: it does not have the session), run a new
        handshake instead (see L{current}).
    @param pins: the node pin store (address -> peer id); in memory if None.
    @param resume_jitter: the share of each automatic resume wait that is
        random (L{RESUME_JITTER}; 0: the exact backoff).
    @param rng: where that share comes from (C{() -> float in [0, 1)}).
    """

    def __init__(
        self,
        reactor,
        identity: Identity = None,
        clock=None,
        auto_resume=False,
        pins=None,
        resume_jitter=RESUME_JITTER,
        rng=random.random,
        **settings,
    ):
        self.reactor = reactor
        self.clock = clock or reactor
        self.peer = Peer(identity or Identity.generate(), self.clock, **settings)
        #: What this client's dialled transports read (no output guard).
        self.transport_settings = TransportSettings.for_peer(self.peer)
        self.auto_resume = auto_resume
        self.resume_jitter = resume_jitter
        self._random = rng
        self.pins = MemoryPins() if pins is None else pins
        # Pairing (cairn.pairing.client) finds the pins through the session's peer.
        self.peer.pinning = self
        #: session id -> the address its transport was dialled at.
        self._addresses = {}
        #: session id -> L{Target}: every address of its node, for resume and failover.
        self._targets = {}
        #: session id of a session replaced after a refused Reconnect -> its successor.
        self._successors = {}
        self._endpoints = {}
        self._retries = {}
        #: C{(old, new)}: called when a new session replaced one no node knew any more.
        self.on_session_replaced = None
        self.peer.add_observer(self)
        #: (peer_id) -> bool: accept a relay circuit offered by that peer (None: accept).
        self.on_relay_request = None
        self._install_relay()

    # Extensions: one each, made on first use. The imports are here so that
    # the peer-side API does not pull in every family when imported (and so
    # that the device CLIs in cairn.cli may import this module cheaply).

    def _install_relay(self):
        # Now, not on first use: a circuit may be offered before any request of ours.
        from cairn.relay.client import relay_endpoint

        return relay_endpoint(self)

    @property
    def relay(self):
        """The L{cairn.relay.client.RelayEndpoint} of this client (circuits through a node)."""
        return self._install_relay()

    @property
    def mailbox(self):
        """The L{cairn.mailbox.client.MailboxClient} of this client."""
        from cairn.mailbox.client import MailboxClient

        return self.peer.extension(MailboxClient)

    @property
    def sync(self):
        """The L{cairn.sync.client.SyncClient} of this client."""
        from cairn.sync.client import SyncClient

        return self.peer.extension(SyncClient)

    @property
    def turn(self):
        """The L{cairn.turn.client.TurnClient} of this client."""
        from cairn.turn.client import TurnClient

        return self.peer.extension(TurnClient)

    @property
    def pairing(self):
        """The pairing dispatcher of this client (L{cairn.pairing.client}'s PairChallenge/Confirm/Reject handler)."""
        from cairn.pairing.client import PairingDispatcher

        return self.peer.extension(PairingDispatcher)

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id

    def connect(self, address, expect_peer_id: str = None):
        """
        Open a session to C{address}: a C{tcp://host:port}, C{ws://} or
        C{wss://} address (docs/protocol.md §20.3.2) or a Twisted client
        endpoint string -- or a list of them, the nodes of one deployment,
        dialled in order until one answers. Fires with the established
        session, or fails with L{NodeMismatch} (the session closed) if the
        node's peer id is not C{expect_peer_id} or not the one pinned for
        any of the addresses; with several addresses, a node failing so is
        skipped, and L{NodeMismatch} is raised only if no other answered,
        else L{Unreachable} naming each address's error.
        """
        try:
            target = Target(node_addresses(address), expect_peer_id)
        except ValueError as e:
            return fail(e)
        return self._handshake(target)

    @inlineCallbacks
    def _handshake(self, target, addresses=None):
        """
        A new session with the first of C{addresses} (default: every
        address of C{target}, in its order) that answers and passes the node
        check -- which always covers every address of C{target}.
        """
        errors = []
        for address in target.order() if addresses is None else addresses:
            try:
                session = yield self._dial(address, self.peer.connection(initiator=True))
                self._check_node(session, target, address)
            except Exception as e:
                if len(target.addresses) > 1:
                    log.info("no session at {address}: {why}", address=address, why=error_text(e))
                errors.append((address, e))
                continue
            self._targets[session.session_id] = target.served(address)
            return session
        if len(errors) == 1:
            raise errors[0][1]
        mismatch = [e for _, e in errors if isinstance(e, NodeMismatch)]
        if mismatch:
            raise mismatch[0]
        raise Unreachable(errors)

    def _check_node(self, session, target, address):
        expected = [target.expect_peer_id] + [self.pins.get(a) for a in target.addresses]
        for peer_id in expected:
            if peer_id is not None and peer_id != session.remote_peer_id:
                log.warn(
                    "refusing node {actual} at {address}: expected {expected}",
                    actual=session.remote_peer_id,
                    address=address,
                    expected=peer_id,
                )
                session.close(CloseCode.NORMAL, "not the node this device expects")
                raise NodeMismatch(peer_id, session.remote_peer_id, address)
        return session

    def current(self, session):
        """
        C{session}, or the session that replaced it when no node knew it any
        more (after a refused Reconnect, with C{auto_resume}), following
        every replacement since.
        """
        while session.session_id in self._successors:
            session = self._successors[session.session_id]
        return session

    def _pin_addresses(self, session):
        target = self._targets.get(session.session_id)
        if target is not None:
            return target.addresses
        address = self._addresses.get(session.session_id)
        return () if address is None else (address,)

    def pinned(self, session):
        """The peer id pinned for the addresses C{session} was dialled with, or None."""
        for address in self._pin_addresses(session):
            peer_id = self.pins.get(address)
            if peer_id is not None:
                return peer_id
        return None

    def pin(self, session) -> None:
        """
        Pin C{session}'s node under every address it was dialled with (after
        a pairing): the nodes of one deployment share one identity.
        """
        for address in self._pin_addresses(session):
            self.pins.set(address, session.remote_peer_id)

    def close(self, session=None, code: int = CloseCode.NORMAL, reason: str = "", timeout: float = 5.0):
        """
        End C{session} -- or, without one, every open session of this
        client -- with a Close, and fire once each Close is written out and
        its transport closed (or after C{timeout} seconds): for a program
        about to exit, whose reactor would otherwise stop with the Close
        still in its buffer (the peer would see a dropped transport and keep
        the session for a resume).
        """
        if session is None:
            sessions = [s for s in list(self.peer.sessions.values()) if s.closed is None]
            closing = [self.close(s, code, reason, timeout) for s in sessions]
            return gatherResults(closing).addCallback(lambda _: None)
        connection = session.connection
        session.close(code, reason)
        if connection is None:
            return succeed(None)
        d = connection.when_lost()
        d.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        return d

    def resume(self, session, address: str = None):
        """Resume C{session} on a new transport; fires with the same session."""
        address = address or self._addresses[session.session_id]
        connection = self.peer.connection(initiator=True, resume=session)
        return self._dial(address, connection)

    def _endpoint(self, address, websocket):
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            if websocket:
                endpoint = websocket_endpoint(self.reactor, address)
            elif address.startswith(("tcp://", "tls://")):
                # The protocol's own address form (docs/protocol.md §20.3.2).
                endpoint = clientFromString(self.reactor, dial_string(address))
            else:
                endpoint = clientFromString(self.reactor, address)
            if len(self._endpoints) >= ENDPOINT_CACHE:
                self._endpoints.clear()
            self._endpoints[address] = endpoint
        return endpoint

    def _dial(self, address, connection):
        websocket = address.startswith(("ws://", "wss://"))
        endpoint = self._endpoint(address, websocket)
        if websocket:
            factory = client_factory(self.transport_settings, address, lambda: connection)
        else:
            factory = OneConnectionFactory(self.transport_settings, connection)

        def connected(session):
            self._addresses[session.session_id] = address
            return session

        d = endpoint.connect(factory)
        d.addCallback(lambda _: connection.ready)
        d.addCallback(connected)
        return d

    # Automatic resume and failover (Peer observer hooks)

    def session_detached(self, session):
        if self.auto_resume and session.session_id in self._targets:
            self._schedule_resume(session, RESUME_BACKOFF[0])

    def session_closed(self, session):
        sid = session.session_id
        self._addresses.pop(sid, None)
        self._targets.pop(sid, None)
        call = self._retries.pop(sid, None)
        if call is not None and call.active():
            call.cancel()
        if sid not in self._successors:
            # Nothing replaces it: forget the chains of replacements that led to it.
            stale = [old for old in self._successors if self._last(old) is session]
            for old in stale:
                del self._successors[old]

    def _last(self, session_id):
        session = self._successors[session_id]
        while session.session_id in self._successors:
            session = self._successors[session.session_id]
        return session

    def _schedule_resume(self, session, delay):
        """Try to resume C{session} after the backoff C{delay}, less its random share (L{RESUME_JITTER})."""
        wait = delay * (1.0 - self.resume_jitter * self._random())
        self._retries[session.session_id] = self.clock.callLater(wait, self._try_resume, session, delay)

    def _try_resume(self, session, delay):
        self._retries.pop(session.session_id, None)
        if session.attached or session.closed is not None:
            return

        def again(done):
            if not done and session.closed is None and not session.attached:
                start, factor, ceiling = RESUME_BACKOFF
                self._schedule_resume(session, min(delay * factor, ceiling))

        def failed(failure):
            log.failure("automatic resume of {sid} failed", failure, sid=session.session_id.hex()[:8])

        self._resume_round(session).addCallbacks(again, failed)

    @inlineCallbacks
    def _resume_round(self, session):
        """
        Try each address of C{session}'s node once: resume it, or -- where
        the node refuses the Reconnect with Close 9 -- replace it with a new
        session. Fires with True when done (resumed, replaced or ended),
        False to try again after the next backoff delay.
        """
        sid = session.session_id.hex()[:8]
        target = self._targets.get(session.session_id)
        if target is None:
            return True
        renew = False
        for address in target.order():
            if session.closed is not None or session.attached:
                return True
            if not renew:
                try:
                    yield self.resume(session, address)
                except Exception as e:
                    code = getattr(e, "code", None)
                    log.info("resume of {sid} at {address} failed: {why}", sid=sid, address=address, why=error_text(e))
                    if code == CloseCode.UNKNOWN_SESSION:
                        # This node does not have the session (another one of
                        # the deployment had it, or it was lost): start anew here.
                        renew = True
                    elif code is not None and code not in (CloseCode.GOING_AWAY, CloseCode.TIMEOUT):
                        # The node refused the session itself: retrying cannot help.
                        session._end(SessionClosed(code, e.reason))
                        return True
                    else:
                        continue
                else:
                    if session.session_id in self._targets:
                        self._targets[session.session_id] = target.served(address)
                    return True
            if session.closed is not None or session.attached:
                return True
            try:
                new = yield self._handshake(target, [address])
            except Exception as e:
                log.info("new session at {address} failed: {why}", address=address, why=error_text(e))
                continue
            self._replace(session, new, target.served(address))
            return True
        return False

    def _replace(self, old, new, target):
        """C{new} takes the place of C{old}, which no node of the deployment knows any more."""
        if old.closed is not None:
            # It ended meanwhile (its TTL, or the application closed it):
            # nobody waits for a successor.
            new.close(CloseCode.NORMAL, "no longer wanted")
            return
        self._targets[new.session_id] = target
        self._successors[old.session_id] = new
        log.info(
            "session {old} replaced by a new session {new} (the node did not know it)",
            old=old.session_id.hex()[:8],
            new=new.session_id.hex()[:8],
        )
        old._end(SessionClosed(CloseCode.UNKNOWN_SESSION, "the node no longer has this session; replaced by a new one"))
        if self.on_session_replaced is not None:
            try:
                self.on_session_replaced(old, new)
            except Exception:
                log.failure("on_session_replaced failed")

    def listen(self, description: str, websocket: bool = False):
        """Accept sessions on a server endpoint string; fires with the port."""
        factory = server_factory(self.peer) if websocket else StreamFactory(self.peer)
        return serverFromString(self.reactor, description).listen(factory)
