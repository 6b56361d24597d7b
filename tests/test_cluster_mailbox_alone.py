"""
The JetStream mailbox without its watch while no other writer may exist
(L{cairn.cluster.mailbox_alone}): a store alone on its stream never
watches it, and is as exact as with the watch; another writer's writes,
made before the store knew of it, are all accounted for once it does.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster import direct as D
from cairn.cluster import mailbox_alone
from cairn.cluster.mailbox import JetStreamMailboxStore
from cairn.cluster.mailbox_alone import OwnWrites, Skipped
from cairn.mailbox.interfaces import Depth, Limits
from tests import _jetstream
from tests._harness import Conditions
from tests.test_mailbox_store import A, B, C, item

MANY = Limits(10**5, 10**9, 100.0)


def held(seq):
    return D.Held(f"cairn.mbox.{B}.{A}.{'%032x' % seq}", seq, {}, b"x")


class SkippedTests(unittest.SynchronousTestCase):
    """L{Skipped}: the seqs the watch passed over, whose messages were never counted in."""

    def test_what_lies_between_is_skipped(self):
        skipped = Skipped()
        skipped.passed(0, 2)  # seq 1 deleted before the watch read it
        skipped.passed(2, 3)
        skipped.passed(3, 7)
        self.assertEqual([seq for seq in range(1, 9) if seq in skipped], [1, 4, 5, 6])

    def test_bounded(self):
        """Past L{mailbox_alone.SKIPPED_RANGES} ranges the oldest are forgotten."""
        self.patch(mailbox_alone, "SKIPPED_RANGES", 2)
        skipped = Skipped()
        for upto in (0, 2, 4):
            skipped.passed(upto, upto + 2)
        self.assertEqual([seq for seq in range(1, 7) if seq in skipped], [3, 5])


class OwnWritesTests(unittest.SynchronousTestCase):
    """L{OwnWrites} alone: the prefix, and what is a gap."""

    def test_released_in_stream_order(self):
        """Answers in any order: the writes go out in seq order, once each is part of the prefix."""
        own = OwnWrites(10)
        for number in (1, 2, 3):
            own.issued(number)
        self.assertEqual(own.answered(2, held(12)), ([], False))
        self.assertEqual(own.answered(3, held(13)), ([], False))
        released, other = own.answered(1, held(11))
        self.assertEqual([h.seq for h in released], [11, 12, 13])
        self.assertFalse(other)
        self.assertEqual(own.upto, 13)

    def test_a_gap_once_every_earlier_publish_is_answered(self):
        """A seq missing below a later publish's is another writer's only once every earlier one is answered."""
        own = OwnWrites(10)
        for number in (1, 2):
            own.issued(number)
        # 2 got 13: 11 and 12 may yet be 1's, and one of them is someone else's.
        self.assertEqual(own.answered(2, held(13)), ([], False))
        released, other = own.answered(1, held(11))
        self.assertEqual([h.seq for h in released], [11])
        self.assertTrue(other)

    def test_refused_publishes_take_no_seq(self):
        """A refused publish (None) leaves no gap; a timed-out one that was stored shows as one."""
        own = OwnWrites(0)
        for number in (1, 2, 3):
            own.issued(number)
        self.assertEqual(own.answered(1, None), ([], False))
        released, other = own.answered(2, held(1))
        self.assertEqual(([h.seq for h in released], other), ([1], False))
        own.issued(4)
        self.assertEqual(own.answered(3, None), ([], False))  # timed out, yet stored as 2
        released, other = own.answered(4, held(3))
        self.assertEqual((released, other), ([], True))


def _subscriptions(testcase, jet):
    """The mailbox stream's subjects the stores on C{jet} subscribe to with JetStream from now on."""
    subjects, subscribe = [], jet.js.subscribe

    async def counted(subject, *args, **kwargs):
        if ".mbox." in subject:
            subjects.append(subject)
        return await subscribe(subject, *args, **kwargs)

    testcase.patch(jet.js, "subscribe", counted)
    return subjects


@defer.inlineCallbacks
def _started(jet, others=False):
    store = JetStreamMailboxStore(jet)
    if others:
        store.follow_needed()
    yield store.start()
    conditions = Conditions()
    store.watch(lambda recipient: conditions.changed())
    apply = store._apply

    def applied(updates):
        apply(updates)
        conditions.changed()

    store._apply = applied
    store.until = conditions.until
    return store


