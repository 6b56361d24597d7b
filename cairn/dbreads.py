"""
The database's reads: on a thread of their own (L{Reading.read}), or in
the calling thread while they find their pages in memory (L{HotReads}).

Why the second: Python's C{sqlite3} lets go of the GIL around every
C{sqlite3_step}, i.e. at every row, and takes it back for the row's
values. A read on its own thread beside a busy reactor therefore hands
the GIL back and forth once per row: each hand-over a futex wake and a
context switch on both threads, and a wait whenever the reactor is in a
stretch of Python. A mailbox drain's pages (256 rows each, read while the
previous page is encoded and sent) met that in some runs and not in
others: 49,000-81,000 messages a second in one set of runs, the read
thread's wall time up to four times its CPU time; the same reads in the
reactor's thread gave 73,000-83,000 (bench/README.rst, "#19: the mailbox
drain's reads and the GIL").

Why not always there: a page that is not in memory blocks every session
until the disk has answered. So L{HotReads} reads in the calling thread
only while the reads before it, recently, found all their pages in
memory, which the kernel says: the thread's count of blocks read from a
device (C{getrusage(RUSAGE_THREAD).ru_inblock}, Linux) did not move
during the read. A read that moved it, or none for L{HOT_FOR} seconds
(a drain that begins after a pause starts on the read thread), sends
the next one to the read thread, and so on until one there finds its
pages in memory again. At worst one read blocks the reactor each time
memory stops holding what is read. Where that count is not available,
every read goes to the read thread, as before. The connection of the
calling thread never waits for a lock (C{busy_timeout} 0): a read that
would is run on the read thread instead.
"""

import resource
import sqlite3

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

#: Seconds a read that found its pages in memory lets the next ones run in the calling thread.
HOT_FOR = 1.0


def reader_connection(path, busy_timeout_ms):
    """A read-only connection to C{path}, usable from any one thread at a time."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


def snapshot(conn, txn, *args):
    """C{txn(cursor, *args)} on C{conn} in one read transaction (one snapshot for all its statements)."""
    cursor = conn.cursor()
    cursor.execute("BEGIN")
    try:
        return txn(cursor, *args)
    finally:
        cursor.execute("ROLLBACK")


def thread_inblock():
    """Blocks this thread has read from a device so far (Linux; elsewhere the name is None: not counted)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_inblock


if not hasattr(resource, "RUSAGE_THREAD"):  # pragma: no cover (not Linux)
    thread_inblock = None  # noqa: F811


class Reading:
    """
    L{cairn.db.Database}'s reads (a mixin): C{path}, C{reactor},
    C{_read_pool} and C{_conn} are the database's.
    """

    _reader = None  # L{read}'s connection, on the read thread
    _here = None  # L{read_here}'s connection, in the calling thread

    def read(self, txn, *args):
        """
        Run the read-only C{txn(cursor, *args)} on a connection and a thread
        of their own: not queued behind the writes (a group commit, a WAL
        checkpoint in a COMMIT can take tens of milliseconds) nor behind
        the reads queued with them. WAL lets it run beside the writer; it
        sees every transaction committed before it began, synced or not,
        so a caller that must not show unsynced rows waits for a L{sync}
        that starts after it returns.
        """
        return deferToThreadPool(self.reactor, self._read_pool, self._read, txn, *args)

    def _read(self, txn, *args):
        self._check_open()
        if self._reader is None:
            self._reader = reader_connection(self.path, 5000)
        return snapshot(self._reader, txn, *args)

    def read_here(self, txn, *args):
        """
        L{read}'s C{txn}, run now in the calling thread on a connection of
        its own, which never waits for a lock: C{sqlite3.OperationalError}
        instead. For L{HotReads}, which decides when a read may block.
        """
        self._check_open()
        if self._here is None:
            self._here = reader_connection(self.path, 0)
        return snapshot(self._here, txn, *args)

    def _check_open(self):
        if self._conn is None:
            from cairn.db import DatabaseError

            raise DatabaseError(f"{self.path} is closed")

    def _close_reader(self):
        for name in ("_reader", "_here"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                conn.close()


class HotReads:
    """
    Reads of C{db} (a L{cairn.db.Database}) in the calling thread while
    recent ones found their pages in memory, on the read thread otherwise
    (see the module docstring).

    @param clock: an C{IReactorTime}.
    @param inblock: the calling thread's count of blocks read from a
        device, or None (every read on the read thread).
    """

    def __init__(self, db, clock, inblock=thread_inblock):
        self.db, self.clock, self.inblock = db, clock, inblock
        self._hot_until = None  # a read found its pages in memory: reads may come here until then

    def read(self, txn, *args):
        """A Deferred firing with C{txn(cursor, *args)}'s result (fired already if run here)."""
        if self.inblock is None:
            return self.db.read(txn, *args)
        if self._hot_until is not None and self.clock.seconds() < self._hot_until:
            before = self.inblock()
            try:
                result = self.db.read_here(txn, *args)
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", 0) & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return defer.fail()
            except Exception:
                return defer.fail()
            else:
                self._found(self.inblock() == before)
                return defer.succeed(result)
        return self.db.read(self._measured, txn, *args).addCallback(self._measured_here)

    def _measured(self, cursor, txn, *args):
        # On the read thread: the count is that thread's.
        before = self.inblock()
        result = txn(cursor, *args)
        return result, self.inblock() == before

    def _measured_here(self, answer):
        result, in_memory = answer
        self._found(in_memory)
        return result

    def _found(self, in_memory):
        self._hot_until = self.clock.seconds() + HOT_FOR if in_memory else None
