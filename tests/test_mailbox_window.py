"""The mailbox's per-session window (L{cairn.mailbox.window}), driven directly."""

from twisted.trial import unittest

from cairn.mailbox.window import Outbox, Window


class WindowTests(unittest.TestCase):
    def test_room(self):
        """A read may fill what the window has left, by count and by bytes."""
        window = Window()
        self.assertEqual(window.begin_read(4, 100), 4)
        window.end_read()
        window.sent(1, 10)
        window.sent(2, 20)
        self.assertEqual((window.cursor, window.inflight_bytes), (2, 30))
        self.assertEqual(window.begin_read(4, 100), 2)
        window.end_read()
        window.sent(3, 70)
        self.assertEqual(window.begin_read(4, 100), 0)
        self.assertEqual(window.begin_read(4), 1)

    def test_one_read_at_a_time(self):
        """A read asked for while one runs is not started; the running one is told to read again."""
        window = Window()
        self.assertEqual(window.begin_read(4), 4)
        self.assertFalse(window.again)
        self.assertEqual(window.begin_read(4), 0)
        self.assertTrue(window.again)
        window.end_read()
        self.assertEqual(window.begin_read(4), 4)
        self.assertFalse(window.again)

    def test_acknowledged(self):
        """Acknowledgements free single sequence numbers and, cumulatively, everything up to one."""
        window = Window()
        for seq in (1, 2, 3, 5, 8):
            window.sent(seq, seq)
        window.acknowledged([5])
        self.assertEqual((list(window.inflight), window.inflight_bytes), ([1, 2, 3, 8], 14))
        window.acknowledged([8, 9], upto=2)
        self.assertEqual((list(window.inflight), window.inflight_bytes), ([3], 3))
        self.assertEqual(window.cursor, 8)

    def test_sent_all(self):
        """A ForwardDeliver's (seq, size)s counted at once, as one sent() each; none: nothing changes."""
        window, one_by_one = Window(), Window()
        window.sent_all([])
        self.assertEqual((window.cursor, len(window.inflight), window.inflight_bytes), (0, 0, 0))
        for pairs in ([(1, 10), (2, 20)], [(5, 50)]):
            window.sent_all(pairs)
            for seq, size in pairs:
                one_by_one.sent(seq, size)
        self.assertEqual(
            (window.cursor, list(window.inflight.items()), window.inflight_bytes),
            (one_by_one.cursor, list(one_by_one.inflight.items()), one_by_one.inflight_bytes),
        )

    def test_acknowledged_upto_everything(self):
        """A cumulative acknowledgement of everything in flight, or of nothing, leaves the window right."""
        window = Window()
        for seq in (1, 2, 3):
            window.sent(seq, seq)
        window.acknowledged([], upto=0)
        self.assertEqual((list(window.inflight), window.inflight_bytes), ([1, 2, 3], 6))
        window.acknowledged([2], upto=3)
        self.assertEqual((len(window.inflight), window.inflight_bytes), (0, 0))
        window.sent(4, 4)
        self.assertEqual((list(window.inflight), window.inflight_bytes, window.cursor), ([4], 4, 4))

    def test_restore(self):
        """A restored window counts what was in flight and carries on after the saved cursor."""
        window = Window()
        window.restore(9, [(4, 40), (7, 70)])
        self.assertEqual((window.cursor, dict(window.inflight), window.inflight_bytes), (9, {4: 40, 7: 70}, 110))


class OutboxTests(unittest.TestCase):
    def test_two_windows(self):
        """An outbox keeps its deliveries and its receipts in two separate windows."""
        outbox = Outbox("session")
        outbox.deliveries.sent(3, 30)
        outbox.receipts.sent(7)
        self.assertEqual((outbox.deliveries.cursor, outbox.receipts.cursor), (3, 7))
        self.assertEqual((outbox.deliveries.inflight_bytes, outbox.receipts.inflight_bytes), (30, 0))
        self.assertIsNone(outbox.retry)
