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
from cairn.wire.constants import ForwardStatus
from tests import _jetstream
from tests._harness import Conditions
from tests.test_mailbox_store import LIMITS, B, item

STORED = ForwardStatus.STORED


def refuse_second_write(store, err_code, description):
    """The store's second write from now on is refused (JetStream at its limit); returns the unpatched publish."""
    from cairn.cluster.pubacks import PublishError

    publish, calls = store.acks.publish, []

    async def second_refused(subject, payload, headers, *rest):
        calls.append(subject)
        if len(calls) == 2:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(PublishError(err_code, description))
            return future
        return await publish(subject, payload, headers, *rest)

    store.acks.publish = second_refused
    return publish


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
        publish = refuse_second_write(store, 10023, "insufficient resources")
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
        publish = refuse_second_write(store, 10002, "resource limits exceeded for account")
        failure = yield self.assertFailure(store.acknowledge(B, seqs, 2.0, 100.0), PartlyRemoved)
        self.assertEqual([r.message_id for r in failure.receipts], [items[0].message_id, items[2].message_id])
        self.assertEqual((store.depths()[B].messages, store.depths()[B].bytes), (1, 2))
        store.acks.publish = publish
        (receipt,) = yield store.acknowledge(B, seqs, 3.0, 100.0)
        self.assertEqual(receipt.message_id, items[1].message_id)
        self.assertNotIn(B, store.depths())
        self.assertEqual(store.total_bytes(), 0)
