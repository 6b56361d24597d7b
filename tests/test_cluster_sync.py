"""
The JetStream sync store (L{cairn.cluster.sync}) against a real
nats-server: the contract of L{tests.test_sync_store.StoreMixin}, then
contiguous per-topic seqs with two writers racing, a reload, and what
another writer (node) stores reaching this store's watch and caches.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster.kv_whole import kv_stream_and_prefix
from cairn.cluster.sync import JetStreamSyncStore
from cairn.cluster.sync_follow import topic_token
from cairn.mailbox.interfaces import Limits
from cairn.sync import access
from cairn.sync.interfaces import Publish, Topic
from cairn.wire.constants import SyncStatus
from tests import _jetstream
from tests.test_sync import SyncScenarioMixin
from tests.test_sync_store import LIMITS, B, StoreMixin, item


def loaded(jet):
    """The topic figures a new store's start-up load reads (without its watch)."""
    d = jet.run(JetStreamSyncStore(jet)._load)
    return d.addCallback(lambda result: {name: log.topic() for name, log in result[0].items()})


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


class StoredUnansweredTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_counted_when_sent_again(self):
        """
        An update JetStream stored but never answered (its stream elected
        a new leader meanwhile) fails; sent again it is DUPLICATE, and now
        counted in the topic's figures (they left it out until a restart).
        """
        from tests.test_cluster_mailbox_counted import stored_unanswered

        _, jet = yield _jetstream.single(self)
        store = JetStreamSyncStore(jet)
        yield store.start()
        stored_unanswered(self, jet)
        update = item()
        yield self.assertFailure(store.publish([update], 0.0, LIMITS), Exception)
        results = yield store.publish([update], 1.0, LIMITS)
        self.assertEqual(results, [(SyncStatus.DUPLICATE, 1)])
        self.assertEqual(store.topics()["notes"], Topic(1, 0, 1, 10))


class JetStreamSyncScenarioTests(SyncScenarioMixin, unittest.TestCase):
    """The sync hub scenarios (fan-out, cursors, retention, SyncReset, purge) with the store on JetStream."""

    @defer.inlineCallbacks
    def make_store(self):
        _, self.jet = yield _jetstream.single(self)
        return JetStreamSyncStore(self.jet)

    @defer.inlineCallbacks
    def test_fan_out_follows_writes_made_elsewhere(self):
        """An update another writer (node) stores reaches this node's subscribers at once."""
        reader, writer = self.device(), self.device()
        yield reader.connect({"notes": None})
        yield self.subscribed(reader)
        elsewhere = JetStreamSyncStore(self.jet)
        yield elsewhere.start()
        update_id = os.urandom(16)
        sealed = self.keyring.seal("notes", writer.peer_id, update_id, b"from afar")
        item = Publish(writer.peer_id, "notes", update_id, sealed)
        results = yield elsewhere.publish([item], self.clock.seconds(), self.limits)
        self.assertEqual(results, [(SyncStatus.COMMITTED, 1)])
        yield self.until(lambda: reader.data() == [b"from afar"])
        self.assertEqual(self.store.topics()["notes"].head, 1)


