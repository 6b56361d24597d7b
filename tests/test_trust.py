"""
The trust store: one behaviour, checked against the SQLite store and its
in-memory twin.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.crypto.identity import Identity
from cairn.db import Database
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED, ITrustStore, UnknownPeer
from cairn.pairing.trust import TRUST_SCHEMA, MemoryTrustStore, SQLiteTrustStore


def new_peer():
    """(peer id, identity key) of a fresh identity."""
    identity = Identity.generate()
    return identity.peer_id, identity.public_key


class TrustStoreMixin:
    """Subclasses provide C{make_store()} (a Deferred firing with a started store)."""

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield self.make_store()

    def test_provides_interface(self):
        """The store provides ITrustStore."""
        self.assertTrue(verifyObject(ITrustStore, self.store))

    @defer.inlineCallbacks
    def test_unknown_peer(self):
        """An unknown peer is not paired, has no record, and touching it does nothing."""
        peer_id, _ = new_peer()
        self.assertFalse(self.store.is_paired(peer_id))
        self.assertIsNone((yield self.store.get(peer_id)))
        yield self.store.touch(peer_id, 5.0)
        self.assertEqual((yield self.store.list()), [])

    @defer.inlineCallbacks
    def test_pending_then_paired(self):
        """A pending request keeps its request time and name when paired, and gains method and paired-at."""
        peer_id, key = new_peer()
        record = yield self.store.add_pending(peer_id, key, "phone", 10.0)
        self.assertEqual((record.state, record.name, record.requested_at), (PENDING, "phone", 10.0))
        self.assertFalse(self.store.is_paired(peer_id))
        record = yield self.store.set_paired(peer_id, key, "", "approval", 20.0)
        self.assertTrue(self.store.is_paired(peer_id))
        self.assertEqual(
            (record.state, record.name, record.method, record.requested_at, record.paired_at),
            (PAIRED, "phone", "approval", 10.0, 20.0),
        )
        self.assertEqual((yield self.store.get(peer_id)), record)
        self.assertEqual(record.identity_key, key)

    @defer.inlineCallbacks
    def test_add_pending_keeps_paired(self):
        """add_pending on a paired peer leaves it paired."""
        peer_id, key = new_peer()
        yield self.store.set_paired(peer_id, key, "a", "psk", 1.0)
        record = yield self.store.add_pending(peer_id, key, "b", 2.0)
        self.assertEqual((record.state, record.name), (PAIRED, "a"))
        self.assertTrue(self.store.is_paired(peer_id))

    @defer.inlineCallbacks
    def test_add_pending_again_updates_name_only(self):
        """A repeated pending request keeps its first time and takes a new name unless the new one is empty."""
        peer_id, key = new_peer()
        yield self.store.add_pending(peer_id, key, "", 1.0)
        record = yield self.store.add_pending(peer_id, key, "tablet", 2.0)
        self.assertEqual((record.name, record.requested_at), ("tablet", 1.0))
        record = yield self.store.add_pending(peer_id, key, "", 3.0)
        self.assertEqual((record.name, record.requested_at), ("tablet", 1.0))

    @defer.inlineCallbacks
    def test_list_by_state(self):
        """list() returns every record ordered by peer id, or only those of a state."""
        peers = sorted(new_peer() for _ in range(3))
        yield self.store.add_pending(*peers[0], "", 1.0)
        yield self.store.set_paired(*peers[1], "", "psk", 1.0)
        yield self.store.set_paired(*peers[2], "", "pin", 1.0)
        yield self.store.revoke(peers[2][0], 2.0)
        everything = yield self.store.list()
        self.assertEqual([r.peer_id for r in everything], [p[0] for p in peers])
        self.assertEqual([r.peer_id for r in (yield self.store.list(PENDING))], [peers[0][0]])
        self.assertEqual([r.peer_id for r in (yield self.store.list(PAIRED))], [peers[1][0]])
        self.assertEqual([r.peer_id for r in (yield self.store.list(REVOKED))], [peers[2][0]])
        yield self.assertFailure(self.store.list("bogus"), ValueError)

    @defer.inlineCallbacks
    def test_reject(self):
        """Rejecting drops a pending request; rejecting anything else fails with UnknownPeer."""
        peer_id, key = new_peer()
        yield self.store.add_pending(peer_id, key, "x", 1.0)
        yield self.store.reject(peer_id)
        self.assertIsNone((yield self.store.get(peer_id)))
        yield self.assertFailure(self.store.reject(peer_id), UnknownPeer)
        yield self.store.set_paired(peer_id, key, "x", "psk", 2.0)
        yield self.assertFailure(self.store.reject(peer_id), UnknownPeer)
        self.assertTrue(self.store.is_paired(peer_id))

    @defer.inlineCallbacks
    def test_revoke(self):
        """Revoking a paired peer takes effect at once; revoking a peer that is not paired fails with UnknownPeer."""
        peer_id, key = new_peer()
        yield self.assertFailure(self.store.revoke(peer_id, 1.0), UnknownPeer)
        yield self.store.set_paired(peer_id, key, "x", "psk", 1.0)
        d = self.store.revoke(peer_id, 2.0)
        self.assertFalse(self.store.is_paired(peer_id))  # before the write is durable
        record = yield d
        self.assertEqual((record.state, record.paired_at, record.method), (REVOKED, 1.0, "psk"))
        yield self.assertFailure(self.store.revoke(peer_id, 3.0), UnknownPeer)

    @defer.inlineCallbacks
    def test_revoked_can_pair_again(self):
        """A revoked peer can be paired again."""
        peer_id, key = new_peer()
        yield self.store.set_paired(peer_id, key, "x", "psk", 1.0)
        yield self.store.revoke(peer_id, 2.0)
        record = yield self.store.set_paired(peer_id, key, "", "pin", 3.0)
        self.assertEqual((record.state, record.method, record.name, record.paired_at), (PAIRED, "pin", "x", 3.0))

    @defer.inlineCallbacks
    def test_touch(self):
        """touch() records last_seen for a known peer, whatever its state."""
        peer_id, key = new_peer()
        yield self.store.add_pending(peer_id, key, "", 1.0)
        yield self.store.touch(peer_id, 7.0)
        self.assertEqual((yield self.store.get(peer_id)).last_seen, 7.0)
        yield self.store.set_paired(peer_id, key, "", "psk", 8.0)
        self.assertEqual((yield self.store.get(peer_id)).last_seen, 7.0)

    @defer.inlineCallbacks
    def test_identity_must_match_peer_id(self):
        """A record whose identity key does not hash to its peer id is refused with ValueError."""
        peer_id, _ = new_peer()
        _, other_key = new_peer()
        yield self.assertFailure(self.store.add_pending(peer_id, other_key, "", 1.0), ValueError)
        yield self.assertFailure(self.store.set_paired(peer_id, b"short", "", "psk", 1.0), ValueError)
        self.assertIsNone((yield self.store.get(peer_id)))

    def test_to_json_has_no_key(self):
        """The management view of a record shows no key material."""
        peer_id, key = new_peer()
        d = self.store.set_paired(peer_id, key, "n", "psk", 1.0)
        d.addCallback(lambda record: self.assertNotIn("identity_key", record.to_json()))
        return d


class MemoryTrustStoreTests(TrustStoreMixin, unittest.TestCase):
    def make_store(self):
        store = MemoryTrustStore()
        return store.start().addCallback(lambda _: store)


class SQLiteTrustStoreTests(TrustStoreMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def make_store(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "cairn.sqlite")
        self.db = yield self.open_db()
        self.addCleanup(lambda: self.db.stop())
        store = SQLiteTrustStore(self.db)
        yield store.start()
        return store

    @defer.inlineCallbacks
    def open_db(self):
        db = Database(reactor, self.path, [TRUST_SCHEMA])
        yield db.start()
        return db

    @defer.inlineCallbacks
    def reopened(self):
        """A new store on a new connection to the same file (after a clean stop's flush)."""
        yield self.store.flush()
        yield self.db.stop()
        self.db = yield self.open_db()
        store = SQLiteTrustStore(self.db)
        yield store.start()
        return store

    @defer.inlineCallbacks
    def test_survives_reopen(self):
        """Every state and field is read back identically after the database is reopened."""
        peers = [new_peer() for _ in range(3)]
        yield self.store.add_pending(*peers[0], "pending one", 1.0)
        yield self.store.set_paired(*peers[1], "paired one", "link", 2.0)
        yield self.store.touch(peers[1][0], 2.5)
        yield self.store.set_paired(*peers[2], "gone", "psk", 3.0)
        yield self.store.revoke(peers[2][0], 4.0)
        before = yield self.store.list()
        store = yield self.reopened()
        self.assertEqual((yield store.list()), before)
        self.assertTrue(store.is_paired(peers[1][0]))
        self.assertFalse(store.is_paired(peers[2][0]))

    @defer.inlineCallbacks
    def test_last_seen_written_lazily(self):
        """touch() costs no write of its own; flush() or the next trust change writes it."""
        peer_id, key = new_peer()
        other, other_key = new_peer()
        yield self.store.set_paired(peer_id, key, "", "psk", 1.0)
        writes = []
        run, run_many = self.db.run, self.db.run_many
        self.patch(self.db, "run", lambda *a: (writes.append(a[0]), run(*a))[1])
        self.patch(self.db, "run_many", lambda calls: (writes.extend(c[0] for c in calls), run_many(calls))[1])
        yield self.store.touch(peer_id, 9.0)
        self.assertEqual(writes, [])
        yield self.store.add_pending(other, other_key, "", 10.0)
        self.assertEqual(len(writes), 2)
        store = yield self.reopened()
        self.assertEqual((yield store.get(peer_id)).last_seen, 9.0)

    @defer.inlineCallbacks
    def test_reject_is_durable(self):
        """A rejected request is gone after a reopen."""
        peer_id, key = new_peer()
        yield self.store.add_pending(peer_id, key, "", 1.0)
        yield self.store.reject(peer_id)
        store = yield self.reopened()
        self.assertIsNone((yield store.get(peer_id)))

    @defer.inlineCallbacks
    def test_schema_recorded(self):
        """The trust component's schema version is recorded in the database."""
        version = yield self.db.run(
            lambda c: c.execute("SELECT version FROM schema_versions WHERE component = 'trust'").fetchone()[0]
        )
        self.assertEqual(version, 1)

    @defer.inlineCallbacks
    def test_revocation_time_kept(self):
        """The time of a revocation is kept in the table for the record, and survives a re-pairing."""
        peer_id, key = new_peer()
        yield self.store.set_paired(peer_id, key, "", "psk", 1.0)
        yield self.store.revoke(peer_id, 4.0)
        yield self.store.set_paired(peer_id, key, "", "pin", 5.0)
        revoked_at = yield self.db.run(
            lambda c: c.execute("SELECT revoked_at FROM trust_peers WHERE peer_id = ?", (peer_id,)).fetchone()[0]
        )
        self.assertEqual(revoked_at, 4.0)
