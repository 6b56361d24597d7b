"""
The mailbox stores: one behaviour mixin run against the SQLite store and
its in-memory twin, plus SQLite-only checks (group commit, full disk,
the expiry index).
"""

import os
import sqlite3
import threading

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.db import Database, schema_files
from cairn.mailbox.client import uuid7
from cairn.mailbox.interfaces import (
    MAILBOX_SCHEMA,
    Depth,
    IMailboxStore,
    Incoming,
    Limits,
    PeerLimits,
    Receipt,
    Stored,
    StoreFull,
)
from cairn.mailbox.store import ACK_GATHER, MemoryMailboxStore, SQLiteMailboxStore
from cairn.wire.constants import ForwardStatus, ReceiptStatus
from tests._harness import Conditions, eventually

A, B, C = "QmSenderA", "QmRecipientB", "QmRecipientC"
LIMITS = Limits(max_per_peer=3, max_total=1000, max_age=100.0)


def item(recipient=B, sender=A, payload=b"x" * 10, message_id=None):
    return Incoming(sender, recipient, message_id or uuid7(), payload)


def hold_syncs(db):
    """
    Hold every WAL sync of C{db} until its gate fires: returns the list of
    gates (one per sync asked for) and the L{Conditions} told of each.
    """
    gates = []
    requested = Conditions()
    real_sync = db.sync

    def held_sync():
        gate = defer.Deferred()
        gates.append(gate)
        requested.changed()
        return gate.addCallback(lambda _: real_sync())

    db.sync = held_sync
    return gates, requested


