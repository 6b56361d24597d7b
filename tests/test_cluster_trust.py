"""
The KV trust store (L{cairn.cluster.trust}) against a real nats-server:
the contract of L{tests.test_trust.TrustStoreMixin}, then the mirror fed
by the bucket's watch and compare-and-set between two writers.
"""

from twisted.internet import defer
from twisted.logger import formatEvent
from twisted.trial import unittest

from cairn.cluster.kv_whole import kv_stream_and_prefix
from cairn.cluster.trust import KVTrustStore
from tests import _jetstream
from tests._harness import Conditions
from tests.test_trust import TrustStoreMixin, new_peer


class KVTrustStoreTests(TrustStoreMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def make_store(self):
        self.server, self.jet = yield _jetstream.single(self)
        store = yield self.started(self.jet)
        return store

    @defer.inlineCallbacks
    def started(self, jet):
        store = KVTrustStore(jet)
        self.addCleanup(store.stop)
        yield store.start()
        return store

    @defer.inlineCallbacks
    def test_survives_reopen(self):
        """A new store on the same bucket reads every record back identically."""
        peers = [new_peer() for _ in range(3)]
        yield self.store.add_pending(*peers[0], "pending one", 1.0)
        yield self.store.set_paired(*peers[1], "paired one", "link", 2.0)
        yield self.store.touch(peers[1][0], 2.5)
        yield self.store.set_paired(*peers[2], "gone", "psk", 3.0)
        yield self.store.revoke(peers[2][0], 4.0)
        yield self.store.flush()
        before = yield self.store.list()
        again = yield self.started(self.jet)
        self.assertEqual((yield again.list()), before)
        self.assertTrue(again.is_paired(peers[1][0]))
        self.assertFalse(again.is_paired(peers[2][0]))

    @defer.inlineCallbacks
    def test_last_seen_refused_at_the_limit_is_store_full(self):
        """
        Last-seen writes JetStream refuses at its storage limit fail the
        flush with StoreFull (one line in the pairing service's log), not a
        FirstError of the raw NATS error (a traceback, and an unhandled one).
        """
        from nats.js.errors import BadRequestError

        from cairn.mailbox.interfaces import StoreFull

        peers = [new_peer() for _ in range(2)]
        for i, peer in enumerate(peers):
            yield self.store.set_paired(*peer, f"peer {i}", "psk", 1.0)
            yield self.store.touch(peer[0], 2.0)

        async def refused(*args, **kwargs):
            raise BadRequestError(code=400, err_code=10002, description="resource limits exceeded for account")

        self.store._kv.update = refused
        yield self.assertFailure(self.store.flush(), StoreFull)

    @defer.inlineCallbacks
    def test_pairing_refused_at_the_limit_is_store_full(self):
        """
        A pairing JetStream refuses at its storage limit fails with
        StoreFull (the pairing service's one-line answer), not the raw NATS
        error; the mirror does not keep it.
        """
        from nats.js.errors import BadRequestError

        from cairn.mailbox.interfaces import StoreFull

        async def refused(*args, **kwargs):
            raise BadRequestError(code=400, err_code=10002, description="resource limits exceeded for account")

        self.store._kv.create = self.store._kv.update = refused
        peer_id, key = new_peer()
        yield self.assertFailure(self.store.set_paired(peer_id, key, "phone", "psk", 1.0), StoreFull)

    @defer.inlineCallbacks
    def paired_then_revoked_elsewhere(self, choke=False):
        """
        Another store pairs a peer, then revokes it (C{choke}: this store's
        watch a slow consumer in between): both reach this one's is_paired,
        and its watchers.
        """
        other = yield self.started(self.jet)
        seen, conditions = [], Conditions()
        self.store.watch(lambda peer_id, record: conditions.changed(seen.append((peer_id, record and record.state))))
        peer_id, key = new_peer()
        yield other.set_paired(peer_id, key, "phone", "pin", 1.0)
        yield conditions.until(lambda: self.store.is_paired(peer_id))
        if choke:
            choked = yield _jetstream.choke(self.jet, kv_stream_and_prefix(self.jet.kv["trust"])[0])
            self.assertEqual(choked, 2)  # both stores' watches (one connection)
        yield other.revoke(peer_id, 2.0)
        yield conditions.until(lambda: not self.store.is_paired(peer_id))
        self.assertEqual(seen, [(peer_id, "paired"), (peer_id, "revoked")])

    def test_mirror_follows_other_writer(self):
        """A pairing and a revocation written by another store reach this one's is_paired, and its watchers."""
        return self.paired_then_revoked_elsewhere()

    @defer.inlineCallbacks
    def test_revocation_dropped_by_a_slow_watch_arrives(self):
        """A revocation that this store's watch dropped as a slow consumer still reaches is_paired and the watchers."""
        yield self.paired_then_revoked_elsewhere(choke=True)
        self.assertEqual(self.store._watcher.rereads, 1)

    @defer.inlineCallbacks
    def test_compare_and_set(self):
        """A reject decided on a request another node has approved since is refused (Conflict), not applied."""
        from cairn.cluster.trust import Conflict

        other = yield self.started(self.jet)
        peer_id, key = new_peer()
        yield self.store.add_pending(peer_id, key, "phone", 1.0)
        conditions = Conditions()
        other.watch(lambda *args: conditions.changed())
        yield conditions.until(lambda: other._records.get(peer_id) is not None)
        other.stop()  # its mirror goes stale: it still sees the request pending
        yield self.store.set_paired(peer_id, key, "phone", "approval", 2.0)
        with self.assertRaises(Conflict):
            yield other.reject(peer_id)
        again = yield self.started(self.jet)
        self.assertTrue(again.is_paired(peer_id))

    @defer.inlineCallbacks
    def stale(self):
        """A second store on the bucket whose watch is stopped (its mirror learns nothing by itself)."""
        stale = yield self.started(self.jet)
        stale.stop()
        yield self.jet.thread.run(_settle)
        return stale

    @defer.inlineCallbacks
    def test_catch_up_reads_what_the_mirror_missed(self):
        """catch_up reads a peer paired by another writer into the mirror (and tells the watchers); revoked too."""
        stale = yield self.stale()
        seen = []
        stale.watch(lambda peer_id, record: seen.append((peer_id, record.state)))
        peer_id, key = new_peer()
        yield self.store.set_paired(peer_id, key, "phone", "pin", 1.0)
        self.assertFalse(stale.is_paired(peer_id))
        unsure = yield stale.catch_up([peer_id])
        self.assertTrue(stale.is_paired(peer_id))
        self.assertEqual(seen, [(peer_id, "paired")])
        self.assertEqual(unsure, frozenset())
        nobody, _ = new_peer()
        self.assertEqual((yield stale.catch_up([nobody])), frozenset())  # read: known not paired

    @defer.inlineCallbacks
    def test_catch_up_bounds(self):
        """
        What catch_up reads: peers the mirror does not know, valid peer ids
        only (never a wildcard key), at most MISS_BATCH per call, each at
        most once per MISS_AGAIN seconds, not while MISS_READS reads are in
        flight or NATS is not connected.
        """
        from twisted.internet import task

        from cairn.cluster import read_through as module

        stale = yield self.stale()
        clock = task.Clock()
        self.patch(self.jet, "clock", clock)
        reads = []

        async def read(peer_ids):
            reads.append(list(peer_ids))
            return []

        self.patch(stale, "_read", read)
        known, key = new_peer()
        yield self.store.set_paired(known, key, "phone", "pin", 1.0)
        yield stale.catch_up([known])  # the mirror does not know it: read
        unknown = [new_peer()[0] for _ in range(module.MISS_BATCH + 3)]
        yield stale.catch_up(["a.b", "*", ">", "", unknown[0]])
        yield stale.catch_up([unknown[0]])  # again within MISS_AGAIN: not read
        yield stale.catch_up(unknown)
        self.assertEqual(reads, [[known], [unknown[0]], unknown[1 : 1 + module.MISS_BATCH]])
        clock.advance(module.MISS_AGAIN)
        del reads[:]
        stale.reads.in_flight = module.MISS_READS
        self.assertEqual((yield stale.catch_up([unknown[0]])), frozenset())  # beyond the bounds: the mirror's answer
        stale.reads.in_flight = 0
        self.patch(self.jet, "state", "degraded")
        # NATS not connected: not read, and so not known unpaired.
        self.assertEqual((yield stale.catch_up([unknown[0]])), frozenset([unknown[0]]))
        self.assertEqual(reads, [])
        self.patch(self.jet, "state", "ok")
        yield stale.catch_up([unknown[0]])
        self.assertEqual(reads, [[unknown[0]]])
        self.patch(self.jet, "state", "degraded")
        self.assertEqual((yield stale.catch_up([unknown[0]])), frozenset())  # read a moment ago: that answer stands


    @defer.inlineCallbacks
    def test_catch_up_shares_a_read_in_flight(self):
        """Two calls for one peer while its read is in flight: one read; both fire after it, in the order asked."""
        stale = yield self.stale()
        reads, order = [], []
        real = stale._read

        async def read(peer_ids):
            reads.append(list(peer_ids))
            return await real(peer_ids)

        self.patch(stale, "_read", read)
        peer_id, key = new_peer()
        yield self.store.set_paired(peer_id, key, "phone", "pin", 1.0)
        first = stale.catch_up([peer_id]).addCallback(lambda _: order.append(("first", stale.is_paired(peer_id))))
        second = stale.catch_up([peer_id]).addCallback(lambda _: order.append(("second", stale.is_paired(peer_id))))
        yield defer.gatherResults([first, second])
        self.assertEqual(reads, [[peer_id]])
        self.assertEqual(order, [("first", True), ("second", True)])

    @defer.inlineCallbacks
    def test_catch_up_that_times_out(self):
        """A bucket that does not answer within MISS_TIMEOUT: catch_up fires (never fails), a warning says why."""
        import asyncio
        from types import SimpleNamespace

        from cairn.cluster import read_through as module
        from tests._harness import observe_logs

        stale = yield self.stale()

        async def never(key):
            await asyncio.Event().wait()

        self.patch(module, "MISS_TIMEOUT", 0.05)
        self.patch(self.jet, "kv", dict(self.jet.kv, trust=SimpleNamespace(get=never)))
        peer_id, _ = new_peer()
        events = observe_logs(self)
        unsure = yield stale.catch_up([peer_id])
        self.assertFalse(stale.is_paired(peer_id))
        self.assertEqual(unsure, frozenset([peer_id]))  # not known unpaired: its read failed
        self.assertEqual((yield stale.catch_up([peer_id])), frozenset([peer_id]))  # until a read succeeds
        texts = [formatEvent(event) for event in events]
        self.assertTrue(any("reading 1 peer(s) not known here failed" in text for text in texts), texts)


async def _settle():
    """One pass of the NATS loop (a watch's cancellation has run)."""
    import asyncio

    await asyncio.sleep(0)
