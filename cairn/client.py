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
again or has ended.

Sessions are the same L{cairn.session.session.Session} objects the server
uses; a client can also C{listen()} and take sessions from other clients.

Node pinning (docs/protocol.md §20.7.1): once a pairing through a session
this client dialled succeeds, the node's peer id is pinned under the
address dialled (in C{pins}: a L{cairn.pins.MemoryPins} unless given, a
L{cairn.pins.FilePins} for a device that must remember across runs), and
C{connect()} to that address fails with L{cairn.pins.NodeMismatch}
whenever another peer id answers.
"""

from urllib.parse import urlsplit

from twisted.internet.defer import gatherResults, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from cairn.crypto.identity import Identity
from cairn.pairing.codes import dial_string
from cairn.pins import MemoryPins, NodeMismatch
from cairn.session.peer import Peer
from cairn.session.session import SessionClosed
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory, StreamProtocol
from cairn.transport.websocket import client_factory, server_factory
from cairn.wire.constants import CloseCode


class _OneConnectionFactory(Factory):
    # One factory per connection: "Starting factory" lines would only be noise.
    noisy = False

    def __init__(self, settings, sink):
        self.settings = settings
        self.sink = sink

    def buildProtocol(self, addr):
        protocol = StreamProtocol(self.sink, self.settings)
        protocol.factory = self
        return protocol


def websocket_endpoint(reactor, url: str):
    """The client endpoint for a C{ws://} or C{wss://} URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    host = parts.hostname
    if parts.scheme == "wss":
        return clientFromString(reactor, f"tls:{host}:{port}")
    return clientFromString(reactor, f"tcp:host={host}:port={port}")


log = Logger()

#: Automatic resume backoff: first delay, factor, ceiling (seconds).
RESUME_BACKOFF = (1.0, 2.0, 60.0)
#: Parsed client endpoints kept for reuse (by address string).
ENDPOINT_CACHE = 32


class Client:
    """
    A cairn peer that initiates sessions (and may accept them).

    Keyword arguments are the L{Peer} settings (keepalive, limits).

    @param auto_resume: resume dropped sessions automatically.
    @param pins: the node pin store (address -> peer id); in memory if None.
    """

    def __init__(self, reactor, identity: Identity = None, clock=None, auto_resume=False, pins=None, **settings):
        self.reactor = reactor
        self.clock = clock or reactor
        self.peer = Peer(identity or Identity.generate(), self.clock, **settings)
        #: What this client's dialled transports read (no output guard).
        self.transport_settings = TransportSettings.for_peer(self.peer)
        self.auto_resume = auto_resume
        self.pins = MemoryPins() if pins is None else pins
        # Pairing (cairn.pairing.client) finds the pins through the session's peer.
        self.peer.pinning = self
        self._addresses = {}
        self._endpoints = {}
        self._retries = {}
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

    def connect(self, address: str, expect_peer_id: str = None):
        """
        Open a session to C{address}: a C{tcp://host:port}, C{ws://} or
        C{wss://} address (docs/protocol.md §20.3.2) or a Twisted client
        endpoint string. Fires with the established session, or fails with
        L{NodeMismatch} (the session closed) if the node's peer id is not
        C{expect_peer_id} or not the one pinned for C{address}.
        """
        connection = self.peer.connection(initiator=True)
        d = self._dial(address, connection)
        d.addCallback(self._check_node, address, expect_peer_id)
        return d

    def _check_node(self, session, address, expect_peer_id):
        for expected in (expect_peer_id, self.pins.get(address)):
            if expected is not None and expected != session.remote_peer_id:
                log.warn(
                    "refusing node {actual} at {address}: expected {expected}",
                    actual=session.remote_peer_id,
                    address=address,
                    expected=expected,
                )
                session.close(CloseCode.NORMAL, "not the node this device expects")
                raise NodeMismatch(expected, session.remote_peer_id, address)
        return session

    def pinned(self, session):
        """The peer id pinned for the address C{session} was dialled at, or None."""
        address = self._addresses.get(session.session_id)
        return None if address is None else self.pins.get(address)

    def pin(self, session) -> None:
        """Pin C{session}'s node under the address it was dialled at (after a pairing)."""
        address = self._addresses.get(session.session_id)
        if address is not None:
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
            factory = _OneConnectionFactory(self.transport_settings, connection)

        def connected(session):
            self._addresses[session.session_id] = address
            return session

        d = endpoint.connect(factory)
        d.addCallback(lambda _: connection.ready)
        d.addCallback(connected)
        return d

    # Automatic resume (Peer observer hooks)

    def session_detached(self, session):
        if self.auto_resume and session.session_id in self._addresses:
            self._schedule_resume(session, RESUME_BACKOFF[0])

    def session_closed(self, session):
        self._addresses.pop(session.session_id, None)
        call = self._retries.pop(session.session_id, None)
        if call is not None and call.active():
            call.cancel()

    def _schedule_resume(self, session, delay):
        self._retries[session.session_id] = self.clock.callLater(delay, self._try_resume, session, delay)

    def _try_resume(self, session, delay):
        self._retries.pop(session.session_id, None)
        if session.attached or session.closed is not None:
            return

        def failed(failure):
            log.info("resume of {sid} failed: {why}", sid=session.session_id.hex()[:8], why=failure.getErrorMessage())
            code = getattr(failure.value, "code", None)
            if code is not None and code not in (CloseCode.GOING_AWAY, CloseCode.TIMEOUT):
                # The node refused the session itself: retrying cannot help.
                session._end(SessionClosed(code, failure.value.reason))
                return None
            if session.closed is None and not session.attached:
                start, factor, ceiling = RESUME_BACKOFF
                self._schedule_resume(session, min(delay * factor, ceiling))
            return None

        self.resume(session).addErrback(failed)

    def listen(self, description: str, websocket: bool = False):
        """Accept sessions on a server endpoint string; fires with the port."""
        factory = server_factory(self.peer) if websocket else StreamFactory(self.peer)
        return serverFromString(self.reactor, description).listen(factory)
