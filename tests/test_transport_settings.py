"""
Transports read a frozen L{TransportSettings} handed to their factory; a
RelayAttach preface is a registration on the L{Peer} and an explicit relay
flag; the hand-off adapter in memory.
"""

import attr
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.pairing.trust import MemoryTrustStore
from cairn.relay import messages
from cairn.relay.service import RelayService
from cairn.session.peer import Peer
from cairn.transport.handoff import HandOffFactory, HandOffProtocol
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory, StreamProtocol
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import Envelope

ADDRESS = IPv4Address("TCP", "127.0.0.1", 50000)


class Sink:
    """An L{IConnectionSink} that records what it is given; it may take the connection over."""

    session = None

    def __init__(self):
        self.events = []
        self.take_over = False
        self.handed = []

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def envelope_received(self, envelope):
        self.events.append(envelope)
        if self.take_over:
            self.transport.hand_off(lambda transport, rest: self.handed.append(rest))

    def framing_error(self, code, reason):
        self.events.append(("error", code))

    def connection_lost(self, reason=None):
        self.events.append("lost")


def data(type_code, payload=b"abc", seq=0) -> Envelope:
    return Envelope(1, type_code, b"\x01" * 16, seq, payload)


class TransportSettingsTests(unittest.TestCase):
    def setUp(self):
        self.peer = Peer(Identity.generate(), task.Clock(), max_payload=1000, handshake_timeout=3.0)

    def test_frozen(self):
        """Transport settings cannot change once made."""
        settings = TransportSettings(max_payload=10)
        with self.assertRaises(attr.exceptions.FrozenInstanceError):
            settings.max_payload = 20

    def test_for_peer(self):
        """Settings for a peer take its limits and clock; changes given override them."""
        settings = TransportSettings.for_peer(self.peer, write_limit=4096)
        self.assertEqual(
            (settings.max_payload, settings.clock, settings.handshake_timeout, settings.write_limit),
            (1000, self.peer.clock, 3.0, 4096),
        )

    def test_factory_settings_not_peer(self):
        """A listener's connections frame with the settings handed to its factory, not the peer's limits."""
        factory = StreamFactory(self.peer, settings=TransportSettings(max_payload=10))
        protocol = factory.buildProtocol(ADDRESS)
        self.assertEqual(type(protocol), StreamProtocol)
        sink = protocol.sink = Sink()
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(data(0x0100, b"x" * 11).to_bytes())
        self.assertEqual(sink.events, ["made", ("error", CloseCode.PAYLOAD_TOO_LARGE)])


class PrefaceRegistrationTests(unittest.TestCase):
    def setUp(self):
        self.peer = Peer(Identity.generate(), task.Clock())

    def test_only_relay_attach(self):
        """Only a RelayAttach may be registered as a connection's preface."""
        handler = object()
        self.peer.register_preface(MessageType.RELAY_ATTACH, handler)
        self.assertIs(self.peer.preface_handler(MessageType.RELAY_ATTACH), handler)
        with self.assertRaises(ValueError):
            self.peer.register_preface(MessageType.HANDSHAKE_INIT, handler)
        self.assertIsNone(self.peer.preface_handler(MessageType.HANDSHAKE_INIT))

    def test_relay_flag(self):
        """The relay registers its RelayAttach preface only with attached circuits on, reactor or not."""
        clock = task.Clock()
        RelayService(self.peer, MemoryTrustStore(), clock, reactor=clock)
        self.assertIsNone(self.peer.preface_handler(MessageType.RELAY_ATTACH))
        relay = RelayService(self.peer, MemoryTrustStore(), clock, attached_circuits=True, reactor=clock)
        self.assertEqual(self.peer.preface_handler(MessageType.RELAY_ATTACH), relay.attach)

    def test_relay_flag_needs_reactor(self):
        """Attached circuits without a reactor to splice on are refused at construction."""
        with self.assertRaises(ValueError):
            RelayService(self.peer, MemoryTrustStore(), task.Clock(), attached_circuits=True)


class HandOffTests(unittest.TestCase):
    def setUp(self):
        peer = Peer(Identity.generate(), task.Clock())
        self.protocol = HandOffFactory(peer, settings=TransportSettings(max_payload=1000)).buildProtocol(ADDRESS)
        self.sink = self.protocol.sink = Sink()
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_hand_off(self):
        """A RelayAttach first is delivered alone; once handed off, the bytes after it go to the receiver."""
        self.assertIsInstance(self.protocol, HandOffProtocol)
        self.sink.take_over = True
        attach = messages.relay_attach(b"\x02" * 16, b"\x03" * 32)
        after = data(0x0100).to_bytes()
        self.protocol.dataReceived(attach[:5])
        self.protocol.dataReceived(attach[5:] + after)
        [envelope] = self.sink.events[1:]
        self.assertEqual(envelope.type, MessageType.RELAY_ATTACH)
        self.assertEqual(self.sink.handed, [after])
        self.assertEqual(self.transport.producerState, "paused")
        self.protocol.dataReceived(after)
        self.assertEqual(len(self.sink.events), 2)

    def test_other_first(self):
        """Any other first envelope is framed as on a plain stream."""
        one = data(0x0100)
        self.protocol.dataReceived(one.to_bytes() * 2)
        self.assertEqual(self.sink.events, ["made", one, one])

    def test_long_attach(self):
        """A RelayAttach longer than its bound is a framing error before its payload is read."""
        self.protocol.dataReceived(data(MessageType.RELAY_ATTACH, b"x" * 2000).to_bytes()[:40])
        self.assertEqual(self.sink.events, ["made", ("error", CloseCode.PAYLOAD_TOO_LARGE)])
