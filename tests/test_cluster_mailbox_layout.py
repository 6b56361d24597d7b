"""
Layout 2 of the JetStream mailbox (L{cairn.cluster.mailbox_layout}): one
write per delivered message (the tombstone carries the receipt), receipts
read by other nodes and after a restart, the senders' consumed markers,
and the upgrade of layout-1 data (crash-safe, idempotent); a layout-1 node
refuses layout-2 streams with one line.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.cluster import direct as D
from cairn.cluster import layout, mailbox_layout
from cairn.cluster.common import DONE, KIND, SIZE, WRITER, float_text
from cairn.cluster.connection import JetStream, Settings
from cairn.cluster.layout import LayoutError
from cairn.cluster.mailbox import JetStreamMailboxStore
from cairn.mailbox.interfaces import Depth, Limits
from cairn.wire.constants import ForwardStatus, ReceiptStatus
from tests import _jetstream
from tests.test_cluster_mailbox import _count_publishes
from tests.test_mailbox_store import LIMITS, A, B, C, item

MANY = Limits(100, 10**6, 100.0)


@defer.inlineCallbacks
def _started(jet):
    store = JetStreamMailboxStore(jet)
    yield store.start()
    return store


class OneWriteTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server, self.jet = yield _jetstream.single(self)

    @defer.inlineCallbacks
    def test_restart_then_drain_is_one_write_per_message(self):
        """
        A node started after the enqueue (nothing in its watch's memory)
        drains with one write per delivered message, and the sender's
        receipts are all there, after another restart too.
        """
        first = yield _started(self.jet)
        sent = [item(payload=b"%d" % i) for i in range(30)]
        yield first.enqueue(sent, 1.0, MANY)
        store = yield _started(self.jet)  # the restart
        published = _count_publishes(store)
        after, acked = 0, []
        while True:
            held = yield store.fetch(B, after, 8)
            if not held:
                break
            after = held[-1].seq
            acked += yield store.acknowledge(B, [], 2.0, 100.0, upto=after)
        self.assertEqual(len(acked), 30)
        self.assertEqual(len(published), 30)
        self.assertTrue(all(".mbox." in subject for subject in published))
        self.assertNotIn(B, store.depths())
        again = yield _started(self.jet)
        receipts = yield again.receipts(A, 0, 100)
        self.assertEqual([r.message_id for r in receipts], [m.message_id for m in sent])
        self.assertEqual({r.status for r in receipts}, {ReceiptStatus.DELIVERED})
        self.assertEqual([r.rseq for r in receipts], sorted(r.rseq for r in acked))
        self.assertNotIn(B, again.depths())
        duplicate = yield again.enqueue([sent[0]], 3.0, MANY)
        self.assertEqual(duplicate[0][0], ForwardStatus.DUPLICATE)

    @defer.inlineCallbacks
    def test_receipts_across_nodes(self):
        """
        Receipts written by one node are read by another (its watch knows
        them at once), a drop made there holds for every later reader, and
        the depths follow the removals.
        """
        one = yield _started(self.jet)
        two = yield _started(self.jet)
        two.follow_needed()  # another node is seen (presence)
        yield one.enqueue([item(payload=b"%d" % i) for i in range(5)], 1.0, MANY)
        held = yield one.fetch(B, 0, 10)
        written = yield one.acknowledge(B, [m.seq for m in held], 2.0, 100.0)
        yield _jetstream_settled(two, max(r.rseq for r in written))
        owed = yield two.receipts(A, 0, 10)
        self.assertEqual(sorted(owed), sorted(written))
        self.assertNotIn(B, two.depths())
        yield two.drop_receipts(A, [r.rseq for r in owed[:3]])
        yield two.flushed()
        three = yield _started(self.jet)
        self.assertEqual((yield three.receipts(A, 0, 10)), owed[3:])
        self.assertEqual((yield two.receipts(A, 0, 10)), owed[3:])

    @defer.inlineCallbacks
    def test_out_of_order_drops(self):
        """Receipts dropped out of order are kept in the marker; the rest stay owed, after a restart too."""
        store = yield _started(self.jet)
        yield store.enqueue([item(payload=b"%d" % i) for i in range(6)], 1.0, MANY)
        held = yield store.fetch(B, 0, 10)
        yield store.acknowledge(B, [m.seq for m in held], 2.0, 100.0)
        owed = yield store.receipts(A, 0, 10)
        yield store.drop_receipts(A, [owed[1].rseq, owed[3].rseq, owed[0].rseq])
        yield store.flushed()
        again = yield _started(self.jet)
        self.assertEqual((yield again.receipts(A, 0, 10)), [owed[2], owed[4], owed[5]])
        self.assertEqual((yield again.receipts(A, owed[2].rseq, 10)), [owed[4], owed[5]])
        yield again.drop_receipts(A, [owed[2].rseq, owed[4].rseq, owed[5].rseq])
        yield again.flushed()
        upto, extras, _ = yield self.jet.run(again._marker, A, True)
        self.assertEqual((upto, extras), (owed[5].rseq, frozenset()))

    @defer.inlineCallbacks
    def test_receipts_read_skips_held_messages(self):
        """
        A sender whose messages wait for an offline recipient reads its
        (no) receipts without paging through those messages: the watch
        and the load know there are none.
        """
        yield (yield _started(self.jet)).enqueue([item(payload=b"%d" % i) for i in range(40)], 1.0, MANY)
        store = yield _started(self.jet)
        reads, read = [], D.direct_batch

        async def counted(*args, **kwargs):
            held = await read(*args, **kwargs)
            reads.extend(held[0])
            return held

        self.patch(D, "direct_batch", counted)
        self.assertEqual((yield store.receipts(A, 0, 10)), [])
        self.assertEqual(reads, [])

    @defer.inlineCallbacks
    def test_expiry_is_one_write(self):
        """An expired message is replaced by its tombstone carrying the EXPIRED receipt: one write, no delete."""
        store = yield _started(self.jet)
        yield store.enqueue([item(), item(C)], 0.0, LIMITS)
        published = _count_publishes(store)
        deleted, delete = [], D.delete

        async def counting(js, stream, seq):
            deleted.append(seq)
            return await delete(js, stream, seq)

        self.patch(D, "delete", counting)
        receipts, _ = yield store.expire(150.0, 10, 100.0)
        self.assertEqual(len(receipts), 2)
        self.assertEqual((len(published), deleted), (2, []))
        owed = yield store.receipts(A, 0, 10)
        self.assertEqual({r.status for r in owed}, {ReceiptStatus.EXPIRED})
        # Past the receipts' time, the tombstones go.
        yield store.expire(300.0, 10, 100.0)
        self.assertEqual(len(deleted), 2)
        self.assertEqual((yield store.receipts(A, 0, 10)), [])


@defer.inlineCallbacks
def _jetstream_settled(store, seq):
    """Until C{store}'s watch has seen stream seq C{seq} (bounded by the harness's timeout)."""
    from tests._harness import eventually

    def seen():
        if store.recent.watched >= seq:
            return defer.succeed(None)
        d = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        return d.addCallback(lambda _: seen())

    yield eventually(seen(), 30)


def _layout_1_receipt(jet, held, status, at, ttl):
    """The receipt layout 1 wrote for message C{held} (what its _send_receipts published)."""
    _, _, recipient, sender, message_id = held.subject.split(".")
    headers = {
        D.EXPECT_LAST: "0",
        D.RECIPIENT: recipient,
        D.ID: message_id,
        D.STATUS: str(int(status)),
        D.AT: float_text(at),
        D.EXPIRES: float_text(at + ttl),
        SIZE: str(len(held.data or b"")),
        WRITER: "layout-1",
    }
    return jet.subject("rcpt", sender, str(held.seq)), headers


class UpgradeTests(unittest.TestCase):
    """Layout-1 data, as a layout-1 node left it, upgraded by a layout-2 node's start."""

    @defer.inlineCallbacks
    def setUp(self):
        self.server, self.jet = yield _jetstream.single(self)
        store = yield _started(self.jet)
        self.sent = [item(payload=b"%d" % i) for i in range(6)] + [item(C, sender=B)]
        yield store.enqueue(self.sent, 1.0, MANY)
        held = {m.message_id: m for m in (yield store.fetch(B, 0, 10))}
        raw = yield self.jet.run(D.direct_all, self.jet.nc, store.stream, self.jet.subject("mbox", ">"))
        by_id = {bytes.fromhex(h.subject.split(".")[4]): h for h in raw}
        self.assertEqual(len(held), 6)

        async def layout_1():
            js = self.jet.js
            # 0, 1: delivered (receipt, then tombstone); 2: delivered, the
            # node killed between the receipt and the tombstone; 3: expired
            # (receipt, message deleted); 4, 5: held (in flight to B).
            for i, status in ((0, ReceiptStatus.DELIVERED), (1, ReceiptStatus.DELIVERED)):
                h = by_id[self.sent[i].message_id]
                subject, headers = _layout_1_receipt(self.jet, h, status, 2.0, 100.0)
                await js.publish(subject, b"", headers=headers)
                tombstone = {
                    "Nats-Rollup": "sub",
                    D.EXPECT_LAST: str(h.seq),
                    KIND: DONE,
                    D.EXPIRES: h.headers[D.EXPIRES],
                }
                await js.publish(h.subject, b"", headers=tombstone)
            h = by_id[self.sent[2].message_id]
            subject, headers = _layout_1_receipt(self.jet, h, ReceiptStatus.DELIVERED, 2.0, 100.0)
            await js.publish(subject, b"", headers=headers)
            h = by_id[self.sent[3].message_id]
            subject, headers = _layout_1_receipt(self.jet, h, ReceiptStatus.EXPIRED, 2.0, 100.0)
            await js.publish(subject, b"", headers=headers)
            await js.delete_msg(store.stream, h.seq)
            await self.jet.kv["meta"].put("layout", b"1")

        yield self.jet.run(layout_1)
        yield store.flushed()

    @defer.inlineCallbacks
    def check_upgraded(self, jet):
        store = yield _started(jet)
        receipts = yield store.receipts(A, 0, 100)
        self.assertEqual(
            sorted((r.message_id, r.status) for r in receipts),
            sorted(
                [(self.sent[i].message_id, ReceiptStatus.DELIVERED) for i in (0, 1, 2)]
                + [(self.sent[3].message_id, ReceiptStatus.EXPIRED)]
            ),
        )
        self.assertEqual(len({r.rseq for r in receipts}), 4)
        held = yield store.fetch(B, 0, 10)
        self.assertEqual([m.message_id for m in held], [self.sent[i].message_id for i in (4, 5)])
        self.assertEqual(store.depths()[B], Depth(2, 2, 1.0))
        self.assertEqual(store.depths()[C].messages, 1)
        old = yield jet.run(D.direct_all, jet.nc, store.stream, jet.subject("rcpt", ">"))
        self.assertEqual(old, [])
        for i in range(7):
            again = yield store.enqueue([self.sent[i]], 3.0, MANY)
            self.assertEqual(again[0][0], ForwardStatus.DUPLICATE, i)
        entry = yield jet.run(jet.kv["meta"].get, "layout")
        self.assertEqual(int(entry.value), layout.LAYOUT)
        return store

    @defer.inlineCallbacks
    def test_upgrade(self):
        """Receipts in flight, a message receipted but not tombstoned, held messages: all carried over."""
        jet = yield _jetstream.connect(self, [self.server.url])
        store = yield self.check_upgraded(jet)
        # And the upgraded receipts are dropped like any other.
        owed = yield store.receipts(A, 0, 100)
        yield store.drop_receipts(A, [r.rseq for r in owed])
        yield store.flushed()
        self.assertEqual((yield (yield _started(jet)).receipts(A, 0, 100)), [])

    @defer.inlineCallbacks
    def test_upgrade_killed_half_way(self):
        """
        An upgrade that stops half way (the node killed) leaves the layout
        at 1; the next start finishes it: no receipt lost, none twice.
        """
        calls, delete = [0], D.delete

        async def dies(js, stream, seq):
            calls[0] += 1
            if calls[0] == 2:
                raise ConnectionError("killed")
            return await delete(js, stream, seq)

        self.patch(D, "delete", dies)
        self.patch(mailbox_layout, "UPGRADE_AT_ONCE", 1)
        broken = JetStream(reactor, Settings((self.server.url,), 1, "cairn"))
        broken.thread.start()
        self.addCleanup(broken.close)
        with self.assertRaises(ConnectionError):
            yield broken.run(broken._connect)
        entry = yield self.jet.run(self.jet.kv["meta"].get, "layout")
        self.assertEqual(entry.value, b"1")
        self.patch(D, "delete", delete)
        jet = yield _jetstream.connect(self, [self.server.url])
        yield self.check_upgraded(jet)

    @defer.inlineCallbacks
    def test_late_layout_1_receipts(self):
        """
        Layout-1 receipts written after the upgrade (a node of the older
        version still running: the version is checked at start only) are
        moved by the next start of a store, not left unread.
        """
        yield self.jet.run(self.jet.kv["meta"].put, "layout", str(layout.LAYOUT).encode())
        yield self.check_upgraded(self.jet)


class OlderNodeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_layout_1_node_refuses_layout_2(self):
        """A layout-1 node meeting layout-2 streams refuses with one line, and changes nothing."""
        server, jet = yield _jetstream.single(self)
        current = layout.LAYOUT
        self.patch(layout, "LAYOUT", 1)
        old = JetStream(reactor, Settings((server.url,), 1, "cairn"))
        old.thread.start()
        self.addCleanup(old.close)
        with self.assertRaises(LayoutError) as caught:
            yield old.run(old._connect)
        self.assertTrue(caught.exception.permanent)
        self.assertIn(f"is version {current}, newer than this node's 1", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))
        entry = yield jet.run(jet.kv["meta"].get, "layout")
        self.assertEqual(entry.value, str(current).encode())
