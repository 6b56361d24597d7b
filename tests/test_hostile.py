"""
Slow and hostile peers, over TCP and WebSocket (and HTTP for the
management site): slowloris, peers that never read, oversized frames,
handshake floods from one source. Real sockets on 127.0.0.1; the node's
timers on a L{task.Clock}.

Covered elsewhere, not repeated here: a connection idle or stuck half-way
through the handshake is closed by the handshake timeout
(tests/test_badinput.py C{test_idle_connection_times_out},
C{test_half_handshake_times_out}); a half-open connection after the
handshake is dropped by the keepalive timeout (tests/test_session.py
C{test_keepalive_timeout_detaches}) and its session resumes elsewhere
(tests/test_resume.py C{test_resume_while_old_transport_half_open}); a
TCP length field or a WebSocket message above the maximum is answered
with Close 2 (tests/test_badinput.py C{test_length_above_maximum},
C{test_oversized_message}).
"""

import socket
import struct

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource

from cairn.crypto.identity import Identity
from cairn.management.site import REQUEST_TIMEOUT, make_site
from cairn.session.peer import Peer
from cairn.transport import limits
from cairn.transport.limits import Refused, SourceLimiter, buffered_bytes
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory, StreamProtocol
from cairn.transport.websocket import MAX_UPGRADE_BYTES, server_factory
from cairn.wire.constants import CloseCode
from tests._harness import (
    SETTINGS,
    Conditions,
    RawStream,
    ScenarioMixin,
    eventually,
    first_close,
    handshake_init,
    track_connections,
)

#: An application type the client ignores (no handler): bulk from the node.
BULK = 0xF0F0
CHUNK = 60_000
WRITE_LIMIT = 4 * 1024 * 1024
SOCKET_BUFFER = 128 * 1024
TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class Bytes(Protocol):
    """A raw TCP client keeping everything it receives."""

    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()
        self.conditions = Conditions()

    def dataReceived(self, data):
        self.data += data
        self.conditions.changed()

    def connectionLost(self, reason=None):
        if not self.lost.called:
            self.lost.callback(None)
        self.conditions.changed()

    def abort(self):
        self.transport.abortConnection()


def upgrade_request(port, extra=b""):
    return (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (port, extra)
    )