class AloneTests(unittest.TestCase):
    """A store alone on the stream, then with another writer, against a real nats-server."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.server, self.jet = yield _jetstream.single(self)
        self.subscriptions = _subscriptions(self, self.jet)

    @defer.inlineCallbacks
    def test_alone_no_watch(self):
        """
        Alone, a store never watches its stream (it did from its start):
        its depths, fetches (answered from memory, no read), removals and
        receipts are what they were with the watch.
        """
        store = yield _started(self.jet)
        sent = [item(payload=b"%d" % i) for i in range(40)]
        stored = yield store.enqueue(sent, 1.0, MANY)
        reads = []
        for name in ("direct_batch", "direct_seq", "direct_last", "leader_next"):
            original = getattr(D, name)
            self.patch(D, name, lambda *a, _o=original, _n=name, **k: (reads.append(_n), _o(*a, **k))[1])
        held = yield store.fetch(B, 0, 100)
        self.assertEqual([m.seq for m in held], [seq for _, seq in stored])
        self.assertEqual(reads, [])
        receipts = yield store.acknowledge(B, [m.seq for m in held[:30]], 2.0, 100.0)
        self.assertEqual(len(receipts), 30)
        self.assertEqual([m.seq for m in (yield store.fetch(B, 0, 100))], [seq for _, seq in stored[30:]])
        self.assertEqual(store.depths()[B].messages, 10)
        self.assertEqual(self.subscriptions, [])
        self.assertFalse(store.following)
        self.assertEqual(store.recent.watched, max(r.rseq for r in receipts))

    @defer.inlineCallbacks
    def test_alone_recent_fed_once(self):
        """
        Alone, the recent messages take each message once, from its PubAck
        (the own writes' prefix), not also ahead of it from the enqueue (it
        did for all but a call's first); a fetch after the answer reads nothing.
        """
        store = yield _started(self.jet)
        ahead, original = [], store.recent.ahead
        store.recent.ahead = lambda held, recipient: (ahead.append(held.seq), original(held, recipient))[1]
        stored = []
        for _ in range(3):
            stored += yield store.enqueue([item(payload=b"%d" % i) for i in range(8)], 1.0, MANY)
        self.assertEqual(ahead, [])
        reads = []
        for name in ("direct_batch", "direct_seq", "direct_last", "leader_next"):
            original_read = getattr(D, name)
            self.patch(D, name, lambda *a, _o=original_read, _n=name, **k: (reads.append(_n), _o(*a, **k))[1])
        held = yield store.fetch(B, 0, 100)
        self.assertEqual([m.seq for m in held], [seq for _, seq in stored])
        self.assertEqual(reads, [])

    @defer.inlineCallbacks
    def test_another_writer_found_by_a_gap(self):
        """
        Another writer stores and removes before this store knows of it;
        this store's next write finds the gap and watches from there:
        every one of the other's writes is counted once, its own not
        twice, the recipient is woken, and fetches see the other's messages.
        """
        here = yield _started(self.jet)
        mine = yield here.enqueue([item(payload=b"ab"), item(payload=b"cd")], 1.0, MANY)
        elsewhere = yield _started(self.jet, others=True)
        theirs = yield elsewhere.enqueue([item(payload=b"e" * 5), item(payload=b"f" * 7)], 1.0, MANY)
        woken = []
        here.watch(woken.append)
        # The other removes one of this store's messages (its tombstone carries the receipt).
        yield elsewhere.fetch(B, 0, 100)
        (receipt,) = yield elsewhere.acknowledge(B, [mine[0][1]], 2.0, 100.0)
        self.assertFalse(here.following)
        self.assertEqual(here.depths()[B].messages, 2)  # not known yet: no watch
        yield here.enqueue([item(recipient=C, payload=b"g")], 3.0, MANY)  # seq past the other's: a gap
        yield here.until(lambda: here.depths().get(B) == Depth(3, 2 + 5 + 7, here.depths()[B].oldest))
        self.assertTrue(here.following)
        self.assertEqual(here.depths()[C].messages, 1)
        self.assertEqual(here.total_bytes(), 2 + 5 + 7 + 1)
        self.assertIn(B, woken)
        fetched = yield here.fetch(B, 0, 100)
        self.assertEqual([m.seq for m in fetched], [mine[1][1]] + [seq for _, seq in theirs])
        self.assertEqual((yield here.receipts(A, 0, 100)), [receipt])

    @defer.inlineCallbacks
    def test_concurrent_writers(self):
        """
        Writes of both in flight together: once this store writes past the
        other's, its figures are the other's (which watches from its start).
        """
        here = yield _started(self.jet)
        elsewhere = yield _started(self.jet, others=True)
        calls = []
        for i in range(20):
            calls.append(here.enqueue([item(payload=b"h" * (i + 1))], 1.0, MANY))
            calls.append(elsewhere.enqueue([item(payload=b"e" * (i + 1))], 1.0, MANY))
        yield defer.gatherResults(calls)
        yield here.enqueue([item(recipient=C, payload=b"g")], 3.0, MANY)
        yield elsewhere.until(lambda: C in elsewhere.depths())
        yield here.until(lambda: here.depths().get(B, Depth()).messages == 40)
        self.assertEqual(here.depths(), elsewhere.depths())
        self.assertEqual(here.total_bytes(), elsewhere.total_bytes())

    @defer.inlineCallbacks
    def test_follow_needed_reads_from_the_prefix(self):
        """
        Told another writer may exist (presence), a store that has written
        nothing watches from its load: what the other wrote since is counted.
        """
        here = yield _started(self.jet)
        elsewhere = yield _started(self.jet, others=True)
        yield elsewhere.enqueue([item(payload=b"abc")], 1.0, MANY)
        self.assertNotIn(B, here.depths())
        here.follow_needed()
        yield here.until(lambda: B in here.depths())
        self.assertEqual(here.depths()[B].messages, 1)
        self.assertEqual(self.subscriptions, ["cairn.mbox.>", "cairn.mbox.>"])


class DeploymentTests(unittest.SynchronousTestCase):
    """The node tells its mailbox when another node is seen (cairn.cluster.node.Stores.deployment)."""

    def test_another_node_starts_the_watch(self):
        from twisted.internet import task

        from cairn.cluster.node import Stores
        from tests.test_cluster_presence import _Peer

        class Mailbox:
            needed = 0

            def follow_needed(self):
                self.needed += 1

        class Jet:
            prefix = "cairn"

        mailbox = Mailbox()
        stores = Stores("jetstream", mailbox=mailbox, sync=None, trust=None, relay=None, cluster=Jet())
        presence, _, _ = stores.deployment(_Peer(), "n1", task.Clock())
        presence._apply([("n", "n1", None, True, None)])
        self.assertEqual(mailbox.needed, 0)
        presence._apply([("n", "n2", None, True, None)])
        self.assertEqual(mailbox.needed, 1)
