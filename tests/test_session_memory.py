"""
Per-session memory of an idle session (issue 20): what a session holds
only while it is needed.
"""

from twisted.trial import unittest

from cairn.wire import cbor
from cairn.wire.constants import MessageType
from cairn.wire.envelope import decode
from tests.fuzz.targets import InMemoryNode


class ResendBufferTests(unittest.TestCase):
    def test_idle_session_has_no_resend_buffer(self):
        """An established session with nothing unacknowledged holds no deque (760 bytes empty)."""
        connection, _, _ = InMemoryNode().session()
        session = connection.session
        self.assertEqual(session.buffered(), (0, 0))
        self.assertEqual(session._unacked, ())

    def test_buffer_made_on_send_and_freed_on_ack(self):
        """A buffered envelope makes the buffer; the ack that empties it frees it; resend still works."""
        connection, transport, cipher = InMemoryNode().session()
        session = connection.session
        seq = session.send(MessageType.CHANNEL_INIT, {"channel": 2, "name": "x"})
        self.assertEqual(session.buffered()[0], 1)
        self.assertEqual(len(session._unacked), 1)
        ack = cipher.seal(1, MessageType.KEEPALIVE, session.session_id, 2, cbor.dumps({"ack": seq})).to_bytes()
        connection.envelope_received(decode(ack, 2**20))
        self.assertEqual(session.buffered(), (0, 0))
        self.assertEqual(session._unacked, ())
        seq2 = session.send(MessageType.CHANNEL_INIT, {"channel": 4, "name": "y"})
        before = len(transport.written)
        session.resend_after(seq2 - 1)
        self.assertEqual(len(transport.written), before + 1)
