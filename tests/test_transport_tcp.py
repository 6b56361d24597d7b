"""
The TCP adapter in memory: framing handed to the sink, socket options.
"""

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from cairn.transport.held import HOLD_MAX
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamProtocol
from cairn.wire.constants import CloseCode
from cairn.wire.envelope import Envelope


class Sink:
    def __init__(self):
        self.events = []

    def connection_made(self, transport):
        self.events.append("made")

    def envelope_received(self, envelope):
        self.events.append(envelope)

    def framing_error(self, code, reason):
        self.events.append(("error", code))

    def connection_lost(self, reason=None):
        self.events.append("lost")


class NoDelayTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.no_delay = []

    def setTcpNoDelay(self, enabled):
        self.no_delay.append(enabled)


class StreamProtocolTests(unittest.TestCase):
    def test_nagle_off(self):
        """A TCP stream turns Nagle's algorithm off as soon as it is connected."""
        transport = NoDelayTransport()
        StreamProtocol(Sink(), TransportSettings(max_payload=1000)).makeConnection(transport)
        self.assertEqual(transport.no_delay, [True])

    def test_envelopes_and_errors_reach_the_sink(self):
        """Whole envelopes reach the sink in order; an oversized header becomes a framing error."""
        sink = Sink()
        protocol = StreamProtocol(sink, TransportSettings(max_payload=10))
        protocol.makeConnection(StringTransport())
        one = Envelope(1, 0x0100, b"\x01" * 16, 0, b"abc")
        data = one.to_bytes() * 2
        protocol.dataReceived(data[:5])
        protocol.dataReceived(data[5:])
        protocol.dataReceived(Envelope(1, 0x0100, b"\x01" * 16, 1, b"x" * 11).to_bytes())
        self.assertEqual(sink.events, ["made", one, one, ("error", CloseCode.PAYLOAD_TOO_LARGE)])