class StoreMixin:
    """Behaviour every L{IMailboxStore} shares; C{make_store} returns a started store (Deferred)."""

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield self.make_store()

    def enqueue(self, *items, now=0.0, limits=LIMITS):
        return self.store.enqueue(list(items), now, limits)

    def test_interface(self):
        """The store provides IMailboxStore."""
        verifyObject(IMailboxStore, self.store)

    @defer.inlineCallbacks
    def test_enqueue_fetch_in_order(self):
        """Stored messages come back per recipient in server-sequence order, after a cursor."""
        results = yield self.enqueue(item(payload=b"1"), item(C, payload=b"c"), item(payload=b"2"))
        self.assertEqual([s for s, _ in results], [ForwardStatus.STORED] * 3)
        held = yield self.store.fetch(B, 0, 10)
        self.assertEqual([m.payload for m in held], [b"1", b"2"])
        later = yield self.store.fetch(B, held[0].seq, 10)
        self.assertEqual([m.payload for m in later], [b"2"])
        self.assertEqual(self.store.depths()[B], Depth(2, 2, 0.0))
        self.assertEqual(self.store.total_bytes(), 3)

    @defer.inlineCallbacks
    def test_duplicate_until_expiry(self):
        """A known (sender, id) is a duplicate even after delivery, until its expiry is swept."""
        first = item()
        yield self.enqueue(first)
        self.assertEqual((yield self.enqueue(first))[0][0], ForwardStatus.DUPLICATE)
        (held,) = yield self.store.fetch(B, 0, 10)
        yield self.store.acknowledge(B, [held.seq], 1.0, 100.0)
        self.assertEqual((yield self.enqueue(first, now=2.0))[0][0], ForwardStatus.DUPLICATE)
        other_sender = Incoming(C, B, first.message_id, b"y")
        self.assertEqual((yield self.enqueue(other_sender))[0][0], ForwardStatus.STORED)
        yield self.store.expire(100.0, 1000, 100.0)
        self.assertEqual((yield self.enqueue(first, now=101.0))[0][0], ForwardStatus.STORED)

    @defer.inlineCallbacks
    def test_limits(self):
        """Per-recipient count, total bytes and per-peer overrides refuse with their own codes."""
        results = yield self.enqueue(*[item() for _ in range(4)])
        self.assertEqual([s for s, _ in results][3], ForwardStatus.MAILBOX_FULL)
        results = yield self.enqueue(item(C, payload=b"z" * 995))
        self.assertEqual(results[0][0], ForwardStatus.STORAGE_FULL)
        yield self.store.set_limits(C, PeerLimits(max_messages=1))
        self.assertEqual(self.store.limits[C], PeerLimits(1, None))
        results = yield self.enqueue(item(C), item(C))
        self.assertEqual([s for s, _ in results], [ForwardStatus.STORED, ForwardStatus.MAILBOX_FULL])
        yield self.store.set_limits(C, PeerLimits(max_bytes=5))
        results = yield self.enqueue(item(C, payload=b"123456"))
        self.assertEqual(results[0][0], ForwardStatus.MAILBOX_FULL)
        yield self.store.set_limits(C, PeerLimits())
        self.assertNotIn(C, self.store.limits)

    @defer.inlineCallbacks
    def test_acknowledge_owes_receipts(self):
        """Acknowledged messages are deleted (only the recipient's) and the sender is owed DELIVERED receipts."""
        sent = item()
        yield self.enqueue(sent, item(C))
        (held,) = yield self.store.fetch(B, 0, 10)
        (other,) = yield self.store.fetch(C, 0, 10)
        receipts = yield self.store.acknowledge(B, [held.seq, other.seq, 999], 5.0, 100.0)
        self.assertEqual(
            [(r.sender, r.recipient, r.message_id, r.status) for r in receipts],
            [(A, B, sent.message_id, ReceiptStatus.DELIVERED)],
        )
        self.assertEqual((yield self.store.fetch(B, 0, 10)), [])
        self.assertNotIn(B, self.store.depths())
        owed = yield self.store.receipts(A, 0, 10)
        self.assertEqual(owed, receipts)
        yield self.store.drop_receipts(A, [owed[0].rseq])
        self.assertEqual((yield self.store.receipts(A, 0, 10)), [])

    @defer.inlineCallbacks
    def test_acknowledge_upto(self):
        """Acknowledging up to a seq deletes each of the recipient's messages up to it, owing one receipt each."""
        first, second = item(payload=b"1"), item(payload=b"2")
        yield self.enqueue(first, item(C), second, item(payload=b"3"))
        held = yield self.store.fetch(B, 0, 10)
        receipts = yield self.store.acknowledge(B, [], 5.0, 100.0, upto=held[1].seq)
        self.assertEqual(
            sorted((r.message_id, r.status) for r in receipts),
            sorted([(first.message_id, ReceiptStatus.DELIVERED), (second.message_id, ReceiptStatus.DELIVERED)]),
        )
        self.assertEqual(len({r.rseq for r in receipts}), 2)
        self.assertEqual([m.payload for m in (yield self.store.fetch(B, 0, 10))], [b"3"])
        self.assertEqual(len((yield self.store.fetch(C, 0, 10))), 1)
        self.assertEqual(self.store.depths()[B].messages, 1)
        self.assertEqual(sorted((yield self.store.receipts(A, 0, 10))), sorted(receipts))
        # upto and single seqs together; seqs already covered are not counted twice.
        (last,) = yield self.store.fetch(B, 0, 10)
        again = yield self.store.acknowledge(B, [held[0].seq, last.seq], 6.0, 100.0, upto=held[1].seq)
        self.assertEqual([r.message_id for r in again], [last.message_id])
        self.assertNotIn(B, self.store.depths())

    @defer.inlineCallbacks
    def test_duplicate_in_one_batch(self):
        """The same (sender, id) twice in one enqueue is stored once, the second acked DUPLICATE."""
        once = item()
        results = yield self.enqueue(once, once)
        self.assertEqual([s for s, _ in results], [ForwardStatus.STORED, ForwardStatus.DUPLICATE])
        self.assertEqual(self.store.depths()[B].messages, 1)

    @defer.inlineCallbacks
    def test_expire(self):
        """Messages past max_age are removed with EXPIRED receipts; younger ones stay."""
        yield self.enqueue(item(payload=b"old"), now=0.0)
        yield self.enqueue(item(payload=b"new"), now=50.0)
        receipts, more = yield self.store.expire(100.0, 1000, 100.0)
        self.assertFalse(more)
        self.assertEqual([r.status for r in receipts], [ReceiptStatus.EXPIRED])
        self.assertEqual([m.payload for m in (yield self.store.fetch(B, 0, 10))], [b"new"])
        self.assertEqual(self.store.depths()[B].oldest, 50.0)

    @defer.inlineCallbacks
    def test_expire_in_batches(self):
        """A sweep removes at most its limit and says whether more is due."""
        yield self.enqueue(item(), item(), item(C))
        receipts, more = yield self.store.expire(200.0, 2, 100.0)
        self.assertEqual((len(receipts), more), (2, True))
        receipts, more = yield self.store.expire(200.0, 2, 100.0)
        self.assertEqual(len(receipts), 1)

    @defer.inlineCallbacks
    def test_purge(self):
        """Purging a peer drops its messages (EVICTED receipts to senders), its receipts and its override."""
        yield self.enqueue(item(), item(sender=C))
        yield self.store.set_limits(B, PeerLimits(5, None))
        yield self.enqueue(item(recipient=A, sender=B))
        (to_a,) = yield self.store.fetch(A, 0, 10)
        yield self.store.acknowledge(A, [to_a.seq], 1.0, 100.0)
        receipts = yield self.store.purge(B, 2.0, 100.0)
        self.assertEqual(sorted(r.sender for r in receipts), sorted([A, C]))
        self.assertEqual({r.status for r in receipts}, {ReceiptStatus.EVICTED})
        self.assertEqual((yield self.store.fetch(B, 0, 10)), [])
        self.assertEqual((yield self.store.receipts(B, 0, 10)), [])
        self.assertNotIn(B, self.store.limits)
        self.assertNotIn(B, self.store.depths())

    @defer.inlineCallbacks
    def _acknowledged_then(self, removal):
        """
        An acknowledgement, and at once (before it is answered) C{removal}
        of the same messages: the acknowledged one is DELIVERED, the other
        one gets C{removal}'s receipt; the receipts told to the sender.
        """
        yield self.enqueue(item(payload=b"1"), item(payload=b"2"), now=0.0)
        first, _ = yield self.store.fetch(B, 0, 10)
        acknowledged = self.store.acknowledge(B, [], 1.0, 1000.0, upto=first.seq)  # its receipt outlives the sweep
        removed = removal()
        delivered, _ = yield defer.gatherResults([acknowledged, removed])
        self.assertEqual([r.status for r in delivered], [ReceiptStatus.DELIVERED])
        self.assertEqual((yield self.store.fetch(B, 0, 10)), [])
        self.assertNotIn(B, self.store.depths())
        return sorted(r.status for r in (yield self.store.receipts(A, 0, 10)))

    @defer.inlineCallbacks
    def test_acknowledged_then_expired_is_delivered(self):
        """An expiry that comes while an acknowledgement is being written leaves it DELIVERED."""
        told = yield self._acknowledged_then(lambda: self.store.expire(200.0, 1000, 100.0))
        self.assertEqual(told, [ReceiptStatus.DELIVERED, ReceiptStatus.EXPIRED])

    @defer.inlineCallbacks
    def test_acknowledged_then_purged_is_delivered(self):
        """A purge of the recipient that comes while its acknowledgement is being written leaves it DELIVERED."""
        told = yield self._acknowledged_then(lambda: self.store.purge(B, 2.0, 100.0))
        self.assertEqual(told, [ReceiptStatus.DELIVERED, ReceiptStatus.EVICTED])


