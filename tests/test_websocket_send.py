"""
cairn writes the frames it sends itself
(L{cairn.transport.websocket_messages._EnvelopeMessages.sendFrame}, issue
19): the same bytes as autobahn's C{sendFrame}, mask included; every other
kind of frame is still autobahn's.
"""

import functools
import random
import struct

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.settings import TransportSettings
from cairn.transport.websocket import client_factory, server_factory
from cairn.transport.websocket_upgrade import accept_value
from tests.test_websocket_lean import ADDRESS, UPGRADE, _Sink, _Transport

RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Protocol: cairn.v1\r\nSec-WebSocket-Accept: KEY\r\n\r\n"
)
#: (opcode, payload) of frames cairn sends: Data envelopes of every length
#: form and masker, Close frames with and without a reason, a ping.
FRAMES = [
    (2, b""),
    (2, b"x"),
    (2, bytes(range(125))),
    (2, bytes(range(126))),
    (2, bytes(511)),
    (2, bytes(range(256)) * 2),
    (2, bytes(range(256)) * 4 + b"tail"),
    (2, b"\xff" * 0xFFFF),
    (8, struct.pack("!H", 1000)),
    (8, struct.pack("!H", 1001) + b"going away"),
    (9, b"ping"),
]


class SendFrameTests(unittest.TestCase):
    def setUp(self):
        clock = task.Clock()
        self.peer = Peer(Identity.generate(), clock)
        self.settings = TransportSettings(max_payload=1_000_000, clock=clock)

    def server(self):
        protocol = server_factory(self.peer).buildProtocol(ADDRESS)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        protocol.dataReceived(UPGRADE)
        protocol.sink = _Sink()
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol

    def client(self):
        protocol = client_factory(self.settings, "ws://127.0.0.1:9/", _Sink).buildProtocol(ADDRESS)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        protocol.dataReceived(RESPONSE.replace(b"KEY", accept_value(protocol.websocket_key).encode()))
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol

    def sent(self, protocol, send, seed):
        """What C{send()} writes on C{protocol}, with the module-level random generator at C{seed}."""
        protocol.transport.clear()
        random.seed(seed)
        send()
        return protocol.transport.value()

    def test_same_bytes_as_autobahn(self):
        """Each frame cairn sends is autobahn's, byte for byte (the client's with the same mask)."""
        self.addCleanup(random.seed)
        for side in (self.server, self.client):
            protocol = side()
            self.assertEqual(protocol.state, protocol.STATE_OPEN)
            for seed, (opcode, payload) in enumerate(FRAMES):
                ours = self.sent(protocol, functools.partial(protocol.sendFrame, opcode, payload), seed)
                theirs = self.sent(
                    protocol, functools.partial(WebSocketProtocol.sendFrame, protocol, opcode, payload), seed
                )
                self.assertEqual(ours, theirs, (side.__name__, opcode, len(payload)))

    def test_whole_frame_not_autobahns(self):
        """An envelope's frame is written without autobahn's sendFrame, on both sides."""
        calls = []
        real = WebSocketProtocol.sendFrame
        self.patch(WebSocketProtocol, "sendFrame", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
        for side in (self.server, self.client):
            protocol = side()
            protocol.transport.clear()
            protocol.write_envelope(b"e" * 1100)
            self.assertEqual(len(protocol.transport.value()), 1100 + (4 if side == self.server else 8))
        self.assertEqual(calls, [])

    def test_other_frames_autobahns(self):
        """Fragments, reserved bits, explicit masks, long payloads and logged frames are autobahn's."""
        self.addCleanup(random.seed)
        calls = []
        real = WebSocketProtocol.sendFrame
        self.patch(WebSocketProtocol, "sendFrame", lambda *a, **kw: (calls.append(kw or a[2:]), real(*a, **kw))[1])
        for side in (self.server, self.client):
            cases = [
                dict(opcode=2, payload=b"part", fin=False),
                dict(opcode=2, payload=b"rsv", rsv=4),
                dict(opcode=2, payload=b"mask", mask=b"abcd"),
                dict(opcode=2, payload=b"x" * 0x10000),
                dict(opcode=2, payload=b"xy", payload_len=5),
            ]
            for case in cases:
                protocol = side()
                protocol.transport.clear()
                protocol.sendFrame(**case)
                self.assertTrue(protocol.transport.value())
            protocol = side()
            protocol.logFrames = True
            protocol.sendFrame(opcode=2, payload=b"logged")
        self.assertEqual(len(calls), 2 * (len(cases) + 1))

    def test_envelope_writes_same_bytes(self):
        """write_envelope's frame (written without sendFrame's call) is autobahn's, byte for byte, on both sides."""
        self.addCleanup(random.seed)
        for side in (self.server, self.client):
            protocol = side()
            for seed, size in enumerate((31, 125, 126, 1100, 0xFFFF)):
                data = bytes(range(256)) * (size // 256) + bytes(size % 256)
                ours = self.sent(protocol, functools.partial(protocol.write_envelope, data), seed)
                theirs = self.sent(protocol, functools.partial(WebSocketProtocol.sendFrame, protocol, 2, data), seed)
                self.assertEqual(ours, theirs, (side.__name__, size))

    def test_logged_envelope_autobahns(self):
        """With frame logging on, an envelope goes through autobahn's sendFrame."""
        calls = []
        real = WebSocketProtocol.sendFrame
        self.patch(WebSocketProtocol, "sendFrame", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
        for side in (self.server, self.client):
            protocol = side()
            protocol.logFrames = True
            protocol.write_envelope(b"e" * 1100)
        self.assertEqual(calls, [1, 1])
