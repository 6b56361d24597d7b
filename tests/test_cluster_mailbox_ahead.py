"""
What the JetStream mailbox reads ahead (L{cairn.cluster.mailbox_ahead}):
a drain its watch does not hold (after a restart, or messages another node
stored) reads the recipient's backlog in one request, bounded by bytes, and
is answered from it; nothing is lost or handed out twice for it.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster import direct as D
from cairn.cluster import mailbox_ahead
from cairn.cluster.mailbox import JetStreamMailboxStore
from cairn.cluster.mailbox_ahead import ReadAhead
from cairn.mailbox.interfaces import Limits
from tests import _jetstream
from tests.test_mailbox_store import A, B, C, item

MANY = Limits(10**5, 10**9, 100.0)


def message(seq, recipient=B, payload=b"x"):
    subject = f"cairn.mbox.{recipient}.{A}.{'%032x' % seq}"
    return D.Held(subject, seq, {D.STORED: "1.0", D.EXPIRES: "101.0"}, payload)


class ReadAheadTests(unittest.SynchronousTestCase):
    """L{ReadAhead} alone: what it answers, and its bounds."""

    def test_take_carries_on(self):
        """Taken in order from where the last take stopped; the seq they are complete to comes with them."""
        ahead = ReadAhead()
        ahead.keep(B, 10, [message(s) for s in (12, 13, 15)])
        self.assertEqual(ahead.take(B, 10, 2), ([message(12), message(13)], 15))
        self.assertEqual(ahead.take(B, 13, 5), ([message(15)], 15))
        self.assertEqual(ahead.take(B, 15, 5), ([], 15))  # all handed out: read from here
        self.assertEqual((len(ahead), ahead.bytes), (0, 0))

    def test_a_cursor_elsewhere_reads(self):
        """A fetch from before what is held (a new session) is not answered from it."""
        ahead = ReadAhead()
        ahead.keep(B, 10, [message(12), message(13)])
        self.assertIsNone(ahead.answer(B, 5, 10, 0))
        self.assertEqual(ahead.take(B, 5, 10), ([], 5))
        self.assertEqual(ahead.bytes, 0)

    def test_answer_only_without_a_read(self):
        """
        Answered on the reactor when it holds the whole fetch, or the last
        of what was read ahead with no message known stored past it.
        """
        ahead = ReadAhead()
        ahead.keep(B, 10, [message(s) for s in (11, 12, 13)])
        self.assertEqual(ahead.answer(B, 10, 2, 0), [message(11), message(12)])
        self.assertIsNone(ahead.answer(B, 12, 5, 20))  # seq 20 is stored: read it too
        self.assertEqual(ahead.answer(B, 12, 5, 13), [message(13)])
        self.assertIsNone(ahead.answer(B, 13, 5, 0))
        self.assertIsNone(ahead.answer(C, 0, 5, 0))

    def test_bounded_by_bytes_and_recipients(self):
        """Over the total, the least recently read recipients are forgotten (never the one just read)."""
        ahead = ReadAhead(total=250, recipients=2)
        ahead.keep(B, 0, [message(1, payload=b"b" * 100)])
        ahead.keep(C, 0, [message(2, C, payload=b"c" * 100)])
        ahead.take(B, 0, 0)  # B read last
        ahead.keep(A, 0, [message(3, A, payload=b"a" * 100)])
        self.assertEqual((len(ahead), ahead.bytes), (2, 200))
        self.assertEqual(ahead.take(C, 0, 5), ([], 0))
        self.assertEqual(ahead.take(B, 0, 5)[0], [message(1, payload=b"b" * 100)])
        ahead.keep(C, 0, [message(4, C, payload=b"c" * 400)])  # alone over the total: kept alone
        self.assertEqual((len(ahead), ahead.bytes), (1, 400))

    def test_first_after_what_is_removed(self):
        """The oldest message held, once everything before it is removed (an acknowledgement's oldest)."""
        ahead = ReadAhead()
        ahead.keep(B, 10, [message(12), message(13)])
        self.assertIsNone(ahead.first(B, 9))  # seq 10 and before may be held still
        self.assertEqual(ahead.first(B, 10), message(12))
        self.assertEqual(ahead.first(B, 12), message(13))
        self.assertIsNone(ahead.first(C, 100))


@defer.inlineCallbacks
def _started(jet):
    store = JetStreamMailboxStore(jet)
    yield store.start()
    return store


def _count_reads(testcase, subject):
    """The direct-get requests made for C{subject} from now on, as (start, batch, max_bytes)."""
    reads, read = [], D.direct_batch

    async def counted(nc, stream, start, batch, on=None, *args, **kwargs):
        if on == subject:
            reads.append((start, batch, kwargs.get("max_bytes", 0)))
        return await read(nc, stream, start, batch, on, *args, **kwargs)

    testcase.patch(D, "direct_batch", counted)
    return reads


class RestartDrainTests(unittest.TestCase):
    """A store started after the enqueue drains what its watch never saw."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.server, self.jet = yield _jetstream.single(self)

    @defer.inlineCallbacks
    def drain(self, store, first, then):
        """Fetch and acknowledge as a session does: a window, then what each acknowledgement frees."""
        after, delivered, limit = 0, [], first
        while True:
            held = yield store.fetch(B, after, limit)
            if not held:
                return delivered
            delivered += held
            after, limit = held[-1].seq, then
            yield store.acknowledge(B, [], 2.0, 100.0, upto=after)

    @defer.inlineCallbacks
    def test_backlog_read_at_start(self):
        """
        What the start-up load read to count the depths is kept as read
        ahead: a drain of 1,200 messages after the start makes no read of
        them (one request of the whole backlog, before its first delivery,
        before), each message handed out once, in order, all acknowledged.
        """
        sent = [item(payload=b"%d" % i) for i in range(1200)]
        first = yield _started(self.jet)
        yield first.enqueue(sent, 1.0, MANY)
        reads = _count_reads(self, "cairn.mbox.%s.>" % B)
        store = yield _started(self.jet)  # the restart: its watch holds none of them
        delivered = yield self.drain(store, 64, 48)
        self.assertEqual([m.message_id for m in delivered], [m.message_id for m in sent])
        # The fetch that finds nothing after them is answered by the watch
        # (it has seen everything since the store's start).
        self.assertEqual(reads, [])
        self.assertNotIn(B, store.depths())
        again = yield _started(self.jet)
        self.assertEqual((yield again.fetch(B, 0, 10)), [])

    @defer.inlineCallbacks
    def test_backlog_read_in_one_request(self):
        """
        A backlog the start did not keep (here: forgotten) is read in one
        request before its first removal, and every later fetch and
        acknowledgement of the drain is answered from it: one read for 1,200
        messages (three of 512 and an oldest-stored probe per
        acknowledgement before).
        """
        sent = [item(payload=b"%d" % i) for i in range(1200)]
        first = yield _started(self.jet)
        yield first.enqueue(sent, 1.0, MANY)
        store = yield _started(self.jet)  # the restart: its watch holds none of them
        store._ahead.clear()
        reads = _count_reads(self, "cairn.mbox.%s.>" % B)
        delivered = yield self.drain(store, 64, 48)
        self.assertEqual([m.message_id for m in delivered], [m.message_id for m in sent])
        self.assertEqual(reads, [(1, mailbox_ahead.READ_AHEAD, mailbox_ahead.READ_AHEAD_BYTES)])
        self.assertNotIn(B, store.depths())

    @defer.inlineCallbacks
    def test_bounded_by_bytes(self):
        """
        What the start keeps, and a read, hold at most READ_AHEAD_BYTES; a
        backlog over it is read in such requests, none lost.
        """
        self.patch(mailbox_ahead, "READ_AHEAD_BYTES", 4000)
        from cairn.cluster import mailbox_reads

        self.patch(mailbox_reads, "READ_AHEAD_BYTES", 4000)
        sent = [item(payload=b"%04d" % i * 25) for i in range(100)]  # 100 bytes each
        first = yield _started(self.jet)
        yield first.enqueue(sent, 1.0, MANY)
        store = yield _started(self.jet)
        self.assertLessEqual(store._ahead.bytes, 4000)
        reads = _count_reads(self, "cairn.mbox.%s.>" % B)
        delivered = yield self.drain(store, 8, 8)
        self.assertEqual([m.message_id for m in delivered], [m.message_id for m in sent])
        # The fetches' reads (the acknowledgements' oldest-stored probes, of 8, aside) ask for
        # at most 4,000 bytes, which the server keeps to (headers count too): several reads.
        fetches = [r for r in reads if r[1] > 8]
        self.assertEqual({r[2] for r in fetches}, {4000})
        self.assertGreater(len(fetches), 2)
        self.assertLessEqual(store._ahead.bytes, 4000)

    @defer.inlineCallbacks
    def test_stored_meanwhile_is_fetched(self):
        """A message stored while the drain is answered from memory is fetched after what was read ahead."""
        first = yield _started(self.jet)
        yield first.enqueue([item(payload=b"%d" % i) for i in range(20)], 1.0, MANY)
        store = yield _started(self.jet)
        store.recent.resize(0)  # what the watch sees is not kept: this store's reads only
        held = yield store.fetch(B, 0, 5)
        yield store.enqueue([item(payload=b"new")], 1.0, MANY)
        rest = yield store.fetch(B, held[-1].seq, 100)
        self.assertEqual([m.payload for m in held + rest], [b"%d" % i for i in range(20)] + [b"new"])

    @defer.inlineCallbacks
    def test_expired_while_held_is_not_handed_out(self):
        """An expiry removes what was read ahead: the next fetch does not hand out the expired messages."""
        first = yield _started(self.jet)
        yield first.enqueue([item(payload=b"%d" % i) for i in range(6)], 1.0, Limits(100, 10**6, 10.0))
        store = yield _started(self.jet)
        held = yield store.fetch(B, 0, 2)
        self.assertEqual(len(held), 2)
        receipts, _ = yield store.expire(50.0, 100, 100.0)
        self.assertEqual(len(receipts), 6)
        self.assertEqual((yield store.fetch(B, held[-1].seq, 10)), [])