class MemoryStoreTests(StoreMixin, unittest.TestCase):
    def make_store(self):
        store = MemoryMailboxStore()
        return store.start().addCallback(lambda _: store)


def open_db(testcase):
    directory = testcase.mktemp()
    os.makedirs(directory)
    db = Database(reactor, os.path.join(directory, "cairn.sqlite"), [MAILBOX_SCHEMA])
    return db


class SQLiteStoreTests(StoreMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def make_store(self):
        self.db = open_db(self)
        yield self.db.start()
        self.addCleanup(self.db.stop)
        store = SQLiteMailboxStore(self.db)
        yield store.start()
        return store

    @defer.inlineCallbacks
    def test_group_commit(self):
        """Requests queued while a commit is in flight share the next transaction."""
        before = self.store.commits
        results = yield defer.gatherResults([self.enqueue(item(C if i % 2 else B)) for i in range(6)])
        self.assertEqual(len(results), 6)
        self.assertEqual(self.store.commits - before, 2)  # the first alone, then the five queued behind it

    @defer.inlineCallbacks
    def test_merged_enqueues_keep_their_results(self):
        """Enqueues merged into one pass each get their own results and increasing seqs."""
        first = item()
        results = yield defer.gatherResults(
            [self.enqueue(item(payload=b"a")), self.enqueue(first, item(C)), self.enqueue(first)]
        )
        statuses = [[s for s, _ in r] for r in results]
        self.assertEqual(statuses, [[ForwardStatus.STORED], [ForwardStatus.STORED] * 2, [ForwardStatus.DUPLICATE]])
        seqs = [seq for r in results[:2] for _, seq in r]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), 3)
        self.assertEqual(self.store.depths()[B].messages, 2)

    def hold_syncs(self):
        """L{hold_syncs} of this store's database."""
        return hold_syncs(self.db)

    @defer.inlineCallbacks
    def test_acks_wait_for_the_sync(self):
        """An enqueue fires only once the WAL is synced after its commit, and so does a read that saw it."""
        gates, requested = self.hold_syncs()
        done = []
        self.enqueue(item(payload=b"held")).addCallback(lambda r: requested.changed(done.append([s for s, _ in r])))
        yield requested.until(lambda: gates)
        self.assertEqual(done, [])
        self.store.fetch(B, 0, 10).addCallback(lambda h: requested.changed(done.append([m.payload for m in h])))
        yield requested.until(lambda: len(gates) == 2)
        self.assertEqual(done, [])  # committed and visible, but not on disk yet
        for gate in gates:
            gate.callback(None)
        yield requested.until(lambda: len(done) == 2)
        self.assertEqual(done, [[ForwardStatus.STORED], [b"held"]])  # in commit order

    @defer.inlineCallbacks
    def test_fetch_does_not_wait_for_unsynced_deletions(self):
        """
        With no enqueue unanswered, a fetch answers while an acknowledgement's
        group is still being synced: nothing it can see is unsynced.
        """
        results = yield self.enqueue(item(payload=b"one"), item(payload=b"two"))
        first_seq = results[0][1]
        gates, requested = self.hold_syncs()
        acked = self.store.acknowledge(B, [first_seq], 0.0, 3600.0)
        yield requested.until(lambda: gates)  # the deletion is written, its sync held
        fetched = yield eventually(self.store.fetch(B, 0, 10))  # (it would hang behind the held sync)
        self.assertEqual([m.payload for m in fetched], [b"two"])
        self.assertFalse(acked.called)
        for gate in gates:
            gate.callback(None)
        yield acked

    @defer.inlineCallbacks
    def test_drain_pages_read_in_the_reactor_thread(self):
        """
        Once a fetch found its pages in memory, the next ones are answered
        at once, in the reactor's thread (L{cairn.dbreads.HotReads}): no
        GIL handed to a read thread at every row (issue 19).
        """
        results = yield self.enqueue(item(payload=b"one"), item(payload=b"two"))
        first = yield self.store.fetch(B, 0, 1)
        self.assertEqual([m.payload for m in first], [b"one"])
        answered = []
        self.store.fetch(B, first[0].seq, 1).addCallback(answered.append)
        self.assertEqual([[m.payload for m in page] for page in answered], [[b"two"]])
        self.store.receipts(B, 0, 10).addCallback(answered.append)
        self.assertEqual(answered[1:], [[]])
        self.assertEqual(results[1][1], answered[0][0].seq)

    @defer.inlineCallbacks
    def test_read_when_told_asks_no_further_sync(self):
        """
        A receipts' read made as an acknowledgement's Deferred fires (as the
        service does when it owes DELIVERED receipts) does not wait for a
        sync of its own: the group that Deferred is about is synced.
        """
        results = yield self.enqueue(item(payload=b"one"))
        yield self.store.fetch(B, 0, 10)  # in memory: the next reads here
        gates, requested = self.hold_syncs()
        read = []
        acked = self.store.acknowledge(B, [results[0][1]], 0.0, 3600.0)
        acked.addCallback(lambda _: self.store.receipts(A, 0, 10).addCallback(read.append))
        yield requested.until(lambda: gates)
        gates[0].callback(None)
        yield acked
        self.assertEqual([r.status for r in read[0]], [ReceiptStatus.DELIVERED])
        self.assertEqual(len(gates), 1)

    def hold_commits(self, after=False):
        """
        Hold the database thread at every COMMIT (just before it, or with
        C{after} just after it) until the returned C{threading.Event} is
        set; returns (event, list with one entry per COMMIT reached,
        L{Conditions} told of each).
        """
        release, reached, hits = threading.Event(), Conditions(), []
        real_commit = self.db._commit
        self.addCleanup(release.set)  # never leave the thread waiting

        def held(cursor, changed):
            if after:
                real_commit(cursor, changed)
            reactor.callFromThread(lambda: reached.changed(hits.append(changed)))
            release.wait(30)
            if not after:
                real_commit(cursor, changed)

        self.db._commit = held
        return release, hits, reached

    @defer.inlineCallbacks
    def test_fetch_not_queued_behind_a_write(self):
        """
        A fetch answers while a group commit's write is held on the database
        thread (a slow COMMIT, a WAL checkpoint): reads run on a connection
        and a thread of their own, and see what was committed before.
        """
        results = yield self.enqueue(item(payload=b"one"), item(payload=b"two"))
        release, hits, reached = self.hold_commits()
        acked = self.store.acknowledge(B, [results[0][1]], 0.0, 3600.0)
        yield reached.until(lambda: hits)
        fetched = yield eventually(self.store.fetch(B, 0, 10))
        self.assertEqual([m.payload for m in fetched], [b"one", b"two"])  # the deletion is not committed yet
        self.assertFalse(acked.called)
        release.set()
        yield acked
        fetched = yield self.store.fetch(B, 0, 10)
        self.assertEqual([m.payload for m in fetched], [b"two"])

    @defer.inlineCallbacks
    def test_fetch_waits_for_the_sync_of_a_write_not_reported_yet(self):
        """
        A fetch that sees an enqueue's rows committed on the database thread,
        before the store has heard that the write is done, still answers
        only once the WAL is synced after it (nothing delivered before it is durable).
        """
        release, hits, reached = self.hold_commits(after=True)
        gates, requested = self.hold_syncs()
        done = []
        enqueued = self.enqueue(item(payload=b"held"))
        yield reached.until(lambda: hits)  # committed, the store not told yet
        fetched = self.store.fetch(B, 0, 10)
        fetched.addCallback(lambda held: requested.changed(done.append([m.payload for m in held])))
        yield requested.until(lambda: gates)  # the fetch saw the row: it asks for a sync
        self.assertEqual(done, [])
        release.set()
        yield requested.until(lambda: len(gates) == 2)  # the write's own sync
        for gate in gates:
            gate.callback(None)
        yield fetched
        yield enqueued
        self.assertEqual(done, [[b"held"]])

    @defer.inlineCallbacks
    def test_failed_sync_is_not_an_ack(self):
        """If syncing the WAL fails, the enqueue fails (no ack); later ones succeed once syncs work again."""
        real = self.db._fdatasync
        failing = [True]

        def fdatasync():
            if failing[0]:
                raise OSError(5, "Input/output error")
            return real()

        self.db._fdatasync = fdatasync
        yield self.assertFailure(self.enqueue(item()), OSError)
        failing[0] = False
        results = yield self.enqueue(item())
        self.assertEqual([s for s, _ in results], [ForwardStatus.STORED])

    @defer.inlineCallbacks
    def test_upgrade_keeps_dedup_ids(self):
        """A v1 database upgraded to the current schema keeps its dedup ids (a retry is still a duplicate)."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "cairn.sqlite")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        for statement in schema_files("cairn.mailbox.schema")[0][1].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_versions VALUES ('mailbox', 1)")
        old = item()
        conn.execute(
            "INSERT INTO mailbox_ids (sender, message_id, recipient, expires_at) VALUES (?, ?, ?, ?)",
            (old.sender, old.message_id, old.recipient, 100.0),
        )
        conn.close()
        db = Database(reactor, path, [MAILBOX_SCHEMA])
        yield db.start()
        self.addCleanup(db.stop)
        version = yield db.run(
            lambda c: c.execute("SELECT version FROM schema_versions WHERE component = 'mailbox'").fetchone()[0]
        )
        self.assertEqual(version, 2)
        store = SQLiteMailboxStore(db)
        yield store.start()
        results = yield store.enqueue([old, item()], 1.0, LIMITS)
        self.assertEqual([s for s, _ in results], [ForwardStatus.DUPLICATE, ForwardStatus.STORED])

    @defer.inlineCallbacks
    def test_reload(self):
        """A new store on the same database sees the depths and overrides."""
        yield self.enqueue(item(), item())
        yield self.store.set_limits(B, PeerLimits(7, 70))
        again = SQLiteMailboxStore(self.db)
        yield again.start()
        self.assertEqual(again.depths(), self.store.depths())
        self.assertEqual(again.limits, {B: PeerLimits(7, 70)})

    @defer.inlineCallbacks
    def test_disk_full(self):
        """A full database refuses new messages with StoreFull while stored ones are still served and deleted."""
        yield self.enqueue(item(payload=b"kept"))

        def cap(cursor):
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count = {pages}")

        yield self.db.run(cap)
        big = [item(C, payload=os.urandom(900)) for _ in range(8)]
        big_limits = Limits(max_per_peer=100, max_total=10**9, max_age=100.0)
        failures = yield defer.DeferredList([self.enqueue(i, limits=big_limits) for i in big], consumeErrors=True)
        self.assertTrue(any(not ok and f.check(StoreFull) for ok, f in failures))
        self.assertIn("full", [f for ok, f in failures if not ok][0].getErrorMessage())
        (held,) = yield self.store.fetch(B, 0, 10)
        self.assertEqual(held.payload, b"kept")
        receipts = yield self.store.acknowledge(B, [held.seq], 1.0, 100.0)
        self.assertEqual(len(receipts), 1)

    @defer.inlineCallbacks
    def test_expiry_uses_index(self):
        """The sweep's query reads the expires_at index, not the whole table."""

        def plan(cursor):
            rows = cursor.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM mailbox_messages"
                " WHERE expires_at <= ? ORDER BY expires_at LIMIT 10",
                (1.0,),
            ).fetchall()
            return " ".join(str(r[-1]) for r in rows)

        text = yield self.db.run(plan)
        self.assertIn("mailbox_messages_by_expiry", text)

    def test_statements_per_ack_do_not_grow_with_the_messages(self):
        """
        Acknowledging single seqs and dropping receipts take a few statements
        per call, not one or two per message (issue 19: the writer's CPU).
        """
        from cairn.db import open_connection, upgrade_txn
        from cairn.mailbox import transactions

        conn = open_connection(os.path.join(self.mktemp() + ".sqlite"))
        self.addCleanup(conn.close)
        cursor = conn.cursor()
        upgrade_txn(cursor, *MAILBOX_SCHEMA)
        many = Limits(max_per_peer=10_000, max_total=10**9, max_age=100.0)
        results, _ = transactions.enqueue_txn(cursor, [item() for _ in range(1200)] + [item(C)], 0.0, many)
        seqs = [seq for _, seq in results]
        statements = []
        conn.set_trace_callback(statements.append)
        wanted = seqs[:1100:2] + seqs[-1:] + [10**9]  # 550 of B's, one of C's, one unknown
        receipts, depths = transactions.acknowledge_txn(cursor, B, wanted, 1.0, 100.0)
        self.assertEqual(len(receipts), 550)
        self.assertEqual(depths[B].messages, 650)
        on_messages = [s for s in statements if "FROM mailbox_messages" in s and "seq IN" in s]
        self.assertEqual(len(on_messages), 6)  # a SELECT, the receipts' INSERT and a DELETE per 500 seqs
        # The receipts are written by SQLite from the rows (INSERT ... SELECT),
        # not bound from Python one by one (an executemany steps once per receipt).
        owed = [s for s in statements if s.startswith("INSERT INTO mailbox_receipts")]
        self.assertEqual(len(owed), 2)
        self.assertLess(len(statements), 20)
        del statements[:]
        transactions.drop_receipts_txn(cursor, A, [r.rseq for r in receipts] + [10**9])
        self.assertEqual(len(statements), 2)
        self.assertEqual(transactions.receipts_txn(cursor, A, 0, 10), [])
        left = cursor.execute("SELECT count(*) FROM mailbox_messages WHERE recipient = ?", (B,)).fetchone()[0]
        self.assertEqual(left, 650)

    def test_values_made_from_rows(self):
        """
        Stored and Receipt are made from a database row as it comes (named
        tuples: a drain makes one per message on a database thread), equal
        by value, and Stored's repr leaves the payload out.
        """
        row = (3, B, A, b"\x01" * 16, 1.5, 2.5, b"secret payload")
        stored = Stored._make(row)
        self.assertEqual(stored, Stored(*row))
        self.assertEqual((stored.seq, stored.message_id, stored.payload), (3, b"\x01" * 16, b"secret payload"))
        self.assertNotIn("secret", repr(stored))
        self.assertIn("seq=3", repr(stored))
        receipt = Receipt._make((4, A, B, b"\x02" * 16, 1, 2.0))
        self.assertEqual((receipt.rseq, receipt.sender, receipt.status), (4, A, 1))

    def test_acknowledged_receipts_are_the_rows_written(self):
        """
        The receipts an acknowledgement returns are the rows it wrote, rseq
        for rseq, in seq order (upto and single seqs, several chunks), after
        receipts written by an expiry (explicit rseqs) and dropped.
        """
        from cairn.db import open_connection, upgrade_txn
        from cairn.mailbox import transactions

        conn = open_connection(os.path.join(self.mktemp() + ".sqlite"))
        self.addCleanup(conn.close)
        cursor = conn.cursor()
        upgrade_txn(cursor, *MAILBOX_SCHEMA)
        many = Limits(max_per_peer=10_000, max_total=10**9, max_age=100.0)
        transactions.enqueue_txn(cursor, [item() for _ in range(3)], 0.0, Limits(max_age=1.0))
        (expired, _), _ = transactions.expire_txn(cursor, 5.0, 10, 100.0)
        transactions.drop_receipts_txn(cursor, A, [r.rseq for r in expired][1:])
        results, _ = transactions.enqueue_txn(cursor, [item() for _ in range(1200)], 6.0, many)
        seqs = [seq for _, seq in results]
        receipts, _ = transactions.acknowledge_txn(cursor, B, seqs[100:1200:2], 7.0, 100.0, upto=seqs[9])
        self.assertEqual(len(receipts), 560)
        self.assertEqual(receipts[0].rseq, expired[-1].rseq + 1)
        self.assertEqual([r.rseq for r in receipts], list(range(receipts[0].rseq, receipts[0].rseq + 560)))
        rows = cursor.execute(
            "SELECT rseq, sender, recipient, message_id, status, at FROM mailbox_receipts"
            " WHERE rseq >= ? ORDER BY rseq",
            (receipts[0].rseq,),
        ).fetchall()
        self.assertEqual([Receipt(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows], receipts)
        delivered = set(seqs[:10]) | set(seqs[100:1200:2])
        held = {r[0] for r in cursor.execute("SELECT seq FROM mailbox_messages").fetchall()}
        self.assertEqual(held & delivered, set())

    @defer.inlineCallbacks
    def gathering_store(self):
        """A second store on the database whose acknowledgements are gathered on a L{task.Clock}."""
        clock = task.Clock()
        store = SQLiteMailboxStore(self.db, clock=clock)
        yield store.start()
        return store, clock

    @defer.inlineCallbacks
    def test_acknowledgements_gathered_into_one_transaction(self):
        """
        Acknowledgements of several recipients, and receipt drops, made
        within L{ACK_GATHER} share one transaction, started only once the
        interval is over (issue 19: each used to be a transaction of its own).
        """
        store, clock = yield self.gathering_store()
        stored = yield store.enqueue([item(B), item(B), item(C)], 0.0, LIMITS)
        b1, b2, c1 = [seq for _, seq in stored]
        old = store.acknowledge(B, [b1], 0.0, 100.0)  # a receipt for A to drop later
        clock.advance(ACK_GATHER)
        old = yield eventually(old)
        before = store.commits
        done = []
        for d in (
            store.acknowledge(B, [], 1.0, 100.0, upto=b2),
            store.acknowledge(C, [c1], 1.0, 100.0),
            store.drop_receipts(A, [r.rseq for r in old]),
        ):
            d.addCallback(done.append)
        clock.advance(ACK_GATHER * 0.9)
        self.assertEqual((store.commits, done), (before, []))  # still gathering: nothing written
        clock.advance(ACK_GATHER * 0.1)
        self.assertEqual(store.commits, before + 1)
        yield eventually(store.flushed())
        self.assertEqual(store.commits, before + 1)
        self.assertEqual([len(r) if r else r for r in done], [1, 1, None])
        self.assertEqual(store.depths(), {})
        receipts = yield store.receipts(A, 0, 10)
        self.assertEqual(sorted(r.recipient for r in receipts), [B, C])

    @defer.inlineCallbacks
    def test_gathered_acknowledgements_go_with_the_next_transaction(self):
        """
        A mutation that cannot wait takes the acknowledgements gathered so
        far into its own transaction, in the order they were made: a purge
        after an acknowledgement leaves the acknowledged message DELIVERED,
        not EVICTED.
        """
        store, clock = yield self.gathering_store()
        (stored,) = yield store.enqueue([item(B)], 0.0, LIMITS)
        yield store.enqueue([item(B)], 0.0, LIMITS)
        before = store.commits
        acked = store.acknowledge(B, [stored[1]], 1.0, 100.0)
        purged = store.purge(B, 1.0, 100.0)
        receipts, evicted = yield eventually(defer.gatherResults([acked, purged]))
        self.assertEqual(store.commits, before + 1)  # the clock never moved
        self.assertEqual([r.status for r in receipts], [ReceiptStatus.DELIVERED])
        self.assertEqual([r.status for r in evicted], [ReceiptStatus.EVICTED])
        self.assertEqual(clock.getDelayedCalls(), [])  # the interval's timer is gone with them

    @defer.inlineCallbacks
    def test_flushed_writes_what_is_gathered(self):
        """L{SQLiteMailboxStore.flushed} (a clean stop) writes the gathered acknowledgements at once."""
        store, clock = yield self.gathering_store()
        (stored,) = yield store.enqueue([item(B)], 0.0, LIMITS)
        acked = store.acknowledge(B, [stored[1]], 1.0, 100.0)
        yield eventually(store.flushed())
        self.assertTrue(acked.called)
        self.assertEqual(store.depths(), {})
        self.assertEqual((yield self.store.fetch(B, 0, 10)), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_gathered_acknowledgement_fires_only_once_synced(self):
        """
        The interval over, a gathered acknowledgement's receipts are given
        (and so sent) only once its transaction's WAL sync is done.
        """
        store, clock = yield self.gathering_store()
        (stored,) = yield store.enqueue([item(B)], 0.0, LIMITS)
        gates, requested = self.hold_syncs()
        acked = store.acknowledge(B, [stored[1]], 1.0, 100.0)
        acked.addCallback(requested.changed)
        clock.advance(ACK_GATHER)
        yield requested.until(lambda: gates)  # written, its sync held
        self.assertFalse(acked.called)
        for gate in gates:
            gate.callback(None)
        yield requested.until(lambda: acked.called)
        self.assertEqual([r.status for r in acked.result], [ReceiptStatus.DELIVERED])

    def test_storage_error_text(self):
        """A sqlite3 error becomes StoreFull with its message."""
        from cairn.mailbox.store import storage_error

        error = storage_error(sqlite3.OperationalError("database or disk is full"))
        self.assertIsInstance(error, StoreFull)
        self.assertEqual(str(error), "database or disk is full")