class LimitsMixin(ScenarioMixin):
    """A listening node with the per-source limit and the output guard on."""

    max_pending = 3
    server_settings = {}

    def setUp(self):
        self.connections = []
        self.raw = []
        self.server_clock = task.Clock()
        self.server = Peer(Identity.generate(), self.server_clock, **dict(SETTINGS, **self.server_settings))
        self._session_waiters = []
        self.server.on_session = self._session_established
        track_connections(self.server, self.connections)
        self.conditions = Conditions()
        self.limiter = SourceLimiter(self.max_pending)
        admit = self.limiter.admit

        self.seen = 0

        def admitting(addr):
            ticket = admit(addr)
            self.seen += 1
            self.conditions.changed()
            return ticket

        self.limiter.admit = admitting
        release = self.limiter.release

        def releasing(source):
            release(source)
            self.conditions.changed()

        self.limiter.release = releasing
        settings = TransportSettings.for_peer(self.server, write_limit=WRITE_LIMIT)
        if self.websocket:
            factory = server_factory(self.server, self.limiter, settings=settings)
        else:
            factory = StreamFactory(self.server, limiter=self.limiter, settings=settings)
        self.factory = factory
        d = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)

        def listening(port):
            self.port = port
            self.port_number = port.getHost().port

        return d.addCallback(listening)

    @defer.inlineCallbacks
    def bytes_client(self):
        """A raw TCP client (no WebSocket upgrade), dropped at tearDown."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number)
        proto = yield endpoint.connect(Factory.forProtocol(Bytes))
        self.raw.append(proto)
        return proto

    def attempted(self, count):
        """Fires once the listener has seen C{count} connections (admitted or not)."""
        return self.conditions.until(lambda: self.seen >= count)


class TCPSlowlorisTests(LimitsMixin, unittest.TestCase):
    websocket = False

    @defer.inlineCallbacks
    def test_dribbled_handshake_times_out(self):
        """A handshake dribbled byte by byte is closed by the handshake timeout, which the bytes do not extend."""
        timeout = SETTINGS["handshake_timeout"]
        raw = yield self.raw_connect()
        yield self.conditions.until(lambda: len(self.connections) == 1)
        conn = self.connections[0]
        received = [0]
        protocol = conn.transport
        feed = protocol.dataReceived

        def counting(data):
            received[0] += len(data)
            feed(data)
            self.conditions.changed()

        protocol.dataReceived = counting
        init = handshake_init()
        for i in range(30):
            raw.send_raw(init[i : i + 1])
            yield self.conditions.until(lambda i=i: received[0] == i + 1)
            self.server_clock.advance(timeout / 40)
        self.assertFalse(conn.lost.called)
        self.server_clock.advance(timeout / 4)
        yield eventually(raw.lost)
        self.assertEqual(first_close(raw)["code"], CloseCode.TIMEOUT)


class WebSocketSlowlorisTests(LimitsMixin, unittest.TestCase):
    websocket = True

    @defer.inlineCallbacks
    def test_dribbled_upgrade_times_out(self):
        """A WebSocket upgrade request dribbled byte by byte is dropped by the opening handshake timeout."""
        timeout = SETTINGS["handshake_timeout"]
        raw = yield self.bytes_client()
        yield self.attempted(1)
        request = upgrade_request(self.port_number)
        for i in range(20):
            raw.transport.write(request[i : i + 1])
            self.server_clock.advance(timeout / 40)
        self.assertFalse(raw.lost.called)
        self.server_clock.advance(timeout)  # autobahn's timers are batched (200 ms)
        yield eventually(raw.lost)
        self.assertEqual(raw.data, b"")

    @defer.inlineCallbacks
    def test_upgrade_header_bounded(self):
        """An upgrade request whose headers never end is refused 431 once over the bound, not buffered on."""
        raw = yield self.bytes_client()
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        raw.transport.write(b"GET / HTTP/1.1\r\n" + line * (MAX_UPGRADE_BYTES // len(line) + 2))
        yield eventually(raw.lost)
        self.assertTrue(raw.data.startswith(b"HTTP/1.1 431"), raw.data[:60])


class NeverReadsMixin(LimitsMixin):
    """A peer that stops reading while the node keeps sending."""

    # No keepalive ticks on the node: only the output guard's window acts.
    server_settings = {"keepalive_interval": 0}

    @defer.inlineCallbacks
    def stalled_session(self):
        """A client session whose client stopped reading, with tiny socket buffers on both ends."""
        client = self.make_client()
        session = yield self.connect(client)
        server_session = self.server_session(session)
        client_tcp = session.connection.transport.transport
        server_conn = server_session.connection
        server_tcp = server_conn.transport.transport
        # Small kernel buffers (still above the loopback MSS, or the window
        # would barely open): most of what the node writes stays in Twisted's.
        client_tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        server_tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        client_tcp.pauseProducing()  # stops reading
        self.server_conn = server_conn
        return client, session, server_session, server_conn.transport._guard, server_tcp

    def dropped(self, session):
        """Fires once both ends saw the connection go (the client reads again to notice)."""
        session.connection.transport.transport.resumeProducing()
        return defer.gatherResults([eventually(self.server_conn.lost), eventually(session.connection.lost)])

    def bulk(self, server_session, total):
        sent = 0
        while sent < total and server_session.closed is None:
            server_session.send(BULK, {"b": b"x" * CHUNK})
            sent += CHUNK
        return sent

    @defer.inlineCallbacks
    def test_buffer_bounded(self):
        """A node writing to a peer that does not read stops at the write limit, closing it with LIMIT_REACHED."""
        client, session, server_session, guard, server_tcp = yield self.stalled_session()
        self.bulk(server_session, 3 * WRITE_LIMIT)
        self.assertIsNotNone(server_session.closed)
        self.assertEqual(server_session.closed.code, CloseCode.LIMIT_REACHED)
        self.assertTrue(guard.overflowed)
        self.assertGreater(guard.high_water, WRITE_LIMIT)
        self.assertLess(guard.high_water, WRITE_LIMIT + 2 * CHUNK)
        yield self.dropped(session)

    @defer.inlineCallbacks
    def test_dropped_after_window(self):
        """
        A peer whose queue has not drained within the keepalive timeout is
        closed with LIMIT_REACHED; the node's memory for it stays under the limit.
        """
        client, session, server_session, guard, server_tcp = yield self.stalled_session()
        self.bulk(server_session, 3 * WRITE_LIMIT // 4)
        self.assertIsNone(server_session.closed)
        for _ in range(5):  # the reactor writes what the kernel takes
            yield task.deferLater(reactor, 0, lambda: None)
        self.assertTrue(guard.stalled)
        self.assertGreater(buffered_bytes(server_tcp), 64 * 1024)
        self.assertLessEqual(guard.high_water, WRITE_LIMIT)
        self.server_clock.advance(SETTINGS["keepalive_timeout"] - 1)
        self.assertIsNone(server_session.closed)
        self.server_clock.advance(1)
        self.assertEqual(server_session.closed.code, CloseCode.LIMIT_REACHED)
        self.assertIn("not drained", server_session.closed.reason)
        yield self.dropped(session)

    @defer.inlineCallbacks
    def test_slow_reader_kept(self):
        """A peer that reads what it is sent, however late, is not dropped."""
        client, session, server_session, guard, server_tcp = yield self.stalled_session()
        got = [0]

        def bulk(session, body):
            got[0] += 1
            self.conditions.changed()

        client.peer.register_handler(BULK, bulk)
        chunks = self.bulk(server_session, 3 * WRITE_LIMIT // 4) // CHUNK
        self.assertTrue(guard.stalled)
        self.server_clock.advance(SETTINGS["keepalive_timeout"] / 2)
        session.connection.transport.transport.resumeProducing()
        yield self.conditions.until(lambda: got[0] == chunks)
        self.assertFalse(guard.stalled)  # everything left Twisted's buffer
        self.server_clock.advance(SETTINGS["keepalive_timeout"])
        self.assertIsNone(server_session.closed)
        self.assertTrue(server_session.attached)


class TCPNeverReadsTests(NeverReadsMixin, unittest.TestCase):
    websocket = False


class WebSocketNeverReadsTests(NeverReadsMixin, unittest.TestCase):
    websocket = True


class FloodMixin(LimitsMixin):
    """Handshake floods from one source: L{SourceLimiter}."""

    @defer.inlineCallbacks
    def test_one_source_limited(self):
        """The N+1th concurrent unfinished handshake from one address is refused; a finished one frees its place."""
        held = []
        for _ in range(self.max_pending):
            held.append((yield self.bytes_client()))
        yield self.attempted(self.max_pending)
        self.assertEqual(self.limiter.pending, {"127.0.0.1": self.max_pending})

        refused = yield self.bytes_client()
        yield eventually(refused.lost)
        if self.websocket:
            self.assertTrue(refused.data.startswith(b"HTTP/1.1 429 Too Many Requests"), refused.data[:60])
        else:
            raw = RawStream()
            raw.dataReceived(refused.data)
            self.assertEqual(first_close(raw)["code"], CloseCode.LIMIT_REACHED)
            self.assertEqual(first_close(raw)["reason"], limits.REFUSED_REASON)
        self.assertEqual(self.limiter.refused, 1)

        held[0].abort()
        yield eventually(held[0].lost)
        yield self.conditions.until(lambda: self.limiter.pending.get("127.0.0.1") == self.max_pending - 1)
        session = yield self.connect()  # admitted, and released once established
        self.assertTrue(session.attached)
        yield self.conditions.until(lambda: self.limiter.pending == {"127.0.0.1": self.max_pending - 1})
        # An established session does not count: another handshake fits.
        other = yield self.connect()
        self.assertTrue(other.attached)


class TCPFloodTests(FloodMixin, unittest.TestCase):
    websocket = False


class WebSocketFloodTests(FloodMixin, unittest.TestCase):
    websocket = True


class SourceLimiterTests(unittest.TestCase):
    def setUp(self):
        self.peer = Peer(Identity.generate(), task.Clock(), **SETTINGS)
        self.limiter = SourceLimiter(2)

    def accept(self, factory, host):
        protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_other_source_still_connects(self):
        """While one address is at its limit, another address is still admitted."""
        factory = StreamFactory(self.peer, limiter=self.limiter)
        for _ in range(2):
            protocol, _ = self.accept(factory, "192.0.2.1")
            self.assertIsInstance(protocol, StreamProtocol)
        protocol, transport = self.accept(factory, "192.0.2.1")
        self.assertIsInstance(protocol, Refused)
        self.assertTrue(transport.disconnecting)
        protocol, transport = self.accept(factory, "198.51.100.7")
        self.assertIsInstance(protocol, StreamProtocol)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.limiter.pending, {"192.0.2.1": 2, "198.51.100.7": 1})

    def test_lost_connection_frees_its_place(self):
        """A connection lost before its handshake finished gives its place back, once."""
        factory = StreamFactory(self.peer, limiter=self.limiter)
        protocol, _ = self.accept(factory, "192.0.2.1")
        protocol.connectionLost(None)
        protocol._ticket.done()
        self.assertEqual(self.limiter.pending, {})

    def test_websocket_refusal(self):
        """A WebSocket connection over the limit is answered HTTP 429 and closed before any upgrade."""
        factory = server_factory(self.peer, self.limiter)
        for _ in range(2):
            self.accept(factory, "192.0.2.1")
        protocol, transport = self.accept(factory, "192.0.2.1")
        self.assertIsInstance(protocol, Refused)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429 "))
        self.assertTrue(transport.disconnecting)


class OversizedWebSocketFrameTests(LimitsMixin, unittest.TestCase):
    websocket = True

    @defer.inlineCallbacks
    def test_frame_header_above_maximum(self):
        """A WebSocket frame header announcing more than the maximum closes the connection at once."""
        raw = yield self.bytes_client()
        raw.transport.write(upgrade_request(self.port_number))
        yield raw.conditions.until(lambda: b"\r\n\r\n" in raw.data)
        self.assertTrue(raw.data.startswith(b"HTTP/1.1 101"), raw.data[:40])
        # FIN + binary, masked, 64-bit length of 2^40, mask key; no payload follows.
        raw.transport.write(b"\x82\xff" + struct.pack(">Q", 2**40) + b"\x00\x00\x00\x00")
        yield eventually(raw.lost)
        frames = raw.data.split(b"\r\n\r\n", 1)[1]
        # First a binary message (short length form) holding the cairn Close in clear.
        self.assertEqual(frames[0], 0x82)
        envelope = RawStream()
        envelope.dataReceived(frames[2 : 2 + frames[1]])
        self.assertEqual(first_close(envelope)["code"], CloseCode.PAYLOAD_TOO_LARGE)
        yield eventually(self.connections[0].lost)


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class _API:
    def resource(self):
        return Hello()


class ManagementSlowlorisTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.clock = task.Clock()
        site = make_site(_API(), reactor=self.clock)
        self.port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        self.clients = []

    @defer.inlineCallbacks
    def tearDown(self):
        for client in self.clients:
            if not client.lost.called:
                client.abort()
            yield eventually(client.lost)
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def client(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        proto = yield endpoint.connect(Factory.forProtocol(Bytes))
        self.clients.append(proto)
        return proto

    @defer.inlineCallbacks
    def test_dribbled_request_times_out(self):
        """A request dribbled a byte at a time (within the idle timeout) gets 408 at the request deadline."""
        client = yield self.client()
        request = b"GET / HTTP/1.1\r\nHost: x\r\n"
        for i in range(len(request)):
            client.transport.write(request[i : i + 1])
            self.clock.advance(REQUEST_TIMEOUT / (len(request) + 5))
        self.assertFalse(client.lost.called)
        self.clock.advance(REQUEST_TIMEOUT / 4)
        yield eventually(client.lost)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 408 Request Timeout"), client.data[:40])

    @defer.inlineCallbacks
    def test_deadline_restarts_per_request(self):
        """On a kept-alive connection each request gets its own deadline, counted from the previous response."""
        client = yield self.client()
        # Not /: make_site answers it with a redirect to the console.
        client.transport.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        yield client.conditions.until(lambda: client.data.endswith(b"hello"))
        self.clock.advance(REQUEST_TIMEOUT - 1)
        client.transport.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        yield client.conditions.until(lambda: client.data.count(b"hello") == 2)
        self.clock.advance(REQUEST_TIMEOUT - 1)
        self.assertFalse(client.lost.called)
        self.clock.advance(1)
        yield eventually(client.lost)
        self.assertTrue(client.data.endswith(b"hello" + TOO_SLOW), client.data[-120:])

    @defer.inlineCallbacks
    def test_headers_bounded(self):
        """Headers above Twisted's 16 KiB bound are answered 400 and the connection closed."""
        client = yield self.client()
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + line * 20)
        yield eventually(client.lost)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 400"), client.data[:40])
