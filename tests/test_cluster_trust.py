"""
The KV trust store (L{cairn.cluster.trust}) against a real nats-server:
the contract of L{tests.test_trust.TrustStoreMixin}, then the mirror fed
by the bucket's watch and compare-and-set between two writers.
"""

from twisted.internet import defer
from twisted.trial import unittest

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
    def test_mirror_follows_other_writer(self):
        """A pairing and a revocation written by another store reach this one's is_paired, and its watchers."""
        other = yield self.started(self.jet)
        seen, conditions = [], Conditions()
        self.store.watch(lambda peer_id, record: conditions.changed(seen.append((peer_id, record and record.state))))
        peer_id, key = new_peer()
        yield other.set_paired(peer_id, key, "phone", "pin", 1.0)
        yield conditions.until(lambda: self.store.is_paired(peer_id))
        yield other.revoke(peer_id, 2.0)
        yield conditions.until(lambda: not self.store.is_paired(peer_id))
        self.assertEqual(seen, [(peer_id, "paired"), (peer_id, "revoked")])

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
