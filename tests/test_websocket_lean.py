"""
The node's WebSocket protocol uses autobahn leanly (issue 19): what it
skips per message and per connection, and that what it keeps still holds
(whole messages across frames, the size limits, text refused).
"""

import os
import struct

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.websocket import server_factory
from cairn.wire.constants import HEADER_SIZE, CloseCode

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: cairn.v1\r\n\r\n"
)
ADDRESS = IPv4Address("TCP", "127.0.0.1", 4321)


class _Transport(StringTransport):
    def unregisterProducer(self):
        self.producer = None


class _Sink:
    """Records what the WebSocket hands to its Connection."""

    session = None

    def __init__(self):
        self.payloads = []
        self.errors = []

    def envelope_received(self, envelope):
        self.payloads.append(envelope)

    def framing_error(self, code, reason):
        self.errors.append(code)

    def connection_made(self, transport):
        pass

    def connection_lost(self, reason):
        pass


def frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
    """One client-to-server (masked) WebSocket frame, written out per RFC 6455 §5.2 for the test."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([first]) + length + mask + masked


class LeanServerProtocolTests(unittest.TestCase):
    def setUp(self):
        self.peer = Peer(Identity.generate(), task.Clock())
        self.factory = server_factory(self.peer)

    def open(self):
        protocol = self.factory.buildProtocol(ADDRESS)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        protocol.dataReceived(UPGRADE)
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        protocol.sink = _Sink()
        # The payloads as onMessage gets them, before the envelope decode.
        got = []
        protocol.onMessage = lambda payload, binary: got.append((payload, binary))
        self.addCleanup(self.close, protocol)
        return protocol, got

    def close(self, protocol):
        protocol.dropConnection(abort=True)
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_messages_not_fired_to_observers(self):
        """
        A message goes to onMessage and nowhere else: autobahn's "message"
        observer event (a txaio future per message) is not fired, and the
        message's frames are not kept once it is delivered.
        """
        protocol, got = self.open()
        fired = []
        protocol.fire = lambda *args, **kwargs: fired.append(args)
        protocol.dataReceived(frame(b"one") + frame(b"two"))
        self.assertEqual(got, [(b"one", True), (b"two", True)])
        self.assertEqual(fired, [])
        self.assertIsNone(protocol.message_data)
        self.assertIsNone(protocol.frame_data)

    def test_fragmented_message_whole(self):
        """A message in three frames, arriving byte by byte, is delivered once and whole."""
        protocol, got = self.open()
        data = frame(b"ab", fin=False) + frame(b"cd", opcode=0, fin=False) + frame(b"ef", opcode=0)
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        self.assertEqual(got, [(b"abcdef", True)])

    def test_text_message_still_refused(self):
        """A text message still reaches the cairn check (malformed envelope)."""
        protocol, _ = self.open()
        del protocol.onMessage
        protocol.dataReceived(frame(b"hello", opcode=1))
        self.assertEqual(protocol.sink.errors, [CloseCode.MALFORMED_ENVELOPE])

    def test_message_limit_across_frames(self):
        """Frames each under the limit but together over it: payload too large, then autobahn's 1009."""
        protocol, got = self.open()
        del protocol.onMessage
        limit = self.peer.max_payload + HEADER_SIZE
        half = b"x" * (limit // 2 + 1)
        protocol.dataReceived(frame(half, fin=False) + frame(half, opcode=0))
        self.assertEqual(protocol.sink.errors, [CloseCode.PAYLOAD_TOO_LARGE])
        self.assertTrue(protocol.wasMaxMessagePayloadSizeExceeded)
        self.assertEqual(protocol.localCloseCode, 1009)

    def test_options_not_walked_per_connection(self):
        """
        The baked protocol class lists no options to copy: autobahn's
        _connectionMade walks none of them per connection, and the instance
        still reads every option from its class.
        """
        protocol_class = self.factory.protocol
        self.assertEqual(protocol_class.CONFIG_ATTRS, ())
        self.assertGreater(len(protocol_class._unbaked.CONFIG_ATTRS), 20)
        protocol, _ = self.open()
        for name in protocol_class._unbaked.CONFIG_ATTRS:
            self.assertNotIn(name, vars(protocol))
            self.assertEqual(getattr(protocol, name), getattr(self.factory, name))

    def test_browser_compression_offer(self):
        """
        An upgrade offering permessage-deflate (as browsers do) opens the
        WebSocket without compression: the factory's accept function, baked
        into the protocol class, is called as a function, not as a method.
        """
        protocol = self.factory.buildProtocol(ADDRESS)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        self.addCleanup(self.close, protocol)
        offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        protocol.dataReceived(UPGRADE[:-2] + offer)
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        response = protocol.transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "))
        self.assertNotIn(b"Sec-WebSocket-Extensions", response)

    def test_no_debug_event_per_read(self):
        """A read of data messages builds no autobahn debug log event (the Twisted adapter's is skipped)."""
        protocol, got = self.open()
        events = []
        log = protocol.log
        protocol.log = type("Log", (), {"debug": lambda self, *args, **kwargs: events.append(args)})()
        protocol.dataReceived(frame(b"one") + frame(b"two"))
        protocol.log = log
        self.assertEqual(len(got), 2)
        self.assertEqual(events, [])

    def test_write_without_debug_event(self):
        """An envelope is one frame written to the transport, with no autobahn debug log event built for it."""
        protocol, _ = self.open()
        protocol.transport.clear()
        events = []
        log = protocol.log
        protocol.log = type("Log", (), {"debug": lambda self, *args, **kwargs: events.append(args)})()
        protocol.write_envelope(b"x" * 200)
        protocol.log = log
        self.assertEqual(protocol.transport.value(), b"\x82\x7e\x00\xc8" + b"x" * 200)
        self.assertEqual(events, [])

    def test_envelope_written_as_one_frame_directly(self):
        """
        An envelope is written as one binary frame without autobahn's
        sendMessage; one above the message limit still goes through it
        (and is refused there).
        """
        from autobahn.exception import PayloadExceededError

        protocol, _ = self.open()
        protocol.transport.clear()
        through = []
        real = protocol.sendMessage
        protocol.sendMessage = lambda *args, **kwargs: (through.append(args), real(*args, **kwargs))
        protocol.write_envelope(b"y" * 10)
        self.assertEqual(protocol.transport.value(), b"\x82\x0a" + b"y" * 10)
        self.assertEqual(through, [])
        with self.assertRaises(PayloadExceededError):
            protocol.write_envelope(b"z" * (protocol.maxMessagePayloadSize + 1))
        self.assertEqual(len(through), 1)
