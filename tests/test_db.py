"""
The SQLite layer: schema chains, transactions on the database thread.
"""

import os
import sqlite3
import stat
import threading

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cairn.db import Database, DatabaseError, open_connection, schema_files
from tests._harness import eventually


def insert_txn(cursor, body, author=""):
    cursor.execute("INSERT INTO notes (body, author) VALUES (?, ?)", (body, author))
    return cursor.lastrowid


def bodies_txn(cursor):
    return [row[0] for row in cursor.execute("SELECT body FROM notes ORDER BY id")]


def failing_txn(cursor):
    cursor.execute("INSERT INTO notes (body) VALUES ('doomed')")
    raise ValueError("boom")


class DatabaseTests(unittest.TestCase):
    def setUp(self):
        os.makedirs(self.mktemp())
        self.path = os.path.join(self.mktemp(), "cairn.sqlite")
        os.makedirs(os.path.dirname(self.path))

    @defer.inlineCallbacks
    def started(self, package="tests.dbschema"):
        db = Database(reactor, self.path, [("notes", package)])
        yield db.start()
        self.addCleanup(db.stop)
        return db

    @defer.inlineCallbacks
    def test_chain_applied_and_recorded(self):
        """Every schema file is applied in order and the component's version is recorded."""
        db = yield self.started()
        yield db.run(insert_txn, "hello", "me")
        self.assertEqual((yield db.run(bodies_txn)), ["hello"])
        version = yield db.run(
            lambda c: c.execute("SELECT version FROM schema_versions WHERE component='notes'").fetchone()[0]
        )
        self.assertEqual(version, 2)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    @defer.inlineCallbacks
    def test_upgrade_from_older_version(self):
        """A database at v1 is upgraded to v2 keeping its rows."""
        conn = open_connection(self.path)
        conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute(schema_files("tests.dbschema")[0][1])
        conn.execute("INSERT INTO schema_versions VALUES ('notes', 1)")
        conn.execute("INSERT INTO notes (body) VALUES ('old')")
        conn.close()
        db = yield self.started()
        self.assertEqual((yield db.run(bodies_txn)), ["old"])
        yield db.run(insert_txn, "new", "someone")

    @defer.inlineCallbacks
    def test_newer_database_refused(self):
        """A database whose schema is newer than the code is refused with a message naming the versions."""
        conn = open_connection(self.path)
        conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_versions VALUES ('notes', 7)")
        conn.close()
        db = Database(reactor, self.path, [("notes", "tests.dbschema")])
        self.addCleanup(db.stop)
        failure = yield self.assertFailure(db.start(), DatabaseError)
        self.assertIn("v7", str(failure))

    def test_gap_in_chain_refused(self):
        """A schema package missing a version is refused."""
        self.assertRaises(DatabaseError, schema_files, "tests.dbschema_gap")

    @defer.inlineCallbacks
    def test_corrupt_file_refused(self):
        """A file that is not a SQLite database stops start-up with a message naming the path."""
        with open(self.path, "wb") as f:
            f.write(b"this is not a database at all" * 100)
        db = Database(reactor, self.path, [("notes", "tests.dbschema")])
        self.addCleanup(db.stop)
        failure = yield self.assertFailure(db.start(), DatabaseError)
        self.assertIn(self.path, str(failure))

    @defer.inlineCallbacks
    def test_failed_transaction_rolls_back(self):
        """A transaction function that raises leaves nothing behind and its error reaches the caller."""
        db = yield self.started()
        yield self.assertFailure(db.run(failing_txn), ValueError)
        self.assertEqual((yield db.run(bodies_txn)), [])

    @defer.inlineCallbacks
    def test_run_many_is_one_transaction(self):
        """run_many commits all calls together, or none of them when one fails."""
        db = yield self.started()
        ids = yield db.run_many([(insert_txn, ("a",)), (insert_txn, ("b",))])
        self.assertEqual(len(ids), 2)
        yield self.assertFailure(db.run_many([(insert_txn, ("c",)), (failing_txn, ())]), ValueError)
        self.assertEqual((yield db.run(bodies_txn)), ["a", "b"])

    @defer.inlineCallbacks
    def test_wal_and_foreign_keys(self):
        """Connections run in WAL mode with foreign keys enforced."""
        db = yield self.started()
        mode = yield db.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        fks = yield db.run(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0])
        self.assertEqual((mode, fks), ("wal", 1))

    @defer.inlineCallbacks
    def test_deleted_rows_purged_from_pages_in_use(self):
        """
        The writer deletes with C{secure_delete=FAST}, whatever SQLite's
        build defaults to: a deleted row's bytes are gone from a page that
        still holds other rows once the log is checkpointed (here by the
        close), and pages freed whole are not rewritten.
        """
        db = Database(reactor, self.path, [("notes", "tests.dbschema")])
        yield db.start()
        mode = yield db.run(lambda c: c.execute("PRAGMA secure_delete").fetchone()[0])
        self.assertEqual(mode, 2)  # FAST
        marker = "deleted-" + os.urandom(8).hex()
        yield db.run(insert_txn, "kept before")
        doomed = yield db.run(insert_txn, marker)
        yield db.run(insert_txn, "kept after")
        yield db.run(lambda c: c.execute("DELETE FROM notes WHERE id = ?", (doomed,)))
        yield db.stop()
        with open(self.path, "rb") as f:
            content = f.read()
        self.assertIn(b"kept after", content)
        self.assertNotIn(marker.encode(), content)
        self.assertFalse(os.path.exists(self.path + "-wal"))

    @defer.inlineCallbacks
    def test_secure_delete_on(self):
        """
        C{CAIRN_SECURE_DELETE=on} reaches the writer's connection: pages
        freed whole are zeroed too.
        """
        from cairn.config import Config
        from cairn.stores import make_database

        config = Config(data_dir=os.path.dirname(self.path), secure_delete="on")
        db = make_database(config, reactor, None)
        yield db.start()
        self.addCleanup(db.stop)
        self.assertEqual((yield db.run(lambda c: c.execute("PRAGMA secure_delete").fetchone()[0])), 1)

    @defer.inlineCallbacks
    def test_read_beside_a_write(self):
        """
        C{read} runs on a connection and a thread of its own: it answers
        while a write is held on the database thread, with what was
        committed before it (not the write's rows), and refuses to write.
        """
        db = yield self.started()
        yield db.run(insert_txn, "before", "me")
        entered, release = threading.Event(), threading.Event()
        self.addCleanup(release.set)

        def held_txn(cursor):
            insert_txn(cursor, "during")
            entered.set()
            release.wait(30)

        written = db.write(held_txn)
        yield deferToThread(entered.wait, 30)
        self.assertEqual((yield eventually(db.read(bodies_txn))), ["before"])
        release.set()
        yield written
        self.assertEqual((yield db.read(bodies_txn)), ["before", "during"])
        yield self.assertFailure(db.read(insert_txn, "no"), sqlite3.OperationalError)

    def test_closed_by_reactor_shutdown(self):
        """A database still open at reactor shutdown is closed by its trigger, without an error."""
        from twisted.internet.selectreactor import SelectReactor

        other = SelectReactor()  # never run or installed: only its triggers are used
        self.addCleanup(other.waker.connectionLost, None)  # closes its pipe
        db = Database(other, self.path, [("notes", "tests.dbschema")])
        db.open()
        errors = []
        self.patch(other, "removeSystemEventTrigger", lambda handle: errors.append(handle))
        other.fireSystemEvent("shutdown")
        self.assertEqual(errors, [])  # the trigger did not try to remove itself
        self.assertIsNone(db._conn)

    @defer.inlineCallbacks
    def test_wal_files_private(self):
        """The -wal and -shm files are 0600 like the database, whatever the umask."""
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        db = yield self.started()
        yield db.run(insert_txn, "x", "me")
        modes = {
            suffix: stat.S_IMODE(os.stat(self.path + suffix).st_mode)
            for suffix in ("", "-wal", "-shm")
            if os.path.exists(self.path + suffix)
        }
        self.assertIn("-wal", modes)
        self.assertEqual(set(modes.values()), {0o600}, modes)
