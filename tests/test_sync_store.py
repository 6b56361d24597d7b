"""
The sync stores: one behaviour mixin run against the SQLite store and its
in-memory twin, plus SQLite-only checks (one log row per update, the
expiry index, group commit).
"""

import os
import sqlite3

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.db import Database
from cairn.mailbox.interfaces import Limits
from cairn.sync.access import Access
from cairn.sync.interfaces import SYNC_SCHEMA, ISyncStore, Publish, Topic
from cairn.sync.store import MemorySyncStore, SQLiteSyncStore
from cairn.wire.constants import SyncStatus

A, B, C = "QmDeviceA", "QmDeviceB", "QmDeviceC"
LIMITS = Limits(max_per_peer=3, max_total=100, max_age=100.0)


def item(topic="notes", sender=A, payload=b"x" * 10, update_id=None):
    return Publish(sender, topic, update_id or os.urandom(16), payload)


class StoreMixin:
    """Behaviour every L{ISyncStore} shares; C{make_store} returns a started store (Deferred)."""

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield self.make_store()

    def publish(self, *items, now=0.0, limits=LIMITS):
        return self.store.publish(list(items), now, limits)

    def test_interface(self):
        """The store provides ISyncStore."""
        verifyObject(ISyncStore, self.store)

    @defer.inlineCallbacks
    def test_publish_fetch_in_order_per_topic(self):
        """Each topic numbers its updates from 1 and gives them back in order after a cursor."""
        results = yield self.publish(item(payload=b"1"), item("other", payload=b"o"), item(payload=b"2"))
        self.assertEqual(results, [(SyncStatus.COMMITTED, 1), (SyncStatus.COMMITTED, 1), (SyncStatus.COMMITTED, 2)])
        held = yield self.store.fetch("notes", 0, 10)
        self.assertEqual([(u.seq, u.payload, u.sender) for u in held], [(1, b"1", A), (2, b"2", A)])
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 1, 10))], [2])
        self.assertEqual(self.store.topics()["notes"], Topic(head=2, floor=0, updates=2, bytes=2))
        self.assertEqual(self.store.total_bytes(), 3)

    @defer.inlineCallbacks
    def test_duplicate(self):
        """A known (sender, id) is a duplicate answered with the seq it was given."""
        first = item()
        yield self.publish(first)
        self.assertEqual((yield self.publish(first)), [(SyncStatus.DUPLICATE, 1)])
        self.assertEqual(self.store.topics()["notes"].updates, 1)

    @defer.inlineCallbacks
    def test_cursors(self):
        """A new cursor starts at the floor, only rises, stops at the head, and a given seq replaces it."""
        yield self.publish(item(), item())
        self.assertEqual((yield self.store.subscribe(B, {"notes": None})), {"notes": 0})
        self.assertEqual((yield self.store.set_cursor(B, "notes", 1)), 1)
        self.assertEqual((yield self.store.set_cursor(B, "notes", 0)), 1)
        self.assertEqual((yield self.store.set_cursor(B, "notes", 99)), 2)
        self.assertEqual((yield self.store.subscribe(B, {"notes": None})), {"notes": 2})
        self.assertEqual((yield self.store.subscribe(B, {"notes": 1})), {"notes": 1})
        self.assertIsNone((yield self.store.set_cursor(C, "notes", 1)))
        self.assertEqual(self.store.cursors(), {B: {"notes": 1}})

    @defer.inlineCallbacks
    def test_expire_raises_floor(self):
        """Expiry removes what is past its age and raises the topic's floor; a new cursor starts there."""
        yield self.publish(item(), now=0.0)
        yield self.publish(item(), now=50.0)
        self.assertEqual((yield self.store.expire(120.0, 10)), (1, False))
        self.assertEqual(self.store.topics()["notes"], Topic(head=2, floor=1, updates=1, bytes=10))
        self.assertEqual([u.seq for u in (yield self.store.fetch("notes", 0, 10))], [2])
        self.assertEqual((yield self.store.subscribe(C, {"notes": None})), {"notes": 1})

    @defer.inlineCallbacks
    def test_total_bytes_evicts_oldest(self):
        """Over the total, the oldest updates of any topic go first and their floors rise."""
        for i in range(10):
            yield self.publish(item("a" if i % 2 else "b"), now=float(i))
        yield self.publish(item("a", payload=b"y" * 25), now=10.0)
        self.assertLessEqual(self.store.total_bytes(), LIMITS.max_total)
        topics = self.store.topics()
        self.assertEqual((topics["b"].floor, topics["a"].floor), (2, 1))
        self.assertEqual(topics["a"].head, 6)

    @defer.inlineCallbacks
    def test_purge_drops_cursors(self):
        """Purging a device drops its cursors only."""
        yield self.store.subscribe(B, {"notes": None, "other": None})
        yield self.store.subscribe(C, {"notes": None})
        self.assertEqual((yield self.store.purge(B)), 2)
        self.assertEqual(self.store.cursors(), {C: {"notes": 0}})

    @defer.inlineCallbacks
    def test_access_set_cleared_and_purged(self):
        """A device's access grant is kept until set back to the default (None) or the device is purged."""
        grant = Access(("notes",), ("notes", "photos/*"))
        self.assertEqual((yield self.store.set_access(B, grant)), grant)
        yield self.store.set_access(C, Access())
        self.assertEqual(self.store.access(), {B: grant, C: Access()})
        self.assertEqual((self.store.grant_of(B), self.store.grant_of(C)), (grant, Access()))
        yield self.store.set_access(C, None)
        yield self.store.purge(B)
        self.assertEqual(self.store.access(), {})
        self.assertEqual((self.store.grant_of(B), self.store.grant_of(C)), (None, None))