class WatchTests(unittest.TestCase):
    """Two stores on one NATS server, as two nodes would be."""

    @defer.inlineCallbacks
    def setUp(self):
        from tests._harness import Conditions

        _, jet = yield _jetstream.single(self)
        self.here, self.elsewhere = JetStreamSyncStore(jet), JetStreamSyncStore(jet)
        yield self.here.start()
        yield self.elsewhere.start()
        self.conditions = Conditions()
        self.told, self.mine = [], []
        self.here.watch(lambda topic: self.conditions.changed(self.told.append(topic)))
        self.elsewhere.watch(self.mine.append)
        # Grants and cursors have no watch callback: re-check when they arrive.
        for name in ("_granted_elsewhere", "_cursor_elsewhere"):
            method = getattr(self.here, name)
            setattr(self.here, name, lambda *a, m=method: self.conditions.changed(m(*a)))

    @defer.inlineCallbacks
    def test_updates_written_elsewhere_are_reported(self):
        """Another writer's updates reach this store's watch() and topics (head, counts); its own do not."""
        yield self.elsewhere.publish([item(payload=b"abc"), item(payload=b"de")], 7.0, LIMITS)
        yield self.conditions.until(lambda: self.told == ["notes", "notes"])
        self.assertEqual(self.here.topics(), self.elsewhere.topics())
        self.assertEqual(self.here.total_bytes(), 5)
        self.assertEqual(self.mine, [])
        # The next publish here continues the seqs without a failed first try.
        results = yield self.here.publish([item()], 8.0, LIMITS)
        self.assertEqual(results, [(SyncStatus.COMMITTED, 3)])

    @defer.inlineCallbacks
    def test_updates_dropped_by_a_slow_watch(self):
        """Another writer's updates, cursors and grants that this store's watches dropped (slow consumer) reach it."""
        yield self.elsewhere.publish([item(payload=b"abc")], 7.0, LIMITS)
        yield self.elsewhere.subscribe(B, {"notes": None})
        yield self.conditions.until(lambda: self.told == ["notes"] and B in self.here.cursors())
        jet = self.here.jet
        choked = yield _jetstream.choke(jet, jet.stream("sync"))
        self.assertEqual(choked, 2)  # both stores' update watches (one connection)
        choked = yield _jetstream.choke(jet, kv_stream_and_prefix(jet.kv["cursors"])[0])
        self.assertEqual(choked, 2)
        yield self.elsewhere.publish([item(payload=b"de"), item(payload=b"f")], 8.0, LIMITS)
        yield self.elsewhere.set_cursor(B, "notes", 2)
        grant = access.Access(("notes",), ())
        yield self.elsewhere.set_access(B, grant)
        yield self.conditions.until(lambda: self.told == ["notes"] * 3 and self.here.access() == {B: grant})
        self.assertEqual(self.here.cursors(), {B: {"notes": 2}})
        self.assertEqual(self.here.topics(), self.elsewhere.topics())
        self.assertEqual([w.resumed for w in self.here._stream_watches], [1, 1])

    @defer.inlineCallbacks
    def test_retention_elsewhere_raises_the_floor(self):
        """Another writer's sweep that empties a topic (a floor marker) raises this store's floor."""
        yield self.elsewhere.publish([item(), item()], 0.0, LIMITS)
        yield self.conditions.until(lambda: len(self.told) == 2)
        yield self.elsewhere.expire(LIMITS.max_age + 1, 10)
        yield self.conditions.until(lambda: self.here.topics()["notes"].floor == 2)
        self.assertEqual(self.here.topics(), self.elsewhere.topics())

    @defer.inlineCallbacks
    def test_removals_elsewhere_are_followed(self):
        """
        Another writer's sweep that leaves updates in place (a floor
        notice) raises this store's floor and lowers its counts and bytes.
        """
        yield self.elsewhere.publish([item(payload=b"abc"), item(payload=b"de")], 0.0, LIMITS)
        yield self.elsewhere.publish([item(payload=b"fghi")], 50.0, LIMITS)
        yield self.conditions.until(lambda: len(self.told) == 3)
        yield self.elsewhere.expire(LIMITS.max_age + 1, 10)
        self.assertEqual(self.elsewhere.topics()["notes"], Topic(3, 2, 1, 4))
        yield self.conditions.until(lambda: self.here.topics()["notes"].floor == 2)
        self.assertEqual(self.here.topics(), self.elsewhere.topics())
        self.assertEqual(self.here.total_bytes(), 4)
        self.assertEqual(self.told[3:], ["notes"])  # the service pumps: a device behind gets SyncReset

    @defer.inlineCallbacks
    def test_one_floor_notice_kept_per_topic(self):
        """Each removal writes a notice that raises the floor; the older ones are purged (the stream does not grow)."""
        from cairn.cluster import direct

        for day in range(3):
            yield self.elsewhere.publish([item(), item()], day * LIMITS.max_age, LIMITS)
            yield self.elsewhere.expire((day + 1) * LIMITS.max_age - 1, 10)
        jet = self.elsewhere.jet
        subject = jet.subject("sync", topic_token("notes"), "floor")
        held = yield jet.run(direct.direct_all, jet.nc, jet.stream("sync"), subject)
        self.assertEqual([h.headers["Cairn-Seq"] for h in held], ["4"])
        yield self.conditions.until(lambda: self.here.topics().get("notes") == Topic(6, 4, 2, 20))

    @defer.inlineCallbacks
    def test_eviction_elsewhere_is_followed(self):
        """Another writer's eviction (over max_total) lowers this store's figures to what is held."""
        yield self.elsewhere.publish([item(topic="b"), item(topic="a")], 0.0, LIMITS)
        yield self.elsewhere.publish([item(topic="b") for _ in range(9)], 1.0, LIMITS)
        yield self.conditions.until(lambda: self.here.topics().get("b", Topic()).floor == 1)
        self.assertEqual(self.here.topics(), self.elsewhere.topics())
        self.assertEqual(self.here.total_bytes(), self.elsewhere.total_bytes())
        self.assertEqual(self.here.total_bytes(), 100)
        self.assertEqual(self.here.topics()["b"], Topic(10, 1, 9, 90))

    @defer.inlineCallbacks
    def test_one_removal_made_twice_counts_once(self):
        """
        Both writers sweep the same range at once: each store's figures
        end at what is held (as a new store loads them), not lowered twice.
        """
        yield self.elsewhere.publish([item(payload=b"abc"), item(payload=b"de")], 0.0, LIMITS)
        yield self.here.publish([item(payload=b"fghi"), item(payload=b"jk")], 0.0, LIMITS)
        yield self.elsewhere.publish([item(payload=b"kept")], 50.0, LIMITS)
        yield self.conditions.until(lambda: len(self.told) == 3)
        yield defer.gatherResults(
            [self.here.expire(LIMITS.max_age + 1, 10), self.elsewhere.expire(LIMITS.max_age + 1, 10)]
        )
        # Each watch has seen every notice once it sees the other's update written after them.
        self.elsewhere.watch(self.conditions.changed)
        yield self.elsewhere.publish([item(payload=b"last")], 60.0, LIMITS)
        yield self.here.publish([item(payload=b"mine")], 60.0, LIMITS)
        yield self.conditions.until(
            lambda: self.here.topics()["notes"].head == self.elsewhere.topics()["notes"].head == 7
        )
        reloaded = JetStreamSyncStore(self.elsewhere.jet)
        yield reloaded.start()
        held = reloaded.topics()["notes"]
        self.assertEqual(held, Topic(7, 4, 3, 12))
        self.assertEqual(self.here.topics(), {"notes": held})
        self.assertEqual(self.elsewhere.topics(), {"notes": held})
        self.assertEqual((self.here.total_bytes(), self.elsewhere.total_bytes()), (12, 12))

    @defer.inlineCallbacks
    def test_grants_and_cursors_written_elsewhere_follow(self):
        """Access grants and cursors stored or purged by another writer reach this store's caches."""
        grant = access.Access(("notes",), ())
        yield self.elsewhere.set_access(B, grant)
        yield self.elsewhere.subscribe(B, {"notes": None})
        yield self.conditions.until(lambda: self.here.access() == {B: grant} and B in self.here.cursors())
        self.assertEqual(self.here.cursors(), {B: {"notes": 0}})
        yield self.elsewhere.purge(B)
        yield self.conditions.until(lambda: self.here.access() == {} and self.here.cursors() == {})


class LoadToWatchGapTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_nothing_written_between_load_and_watch_is_missed(self):
        """An update another writer stores after this store's start-up load, before its watch, is counted once."""
        from tests._harness import Conditions

        _, jet = yield _jetstream.single(self)
        here, elsewhere = JetStreamSyncStore(jet), JetStreamSyncStore(jet)
        yield elsewhere.start()
        yield elsewhere.publish([item(payload=b"ab")], 1.0, LIMITS)  # read by the load
        conditions, told = Conditions(), []
        here.watch(lambda topic: conditions.changed(told.append(topic)))
        follow = here._follow

        async def late():
            # On the NATS loop, between the load and the watch: another writer stores.
            await elsewhere._publish([item(payload=b"cde")], 1.0, LIMITS, 0)
            await follow()

        here._follow = late
        yield here.start()
        yield conditions.until(lambda: told == ["notes"])
        self.assertEqual(here.topics()["notes"].head, 2)
        self.assertEqual(here.total_bytes(), 5)

    @defer.inlineCallbacks
    def test_removal_told_during_the_load_is_followed(self):
        """
        Another writer removes updates this store's load has read, then
        stores one that the load reads too: the removal is followed all the same.
        """
        from cairn.cluster import direct
        from tests._harness import Conditions

        _, jet = yield _jetstream.single(self)
        here, elsewhere = JetStreamSyncStore(jet), JetStreamSyncStore(jet)
        yield elsewhere.start()
        yield elsewhere.publish([item(payload=b"ab"), item(payload=b"cde")], 0.0, LIMITS)
        yield elsewhere.publish([item(payload=b"f")], 50.0, LIMITS)
        read = direct.direct_all

        async def meanwhile(*args, **kwargs):
            # On the NATS loop, once the load has read the updates.
            found = await read(*args, **kwargs)
            self.patch(direct, "direct_all", read)
            await elsewhere._expire(LIMITS.max_age + 1, 10)
            await elsewhere._publish([item(payload=b"gh")], 60.0, LIMITS, 0)
            return found

        self.patch(direct, "direct_all", meanwhile)
        conditions = Conditions()
        here.watch(conditions.changed)
        yield here.start()
        yield conditions.until(lambda: here.topics()["notes"].floor == 2)
        self.assertEqual(here.topics(), {"notes": Topic(4, 2, 2, 3)})
        self.assertEqual(here.total_bytes(), 3)

    @defer.inlineCallbacks
    def test_cursor_written_between_load_and_watch_is_followed(self):
        """A cursor another writer saves after this store's start-up load, before its watch, reaches this store."""
        from tests._harness import Conditions

        _, jet = yield _jetstream.single(self)
        here, elsewhere = JetStreamSyncStore(jet), JetStreamSyncStore(jet)
        yield elsewhere.start()
        yield elsewhere.subscribe(B, {"notes": None})
        yield elsewhere.publish([item(), item()], 1.0, LIMITS)
        conditions = Conditions()
        method = here._cursor_elsewhere
        here._cursor_elsewhere = lambda *a: conditions.changed(method(*a))
        follow = here._follow

        async def late():
            # On the NATS loop, between the load and the watch: another writer saves a cursor.
            await elsewhere.jet.kv["cursors"].put(f"{B}.{topic_token('notes')}", b"2")
            await follow()

        here._follow = late
        yield here.start()
        yield conditions.until(lambda: here.cursors().get(B) == {"notes": 2})


