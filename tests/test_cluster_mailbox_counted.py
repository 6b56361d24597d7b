"""
The JetStream mailbox's depth figures when another writer removes a
message: counted out only where it was counted in (#14). A removal's
tombstone deletes its message (a rollup); a watch that had not read the
message yet passes over it, so the message was never counted in there.
"""

import asyncio

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster.mailbox import JetStreamMailboxStore
from cairn.cluster.mailbox_room import BuriedHere
from cairn.wire.constants import ForwardStatus
from tests import _jetstream
from tests._harness import Conditions
from tests.test_mailbox_store import LIMITS, B, item

STORED = ForwardStatus.STORED


def refuse_write(store, err_code, description, nth=2):
    """
    The store's C{nth} write from now on is refused, unstored (JetStream at
    its limit, say, or no stream answering); returns the unpatched publish.
    """
    from cairn.cluster.pubacks import PublishError

    publish, calls = store.acks.publish, []

    async def refused(subject, payload, headers, *rest):
        calls.append(subject)
        if len(calls) == nth:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(PublishError(err_code, description))
            return future
        return await publish(subject, payload, headers, *rest)

    store.acks.publish = refused
    return publish


def third_publish_raises(testcase, store):
    """The store's 3rd publish from now on raises at once (nats-py's connection closed); returns the subjects tried."""
    from nats.errors import ConnectionClosedError

    publish, calls = store.acks.publish, []

    async def third_raises(subject, payload, headers, *rest):
        calls.append(subject)
        if len(calls) == 3:
            raise ConnectionClosedError()
        return await publish(subject, payload, headers, *rest)

    testcase.patch(store.acks, "publish", third_raises)
    return calls


