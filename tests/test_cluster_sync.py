"""
The JetStream sync store (L{cairn.cluster.sync}) against a real
nats-server: the contract of L{tests.test_sync_store.StoreMixin}, then
contiguous per-topic seqs with two writers racing, and a reload.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster.sync import JetStreamSyncStore
from cairn.wire.constants import SyncStatus
from tests import _jetstream
from tests.test_sync import SyncScenarioMixin
from tests.test_sync_store import LIMITS, B, StoreMixin, item


class JetStreamStoreTests(StoreMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def make_store(self):
        self.server, self.jet = yield _jetstream.single(self)
        store = JetStreamSyncStore(self.jet)
        yield store.start()
        return store

    @defer.inlineCallbacks
    def test_two_writers_keep_seqs_contiguous(self):
        """Two stores publishing to one topic at once get seqs 1..N, each once, with no gap."""
        other = JetStreamSyncStore(self.jet)
        yield other.start()
        calls = []
        for i in range(30):
            store = self.store if i % 2 else other
            calls.append(store.publish([item(payload=b"%d" % i)], 0.0, LIMITS))
        results = yield defer.gatherResults(calls)
        seqs = sorted(seq for ((status, seq),) in results)
        self.assertEqual(seqs, list(range(1, 31)))
        self.assertEqual({status for ((status, _),) in results}, {SyncStatus.COMMITTED})
        held = yield self.store.fetch("notes", 0, 100)
        self.assertEqual([u.seq for u in held], list(range(1, 31)))

    @defer.inlineCallbacks
    def test_reload(self):
        """A new store on the same stream loads topics (the head kept by a marker once emptied) and cursors."""
        yield self.publish(item(), item(), now=0.0)
        yield self.store.subscribe(B, {"notes": 1})
        yield self.store.expire(1000.0, 10)
        again = JetStreamSyncStore(self.jet)
        yield again.start()
        self.assertEqual(again.topics(), self.store.topics())
        self.assertEqual(again.topics()["notes"].head, 2)
        self.assertEqual(again.cursors(), {B: {"notes": 1}})
        results = yield again.publish([item()], 1000.0, LIMITS)
        self.assertEqual(results, [(SyncStatus.COMMITTED, 3)])


class JetStreamSyncScenarioTests(SyncScenarioMixin, unittest.TestCase):
    """The sync hub scenarios (fan-out, cursors, retention, SyncReset, purge) with the store on JetStream."""

    @defer.inlineCallbacks
    def make_store(self):
        _, jet = yield _jetstream.single(self)
        return JetStreamSyncStore(jet)
