"""
A received Keepalive (issue 20): the body every sender writes, {"ack": n},
is read without the general CBOR decode; every other encoding still goes
through it and ends the same way it did.
"""

from twisted.trial import unittest

from cairn.session import receiving
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import decode
from tests.fuzz.targets import InMemoryNode, sealed_closes


class KeepaliveReceiveTests(unittest.TestCase):
    def setUp(self):
        self.connection, self.transport, self.cipher = InMemoryNode().session()
        self.session = self.connection.session
        self.seq = 2

    def receive(self, body: bytes):
        """Seal C{body} as the client's next Keepalive and hand it to the node's connection."""
        sealed = self.cipher.seal(1, MessageType.KEEPALIVE, self.session.session_id, self.seq, body).to_bytes()
        self.seq += 1
        self.connection.envelope_received(decode(sealed, 2**20))

    def buffered_upto(self, count):
        """Buffer C{count} envelopes the peer has to acknowledge; return the last one's sequence number."""
        return [self.session.send(MessageType.CHANNEL_INIT, {"channel": 2 * i, "name": f"c{i}"}) for i in range(count)][
            -1
        ]

    def test_usual_body_without_general_decode(self):
        """{"ack": n} as cbor.dumps_keepalive writes it acknowledges n without cbor.loads."""

        def refuse(data):
            raise AssertionError("general CBOR decode of a Keepalive")

        self.patch(cbor, "loads", refuse)
        last = self.buffered_upto(3)
        self.receive(cbor.dumps_keepalive(last - 1))
        self.assertEqual(self.session.buffered()[0], 1)
        self.receive(cbor.dumps_keepalive(last))
        self.assertEqual(self.session.buffered(), (0, 0))
        self.assertIsNone(self.session.closed)
        self.assertEqual(self.session.recv_seq, self.seq - 1)

    def test_fast_path_reads_what_the_general_decode_reads(self):
        """Each head width of the ack, minimal or not, gives the general decode's value."""
        for body in (
            b"\xa1\x63ack\x05",
            b"\xa1\x63ack\x18\x05",  # not the shortest head: cbor.loads reads it too
            b"\xa1\x63ack\x19\x01\x00",
            b"\xa1\x63ack\x1a\x00\x01\x00\x00",
        ):
            expected = cbor.loads(body)["ack"]
            self.assertEqual(receiving._keepalive_ack(body), expected, body)
        for body in (
            b"\xa1\x63ack\x1b" + bytes(7) + b"\x05",  # 8-byte head: the general decode reads it
            b"\xa1\x63ack\x05\x00",  # trailing byte
            b"\xa1\x63ack\x19\x01",  # cut short
            b"\xa1\x63ack",
            b"\xa1\x63ack\x25",  # a negative integer
            b"\xa0",  # {}
        ):
            self.assertEqual(receiving._keepalive_ack(body), -1, body)

    def test_other_encodings_as_before(self):
        """An 8-byte head is acknowledged, {} accepted, a trailing byte refused with BAD_CBOR, as before."""
        last = self.buffered_upto(1)
        self.receive(b"\xa0")
        self.assertEqual(self.session.buffered()[0], 1)
        self.receive(b"\xa1\x63ack\x1b" + last.to_bytes(8, "big"))
        self.assertEqual(self.session.buffered(), (0, 0))
        self.assertIsNone(self.session.closed)
        self.receive(b"\xa1\x63ack\x05\x00")
        self.assertEqual([close["code"] for close in sealed_closes(self.transport, self.cipher)], [CloseCode.BAD_CBOR])

    def test_ack_above_what_was_sent(self):
        """An ack of more than was sent trims nothing it should not (as the general path did)."""
        self.buffered_upto(2)
        self.receive(cbor.dumps_keepalive(10_000))
        self.assertEqual(self.session.buffered(), (0, 0))
        self.assertIsNone(self.session.closed)