class MemoryStoreTests(StoreMixin, unittest.TestCase):
    def make_store(self):
        store = MemorySyncStore()
        return store.start().addCallback(lambda _: store)


class SQLiteStoreTests(StoreMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def make_store(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "cairn.sqlite")
        self.db = Database(reactor, self.path, [SYNC_SCHEMA])
        yield self.db.start()
        self.addCleanup(self.db.stop)
        store = SQLiteSyncStore(self.db)
        yield store.start()
        return store

    def rows(self, sql):
        with sqlite3.connect(self.path) as conn:
            return conn.execute(sql).fetchall()

    @defer.inlineCallbacks
    def test_reload(self):
        """A new store on the same database loads the topics and cursors."""
        yield self.publish(item(), item())
        yield self.store.subscribe(B, {"notes": 1})
        again = SQLiteSyncStore(self.db)
        yield again.start()
        self.assertEqual(again.topics(), self.store.topics())
        self.assertEqual(again.cursors(), {B: {"notes": 1}})
        self.assertEqual(again.total_bytes(), 20)

    @defer.inlineCallbacks
    def test_access_reloaded(self):
        """Access grants are persisted: a new store on the same database has them."""
        yield self.store.set_access(B, Access(("a*",), ()))
        again = SQLiteSyncStore(self.db)
        yield again.start()
        self.assertEqual(again.access(), {B: Access(("a*",), ())})

    @defer.inlineCallbacks
    def test_group_commit(self):
        """Publishes arriving while a commit is in flight share the next transaction."""
        yield self.publish(item())
        before = self.store.commits
        yield defer.gatherResults([self.publish(item()) for _ in range(20)])
        self.assertLessEqual(self.store.commits - before, 2)
        self.assertEqual(self.store.topics()["notes"].head, 21)

    @defer.inlineCallbacks
    def test_fetch_shows_nothing_unsynced(self):
        """
        A fetch made while a publish's group is written but its WAL sync is
        not done waits for that sync: no device is given an update that a
        crash could still undo (and whose seq a later update could take).
        """
        from tests.test_mailbox_store import hold_syncs

        gates, requested = hold_syncs(self.db)
        done = []
        self.publish(item(payload=b"held")).addCallback(lambda r: requested.changed(done.append(r)))
        yield requested.until(lambda: gates)  # written, its sync held
        self.store.fetch("notes", 0, 10).addCallback(lambda h: requested.changed(done.append([u.payload for u in h])))
        yield requested.until(lambda: len(gates) == 2 or done)
        self.assertEqual(done, [])  # committed and visible, but not on disk yet
        for gate in gates:
            gate.callback(None)
        yield requested.until(lambda: len(done) == 2)
        self.assertEqual(done, [[(SyncStatus.COMMITTED, 1)], [b"held"]])

    def test_expiry_uses_index(self):
        """The sweep's query is answered from the expiry index, not a scan of the log."""
        plan = self.rows(
            "EXPLAIN QUERY PLAN SELECT topic, seq, length(payload) FROM sync_log"
            " WHERE expires_at <= 1 ORDER BY expires_at LIMIT 10"
        )
        self.assertIn("sync_log_by_expiry", " ".join(str(r) for r in plan))