class _Answering(Sink):
    """A sink whose C{answer(protocol, envelope)} runs for each envelope (while the read is handled)."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.protocol = None

    def envelope_received(self, envelope):
        super().envelope_received(envelope)
        self.answer(self.protocol, envelope)


class _Peer(Protocol):
    """The other end: sends C{first} once connected, keeps what it receives, fires C{lost} at the end."""

    def __init__(self, first):
        self.first = first
        self.received = b""
        self.lost = defer.Deferred()
        self.arrived = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.first)

    def dataReceived(self, data):
        self.received += data
        if self.arrived is not None:
            d, self.arrived = self.arrived, None
            d.callback(None)

    def connectionLost(self, reason):
        self.lost.callback(self.received)


class AnswersInTheReadTests(unittest.TestCase):
    """
    Envelopes written while a read is handled leave in that read, by the
    socket when Twisted holds nothing unsent (L{cairn.transport.held}),
    in the order written, around Twisted's buffer and a lose().
    """

    REQUEST = Envelope(1, 0x0100, b"\x01" * 16, 0, b"request").to_bytes()

    @defer.inlineCallbacks
    def _exchange(self, answer, wrap_socket=None):
        """Serve one connection whose sink answers with C{answer}; the peer's bytes and the writes Twisted got."""
        writes = []
        served = defer.Deferred()

        def build(addr):
            sink = _Answering(answer)
            protocol = sink.protocol = StreamProtocol(sink, TransportSettings(max_payload=1000))
            original = protocol.makeConnection

            def made(transport):
                real = transport.write
                transport.write = lambda data: (writes.append(data), real(data))[1]
                if wrap_socket is not None:
                    transport.socket = wrap_socket(transport.socket)
                original(transport)
                served.callback(protocol)

            protocol.makeConnection = made
            return protocol

        port = reactor.listenTCP(0, _Factory(build), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = _Peer(self.REQUEST)
        yield ClientCreator(reactor, lambda: peer).connectTCP("127.0.0.1", port.getHost().port)
        protocol = yield served
        self.addCleanup(lambda: protocol.transport.loseConnection())
        return peer, writes, protocol

    @defer.inlineCallbacks
    def test_answer_leaves_in_the_read(self):
        """An answer written in the read goes to the socket at its end, not through Twisted's buffer."""
        peer, writes, _ = yield self._exchange(lambda p, e: p.write_envelope(b"answer"))
        yield peer.arrived
        self.assertEqual((peer.received, writes), (b"answer", []))

    @defer.inlineCallbacks
    def test_several_answers_in_order(self):
        """Several answers of one read leave together, in the order written."""

        def answer(protocol, envelope):
            for part in (b"one ", b"two ", b"three"):
                protocol.write_envelope(part)

        peer, writes, protocol = yield self._exchange(answer)
        yield peer.arrived
        protocol.lose()
        received = yield peer.lost
        self.assertEqual((received, writes), (b"one two three", []))

    @defer.inlineCallbacks
    def test_after_what_twisted_holds(self):
        """With bytes in Twisted's buffer still unsent, the answer goes behind them, through write()."""

        def answer(protocol, envelope):
            protocol.transport.write(b"first ")  # Twisted holds it until the reactor's next poll
            protocol.write_envelope(b"second")

        peer, writes, protocol = yield self._exchange(answer)
        yield peer.arrived
        protocol.lose()
        received = yield peer.lost
        self.assertEqual((received, writes), (b"first second", [b"first ", b"second"]))

    @defer.inlineCallbacks
    def test_lose_in_the_read(self):
        """A Close written and the connection lost in the same read: the Close arrives, then the end."""

        def answer(protocol, envelope):
            protocol.write_envelope(b"close")
            protocol.lose()

        peer, _, _ = yield self._exchange(answer)
        received = yield peer.lost
        self.assertEqual(received, b"close")

    @defer.inlineCallbacks
    def test_abort_in_the_read(self):
        """An abort drops what the read wrote, as Twisted drops what it holds."""

        def answer(protocol, envelope):
            protocol.write_envelope(b"dropped")
            protocol.lose(abort=True)

        peer, writes, _ = yield self._exchange(answer)
        received = yield peer.lost
        self.assertEqual((received, writes), (b"", []))

    @defer.inlineCallbacks
    def test_rest_of_a_short_send(self):
        """What the socket does not take goes through write(), after what it took."""
        peer, writes, protocol = yield self._exchange(
            lambda p, e: p.write_envelope(b"answer in two"), wrap_socket=_ShortSends
        )
        yield peer.arrived
        protocol.lose()  # (Twisted sends what it holds before the end)
        received = yield peer.lost
        self.assertEqual((received, writes), (b"answer in two", [b"wer in two"]))

    def test_other_transports_get_one_write(self):
        """A transport other than Twisted's TCP (TLS, a test's) gets the read's envelopes in one write()."""
        transport = StringTransport()
        writes = []
        real = transport.write
        transport.write = lambda data: (writes.append(data), real(data))[1]

        def answer(protocol, envelope):
            protocol.write_envelope(b"a")
            protocol.write_envelope(b"b")

        sink = _Answering(answer)
        protocol = sink.protocol = StreamProtocol(sink, TransportSettings(max_payload=1000))
        protocol.makeConnection(transport)
        protocol.dataReceived(self.REQUEST)
        self.assertEqual(writes, [b"ab"])
        protocol.write_envelope(b"c")  # outside a read: at once
        self.assertEqual(writes, [b"ab", b"c"])


class HoldStateTests(unittest.TestCase):
    def test_nothing_left_on_the_connection(self):
        """
        A read that wrote leaves no attribute on its protocol: one more in an
        idle connection's instance dict cost 836 bytes per TCP session
        (bench.capacity idle, 2,000 sessions).
        """
        transport = StringTransport()
        sink = _Answering(lambda protocol, envelope: protocol.write_envelope(b"answer"))
        protocol = sink.protocol = StreamProtocol(sink, TransportSettings(max_payload=1000))
        protocol.makeConnection(transport)
        before = set(vars(protocol))
        protocol.dataReceived(AnswersInTheReadTests.REQUEST)
        self.assertEqual(transport.value(), b"answer")
        self.assertEqual(set(vars(protocol)), before)

    def test_another_connections_writes_not_held(self):
        """A read on one connection holds its own writes only; another connection's go out at once."""
        other_transport = StringTransport()
        other = StreamProtocol(Sink(), TransportSettings(max_payload=1000))
        other.makeConnection(other_transport)
        seen = []

        def answer(protocol, envelope):
            other.write_envelope(b"elsewhere")
            seen.append(other_transport.value())
            protocol.write_envelope(b"here")
            seen.append(protocol.transport.value())

        sink = _Answering(answer)
        protocol = sink.protocol = StreamProtocol(sink, TransportSettings(max_payload=1000))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(AnswersInTheReadTests.REQUEST)
        self.assertEqual(seen, [b"elsewhere", b""])
        self.assertEqual(protocol.transport.value(), b"here")


class HoldBoundTests(unittest.TestCase):
    def test_large_writes_not_held(self):
        """Past HOLD_MAX bytes a read's writes leave at once (memory bounded, the output guard sees them)."""
        transport = StringTransport()
        seen = []
        chunk = b"x" * (HOLD_MAX // 2 + 1)

        def answer(protocol, envelope):
            protocol.write_envelope(chunk)
            seen.append(len(transport.value()))
            protocol.write_envelope(chunk)
            seen.append(len(transport.value()))
            protocol.write_envelope(b"end")
            seen.append(len(transport.value()))

        sink = _Answering(answer)
        protocol = sink.protocol = StreamProtocol(sink, TransportSettings(max_payload=1000))
        protocol.makeConnection(transport)
        protocol.dataReceived(AnswersInTheReadTests.REQUEST)
        self.assertEqual(seen, [0, 2 * len(chunk), 2 * len(chunk)])
        self.assertEqual(transport.value(), chunk * 2 + b"end")


class _ShortSends:
    """A socket whose send() takes 3 bytes at most."""

    def __init__(self, sock):
        self._sock = sock

    def send(self, data):
        return self._sock.send(data[:3])

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Factory(Factory):
    def __init__(self, build):
        self.build = build

    def buildProtocol(self, addr):
        return self.build(addr)
