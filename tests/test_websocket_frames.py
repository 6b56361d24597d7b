"""
A whole binary frame is taken straight to C{onMessage}
(L{cairn.transport.websocket_messages._EnvelopeMessages.processData}, issue
19) with the same outcome as autobahn's frame parser; every other frame is
still autobahn's.
"""

import functools
import os
import struct

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.websocket import server_factory
from cairn.wire.constants import HEADER_SIZE
from tests.test_websocket_lean import ADDRESS, UPGRADE, _Sink, _Transport, frame


def unminimal(payload: bytes) -> bytes:
    """A masked binary frame whose short length is written in the 16-bit form (RFC 6455 forbids it)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b"\x82" + bytes([0x80 | 126]) + struct.pack("!H", len(payload)) + mask + masked


class WholeFrameTests(unittest.TestCase):
    def setUp(self):
        self.peer = Peer(Identity.generate(), task.Clock())
        self.factory = server_factory(self.peer)
        self.limit = self.peer.max_payload + HEADER_SIZE

    def open(self, autobahn_only=False):
        protocol = self.factory.buildProtocol(ADDRESS)
        if autobahn_only:
            protocol.processData = functools.partial(WebSocketProtocol.processData, protocol)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        protocol.dataReceived(UPGRADE)
        protocol.sink = _Sink()
        got = []
        protocol.onMessage = lambda payload, binary: got.append((payload, binary))
        protocol.transport.clear()
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol, got

    def test_whole_frame_without_autobahn_hooks(self):
        """A whole binary frame reaches onMessage without autobahn's per-frame hooks."""
        protocol, got = self.open()
        hooks = []
        protocol.onFrameBegin = lambda: hooks.append("begin")
        payload = os.urandom(1100)
        protocol.dataReceived(frame(payload) + frame(b"x" * 100))
        self.assertEqual(got, [(payload, True), (b"x" * 100, True)])
        self.assertEqual(hooks, [])

    def test_close_without_autobahn_hooks(self):
        """A whole close frame with a code reaches onCloseFrame without autobahn's per-frame hooks."""
        protocol, got = self.open()
        hooks = []
        real = protocol.onFrameBegin
        protocol.onFrameBegin = lambda: (hooks.append("begin"), real())[1]
        protocol.dataReceived(frame(b"last") + frame(struct.pack("!H", 1000), opcode=8))
        self.assertEqual(got, [(b"last", True)])
        self.assertEqual(hooks, [])
        self.assertEqual((protocol.remoteCloseCode, protocol.state), (1000, protocol.STATE_CLOSED))
        self.assertEqual(protocol.transport.value(), b"\x88\x02\x03\xe8")  # the answer

    def test_read_of_whole_frames_cut_once(self):
        """
        The whole frames of one read are delivered in one processData call
        (the buffer cut once, not once per frame), in order, and what is
        left -- half a frame -- waits for the rest.
        """
        protocol, got = self.open()
        calls = []
        real = protocol.processData
        protocol.processData = lambda: (calls.append(len(protocol.data)), real())[1]
        payloads = [os.urandom(1100) for _ in range(10)]
        tail = frame(b"last" * 100)
        protocol.dataReceived(b"".join(frame(p) for p in payloads) + tail[:50])
        self.assertEqual(got, [(p, True) for p in payloads])
        # One call for the ten frames, then autobahn's header and payload
        # passes over the half frame (one call per frame: 12).
        self.assertEqual(len(calls), 3)
        self.assertEqual(calls[1], 50)
        protocol.dataReceived(tail[50:])
        self.assertEqual(got[-1], (b"last" * 100, True))
        self.assertEqual(protocol.data, b"")

    def test_bytes_arriving_during_a_message(self):
        """Bytes a transport delivers from within onMessage go behind the read's remaining frames."""
        protocol, got = self.open()
        late = frame(b"late")
        record = protocol.onMessage

        def onMessage(payload, binary):
            record(payload, binary)
            if payload == b"first":
                protocol.dataReceived(late)

        protocol.onMessage = onMessage
        protocol.dataReceived(frame(b"first") + frame(b"second") + frame(b"third"))
        self.assertEqual([p for p, _ in got], [b"first", b"second", b"third", b"late"])
        self.assertEqual(protocol.data, b"")

    def test_same_outcome_as_autobahn(self):
        """
        Whole frames, frames split across reads, fragments, control and
        text frames, frames over the limits, unmasked and unminimal ones:
        the same messages, errors, answers and state as autobahn's parser.
        """
        big = os.urandom(self.limit)
        cases = {
            "whole frames": frame(b"a") + frame(os.urandom(300)) + frame(big),
            "split": frame(os.urandom(2000)),
            "fragments": frame(b"ab", fin=False) + frame(b"cd", opcode=0) + frame(b"e"),
            "ping between": frame(b"ab") + frame(b"p", opcode=9) + frame(b"cd"),
            "close": frame(b"ab") + frame(struct.pack("!H", 1000), opcode=8) + frame(b"late"),
            "close, no code": frame(b"ab") + frame(b"", opcode=8),
            "close, code 1009": frame(struct.pack("!H", 1009), opcode=8),
            "close, a reason": frame(struct.pack("!H", 1000) + b"bye", opcode=8),
            "close, invalid code": frame(struct.pack("!H", 999), opcode=8),
            "close, reserved code": frame(struct.pack("!H", 1005), opcode=8),
            "close, one byte": frame(b"\x03", opcode=8),
            "close, unmasked": b"\x88\x02\x03\xe8",
            "close, split": frame(struct.pack("!H", 1000), opcode=8),
            "text": frame(b"hello", opcode=1) + frame(b"after"),
            "empty": frame(b"") + frame(b"after"),
            "over the limit": frame(b"ok") + frame(big + b"x"),
            "unmasked": frame(b"ok") + b"\x82\x02no",
            "unminimal length": unminimal(b"short"),
            "reserved bits": b"\xc2" + frame(b"rsv")[1:],
        }
        for why, data in cases.items():
            outcomes = []
            for autobahn_only in (False, True):
                protocol, got = self.open(autobahn_only)
                if why.endswith("split"):
                    for i in range(0, len(data), 7):
                        protocol.dataReceived(data[i : i + 7])
                else:
                    protocol.dataReceived(data)
                outcomes.append(
                    (
                        got,
                        protocol.sink.errors,
                        protocol.state,
                        protocol.localCloseCode,
                        protocol.remoteCloseCode,
                        protocol.wasClean,
                        protocol.transport.value(),
                        protocol.data,
                    )
                )
            self.assertEqual(outcomes[0], outcomes[1], why)

    def test_message_closing_the_websocket(self):
        """
        A message whose handling starts the closing handshake leaves the
        read's later frames to autobahn's parser, which delivers them as
        it does while closing.
        """
        outcomes = []
        data = frame(b"first") + frame(b"second") + frame(b"x" * 1100)
        for autobahn_only in (False, True):
            protocol, got = self.open(autobahn_only)
            record = protocol.onMessage

            def onMessage(payload, binary, protocol=protocol, record=record):
                record(payload, binary)
                protocol.sendClose(code=1000)

            protocol.onMessage = onMessage
            protocol.dataReceived(data)
            outcomes.append((got, protocol.state, protocol.transport.value()[:2], protocol.data))
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertEqual([payload for payload, _ in outcomes[0][0]], [b"first", b"second", b"x" * 1100])
        self.assertEqual(outcomes[0][1:3], (WebSocketProtocol.STATE_CLOSING, b"\x88\x02"))