class RemovedBeforeTheWatchTests(unittest.TestCase):
    """
    C{here} watches the stream, but its watch reads nothing until the
    test releases it, while C{elsewhere} (another node's store) removes
    messages: the rollup deletes each before the watch reaches it.
    """

    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.here, self.elsewhere = JetStreamMailboxStore(self.jet), JetStreamMailboxStore(self.jet)
        self.conditions, self.depths = Conditions(), []
        here, follow, seen = self.here, self.here._follow, self.here._seen
        self.gate = None

        async def held_back(upto):  # on the NATS loop: the watch starts when released
            self.gate = asyncio.get_running_loop().create_future()
            self.jet.thread.to_reactor(self.conditions.changed)
            await self.gate
            await follow(upto)

        def watched(held):
            seen(held)
            self.jet.thread.to_reactor(self.conditions.changed)

        apply = here._apply

        def applied(updates):
            self.depths.extend(d.messages for r, d in updates.items() if r == B)
            apply(updates)

        here._follow, here._seen, here._apply = held_back, watched, applied
        here.follow_needed()  # another node is seen (presence)
        yield here.start()
        yield self.elsewhere.start()
        yield self.conditions.until(lambda: self.gate is not None)

    @defer.inlineCallbacks
    def release(self, upto):
        """Let the watch read, up to seq C{upto}, and every depth change it made be applied."""

        async def open_gate():
            self.gate.set_result(None)

        yield self.here._run(open_gate)
        yield self.conditions.until(lambda: self.here._counted_upto >= upto)
        yield self.here.flushed()  # the reactor calls the watch made are before this answer

    @defer.inlineCallbacks
    def test_another_writers_message(self):
        """
        Stored and acknowledged elsewhere before this store's watch read
        it: never counted in here, so not counted out (it showed -1).
        """
        ((_, seq),) = yield self.elsewhere.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        (receipt,) = yield self.elsewhere.acknowledge(B, [seq], 2.0, 100.0)
        yield self.release(receipt.rseq)
        self.assertEqual(self.depths, [])
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_this_stores_own_message(self):
        """
        Stored here (counted at its enqueue), acknowledged elsewhere before
        this store's watch read it: counted out, though the watch passed
        over it.
        """
        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        self.assertEqual(self.here.depths()[B].messages, 1)
        (receipt,) = yield self.elsewhere.acknowledge(B, [seq], 2.0, 100.0)
        yield self.release(receipt.rseq)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_this_stores_own_message_removed_from_the_bus_copy(self):
        """
        Stored here and told to the recipient's node by the node bus,
        which delivers and acknowledges that copy before this store's
        watch read the message: its tombstone names this store as the
        message's writer, so it counts out here (it stayed counted for
        good: the leader kill of C{tests/test_cluster_node_faults.py}).
        """
        from cairn.cluster.bus import WAKE
        from cairn.cluster.nats_bus import NatsBus
        from tests.test_cluster_bus import _Where

        where = _Where({B: ("n2",)}, ("n1", "n2"))
        buses = {}
        for name, store in (("n1", self.here), ("n2", self.elsewhere)):
            buses[name] = NatsBus(self.jet, where, name, mailbox=store)
            buses[name].subscribe(WAKE, self.conditions.changed)
            yield buses[name].start()
            self.addCleanup(buses[name].stop)
        for heard in where.others:
            heard()  # each node hears of the other (presence)
        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        yield self.conditions.until(lambda: buses["n2"].taken == 1)
        (held,) = yield self.elsewhere.fetch(B, 0, 16)
        (receipt,) = yield self.elsewhere.acknowledge(B, [held.seq], 2.0, 100.0)
        yield self.release(receipt.rseq)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_this_stores_own_message_told_by_a_notice_without_its_writer(self):
        """
        A C{msg} notice in the shape of a node older than the sixteenth
        session (no writer) is not taken as the message: its wake-up only,
        the message read with its writer, so the tombstone written here
        names it and the writer's node counts it out though its watch
        passed over it (named nobody, it stayed counted there for good).
        """
        from cairn.cluster import direct as D
        from cairn.cluster.bus import WAKE
        from cairn.cluster.common import MESSAGE_WRITER
        from cairn.cluster.nats_bus import NatsBus
        from cairn.wire import cbor
        from tests.test_cluster_bus import _Where

        bus = NatsBus(self.jet, _Where({B: ("n2",)}, ("n1", "n2")), "n2", mailbox=self.elsewhere)
        woken = []
        bus.subscribe(WAKE, lambda recipient: (woken.append(recipient), self.conditions.changed()))
        yield bus.start()
        self.addCleanup(bus.stop)
        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        held = yield self.jet.run(D.direct_seq, self.jet.nc, self.here.stream, seq)
        old_headers = {D.STORED: held.headers[D.STORED], D.EXPIRES: held.headers[D.EXPIRES]}
        body = cbor.dumps({"r": B, "seq": seq, "subject": held.subject, "h": old_headers, "p": b"abc"})

        async def tell():  # what an older node's bus sends (L{NatsBus.stored} before it named the writer)
            await self.jet.nc.publish(self.jet.subject("node", "n2", "msg", str(seq)), body)

        yield self.jet.run(tell)
        yield self.conditions.until(lambda: woken)
        self.assertEqual(bus.taken, 0)
        (fetched,) = yield self.elsewhere.fetch(B, 0, 16)
        (receipt,) = yield self.elsewhere.acknowledge(B, [fetched.seq], 2.0, 100.0)
        tombstone = yield self.jet.run(D.direct_seq, self.jet.nc, self.here.stream, receipt.rseq)
        self.assertEqual(tombstone.headers[MESSAGE_WRITER], self.here.writer)
        yield self.release(receipt.rseq)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_this_stores_own_message_removed_by_an_older_node(self):
        """
        Stored here, acknowledged by a node older than the sixteenth
        session from its notice's copy (its tombstone names no writer: an
        empty C{Cairn-Message-Writer}) before this store's watch read it:
        counted out, this store knowing its own messages the watch passed
        over (it stayed counted for good).
        """
        from cairn.cluster import direct as D
        from cairn.cluster.common import MESSAGE_WRITER, WRITER
        from cairn.cluster.mailbox_layout import receipt_headers
        from cairn.wire.constants import ReceiptStatus

        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        held = yield self.jet.run(D.direct_seq, self.jet.nc, self.here.stream, seq)
        headers = receipt_headers(ReceiptStatus.DELIVERED, 2.0, held.headers[D.EXPIRES], len(held.data))
        headers.update({"Nats-Rollup": "sub", D.EXPECT_LAST: str(seq), WRITER: "older", MESSAGE_WRITER: ""})

        async def acknowledged():  # what such a node writes (L{Removal._send_removals} then)
            return (await self.jet.js_writes.publish(held.subject, b"", headers=headers)).seq

        tombstone = yield self.jet.run(acknowledged)
        yield self.release(tombstone)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_unanswered_write_removed_before_the_retry(self):
        """
        This store's write stored but never answered is removed elsewhere
        before the sender's retry, answered DUPLICATE, finds its tombstone,
        and before this store's watch read either: counted in by the
        retry, out by the tombstone (it was -1 for good).
        """
        from cairn.cluster import direct as D
        from cairn.mailbox.interfaces import StoreFull

        message = item(payload=b"abc")
        stored_unanswered(self, self.here)
        yield self.assertFailure(self.here.enqueue([message], 1.0, LIMITS), StoreFull)
        subject = self.here._message_subject(message)
        held = yield self.jet.run(D.direct_last, self.jet.nc, self.here.stream, subject)
        (receipt,) = yield self.elsewhere.acknowledge(B, [held.seq], 2.0, 100.0)
        (result,) = yield self.here.enqueue([message], 3.0, LIMITS)
        self.assertEqual(result[0], ForwardStatus.DUPLICATE)
        yield self.release(receipt.rseq)
        self.assertEqual([d for d in self.depths if d < 0], [])
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_retried_write_removed_by_an_older_node(self):
        """
        This store's write stored but never answered, counted in by the
        sender's retry (answered DUPLICATE), then acknowledged by a node
        older than the sixteenth session (a tombstone naming no writer)
        before this store's watch read either: counted out (it stayed
        counted for good: the retry's count was not known as this store's).
        """
        from cairn.cluster import direct as D
        from cairn.cluster.common import MESSAGE_WRITER, WRITER
        from cairn.cluster.mailbox_layout import receipt_headers
        from cairn.mailbox.interfaces import StoreFull
        from cairn.wire.constants import ReceiptStatus

        message = item(payload=b"abc")
        stored_unanswered(self, self.here)
        yield self.assertFailure(self.here.enqueue([message], 1.0, LIMITS), StoreFull)
        (result,) = yield self.here.enqueue([message], 2.0, LIMITS)
        self.assertEqual(result[0], ForwardStatus.DUPLICATE)
        yield self.here.flushed()
        self.assertEqual(self.here.depths()[B].messages, 1)
        subject = self.here._message_subject(message)
        held = yield self.jet.run(D.direct_last, self.jet.nc, self.here.stream, subject)
        headers = receipt_headers(ReceiptStatus.DELIVERED, 3.0, held.headers[D.EXPIRES], len(held.data))
        headers.update({"Nats-Rollup": "sub", D.EXPECT_LAST: str(held.seq), WRITER: "older", MESSAGE_WRITER: ""})

        async def acknowledged():  # what such a node writes (L{Removal._send_removals} then)
            return (await self.jet.js_writes.publish(held.subject, b"", headers=headers)).seq

        tombstone = yield self.jet.run(acknowledged)
        yield self.release(tombstone)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_removal_stored_unanswered(self):
        """
        This store's acknowledgement whose tombstone JetStream stored but
        never answered, read by its watch after the failure: the message
        counts out then (it stayed counted for good).
        """
        from cairn.mailbox.interfaces import StoreFull

        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        (held,) = yield self.here.fetch(B, 0, 16)
        stored_unanswered(self, self.here)
        yield self.assertFailure(self.here.acknowledge(B, [held.seq], 2.0, 100.0), StoreFull)
        self.assertEqual(self.here.depths()[B].messages, 1)
        yield self.release(seq + 1)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_removal_cut_short_stored(self):
        """
        An acknowledgement whose 3rd tombstone publish raises at once, the
        first two stored, then tried again at the same time: the watch,
        reading after both, counts the first two out and the rest once
        (the first two stayed counted for good).
        """
        from cairn.mailbox.interfaces import StoreFull
        from tests.test_cluster_mailbox_removal import ROOMY

        yield self.here.enqueue([item(payload=b"m%d" % i) for i in range(5)], 1.0, ROOMY)
        seqs = [m.seq for m in (yield self.here.fetch(B, 0, 16))]
        third_publish_raises(self, self.here)
        yield self.assertFailure(self.here.acknowledge(B, seqs, 2.0, 100.0), StoreFull)
        self.assertEqual(self.here.depths()[B].messages, 5)
        receipts = yield self.here.acknowledge(B, seqs, 2.0, 100.0)  # its retry: the last three
        self.assertEqual(len(receipts), 3)
        yield self.release(max(r.rseq for r in receipts))
        self.assertEqual([d for d in self.depths if d < 0], [])
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def earlier_tombstone_read_while_the_retry_writes(self, retry_at):
        """
        An acknowledgement whose tombstone JetStream stored but never
        answered; its retry (at C{retry_at}) writes the message's tombstone
        again from its copy, and the watch reads the first tombstone while
        that write is in flight: it is refused, the first having landed.
        """
        from cairn.mailbox.interfaces import StoreFull

        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        (held,) = yield self.here.fetch(B, 0, 16)
        stored_unanswered(self, self.here)
        yield self.assertFailure(self.here.acknowledge(B, [held.seq], 2.0, 100.0), StoreFull)
        publish, answers = self.here.acks.publish, []

        async def answered_later(subject, payload, headers, *rest):
            written = await publish(subject, payload, headers, *rest)
            answer = asyncio.get_running_loop().create_future()
            self.jet.thread.to_reactor(self.conditions.changed, answers.append(answer))

            async def later():
                await answer
                return await written

            return asyncio.ensure_future(later())

        self.patch(self.here.acks, "publish", answered_later)
        retried = self.here.acknowledge(B, [held.seq], retry_at, 100.0)
        yield self.conditions.until(lambda: answers)

        async def open_gate():
            self.gate.set_result(None)

        yield self.here._run(open_gate)
        yield self.conditions.until(lambda: self.here._counted_upto >= seq + 1)
        yield self.jet.run(lambda: _answer(answers[0]))
        yield retried
        yield self.here.flushed()
        self.assertEqual([d for d in self.depths if d < 0], [])
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    def test_earlier_tombstone_read_while_the_retry_writes(self):
        """
        The earlier tombstone, read while the retry's write of another is
        in flight, counts its message out (it stayed counted for good).
        """
        return self.earlier_tombstone_read_while_the_retry_writes(3.0)

    def test_earlier_tombstone_of_the_same_time_read_while_the_retry_writes(self):
        """
        Likewise when the retry's tombstone has the same C{Cairn-At} (an
        acknowledgement tried again at the storage limit): its refusal
        counts the earlier one's message out.
        """
        return self.earlier_tombstone_read_while_the_retry_writes(2.0)