class ReadYourWritesTests(unittest.TestCase):
    """
    Reads after a write on a replicated (R3) stream, the client connected
    to a follower only: any replica answers a direct get, and nats-server
    ignores C{min_last_seq}, so a follower that has not applied an
    acknowledged write yet answers without it (as for the mailbox,
    L{tests.test_cluster_mailbox.ReadYourWritesTests}).
    """

    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.cluster, self.jet = yield _jetstream.on_a_follower(self, "sync")
        self.store = JetStreamSyncStore(self.jet)
        yield self.store.start()

    @defer.inlineCallbacks
    def test_fetch_sees_each_acknowledged_publish(self):
        """A fetch right after each publish returns that update, every time (a subscriber's catch-up)."""
        missed = []
        for i in range(300):
            ((status, seq),) = yield self.store.publish([item()], 1.0, ROOMY)
            self.assertEqual(status, SyncStatus.COMMITTED)
            fetched = yield self.store.fetch("notes", seq - 1, 16)
            if [u.seq for u in fetched] != [seq]:
                missed.append((i, seq, [u.seq for u in fetched]))
        self.assertEqual(missed, [])

    @defer.inlineCallbacks
    def test_fetch_sees_what_was_written_elsewhere(self):
        """Once the watch reports another writer's update, a fetch returns it, every time."""
        from tests._harness import Conditions

        elsewhere = JetStreamSyncStore(self.jet)
        yield elsewhere.start()
        conditions, told, missed = Conditions(), [], []
        self.store.watch(lambda topic: conditions.changed(told.append(topic)))
        for i in range(100):
            ((status, seq),) = yield elsewhere.publish([item()], 1.0, ROOMY)
            yield conditions.until(lambda i=i: len(told) == i + 1)
            fetched = yield self.store.fetch("notes", seq - 1, 16)
            if [u.seq for u in fetched] != [seq]:
                missed.append((i, seq, [u.seq for u in fetched]))
        self.assertEqual(missed, [])

    @defer.inlineCallbacks
    def test_load_counts_each_acknowledged_publish(self):
        """A start-up load right after each publish counts that update, every time (a node restarting)."""
        missed = []
        for i in range(300):
            ((status, seq),) = yield self.store.publish([item()], 1.0, ROOMY)
            self.assertEqual(status, SyncStatus.COMMITTED)
            topics = yield loaded(self.jet)
            if topics["notes"].head != seq or topics["notes"].updates != seq:
                missed.append((i, seq, topics["notes"]))
        self.assertEqual(missed, [])

    @defer.inlineCallbacks
    def test_eviction_frees_the_excess_every_time(self):
        """Each publish that goes over the total evicts down to it at once, every time."""
        limits = Limits(max_per_peer=10**6, max_total=10, max_age=1000.0)
        over = []
        for i in range(300):
            # All but the last of the three must go: the scan has to see them.
            yield self.store.publish([item(payload=b"x" * 6) for _ in range(3)], 1.0, limits)
            if self.store.total_bytes() > limits.max_total:
                over.append((i, self.store.total_bytes()))
        self.assertEqual(over, [])

    @defer.inlineCallbacks
    def test_sweep_removes_each_update_due(self):
        """A sweep right after each publish removes that update once due, every time."""
        missed = []
        for i in range(300):
            yield self.store.publish([item()], 0.0, ROOMY)
            count, _ = yield self.store.expire(ROOMY.max_age + 1, 10)
            if count != 1:
                missed.append((i, count))
        self.assertEqual(missed, [])


