"""
The TCP adapter in memory: framing handed to the sink, socket options.
"""

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

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
