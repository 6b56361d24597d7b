"""
What an acknowledgement of the JetStream mailbox reads and records
(L{cairn.cluster.mailbox_removal}): no read where a fetch already
answered, and the floor its later reads start from (#14).
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from cairn.cluster.mailbox import JetStreamMailboxStore
from cairn.mailbox.interfaces import Limits
from cairn.wire.constants import ReceiptStatus
from tests import _jetstream
from tests.test_mailbox_store import A, B, C, item

#: Roomy limits: the tests store more than tests.test_mailbox_store.LIMITS allows.
ROOMY = Limits(10**6, 10**9, 1000.0)
#: As roomy, but stored messages expire after 100 s.
EXPIRING = Limits(10**6, 10**9, 100.0)


class _OneServer:
    """A started L{JetStreamMailboxStore} on one NATS server, as C{self.store}."""

    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.store = JetStreamMailboxStore(self.jet)
        yield self.store.start()


class ReadsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_one_at_a_time_reads_nothing(self):
        """
        A recipient acknowledging each message as it comes, one at a time
        (the cross-node latency bench's shape): the acknowledgement reads
        nothing -- the fetch that handed the message out read everything
        after the previous one. (It read each time: the previous message's
        tombstone lies between, issue 15.)
        """
        _, jet = yield _jetstream.single(self)
        store = JetStreamMailboxStore(jet)
        yield store.start()
        reads, cursor, costs = _jetstream.count_reads(self), 0, []
        for _ in range(10):
            ((_, seq),) = yield store.enqueue([item()], 1.0, ROOMY)
            (message,) = yield store.fetch(B, cursor, 16)
            del reads[:]
            receipts = yield store.acknowledge(B, [], 2.0, 100.0, upto=message.seq)
            self.assertEqual(len(receipts), 1)
            costs.append(len(reads))
            cursor = seq
        self.assertEqual(costs, [0] * 10)
        self.assertNotIn(B, store.depths())

    @defer.inlineCallbacks
    def test_below_what_was_handed_out_is_read(self):
        """
        What lies before the fetch's start is still read: messages handed
        out before (by an earlier process, say) that the acknowledgement
        covers are removed too.
        """
        _, jet = yield _jetstream.single(self)
        store = JetStreamMailboxStore(jet)
        yield store.start()
        yield store.enqueue([item(recipient=C)], 1.0, ROOMY)  # B's first seq above 1
        results = yield store.enqueue([item(payload=b"%d" % i) for i in range(4)], 1.0, ROOMY)
        seqs = [seq for _, seq in results]
        held = yield store.fetch(B, seqs[1], 16)  # a cursor past the first two (a restored session's)
        self.assertEqual([m.seq for m in held], seqs[2:])
        receipts = yield store.acknowledge(B, [], 2.0, 100.0, upto=seqs[3])
        self.assertEqual(len(receipts), 4)
        self.assertNotIn(B, store.depths())
        self.assertEqual((yield store.fetch(B, 0, 16)), [])


class DepthReadTests(_OneServer, unittest.TestCase):
    """
    The oldest message left after a removal (L{Removal._depth_changes}),
    read while the depth known on the reactor lags behind the removals
    made on the NATS loop: a drain's acknowledgements end faster than
    their depth changes are applied.
    """

    @defer.inlineCallbacks
    def _two_acknowledgements(self, count, between=None):
        """
        C{count} messages handed out, acknowledged in two halves, the first
        half's depth change held back until the second's is applied: the
        reads the second made, after its removals.
        """
        store = self.store
        yield store.enqueue([item(payload=b"%d" % i) for i in range(count)], 1.0, ROOMY)
        seqs = [m.seq for m in (yield store.fetch(B, 0, count))]
        removed, held = store._removed, []
        store._removed = lambda result: held.append(result) or []
        yield store.acknowledge(B, [], 2.0, 100.0, upto=seqs[count // 2 - 1])
        store._removed = removed
        if between is not None:
            yield between()
        reads = _jetstream.count_reads(self)
        store._removed = lambda result: held.append(result) or []
        yield store.acknowledge(B, [], 2.0, 100.0, upto=seqs[-1])
        store._removed = removed
        self.assertEqual([len(receipts) for receipts, _, _ in held], [count // 2, count - count // 2])
        for result in held:  # in order, as the reactor would have
            store._removed(result)
        return reads

    @defer.inlineCallbacks
    def test_no_walk_through_the_tombstones(self):
        """
        Nothing is left, but the reactor's depth still counts the first
        half: the read for the oldest left stops past the newest message
        known stored, one page, rather than walking every tombstone to the
        stream's end (0.77 requests per message delivered, ~9 tombstones
        parsed each, in bench.mailbox --jetstream 3).
        """
        reads = yield self._two_acknowledgements(96)
        self.assertLessEqual(len(reads), 1)
        self.assertNotIn(B, self.store.depths())

    @defer.inlineCallbacks
    def test_a_message_stored_after_the_tombstones_is_found(self):
        """
        A message stored after the first half's tombstones (so past them in
        the stream) and not handed out: it is the oldest left, found past
        the tombstones.
        """

        def one_more():
            return self.store.enqueue([item(payload=b"later")], 5.0, ROOMY)

        yield self._two_acknowledgements(16, between=one_more)
        depth = self.store.depths()[B]
        self.assertEqual((depth.messages, depth.oldest), (1, 5.0))


class FloorTests(_OneServer, unittest.TestCase):
    @defer.inlineCallbacks
    def _handed_out(self, count):
        yield self.store.enqueue([item(payload=b"%d" % i) for i in range(count)], 1.0, ROOMY)
        return [m.seq for m in (yield self.store.fetch(B, 0, count))]

    @defer.inlineCallbacks
    def test_floor_follows_overlapping_acknowledgements(self):
        """
        A drain's cumulative acknowledgements, all in flight together: once
        they are written, the floor (above which later reads start) is the
        last one's. (It moved only for an acknowledgement with no earlier one
        in flight: here, the first.)
        """
        seqs = yield self._handed_out(12)
        yield defer.gatherResults([self.store.acknowledge(B, [], 2.0, 100.0, upto=seq) for seq in seqs])
        self.assertEqual(self.store._acked_upto.get(B), seqs[-1])

    @defer.inlineCallbacks
    def test_floor_stays_below_a_failed_acknowledgement(self):
        """
        An earlier acknowledgement that fails while a later one is in
        flight: the later one succeeds, but the floor does not pass what the
        failed one left; its retry moves it.
        """
        seqs = yield self._handed_out(10)
        send, calls, second_in = self.store._send_removals, [], []

        async def failing_first(found, *args, **kwargs):  # on the NATS loop
            import asyncio

            calls.append(len(calls))
            if len(calls) == 1:
                second_in.append(asyncio.get_running_loop().create_future())
                await second_in[0]
                raise RuntimeError("no PubAck")
            if len(calls) == 2:
                second_in[0].set_result(None)
            return await send(found, *args, **kwargs)

        self.store._send_removals = failing_first
        first = self.store.acknowledge(B, [], 2.0, 100.0, upto=seqs[4])
        second = self.store.acknowledge(B, [], 2.0, 100.0, upto=seqs[9])
        yield self.assertFailure(first, Exception)
        yield second
        self.assertLess(self.store._acked_upto.get(B, 0), seqs[0])
        yield self.store.acknowledge(B, [], 2.0, 100.0, upto=seqs[4])
        self.assertEqual(self.store._acked_upto.get(B), seqs[4])
        self.assertNotIn(B, self.store.depths())


class GatheredTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_removals_wait_for_the_gathering(self):
        """
        Acknowledgements made within REMOVAL_GATHER write their tombstones
        together once it is over; a message stored meanwhile is written at
        once, ahead of them (it queued behind the tombstone, issue 15).
        Nothing is removed before: a fetch from the start still finds
        them.
        """
        from cairn.cluster import mailbox_gathered
        from tests.test_cluster_mailbox import _count_publishes

        self.patch(mailbox_gathered, "REMOVAL_GATHER", 60.0)  # released by hand below
        _, jet = yield _jetstream.single(self)
        store = JetStreamMailboxStore(jet)
        yield store.start()
        results = yield store.enqueue([item(payload=b"%d" % i) for i in range(3)], 1.0, ROOMY)
        seqs = [seq for _, seq in results]
        held = yield store.fetch(B, 0, 16)
        removed = sorted(store._subject("mbox", B, m.sender, m.message_id.hex()) for m in held[:2])
        published = _count_publishes(store)
        acks = [store.acknowledge(B, [], 2.0, 100.0, upto=seq) for seq in seqs[:2]]

        async def nothing():  # after both acknowledgements' first steps, on the NATS loop
            pass

        yield jet.run(nothing)
        ((_, late),) = yield store.enqueue([item(payload=b"late")], 1.0, ROOMY)
        self.assertEqual(len(published), 1)  # the message only
        self.assertFalse(any(d.called for d in acks))
        self.assertEqual([m.seq for m in (yield store.fetch(B, 0, 16))], seqs + [late])
        jet.thread.call(store._release_gathered)
        receipts = yield defer.gatherResults(acks)
        self.assertEqual(sum(len(r) for r in receipts), 2)
        self.assertEqual(sorted(published[1:]), removed)
        self.assertEqual(store.depths()[B].messages, 2)


class AcknowledgedFirstTests(unittest.TestCase):
    """
    An expiry or a purge that comes while an acknowledgement's removals are
    gathering (L{cairn.cluster.mailbox_gathered.REMOVAL_GATHER}) leaves the
    acknowledged messages to it: their senders are told DELIVERED, as the
    SQLite and memory stores tell them (issue 15).
    """

    @defer.inlineCallbacks
    def setUp(self):
        from cairn.cluster import mailbox_gathered

        self.patch(mailbox_gathered, "REMOVAL_GATHER", 60.0)  # released by hand below
        _, self.jet = yield _jetstream.single(self)
        self.store = JetStreamMailboxStore(self.jet)
        yield self.store.start()
        results = yield self.store.enqueue([item(payload=b"%d" % i) for i in range(3)], 1.0, ROOMY)
        self.seqs = [seq for _, seq in results]
        yield self.store.fetch(B, 0, 16)

    def _release_after_next_read(self):
        """
        The gathering is released (on the NATS loop) just after the next
        stream read returns: the expiry's or purge's scan, which has found
        the acknowledged messages still there.
        """
        from cairn.cluster import direct

        original = direct.direct_batch

        async def read_then_release(*args, **kwargs):
            result = await original(*args, **kwargs)
            self.store._release_gathered()
            return result

        self.patch(direct, "direct_batch", read_then_release)

    @defer.inlineCallbacks
    def _gathering(self, upto):
        acknowledged = self.store.acknowledge(B, [], 2.0, 100.0, upto=upto)

        async def nothing():  # after the acknowledgement's first steps, on the NATS loop
            pass

        yield self.jet.run(nothing)
        self.assertFalse(acknowledged.called)
        return acknowledged

    @defer.inlineCallbacks
    def test_expiry_leaves_acknowledged_to_the_acknowledgement(self):
        acknowledged = yield self._gathering(self.seqs[1])
        self._release_after_next_read()
        expired, _ = yield self.store.expire(5000.0, 100, 100.0)
        delivered = yield acknowledged
        self.assertEqual([r.status for r in delivered], [ReceiptStatus.DELIVERED] * 2)
        self.assertEqual([r.status for r in expired], [ReceiptStatus.EXPIRED])
        told = yield self.store.receipts(A, 0, 16)
        self.assertEqual(sorted(r.status for r in told), [ReceiptStatus.DELIVERED] * 2 + [ReceiptStatus.EXPIRED])
        self.assertNotIn(B, self.store.depths())

    @defer.inlineCallbacks
    def test_purge_leaves_acknowledged_to_the_acknowledgement(self):
        acknowledged = yield self._gathering(self.seqs[1])
        self._release_after_next_read()
        evicted = yield self.store.purge(B, 3.0, 100.0)
        delivered = yield acknowledged
        self.assertEqual([r.status for r in delivered], [ReceiptStatus.DELIVERED] * 2)
        self.assertEqual([r.status for r in evicted], [ReceiptStatus.EVICTED])
        told = yield self.store.receipts(A, 0, 16)
        self.assertEqual(sorted(r.status for r in told), [ReceiptStatus.DELIVERED] * 2 + [ReceiptStatus.EVICTED])
        self.assertNotIn(B, self.store.depths())


class AcrossNodesTests(unittest.TestCase):
    """
    An expiry or a purge on another node, made while an acknowledgement's
    removals are gathering on the recipient's node, leaves the acknowledged
    messages to it: their senders are told DELIVERED, never EXPIRED or
    EVICTED (issue 15; L{cairn.cluster.mailbox_gathered.EXPIRY_GRACE},
    L{cairn.cluster.mailbox_gathered.PURGE_GRACE}).
    """

    @defer.inlineCallbacks
    def setUp(self):
        from cairn.cluster import mailbox_gathered

        self.patch(mailbox_gathered, "REMOVAL_GATHER", 60.0)  # released by hand below
        _, self.jet = yield _jetstream.single(self)
        # Two nodes on one stream: the recipient's, and the one that sweeps or purges.
        self.here, self.elsewhere = JetStreamMailboxStore(self.jet), JetStreamMailboxStore(self.jet)
        for store in (self.here, self.elsewhere):
            store.follow_needed()  # another node is seen (presence)
            yield store.start()
        items = [item(payload=b"%d" % i) for i in range(3)]
        self.third = items[2].message_id  # the one not acknowledged
        results = yield self.here.enqueue(items, 1.0, EXPIRING)
        self.seqs = [seq for _, seq in results]
        yield self.here.fetch(B, 0, 16)
        # Acknowledged just before they expire (1.0 + EXPIRING.max_age); its removals gather.
        self.acknowledged = self.here.acknowledge(B, [], 100.5, 100.0, upto=self.seqs[1])

        async def nothing():  # after the acknowledgement's first steps, on the NATS loop
            pass

        yield self.jet.run(nothing)
        self.assertFalse(self.acknowledged.called)
        self.addCleanup(self.jet.thread.call, self.here._release_gathered)  # a failed test does not wait 60 s

    def _release(self):
        self.jet.thread.call(self.here._release_gathered)
        return self.acknowledged

    @defer.inlineCallbacks
    def _told(self):
        told = yield self.here.receipts(A, 0, 16)
        return sorted(r.status for r in told)

    @defer.inlineCallbacks
    def test_expiry_elsewhere_leaves_acknowledged_delivered(self):
        from cairn.cluster.mailbox_gathered import EXPIRY_GRACE

        expired, _ = yield self.elsewhere.expire(101.5, 100, 100.0)  # expired, within the grace
        self.assertEqual(expired, [])
        delivered = yield self._release()
        self.assertEqual([r.status for r in delivered], [ReceiptStatus.DELIVERED] * 2)
        expired, _ = yield self.elsewhere.expire(101.0 + EXPIRY_GRACE, 100, 100.0)
        self.assertEqual([(r.status, r.message_id) for r in expired], [(ReceiptStatus.EXPIRED, self.third)])
        self.assertEqual((yield self._told()), [ReceiptStatus.DELIVERED] * 2 + [ReceiptStatus.EXPIRED])
        self.assertNotIn(B, self.here.depths())

    @defer.inlineCallbacks
    def test_purge_elsewhere_leaves_acknowledged_delivered(self):
        from cairn.cluster.mailbox_gathered import PURGE_GRACE

        self.elsewhere.clock = clock = task.Clock()
        purged = self.elsewhere.purge(B, 100.6, 100.0)
        if not clock.getDelayedCalls():
            # Not waiting (as before the grace): it has removed what it found before the release.
            yield defer.DeferredList([purged])
        delivered = yield self._release()  # within the grace
        clock.advance(PURGE_GRACE)
        evicted = yield purged
        self.assertEqual([r.status for r in delivered], [ReceiptStatus.DELIVERED] * 2)
        self.assertEqual([(r.status, r.message_id) for r in evicted], [(ReceiptStatus.EVICTED, self.third)])
        self.assertEqual((yield self._told()), [ReceiptStatus.DELIVERED] * 2 + [ReceiptStatus.EVICTED])
        self.assertNotIn(B, self.here.depths())


class AloneTests(_OneServer, unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_grace_alone(self):
        """A store alone on the stream expires at the expiry and purges at once: no grace to wait."""
        self.store.clock = task.Clock()  # never advanced
        yield self.store.enqueue([item(payload=b"1")], 1.0, EXPIRING)
        yield self.store.enqueue([item(recipient=C, payload=b"2")], 50.0, EXPIRING)
        expired, _ = yield self.store.expire(101.0, 100, 100.0)
        evicted = yield self.store.purge(C, 2.0, 100.0)
        self.assertEqual([r.status for r in expired + evicted], [ReceiptStatus.EXPIRED, ReceiptStatus.EVICTED])
