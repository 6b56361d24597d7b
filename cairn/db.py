"""
SQLite off the reactor: one database file, one dedicated thread.

Every access is a C{*_txn(cursor, ...)} function run by L{Database.run} on
the database's own thread inside one transaction (C{BEGIN IMMEDIATE} ...
C{COMMIT}), so the reactor never blocks on disk and writers never race.
The connection runs in WAL mode; once C{run}'s Deferred fires, the
transaction is on disk.

Durability is explicit: the connection uses C{synchronous=NORMAL} (a
COMMIT writes the WAL but does not sync it; SQLite still syncs the WAL
before each checkpoint and the database file after it), and the WAL is
synced with C{fdatasync} before anyone hears of a write: by C{run} on the
database thread, right after a transaction that changed rows, or -- for
L{cairn.groupcommit.GroupCommit} -- by L{Database.sync} on a thread of
its own, so that the next group is written while the previous one is
being synced, and one sync covers every group written before it started.
Reads that must not wait behind the writes (a mailbox drain's fetches)
go through L{Database.read}: a read-only connection on a third thread,
which WAL lets run beside the writer and its checkpoints; or, while they
find their pages in memory, in the reactor's own thread
(L{cairn.dbreads.HotReads}).

Deletions purge their rows from the pages still in use but leave the
pages freed whole as they were (C{secure_delete=FAST}, L{open_connection};
C{CAIRN_SECURE_DELETE=on} zeroes those too).

Each component (trust store, mailbox, ...) owns a schema chain: files
C{v1.sql}, C{v2.sql}, ... in a package of its own, applied in order and
recorded in the C{schema_versions} table, so components evolve
independently.
"""

import os
import sqlite3
from importlib import resources

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cairn.dbreads import Reading

log = Logger()

DB_FILE_NAME = "cairn.sqlite"


class DatabaseError(Exception):
    """The database cannot be opened, upgraded or written; the message says why."""