#: Limits no test here reaches (no eviction, no expiry).
ROOMY = Limits(max_per_peer=10**6, max_total=10**9, max_age=1000.0)


class StaleReplicaTests(unittest.TestCase):
    """What a read must see though a replica behind answers it (L{ReadYourWritesTests}, made certain)."""

    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.store = JetStreamSyncStore(self.jet)
        yield self.store.start()

    @defer.inlineCallbacks
    def test_fetch_after_publish(self):
        """A fetch after an acknowledged publish returns the update, read from the leader."""
        yield self.store.publish([item()], 1.0, ROOMY)
        _stale_replica(self, lambda: 0)
        ((_, seq),) = yield self.store.publish([item()], 1.0, ROOMY)
        self.assertEqual(seq, 2)
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 0, 16))], [1, 2])
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 1, 16))], [2])
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 0, 1))], [1])

    @defer.inlineCallbacks
    def test_fetch_after_written_elsewhere(self):
        """Once the watch reports another writer's update, a fetch returns it."""
        from tests._harness import Conditions

        elsewhere = JetStreamSyncStore(self.jet)
        yield elsewhere.start()
        conditions, told = Conditions(), []
        self.store.watch(lambda topic: conditions.changed(told.append(topic)))
        _stale_replica(self, lambda: 0)
        yield elsewhere.publish([item(), item()], 1.0, ROOMY)
        yield conditions.until(lambda: told == ["notes", "notes"])
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 0, 16))], [1, 2])

    @defer.inlineCallbacks
    def test_publish_with_a_stale_last(self):
        """
        A publish that expected a stale last message (its watch had not yet
        reported another writer's update) and re-reads the topic's last
        message from a replica behind still commits, with the next seq.
        """
        from tests._harness import Conditions

        elsewhere = JetStreamSyncStore(self.jet)
        yield elsewhere.start()
        conditions, told = Conditions(), []
        self.store.watch(lambda topic: conditions.changed(told.append(topic)))
        yield self.store.publish([item()], 1.0, ROOMY)
        behind = self.store._last["notes"]
        _stale_replica(self, lambda: behind[0])
        yield elsewhere.publish([item()], 1.0, ROOMY)
        yield conditions.until(lambda: told == ["notes"])
        yield self.jet.run(self._forget, behind)
        results = yield self.store.publish([item()], 1.0, ROOMY)
        self.assertEqual(results, [(SyncStatus.COMMITTED, 3)])
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 0, 16))], [1, 2, 3])

    @defer.inlineCallbacks
    def test_leader_asked_only_when_behind(self):
        """A fetch the replica answers in full, or of a topic whose updates are all removed, asks the leader nothing."""
        from cairn.cluster import direct

        asked = []
        leader_next = direct.leader_next

        async def counted(*args):
            asked.append(args)
            return await leader_next(*args)

        self.patch(direct, "leader_next", counted)
        yield self.store.publish([item(), item()], 1.0, ROOMY)
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 0, 16))], [1, 2])
        yield self.store.expire(ROOMY.max_age + 2, 10)
        self.assertEqual((yield self.store.fetch("notes", 0, 16)), [])
        self.assertEqual(asked, [])

    @defer.inlineCallbacks
    def test_load_reads_what_the_leader_has(self):
        """A start-up load answered by a replica behind still counts every acknowledged update."""
        yield self.store.publish([item(payload=b"ab"), item("other", payload=b"c")], 1.0, ROOMY)
        yield self.store.publish([item(payload=b"def")], 1.0, ROOMY)
        _stale_replica(self, lambda: 0)
        topics = yield loaded(self.jet)
        self.assertEqual(topics, self.store.topics())
        # Started, its watch takes over from there: nothing is counted twice.
        again = JetStreamSyncStore(self.jet)
        yield again.start()
        self.assertEqual(again.topics(), self.store.topics())
        self.assertEqual(again.total_bytes(), 6)
        self.assertEqual([u.seq for u in (yield again.fetch("notes", 0, 16))], [1, 2])
        self.assertEqual((yield again.publish([item()], 1.0, ROOMY)), [(SyncStatus.COMMITTED, 3)])

    @defer.inlineCallbacks
    def test_eviction_reads_what_the_leader_has(self):
        """An eviction whose scan a replica behind answers still frees the whole excess at once."""
        limits = Limits(max_per_peer=10**6, max_total=10, max_age=1000.0)
        _stale_replica(self, lambda: 0)
        yield self.store.publish([item(payload=b"a" * 6), item(payload=b"b" * 6), item(payload=b"c" * 6)], 1.0, limits)
        self.assertEqual(self.store.total_bytes(), 6)
        self.assertEqual([u.payload for u in (yield self.store.fetch("notes", 0, 16))], [b"c" * 6])

    @defer.inlineCallbacks
    def test_expiry_reads_what_the_leader_has(self):
        """A sweep whose scan a replica behind answers still removes every update due."""
        _stale_replica(self, lambda: 0)
        yield self.store.publish([item(), item()], 0.0, ROOMY)
        self.assertEqual((yield self.store.expire(ROOMY.max_age + 1, 10)), (2, False))
        self.assertEqual(self.store.topics()["notes"].floor, 2)
        self.assertEqual((yield self.store.fetch("notes", 0, 16)), [])

    @defer.inlineCallbacks
    def test_eviction_past_removed_updates_a_replica_still_shows(self):
        """An eviction whose scan a replica shows updates already removed still frees the whole excess at once."""
        from cairn.cluster import direct

        limits = Limits(max_per_peer=10**6, max_total=12, max_age=1000.0)
        yield self.store.publish([item(payload=b"a" * 6), item(payload=b"b" * 6)], 1.0, limits)
        ghosts = yield self.jet.run(direct.direct_all, self.jet.nc, self.jet.stream("sync"), "cairn.sync.*")
        yield self.store.publish([item(payload=b"c" * 6)], 1.0, limits)  # evicts a
        ghostly = _ghost_replica(self, ghosts)  # ... which the replica still shows
        yield self.store.publish([item(payload=b"d" * 6)], 1.0, limits)
        self.assertEqual(self.store.total_bytes(), 12)
        ghostly.restore()  # the replica catches up
        self.assertEqual([u.payload for u in (yield self.store.fetch("notes", 0, 16))], [b"c" * 6, b"d" * 6])

    @defer.inlineCallbacks
    def test_sweep_past_removed_updates_a_replica_still_shows(self):
        """
        A sweep whose scan a replica shows updates already removed removes
        a full batch of those due still, and then says there are no more
        (the service's sweep loops while there are).
        """
        from cairn.cluster import direct

        yield self.store.publish([item(), item(), item()], 0.0, ROOMY)
        ghosts = yield self.jet.run(direct.direct_all, self.jet.nc, self.jet.stream("sync"), "cairn.sync.*")
        late = ROOMY.max_age + 1
        self.assertEqual((yield self.store.expire(late, 1)), (1, True))
        _ghost_replica(self, ghosts)  # ... which the replica still shows
        self.assertEqual((yield self.store.expire(late, 2)), (2, True))
        self.assertEqual((yield self.store.expire(late, 2)), (0, False))
        self.assertEqual(self.store.topics()["notes"].floor, 3)

    async def _forget(self, behind):
        self.store._last["notes"] = behind  # as if the watch had not reported the other update yet