async def _answer(future):
    future.set_result(None)


class MaybeRemovedTests(unittest.TestCase):
    """C{MaybeRemoved} driven directly: which unanswered tombstone write counts its message out."""

    def test_two_unanswered_writes(self):
        """
        Two writes of a message's tombstone both unanswered (an
        acknowledgement and its retry): whichever the watch reads counts
        the message out (the second's record replaced the first's).
        """
        from cairn.cluster import direct as D
        from cairn.cluster.mailbox_partly import MaybeRemoved
        from cairn.cluster.pubacks import LeaderChanged

        for landed in ("2.0", "3.0"):
            maybe = MaybeRemoved()
            for at in ("2.0", "3.0"):
                headers = {D.AT: at, D.EXPECT_LAST: "7"}
                maybe.begun(7, headers)
                self.assertIsNone(maybe.answered(7, headers, LeaderChanged("a new leader")))
            tombstone = D.Held("cairn.mbox.r.s.00", 8, {D.AT: landed, D.EXPECT_LAST: "7"}, b"")
            self.assertTrue(maybe.seen(tombstone))
            self.assertFalse(maybe.seen(tombstone))


class ReplayedTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_watch_recreated_from_the_streams_start(self):
        """
        The watch's consumer recreated from the stream's first seq (what
        nats-py does when it missed heartbeats before delivering anything:
        its last seq is 0) counts nothing twice.
        """
        _, jet = yield _jetstream.single(self)
        conditions, replayed = Conditions(), []
        elsewhere, here = JetStreamMailboxStore(jet), JetStreamMailboxStore(jet)
        yield elsewhere.start()
        yield elsewhere.enqueue([item(payload=b"abc"), item(payload=b"de")], 1.0, LIMITS)
        seen = here._seen

        def watched(held):
            seen(held)
            jet.thread.to_reactor(conditions.changed, replayed.append(held.seq))

        here._seen = watched
        here.follow_needed()  # another node is seen (presence)
        yield here.start()
        self.assertEqual(here.depths()[B].messages, 2)  # the load's

        async def recreated():
            await here._watching  # subscribed
            # The ordered consumer's own recovery (nats-py 2.16, _JSI.activity_check): from its last seq + 1.
            (jsi,) = [s._jsi for s in jet.nc._subs.values() if s._jsi is not None and s._jsi._stream == here.stream]
            await jsi.reset_ordered_consumer(jsi._sseq + 1)

        yield jet.run(recreated)
        yield conditions.until(lambda: 2 in replayed)
        yield here.flushed()  # the reactor calls the watch made are before this answer
        self.assertEqual(here.depths()[B].messages, 2)


class PlainTombstoneTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_purge_elsewhere_of_what_a_peer_sent_itself(self):
        """
        A purge made elsewhere replaces what the peer sent itself by a
        tombstone without a receipt: it leaves this store's depths too (it
        stayed counted until this node's restart).
        """
        _, jet = yield _jetstream.single(self)
        here, elsewhere = JetStreamMailboxStore(jet), JetStreamMailboxStore(jet)
        conditions, seen = Conditions(), here._seen

        def watched(held):
            seen(held)
            jet.thread.to_reactor(conditions.changed)

        here._seen = watched
        here.follow_needed()  # another node is seen (presence)
        yield here.start()
        yield elsewhere.start()
        ((_, seq),) = yield here.enqueue([item(sender=B, payload=b"abc")], 1.0, LIMITS)
        yield conditions.until(lambda: here._counted_upto >= seq)
        yield elsewhere.purge(B, 3.0, 100.0)
        yield conditions.until(lambda: here._counted_upto >= seq + 1)
        yield here.flushed()
        self.assertNotIn(B, here.depths())
        self.assertEqual(here.total_bytes(), 0)


class PartlyStoredTests(unittest.TestCase):
    """
    A call some of whose messages JetStream stored and some it refused
    (at its storage limit, seen with two nodes writing at once) fails as a
    whole, STORAGE_ERROR to the senders; what it did store is held all the
    same, so it counts in the depths (it showed -1 each once delivered).
    """

    @defer.inlineCallbacks
    def test_stored_ones_counted(self):
        from cairn.mailbox.interfaces import PartlyStored

        _, jet = yield _jetstream.single(self)
        store = JetStreamMailboxStore(jet)
        yield store.start()
        publish = refuse_write(store, 10023, "insufficient resources")
        items = [item(payload=b"a"), item(payload=b"bb"), item(payload=b"ccc")]
        failure = yield self.assertFailure(store.enqueue(items, 1.0, LIMITS), PartlyStored)
        self.assertEqual([r and r[0] for r in failure.results], [STORED, None, STORED])
        self.assertEqual((store.depths()[B].messages, store.depths()[B].bytes), (2, 4))
        store.acks.publish = publish
        held = yield store.fetch(B, 0, 16)
        self.assertEqual([m.payload for m in held], [b"a", b"ccc"])
        yield store.acknowledge(B, [m.seq for m in held], 2.0, 100.0)
        self.assertNotIn(B, store.depths())
        self.assertEqual(store.total_bytes(), 0)


class PartlyRemovedTests(unittest.TestCase):
    """
    An acknowledgement some of whose tombstones JetStream stored and some
    it refused (at an R3 account's limit, three nodes filling it at once:
    docs/scaling.md "Sizing") fails, and the service tries it again; what
    it did remove is removed all the same, so it counts out of the depths
    and its receipts are owed. (The retry finds those removed and counts
    nothing: the recipient's depth kept them until the node restarted.)
    """

    @defer.inlineCallbacks
    def test_removed_ones_counted(self):
        from cairn.mailbox.interfaces import PartlyRemoved

        _, jet = yield _jetstream.single(self)
        store = JetStreamMailboxStore(jet)
        yield store.start()
        items = [item(payload=b"a"), item(payload=b"bb"), item(payload=b"ccc")]
        yield store.enqueue(items, 1.0, LIMITS)
        seqs = [m.seq for m in (yield store.fetch(B, 0, 16))]
        publish = refuse_write(store, 10002, "resource limits exceeded for account")
        failure = yield self.assertFailure(store.acknowledge(B, seqs, 2.0, 100.0), PartlyRemoved)
        self.assertEqual([r.message_id for r in failure.receipts], [items[0].message_id, items[2].message_id])
        self.assertEqual((store.depths()[B].messages, store.depths()[B].bytes), (1, 2))
        store.acks.publish = publish
        (receipt,) = yield store.acknowledge(B, seqs, 3.0, 100.0)
        self.assertEqual(receipt.message_id, items[1].message_id)
        self.assertNotIn(B, store.depths())
        self.assertEqual(store.total_bytes(), 0)


def refuse_tombstones(testcase, store):
    """Every tombstone the store's removals write is refused for want of room, with the reserve released (burial)."""
    from cairn.cluster.common import KIND
    from cairn.cluster.pubacks import PublishError

    publish = store.acks.publish

    async def refused(subject, payload, headers, *rest):
        if (headers or {}).get(KIND) is None:
            return await publish(subject, payload, headers, *rest)
        future = asyncio.get_running_loop().create_future()
        future.set_exception(PublishError(10002, "resource limits exceeded for account"))
        return future

    async def released():
        return True

    testcase.patch(store.acks, "publish", refused)
    testcase.patch(store, "_released", released)


