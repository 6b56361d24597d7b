"""
Test harness: a responder peer listening on 127.0.0.1 port 0 (TCP or
WebSocket), library clients, and raw clients that speak bytes.

Session timers run on a L{task.Clock} per peer; sockets run on the real
reactor. Every connection is tracked so tearDown can wait until both ends
are really gone.
"""

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.test import iosim

from cairn.client import Client
from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory, StreamProtocol
from cairn.transport.websocket import server_factory
from cairn.wire import cbor
from cairn.wire.constants import PROTOCOL_VERSION, MessageType
from cairn.wire.envelope import Envelope, EnvelopeParser

SETTINGS = dict(
    max_payload=64 * 1024,
    keepalive_interval=30.0,
    keepalive_timeout=90.0,
    handshake_timeout=10.0,
    session_ttl=3600.0,
)


def track_connections(peer, registry):
    """Record every Connection C{peer} makes, each with a C{lost} Deferred."""
    make = peer.connection

    def connection(*args, **kwargs):
        conn = make(*args, **kwargs)
        conn.lost = defer.Deferred()
        original = conn.connection_lost

        def connection_lost(reason=None):
            original(reason)
            if not conn.lost.called:
                conn.lost.callback(None)

        conn.connection_lost = connection_lost
        registry.append(conn)
        return conn

    peer.connection = connection


def drop_all(connections):
    """
    Abort every tracked connection still open; fires once all are gone. One
    still being dialled (no transport yet: an attached circuit's connection
    dialled by a relay client re-establishing its circuit as the test ends)
    is aborted once it connects, if it does -- left open, it failed a test
    with a dirty reactor (once in the CI runs).
    """
    for conn in connections:
        if conn.lost.called:
            continue
        if conn.transport is not None:
            conn.transport.lose(abort=True)
        else:
            conn.connection_made = _aborted_when_made(conn.connection_made)
    # A connection that never got a transport (its dial failed) is never lost.
    return defer.gatherResults([eventually(c.lost) for c in connections if c.transport is not None or c.lost.called])


def _aborted_when_made(connection_made):
    def made(transport):
        connection_made(transport)
        transport.lose(abort=True)

    return made


class Conditions:
    """
    Wait for a predicate without sleeping: each L{until} Deferred fires as
    soon as its predicate holds, re-checked whenever the test's hooks call
    L{changed} (wire it into the callbacks that change what is watched).
    """

    def __init__(self):
        self._waiting = []

    def until(self, predicate, timeout=10):
        d = defer.Deferred()
        self._waiting.append((predicate, d))
        self.changed()
        return eventually(d, timeout)

    def changed(self, result=None):
        """Re-check every predicate; passes C{result} through (usable as a callback)."""
        for item in list(self._waiting):
            predicate, d = item
            if predicate():
                self._waiting.remove(item)
                d.callback(None)
        return result


def observe_logs(testcase, observer=None):
    """
    Every log event from now until C{testcase} ends: given to C{observer},
    or else appended to the list returned.
    """
    events = []
    observer = observer or events.append
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def eventually(d, timeout=10):
    """Fail C{d} if it has not fired within C{timeout} real seconds (a guard, not timing)."""
    return d.addTimeout(timeout, reactor)


class RawStream(Protocol):
    """A client that writes raw bytes and parses whatever comes back."""

    def __init__(self):
        self.parser = EnvelopeParser(2**32 - 1)
        self.received = []
        self.lost = defer.Deferred()
        self.arrived = defer.Deferred()

    def dataReceived(self, data):
        self.received.extend(self.parser.feed(data))
        if self.received and not self.arrived.called:
            self.arrived.callback(self.received[0])

    def connectionLost(self, reason=None):
        if not self.lost.called:
            self.lost.callback(None)

    def send_raw(self, data: bytes):
        self.transport.write(data)

    def send_text(self, text):
        raise NotImplementedError("text frames exist only on WebSocket")

    def abort(self):
        self.transport.abortConnection()


class RawWebSocket(WebSocketClientProtocol):
    """A WebSocket client that sends raw messages (one per call)."""

    def __init__(self):
        super().__init__()
        self.received = []
        self.lost = defer.Deferred()
        self.arrived = defer.Deferred()
        self.opened = defer.Deferred()

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        parser = EnvelopeParser(2**32 - 1)
        self.received.extend(parser.feed(payload))
        if self.received and not self.arrived.called:
            self.arrived.callback(self.received[0])

    def onClose(self, wasClean, code, reason):
        if not self.lost.called:
            self.lost.callback(None)

    def send_raw(self, data: bytes):
        self.sendMessage(data, isBinary=True)

    def send_text(self, text):
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def abort(self):
        self.dropConnection(abort=True)


def handshake_init(version=PROTOCOL_VERSION, session_id=b"\x01" * 16, payload=None) -> bytes:
    """A HandshakeInit envelope with a syntactically valid Noise message 1."""
    if payload is None:
        payload = cbor.dumps({"noise": b"\x09" * 32})
    return Envelope(version, MessageType.HANDSHAKE_INIT, session_id, 0, payload).to_bytes()


def first_close(raw):
    """The body of the first Close a raw client received, decoded (clear)."""
    for envelope in raw.received:
        if envelope.type == MessageType.CLOSE:
            return cbor.loads(envelope.payload)
    raise AssertionError(f"no Close among {raw.received!r}")


