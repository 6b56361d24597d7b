"""
A WebSocket read's envelopes leave together at its end
(L{cairn.transport.held.HeldFrames}): in one write, behind what autobahn
writes itself during the read, before the end of the connection, dropped
at an abort. (The send to the socket itself is tested over TCP, in
tests/test_transport_tcp.py.)
"""

from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.websocket import server_factory
from tests.test_websocket_lean import ADDRESS, UPGRADE, _Transport, frame


def _unframed(data: bytes) -> list[bytes]:
    """The payloads of the server's (unmasked, short) frames in C{data}, with their opcodes."""
    out = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert length < 126
        out.append((opcode, data[2 : 2 + length]))
        data = data[2 + length :]
    return out


class _Answering:
    """A sink that runs C{answer(protocol)} for each envelope."""

    session = None

    def __init__(self, answer):
        self.answer = answer
        self.protocol = None

    def envelope_received(self, envelope):
        self.answer(self.protocol)

    def framing_error(self, code, reason):
        pass

    def connection_made(self, transport):
        pass

    def connection_lost(self, reason=None):
        pass


class HeldFramesTests(unittest.TestCase):
    def open(self, answer):
        """An open server WebSocket whose sink answers with C{answer}; the transport's writes from now."""
        protocol = server_factory(Peer(Identity.generate(), task.Clock())).buildProtocol(ADDRESS)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        protocol.dataReceived(UPGRADE)
        sink = protocol.sink = _Answering(answer)
        sink.protocol = protocol
        protocol.onMessage = lambda payload, binary: sink.envelope_received(payload)
        protocol.transport.clear()
        writes = []
        real = protocol.transport.write
        protocol.transport.write = lambda data: (writes.append(data), real(data))[1]
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol, writes

    def test_one_write_per_read(self):
        """The envelopes a read answers with reach the transport in one write, at its end."""

        def answer(protocol):
            protocol.write_envelope(b"one")
            protocol.write_envelope(b"two")

        protocol, writes = self.open(answer)
        protocol.dataReceived(frame(b"request") + frame(b"request"))
        self.assertEqual(len(writes), 1)
        self.assertEqual(_unframed(writes[0]), [(2, b"one"), (2, b"two")] * 2)
        protocol.write_envelope(b"later")  # outside a read: at once
        self.assertEqual(_unframed(writes[1]), [(2, b"later")])

    def test_behind_autobahns_own_writes(self):
        """What autobahn writes during the read (a ping) goes behind the envelopes written before it."""

        def answer(protocol):
            protocol.write_envelope(b"before")
            protocol.sendPing(b"p")
            protocol.write_envelope(b"after")

        protocol, writes = self.open(answer)
        protocol.dataReceived(frame(b"request"))
        self.assertEqual(_unframed(b"".join(writes)), [(2, b"before"), (9, b"p"), (2, b"after")])

    def test_close_in_the_read(self):
        """A Close and the closing handshake started in the read go behind the envelope written first."""

        def answer(protocol):
            protocol.write_envelope(b"close envelope")
            protocol.lose()

        protocol, writes = self.open(answer)
        protocol.dataReceived(frame(b"request"))
        sent = _unframed(b"".join(writes))
        self.assertEqual([opcode for opcode, _ in sent], [2, 8])
        self.assertEqual(sent[0][1], b"close envelope")

    def test_abort_in_the_read(self):
        """An abort drops what the read wrote."""

        def answer(protocol):
            protocol.write_envelope(b"dropped")
            protocol.lose(abort=True)

        protocol, writes = self.open(answer)
        protocol.dataReceived(frame(b"request"))
        self.assertEqual(writes, [])
        self.assertTrue(protocol.transport.disconnecting or protocol.transport.disconnected)