class Burials:
    """What the burial tests share: stores whose watch tells the test, and a dead node's record."""

    def watched(self):
        store = JetStreamMailboxStore(self.jet)
        seen = store._seen

        def watched(held):
            seen(held)
            self.jet.thread.to_reactor(self.conditions.changed)

        store._seen = watched
        return store

    @defer.inlineCallbacks
    def until_watched(self):
        """Both watches are at the stream's last seq, and what they made the reactor do is done."""
        info = yield self.jet.run(self.jet.js.stream_info, self.here.stream)
        for store in (self.here, self.elsewhere):
            yield self.conditions.until(lambda store=store: store._counted_upto >= info.state.last_seq)
            yield store.flushed()

    @defer.inlineCallbacks
    def dead_record(self, seq, delete):
        """
        The record a node killed in its burial left of message C{seq}
        (L{cairn.cluster.mailbox_room.Room._bury}), the message deleted
        too if C{delete}; fires with its name and entries.
        """
        from nats.js.api import ConsumerConfig

        from cairn.cluster import direct as D
        from cairn.cluster import mailbox_room as R
        from cairn.cluster.common import MESSAGE_WRITER, WRITER
        from cairn.cluster.mailbox_layout import receipt_headers

        jet = self.jet
        held = yield jet.run(D.direct_seq, jet.nc, self.here.stream, seq)
        headers = receipt_headers(ForwardStatus.STORED, 2.0, held.headers[D.EXPIRES], len(held.data))
        headers.update({WRITER: "dead", MESSAGE_WRITER: held.headers[WRITER]})
        entries = [[seq, held.subject, True, headers]]
        name = f"{R.OWED}dead-1"
        metadata = {R.KEY: __import__("json").dumps(entries)}
        config = ConsumerConfig(durable_name=name, filter_subject=jet.subject("reserve", "owed"), metadata=metadata)
        yield jet.run(jet.js_writes.add_consumer, jet.stream("reserve"), config=config)
        if delete:
            yield jet.run(D.delete, jet.js_writes, self.here.stream, seq)
        return name, entries


class BuriedTwiceTests(Burials, unittest.TestCase):
    """
    Two records of owed removals may hold the same message
    (L{cairn.cluster.mailbox_room}): a node killed in its burial leaves its
    record, and the next node's removal of the message buries it again
    (C{tests/test_cluster_reserve_killed.py}, real processes: depths of
    -30 and +30 left for good). Whichever record's tombstone is written
    first, each store counts the message out once.
    """

    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.conditions = Conditions()
        self.here, self.elsewhere = self.watched(), self.watched()
        for store in (self.here, self.elsewhere):
            store.follow_needed()  # another node is seen (presence)
            yield store.start()

    @defer.inlineCallbacks
    def test_buried_here_then_the_dead_nodes_tombstone(self):
        """
        The dead node's record is paid after this store buried the message
        (its own tombstone still owed): counted out here once (it was -1).
        """
        ((_, seq),) = yield self.elsewhere.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        yield self.until_watched()
        self.assertEqual(self.here.depths()[B].messages, 1)
        name, entries = yield self.dead_record(seq, delete=False)
        refuse_tombstones(self, self.here)
        pay = self.here._pay

        async def owed_still(record, entries, finish):
            if record.startswith("owed-dead"):
                return await pay(record, entries, finish)
            return {}, True  # refused for want of room: left to a later settle

        self.patch(self.here, "_pay", owed_still)
        receipts = yield self.here.acknowledge(B, [seq], 2.0, 100.0)
        self.assertEqual(receipts, [])  # owed: it comes with its tombstone
        self.assertNotIn(B, self.here.depths())
        written, owed = yield self.jet.run(self.elsewhere._pay, name, entries, True)
        self.assertEqual((list(written), owed), ([entries[0][1]], False))
        yield self.until_watched()
        self.assertNotIn(B, self.here.depths())
        self.assertNotIn(B, self.elsewhere.depths())
        self.assertEqual((self.here.total_bytes(), self.elsewhere.total_bytes()), (0, 0))

    @defer.inlineCallbacks
    def test_deleted_by_the_dead_node_buried_here(self):
        """
        The dead node deleted the message; this store, which had handed
        it out, buries it again and its own record's tombstone comes
        first: counted out here once (it stayed counted), and elsewhere.
        """
        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        yield self.until_watched()
        (held,) = yield self.here.fetch(B, 0, 16)
        name, entries = yield self.dead_record(seq, delete=True)
        refuse_tombstones(self, self.here)
        yield self.here.acknowledge(B, [held.seq], 2.0, 100.0)
        yield self.until_watched()
        self.assertNotIn(B, self.here.depths())
        self.assertNotIn(B, self.elsewhere.depths())
        written, owed = yield self.jet.run(self.elsewhere._pay, name, entries, True)
        self.assertEqual((written, owed), ({}, False))  # the tombstone is there: the record goes
        yield self.until_watched()
        self.assertNotIn(B, self.here.depths())
        self.assertEqual((self.here.total_bytes(), self.elsewhere.total_bytes()), (0, 0))

    @defer.inlineCallbacks
    def test_restarted_after_the_deletion(self):
        """
        A node started after a dead node's burial deleted a message (its
        tombstone still owed) never counted it in: the tombstone, paid
        later, counts nothing there (it was -1 for good).
        """
        ((_, seq),) = yield self.elsewhere.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        name, entries = yield self.dead_record(seq, delete=True)
        started = self.watched()
        started.follow_needed()
        yield started.start()
        self.assertNotIn(B, started.depths())
        written, owed = yield self.jet.run(started._pay, name, entries, True)
        self.assertEqual((list(written), owed), ([entries[0][1]], False))
        yield self.until_watched()
        yield self.conditions.until(lambda: started._counted_upto >= written[entries[0][1]])
        yield started.flushed()
        self.assertNotIn(B, started.depths())
        self.assertNotIn(B, self.elsewhere.depths())  # counted in at its enqueue, out by the tombstone

    @defer.inlineCallbacks
    def test_full_fetch_reads_the_stream(self):
        """
        While full, a fetch is answered from the stream, not from what the
        watch saw: a message another node buried (deleted, its tombstone
        owed) is not delivered again (it was, from the watch's memory).
        """
        ((_, seq), _) = yield self.elsewhere.enqueue([item(payload=b"abc"), item(payload=b"defg")], 1.0, LIMITS)
        yield self.until_watched()
        yield self.dead_record(seq, delete=True)
        self.patch(self.jet.reserve, "full", True)
        self.assertEqual([m.payload for m in (yield self.here.fetch(B, 0, 16))], [b"defg"])