class ScenarioMixin:
    """
    Sets up a listening responder peer; subclasses choose the transport.

    @ivar server: the responder L{Peer}; C{self.server_clock} drives it.
    """

    websocket = False
    #: The TCP listener's factory (attached relay circuits: HandOffFactory).
    stream_factory = StreamFactory

    def setUp(self):
        self.connections = []
        self.raw = []
        self.server_clock = task.Clock()
        self.server = Peer(Identity.generate(), self.server_clock, **SETTINGS)
        self._session_waiters = []
        self.server.on_session = self._session_established
        track_connections(self.server, self.connections)
        factory = server_factory(self.server) if self.websocket else self.stream_factory(self.server)
        d = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)

        def listening(port):
            self.port = port
            self.port_number = port.getHost().port

        return d.addCallback(listening)

    @defer.inlineCallbacks
    def tearDown(self):
        for raw in self.raw:
            if not raw.lost.called:
                raw.abort()
        yield defer.gatherResults([drop_all(self.connections)] + [eventually(r.lost) for r in self.raw])
        yield self.port.stopListening()

    @property
    def address(self) -> str:
        if self.websocket:
            return f"ws://127.0.0.1:{self.port_number}/"
        return f"tcp:host=127.0.0.1:port={self.port_number}"

    def make_client(self, **overrides):
        """A library client with its own clock (C{client.clock})."""
        clock = task.Clock()
        settings = dict(SETTINGS, **overrides)
        client = Client(reactor, Identity.generate(), clock=clock, **settings)
        client.clock = clock
        track_connections(client.peer, self.connections)
        return client

    @defer.inlineCallbacks
    def connect(self, client=None):
        """Connect a client; fires with its session once the server has it too."""
        client = client or self.make_client()
        server_side = self.wait_for_session()
        session = yield eventually(client.connect(self.address))
        yield server_side
        return session

    @defer.inlineCallbacks
    def raw_connect(self):
        """A raw client connected to the server; fires once it is open."""
        if self.websocket:
            factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port_number}/")
            factory.protocol = RawWebSocket
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number)
            proto = yield endpoint.connect(factory)
            yield eventually(proto.opened)
        else:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number)
            proto = yield endpoint.connect(Factory.forProtocol(RawStream))
        self.raw.append(proto)
        return proto

    def server_session(self, client_session):
        return self.server.sessions[client_session.session_id]

    def wait_for_session(self):
        """A Deferred firing with the next session the server establishes."""
        d = defer.Deferred()
        self._session_waiters.append(d)
        return eventually(d)

    def _session_established(self, session):
        waiters, self._session_waiters = self._session_waiters, []
        for d in waiters:
            d.callback(session)


def next_data(channel):
    """A Deferred firing with the next bytes received on C{channel}."""
    d = defer.Deferred()
    channel.on_data = d.callback
    return eventually(d)


def collect(channel):
    """Collect every message on C{channel} into the returned list."""
    received = []
    channel.on_data = received.append
    return received


def closed(session):
    """A Deferred firing with the SessionClosed once C{session} ends."""
    d = defer.Deferred()
    if session.closed is not None:
        d.callback(session.closed)
    else:
        session.on_close = d.callback
    return eventually(d)


def resumed(session):
    d = defer.Deferred()
    session.on_resume = lambda: d.callback(session)
    return eventually(d)


def channel_on_server(server, client_channel_name):
    """A Deferred firing with the server-side channel when it opens."""
    d = defer.Deferred()

    def on_channel(session, channel):
        if channel.name == client_channel_name and not d.called:
            d.callback(channel)

    server.on_channel = on_channel
    return eventually(d)


def one_person(*clients, keyring=None):
    """
    Give C{clients}, one person's devices, one sync group key (sync
    payloads are sealed end to end, docs/protocol.md §24.10); returns it.
    """
    from cairn.sync import client as sync
    from cairn.sync import sealing

    keyring = keyring or sealing.Keyring.generate()
    for client in clients:
        sync.set_keyring(client.peer, keyring)
    return keyring


class RealNodeClients:
    """
    Library clients of a real node in this process: C{self.address} (its
    TCP listener), C{self.connections}, C{self.data_dir} and C{self.psk}
    are set by the test case.
    """

    def client(self):
        """A new device, one of the same person's (one sync group key)."""
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        self.keyring = one_person(client, keyring=getattr(self, "keyring", None))
        return client

    @defer.inlineCallbacks
    def paired(self, client):
        """Pair C{client} by PSK, then fire with a fresh session of it."""
        from cairn.pairing import client as pairing

        session = yield eventually(client.connect(self.address))
        yield eventually(pairing.pair_psk(session, self.psk))
        session.close()
        session = yield eventually(client.connect(self.address))
        return session

    def held(self):
        """Message ids in the node's database, read with a connection of our own."""
        import os
        import sqlite3

        from cairn.db import DB_FILE_NAME

        conn = sqlite3.connect(os.path.join(self.data_dir, DB_FILE_NAME))
        try:
            return {bytes(r[0]) for r in conn.execute("SELECT message_id FROM mailbox_messages")}
        finally:
            conn.close()


def handshake_in_memory(server, client_peer, address):
    """
    A handshake of C{client_peer} (initiator) with C{server}, a protocol
    built by a node's L{StreamFactory}, over C{iosim}'s in-memory transports
    (C{address} the client's, as the server sees it). Returns (the client's
    connection, the pump, the client's transport, the sessions its
    C{ready} fired with).
    """
    connection = client_peer.connection(initiator=True)
    client = StreamProtocol(connection, TransportSettings(max_payload=64 * 1024))
    server_transport = iosim.FakeTransport(server, isServer=True, peerAddress=address)
    client_transport = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(server, server_transport, client, client_transport, greet=True)
    sessions = []
    connection.ready.addCallback(sessions.append)
    pump.flush()
    return connection, pump, client_transport, sessions