def _stale_replica(testcase, applied):
    """
    Have every direct get answered as by a follower that has applied the
    stream only up to seq C{applied()} (a callable), as any replica may.
    """
    from cairn.cluster import direct

    batch, last = direct.direct_batch, direct.direct_last

    async def stale_batch(nc, stream, start, size, subject=None, min_last=0, timeout=5.0):
        held, end = await batch(nc, stream, start, size, subject, min_last, timeout)
        return [h for h in held if h.seq <= applied()], end

    async def stale_last(nc, stream, subject, timeout=5.0):
        held = await last(nc, stream, subject, timeout)
        if held is not None and held.seq > applied():
            # The replica's last message on the subject, as it has applied it.
            older, _ = await batch(nc, stream, 1, 10**4, subject)
            older = [h for h in older if h.seq <= applied()]
            return older[-1] if older else None
        return held

    testcase.patch(direct, "direct_batch", stale_batch)
    testcase.patch(direct, "direct_last", stale_last)


def _ghost_replica(testcase, ghosts):
    """
    Have every direct get also answer the messages C{ghosts} (read
    earlier), as a replica that has not applied their removal yet would;
    returns the patch (C{restore()} ends it).
    """
    from cairn.cluster import direct

    batch = direct.direct_batch

    def matches(subject, pattern):
        if pattern is None:
            return True
        a, b = subject.split("."), pattern.split(".")
        return len(a) == len(b) and all(p in ("*", t) for t, p in zip(a, b))

    async def ghostly(nc, stream, start, size, subject=None, min_last=0, timeout=5.0):
        held, end = await batch(nc, stream, start, size, subject, min_last, timeout)
        extra = [g for g in ghosts if g.seq >= start and matches(g.subject, subject)]
        merged = sorted({h.seq: h for h in extra + held}.values(), key=lambda h: h.seq)
        return merged[:size], end

    return testcase.patch(direct, "direct_batch", ghostly)