class BuryingTests(unittest.TestCase):
    """L{BuriedHere}: a tombstone seen while this store's burial of its message is in flight."""

    def test_deleted_here(self):
        """The burial removed it: counted out there; the tombstone counts nothing, now or later."""
        marks = BuriedHere()
        marks.burying([1, 2])
        self.assertFalse(marks.counts(1, "one"))
        self.assertEqual(marks.buried([1, 2], {1, 2}), [])
        self.assertFalse(marks.counts(2, "two"))
        self.assertTrue(marks.counts(2, "two, again"))  # the mark went with its tombstone

    def test_deleted_elsewhere_first(self):
        """Another node's burial deleted it first: its tombstone counts out, seen meanwhile or after."""
        marks = BuriedHere()
        marks.burying([1, 2])
        self.assertFalse(marks.counts(1, "one"))
        self.assertEqual(marks.buried([1, 2], set()), ["one"])
        self.assertTrue(marks.counts(2, "two"))

    def test_uncounted(self):
        marks = BuriedHere()
        marks.uncounted([7])
        self.assertFalse(marks.counts(7, "seven"))
        self.assertTrue(marks.counts(8, "eight"))

    def test_bounded(self):
        from cairn.cluster import mailbox_room

        self.patch(mailbox_room, "MARKS", 2)
        marks = BuriedHere()
        marks.uncounted([1, 2, 3])
        self.assertEqual([marks.counts(seq, seq) for seq in (1, 2, 3)], [True, False, False])


class OneStore(Burials):
    """One store, alone on a fresh single server (no other node seen: no watch)."""

    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.conditions = Conditions()
        self.here = self.elsewhere = self.watched()
        yield self.here.start()


class BuriedByAnEarlierProcessTests(OneStore, unittest.TestCase):
    """A store alone (no other node seen: no watch), restarted after its node was killed in a burial."""

    @defer.inlineCallbacks
    def test_pays_the_earlier_processs_record(self):
        """
        Finishing the record of the process before its restart, the
        store counts the message out (it stayed counted: alone, no watch
        read the tombstone).
        """
        from cairn.cluster import mailbox_room

        self.patch(mailbox_room, "OTHERS_AFTER", 0.0)
        here = self.here
        ((_, seq),) = yield here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        yield self.dead_record(seq, delete=False)
        self.assertEqual((yield here.settle()), 1)  # deleted, its tombstone at the next poll
        self.assertEqual((yield here.settle()), 0)
        yield self.until_watched()
        self.assertNotIn(B, here.depths())
        self.assertEqual(here.total_bytes(), 0)


def stored_unanswered(testcase, store, nth=1):
    """The store's C{nth} write from now is stored, but its answer is lost (a new leader elected meanwhile)."""
    from cairn.cluster.pubacks import LeaderChanged

    publish, calls = store.acks.publish, []

    async def unanswered(subject, payload, headers, *rest):
        written = await publish(subject, payload, headers, *rest)
        calls.append(subject)
        if len(calls) != nth:
            return written
        await written
        future = asyncio.get_running_loop().create_future()
        future.set_exception(LeaderChanged("cairn_mbox elected a new leader while the write was in flight"))
        return future

    testcase.patch(store.acks, "publish", unanswered)