def schema_files(package: str) -> list:
    """The (version, sql) pairs of a schema package, in version order."""
    found = []
    for entry in resources.files(package).iterdir():
        name = entry.name
        if name.startswith("v") and name.endswith(".sql") and name[1:-4].isdigit():
            found.append((int(name[1:-4]), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise DatabaseError(f"schema package {package} has a gap in its versions: {versions}")
    return found


#: C{CAIRN_SECURE_DELETE}'s values, as SQLite's C{secure_delete} pragma takes them.
SECURE_DELETE = {"fast": "FAST", "on": "ON"}


def open_connection(path: str, secure_delete: str = "fast") -> sqlite3.Connection:
    """
    Open C{path} with the settings every cairn connection uses.

    @param secure_delete: C{"fast"} (the default) or C{"on"}; see
        C{CAIRN_SECURE_DELETE} in README.rst and "Deleted data" in
        docs/reliability.md.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    # Set here, whatever SQLite's build defaults to (Debian's zeroes every
    # freed page, upstream's none). FAST zeroes deleted rows in the pages
    # that keep other rows but leaves a page freed whole as it was: about
    # a quarter fewer pages written by a mailbox drain's deletions than ON.
    conn.execute(f"PRAGMA secure_delete={SECURE_DELETE[secure_delete]}")
    return conn


def upgrade_txn(cursor, component: str, package: str) -> int:
    """Apply the missing schema files of C{component}; return its version."""
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    row = cursor.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
    current = row[0] if row else 0
    files = schema_files(package)
    if current > len(files):
        raise DatabaseError(
            f"database has {component} schema v{current}, newer than this code knows (v{len(files)})"
        )
    for version, sql in files[current:]:
        for statement in sql.split(";"):
            if statement.strip():
                cursor.execute(statement)
        cursor.execute(
            "INSERT OR REPLACE INTO schema_versions (component, version) VALUES (?, ?)", (component, version)
        )
        current = version
    return current


class Database(Reading):
    """
    The node's SQLite database and the one thread that touches it.

    @param components: (name, schema package) pairs to create or upgrade.
    @param space: a L{cairn.diskspace.FreeSpace} whose reserve the stores
        on this database keep, or None (no reserve).
    @param secure_delete: how deletions overwrite what they free, a key of
        L{SECURE_DELETE} (C{CAIRN_SECURE_DELETE}).
    """

    def __init__(self, reactor, path: str, components=(), space=None, secure_delete="fast"):
        self.reactor = reactor
        self.path = path
        self.components = list(components)
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="cairn-db")
        self._sync_pool = ThreadPool(minthreads=1, maxthreads=1, name="cairn-db-sync")
        #: L{read}'s own thread (L{cairn.dbreads}: its connection opened on first use).
        self._read_pool = ThreadPool(minthreads=1, maxthreads=1, name="cairn-db-read")
        self._conn = None
        self._wal_fd = None
        self._trigger = None
        self._sync_waiters = []
        self._syncing = False
        self.space = space
        self.secure_delete = secure_delete

    def _start_pool(self):
        self._pool.start()
        self._sync_pool.start()
        self._read_pool.start()
        # Never outlive the reactor, whatever happens to the services.
        self._trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self._at_shutdown)

    def start(self):
        """Open and upgrade the database on its thread; fires once it is ready."""
        self._start_pool()
        return self._defer(self._open)

    def open(self) -> None:
        """
        Open and upgrade the database now, in the calling thread.

        For start-up before the reactor runs: a corrupt or unwritable
        database raises L{DatabaseError} at once instead of after the node
        has begun serving. The database thread takes over afterwards.
        """
        self._open()
        self._start_pool()

    def _open(self):
        # Create the file 0600 before SQLite does: its -wal and -shm files
        # take the database file's mode when they are created.
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as e:
            raise DatabaseError(f"cannot create {self.path}: {e.strerror}") from None
        try:
            self._conn = open_connection(self.path, self.secure_delete)
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise DatabaseError(f"{self.path} is corrupt: {check}")
            for name, package in self.components:
                self._transaction(upgrade_txn, name, package)
            # From here on every write is synced explicitly (see the module docstring).
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._wal_fd = os.open(self.path + "-wal", os.O_RDONLY)
            os.fdatasync(self._wal_fd)
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"cannot open {self.path}: {e}") from None
        except OSError as e:
            raise DatabaseError(f"cannot sync the write-ahead log of {self.path}: {e}") from None
        for path in (self.path, self.path + "-wal", self.path + "-shm"):
            if os.path.exists(path):
                os.chmod(path, 0o600)

    def _defer(self, fn, *args):
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def _transaction(self, txn, *args):
        if self._conn is None:
            raise DatabaseError(f"{self.path} is closed")
        cursor = self._conn.cursor()
        before = self._conn.total_changes
        cursor.execute("BEGIN IMMEDIATE")
        try:
            result = txn(cursor, *args)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        self._commit(cursor, self._conn.total_changes != before)
        return result

    def _commit(self, cursor, changed: bool) -> None:
        """
        End a transaction that succeeded (C{changed}: it changed rows). A
        seam: the fault tests make it fail as on a full disk, the mailbox
        bench times it.
        """
        cursor.execute("COMMIT")

    def _durable(self, txn, *args):
        before = self._conn.total_changes if self._conn is not None else 0
        result = self._transaction(txn, *args)
        if self._conn.total_changes != before:
            os.fdatasync(self._wal_fd)
        return result

    def run(self, txn, *args):
        """
        Run C{txn(cursor, *args)} in one transaction on the database thread.

        @return: a Deferred firing with C{txn}'s result once committed (and
            on disk, if it changed rows).
        """
        return self._defer(self._durable, txn, *args)

    def run_many(self, calls):
        """
        Run several C{(txn, args)} in ONE transaction (one fsync).

        @return: a Deferred firing with the list of results, or failing
            (and rolling all of them back) if any raises.
        """
        return self._defer(self._durable, lambda cursor: [txn(cursor, *args) for txn, args in calls])

    def write(self, txn, *args):
        """
        Like L{run}, but fire once committed, before the WAL is synced:
        follow with L{sync} before telling anyone.
        """
        return self._defer(self._transaction, txn, *args)

    def sync(self):
        """
        A Deferred firing once everything committed so far is on disk: an
        fdatasync of the WAL that starts after this call (syncs are
        serialized; callers arriving during one share the next).
        """
        d = defer.Deferred()
        self._sync_waiters.append(d)
        if not self._syncing:
            self._start_sync()
        return d

    def _start_sync(self):
        waiters, self._sync_waiters = self._sync_waiters, []
        self._syncing = True
        d = deferToThreadPool(self.reactor, self._sync_pool, self._fdatasync)
        d.addBoth(self._synced, waiters)

    def _fdatasync(self):
        if self._wal_fd is None:
            raise DatabaseError(f"{self.path} is closed")
        os.fdatasync(self._wal_fd)

    def _synced(self, result, waiters):
        self._syncing = False
        if self._sync_waiters:
            self._start_sync()
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def close_now(self) -> None:
        """
        Close from the calling thread, blocking: for a failed start-up and
        for reactor shutdown. The thread finishes its queued work first; only
        then is the connection closed (never under a running transaction).
        """
        if self._pool.started:
            self._pool.stop()
        if self._sync_pool.started:
            self._sync_pool.stop()
        if self._read_pool.started:
            self._read_pool.stop()
        self._close_reader()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._close_wal()
        self._remove_trigger()

    def _at_shutdown(self):
        # The reactor has taken this trigger off its list to call it: it
        # must not be removed again.
        self._trigger = None
        self.close_now()

    def _close_wal(self):
        fd, self._wal_fd = self._wal_fd, None
        if fd is not None:
            os.close(fd)

    def _remove_trigger(self):
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            self.reactor.removeSystemEventTrigger(trigger)

    def stop(self):
        """Close the connection and stop the thread (after queued work)."""

        def close():
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        def stopped(result):
            self._pool.stop()
            self._sync_pool.stop()
            self._read_pool.stop()  # after its queued reads
            self._close_reader()
            self._close_wal()
            self._remove_trigger()
            return result

        d = self._defer(close)
        d.addBoth(stopped)
        return d


class NoDatabase:
    """
    The node's database when its state lives elsewhere (on NATS
    JetStream): no file is created, nothing is opened, and what the node
    asks of its database on start and stop is nothing. C{run} is only the
    stop's barrier there (no store queues work on it), so it runs nothing.
    """

    def __init__(self, path: str, space=None):
        self.path = path
        self.space = space

    def open(self) -> None:
        pass

    def close_now(self) -> None:
        pass

    def run(self, txn, *args):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)