class StoredUnansweredTests(OneStore, unittest.TestCase):
    """
    A forward whose write JetStream stored but never answered is refused
    STORAGE_ERROR (the sender sends it again, answered DUPLICATE): it is
    held, so it counts in once it is found, and its removal counts out
    only what counted in (its node showed -1 for good once delivered:
    five such forwards in one run of tests/test_cluster_reserve_r3_nodes.py).
    """

    @defer.inlineCallbacks
    def refused(self, message, watching=False):
        """
        C{message} stored, its write refused unanswered: not counted in --
        unless this store's watch (C{watching}) has read it meanwhile,
        which is a race the test does not decide (one full run under load).
        """
        from cairn.mailbox.interfaces import StoreFull

        stored_unanswered(self, self.here)
        yield self.assertFailure(self.here.enqueue([message], 1.0, LIMITS), StoreFull)
        if not watching:
            self.assertNotIn(B, self.here.depths())

    @defer.inlineCallbacks
    def counted_once(self, message, at):
        """The sender sends C{message} (3 bytes) again at C{at}: DUPLICATE, counted in once, then out at its removal."""
        (result,) = yield self.here.enqueue([message], at, LIMITS)
        self.assertEqual(result[0], ForwardStatus.DUPLICATE)
        yield self.here.flushed()
        self.assertEqual((self.here.depths()[B].messages, self.here.total_bytes()), (1, 3))
        (held,) = yield self.here.fetch(B, 0, 16)
        yield self.here.acknowledge(B, [held.seq], at + 1, 100.0)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_sent_again(self):
        """The sender's retry is answered DUPLICATE and finds it: counted in; its removal counts it out."""
        message = item(payload=b"abc")
        yield self.refused(message)
        yield self.counted_once(message, 2.0)

    @defer.inlineCallbacks
    def retried_in_vain(self, spoil):
        """
        The message stored unanswered; the sender's first retry (at 2.0)
        decides nothing, C{spoil} having made it fail; its second (at
        3.0) is answered DUPLICATE and counts the message in once; its
        removal counts it out. (The first retry's failure lost the
        record of the unanswered write: 20 messages never counted in, or
        counted out on another node's removal only, after a leader's kill
        -9 under load, where retries met 503s during the election.)
        """
        from cairn.mailbox.interfaces import StoreFull

        message = item(payload=b"abc")
        yield self.refused(message)
        spoil()
        yield self.assertFailure(self.here.enqueue([message], 2.0, LIMITS), StoreFull)
        yield self.counted_once(message, 3.0)

    def test_retry_refused(self):
        """The first retry refused without being stored (503: no stream answered, an election)."""
        def refused():
            publish = refuse_write(self.here, 503, "no responders", nth=1)
            self.addCleanup(setattr, self.here.acks, "publish", publish)

        return self.retried_in_vain(refused)

    def test_retry_whose_read_fails(self):
        """The first retry, refused as the subject is taken, cannot read what holds it (a timeout)."""
        from cairn.cluster import direct

        last, calls = direct.direct_last, []

        async def fails_once(*args, **kwargs):
            calls.append(args)
            if len(calls) == 1:
                raise TimeoutError("nats: timeout")
            return await last(*args, **kwargs)

        return self.retried_in_vain(lambda: self.patch(direct, "direct_last", fails_once))

    def test_retry_unanswered(self):
        """
        The first retry's answer (refused: the subject is taken) lost too:
        the message held is the first write's, not the retry's (its
        C{Cairn-Stored} 1.0, the retry's 2.0), and still counts in.
        """
        return self.retried_in_vain(lambda: stored_unanswered(self, self.here))

    @defer.inlineCallbacks
    def test_rewritten_past_its_tombstone_unanswered(self):
        """
        Sent again once its tombstone's time is past (its id free again),
        the write over the tombstone stored unanswered: the sender's retry,
        answered DUPLICATE, counts it in (it showed 0 while held, then -1
        at its removal).
        """
        from cairn.mailbox.interfaces import StoreFull

        message = item(payload=b"abc")
        ((_, seq),) = yield self.here.enqueue([message], 1.0, LIMITS)
        yield self.here.acknowledge(B, [seq], 2.0, 100.0)
        later = 2.0 + LIMITS.max_age
        # The call's first write (its subject taken: refused) is answered, the second (over the tombstone) not.
        stored_unanswered(self, self.here, nth=2)
        yield self.assertFailure(self.here.enqueue([message], later, LIMITS), StoreFull)
        yield self.counted_once(message, later + 1)

    @defer.inlineCallbacks
    def test_call_cut_short_after_two_writes(self):
        """
        An enqueue of three whose third publish raises at once (nats-py's
        connection closed): the first two, written but never awaited, are
        stored; the sender's retry of all three counts each once (the two
        were held uncounted).
        """
        from cairn.mailbox.interfaces import StoreFull
        from tests.test_cluster_mailbox_removal import ROOMY

        messages = [item(payload=b"m%d" % i) for i in range(3)]
        third_publish_raises(self, self.here)
        yield self.assertFailure(self.here.enqueue(messages, 1.0, ROOMY), StoreFull)
        self.patch(self.here.acks, "publish", self.here._publish)
        results = yield self.here.enqueue(messages, 2.0, ROOMY)
        self.assertEqual(sorted(r[0] for r in results), [ForwardStatus.STORED] + [ForwardStatus.DUPLICATE] * 2)
        yield self.here.flushed()
        self.assertEqual((self.here.depths()[B].messages, self.here.total_bytes()), (3, 6))
        held = yield self.here.fetch(B, 0, 16)
        yield self.here.acknowledge(B, [m.seq for m in held], 3.0, 100.0)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_never_sent_again(self):
        """Delivered without a retry: never counted in, its removal counts nothing (it was -1)."""
        yield self.refused(item(payload=b"abc"))
        (held,) = yield self.here.fetch(B, 0, 16)
        yield self.here.acknowledge(B, [held.seq], 3.0, 100.0)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_removed_elsewhere(self):
        """Another node removes it: this node's watch counts it in when it reads it, then out."""
        self.elsewhere = self.watched()
        for store in (self.here, self.elsewhere):
            store.follow_needed()
        yield self.elsewhere.start()
        yield self.refused(item(payload=b"abc"), watching=True)
        yield self.until_watched()
        (held,) = yield self.elsewhere.fetch(B, 0, 16)
        yield self.elsewhere.acknowledge(B, [held.seq], 3.0, 100.0)
        yield self.until_watched()
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_removal_stored_unanswered(self):
        """
        An acknowledgement whose tombstone JetStream stored but never
        answered, read by this store before the failure: the removal is
        made, counted out, its receipt owed (the message stayed counted for good).
        """
        ((_, seq),) = yield self.here.enqueue([item(payload=b"abc")], 1.0, LIMITS)
        (held,) = yield self.here.fetch(B, 0, 16)
        stored_unanswered(self, self.here)
        (receipt,) = yield self.here.acknowledge(B, [held.seq], 2.0, 100.0)
        self.assertEqual(receipt.rseq, seq + 1)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)


class WritesEndedTests(OneStore, unittest.TestCase):
    """
    An acknowledgement that ends before it awaited each of its tombstone
    writes leaves none of them in C{MaybeRemoved.writing} (they stayed
    there for good: a leak, and a later tombstone of the message taken
    for theirs); those JetStream stored count out as unanswered ones do
    (C{RemovedBeforeTheWatchTests.test_removal_cut_short_stored} too).
    """

    @defer.inlineCallbacks
    def handed_out(self, count):
        from tests.test_cluster_mailbox_removal import ROOMY

        yield self.here.enqueue([item(payload=b"m%d" % i) for i in range(count)], 1.0, ROOMY)
        seqs = [m.seq for m in (yield self.here.fetch(B, 0, 16))]
        self.assertEqual(len(seqs), count)
        return seqs

    def never_answered(self):
        """
        A PubAck future never answered, held as the store's pending PubAcks
        are (a task waiting on a future that nothing else holds is garbage:
        collected, its call ended early).
        """
        import asyncio

        future = asyncio.get_running_loop().create_future()
        self.addCleanup(lambda: self.jet.thread.call(future.cancel))
        return future

    def writing(self):
        async def copy():  # on the NATS loop, whose state it is
            return dict(self.here._maybe_removed.writing)

        return self.jet.run(copy)

    @defer.inlineCallbacks
    def test_publish_raising_midway(self):
        """The 3rd of 5 tombstone publishes raises at once (nats-py's connection closed): it fails, leaving nothing."""
        seqs = yield self.handed_out(5)
        calls = third_publish_raises(self, self.here)
        yield self.assertFailure(self.here.acknowledge(B, seqs, 2.0, 100.0), Exception)
        self.assertEqual(len(calls), 3)
        self.assertEqual((yield self.writing()), {})

    @defer.inlineCallbacks
    def test_cancelled_while_awaiting_the_pubacks(self):
        """The call is cancelled (the node's stop) while its PubAcks are awaited: nothing is left."""
        import asyncio

        seqs = yield self.handed_out(5)
        calls = []

        async def unanswered(subject, payload, headers, *rest):
            self.jet.thread.to_reactor(self.conditions.changed, calls.append(subject))
            return self.never_answered()

        self.patch(self.here.acks, "publish", unanswered)
        d = self.here.acknowledge(B, seqs, 2.0, 100.0)
        yield self.conditions.until(lambda: len(calls) == 5)

        async def cancel():
            (acknowledging,) = [t for t in asyncio.all_tasks() if "_acknowledge" in t.get_coro().__qualname__]
            acknowledging.cancel()

        yield self.jet.run(cancel)
        yield self.assertFailure(d, Exception)
        self.assertEqual((yield self.writing()), {})

    @defer.inlineCallbacks
    def test_cancelled_after_the_tombstones_were_read(self):
        """
        Cancelled (the node's stop) while awaiting PubAcks it was not given,
        the 5 tombstones stored and read by the store already: the messages
        count out (they stayed counted for good).
        """
        import asyncio

        seqs = yield self.handed_out(5)
        publish = self.here.acks.publish

        async def unanswered(subject, payload, headers, *rest):
            await publish(subject, payload, headers, *rest)  # stored and answered, the answer kept from the call
            return self.never_answered()

        self.patch(self.here.acks, "publish", unanswered)
        d = self.here.acknowledge(B, seqs, 2.0, 100.0)
        # (Alone, the store reads its own writes from their answers: mailbox_alone.)
        yield self.conditions.until(lambda: self.here._counted_upto >= seqs[-1] + 5)
        self.assertEqual(self.here.depths()[B].messages, 5)

        async def cancel():
            (acknowledging,) = [t for t in asyncio.all_tasks() if "_acknowledge" in t.get_coro().__qualname__]
            acknowledging.cancel()

        yield self.jet.run(cancel)
        yield self.assertFailure(d, Exception)
        yield self.here.flushed()
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_no_store_starts_again_on_a_closed_connection(self):
        """
        Once its connection is closed -- where the NATS loop cancels what
        still runs, a removal too (its confirmed tombstones not counted
        out: nothing reads the figures after) -- no store starts on it again.
        """
        from cairn.cluster.mailbox import JetStreamMailboxStore

        yield self.jet.close()
        for store in (self.here, JetStreamMailboxStore(self.jet)):
            yield self.assertFailure(store.start(), RuntimeError)


class AfterTheTombstonesTests(OneStore, unittest.TestCase):
    """
    A removal that fails after its tombstones were stored, in a read or a
    write that follows them: what they removed counts out all the same
    (it stayed counted for good: the retry finds the messages removed).
    """

    @defer.inlineCallbacks
    def enqueued(self, count):
        from tests.test_cluster_mailbox_removal import ROOMY

        results = yield self.here.enqueue([item(payload=b"m%d" % i) for i in range(count)], 1.0, ROOMY)
        return [seq for _, seq in results]

    async def failing(self, *args, **kwargs):
        raise TimeoutError("nats: timeout")

    @defer.inlineCallbacks
    def test_acknowledgement_whose_oldest_read_fails(self):
        """The read of the oldest message left fails: the acknowledgement is made all the same, and counts out."""
        seqs = yield self.enqueued(3)
        self.patch(self.here, "_read", self.failing)
        (receipt,) = yield self.here.acknowledge(B, seqs[:1], 2.0, 100.0)
        self.assertEqual(receipt.rseq, seqs[-1] + 1)
        self.assertEqual(self.here.depths()[B].messages, 2)
        self.assertEqual(self.here.total_bytes(), 4)

    @defer.inlineCallbacks
    def test_expiry_whose_deletions_fail(self):
        """Deleting what is past its time fails after the expired messages' tombstones: PartlyRemoved, counted out."""
        from cairn.cluster import direct
        from cairn.mailbox.interfaces import PartlyRemoved
        from tests.test_cluster_mailbox_removal import ROOMY

        yield self.enqueued(2)
        self.patch(direct, "delete_all", self.failing)
        failure = yield self.assertFailure(self.here.expire(2.0 + ROOMY.max_age, 10, 100.0), PartlyRemoved)
        self.assertEqual(len(failure.receipts), 2)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)

    @defer.inlineCallbacks
    def test_purge_whose_consumed_marks_fail(self):
        """Marking the purged peer's receipts consumed fails after its tombstones: PartlyRemoved, counted out."""
        from cairn.mailbox.interfaces import PartlyRemoved

        yield self.enqueued(2)
        self.patch(self.here, "_consume_all", self.failing)
        failure = yield self.assertFailure(self.here.purge(B, 2.0, 100.0), PartlyRemoved)
        self.assertEqual(len(failure.receipts), 2)
        self.assertNotIn(B, self.here.depths())
        self.assertEqual(self.here.total_bytes(), 0)
