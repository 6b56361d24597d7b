"""
The database's reads in the calling thread while they find their pages in
memory (L{cairn.dbreads.HotReads}), on the read thread otherwise.
"""

import os
import sqlite3
import threading

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.db import Database
from cairn.dbreads import HOT_FOR, HotReads, thread_inblock
from tests.test_db import bodies_txn, insert_txn


def thread_of(cursor):
    """A read txn: the thread it ran in, and the notes it saw."""
    return threading.current_thread(), bodies_txn(cursor)


class Counter:
    """A stand-in for the thread's device-read count: it moves at every look while C{moving}."""

    def __init__(self):
        self.count, self.moving = 0, False

    def __call__(self):
        if self.moving:
            self.count += 8
        return self.count


class HotReadsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        path = os.path.join(self.mktemp(), "cairn.sqlite")
        os.makedirs(os.path.dirname(path))
        self.db = Database(reactor, path, [("notes", "tests.dbschema")])
        yield self.db.start()
        self.addCleanup(lambda: self.db.stop() if self.db._conn is not None else None)
        yield self.db.run(insert_txn, "first")
        self.clock, self.counter = task.Clock(), Counter()
        self.reads = HotReads(self.db, self.clock, self.counter)

    def here(self, d):
        """The result of C{d} if it has fired already (the read ran in this thread), else None."""
        results = []

        def seen(result):
            results.append(result)
            return result

        d.addCallback(seen)
        return results[0] if results else None

    @defer.inlineCallbacks
    def test_in_this_thread_after_a_read_in_memory(self):
        """
        The first read goes to the read thread; once one found its pages in
        memory, the next ones run in the calling thread, at once.
        """
        first = self.reads.read(thread_of)
        self.assertIsNone(self.here(first))
        thread, seen = yield first
        self.assertIsNot(thread, threading.current_thread())
        self.assertEqual(seen, ["first"])
        yield self.db.run(insert_txn, "second")
        answer = self.here(self.reads.read(thread_of))
        self.assertEqual(answer, (threading.current_thread(), ["first", "second"]))
        self.assertEqual(self.here(self.reads.read(thread_of))[1], ["first", "second"])

    @defer.inlineCallbacks
    def test_a_read_from_the_device_sends_the_next_to_the_thread(self):
        """A read here that read from a device: the next one runs on the read thread, and the one after here again."""
        yield self.reads.read(thread_of)
        self.counter.moving = True
        self.assertIsNotNone(self.here(self.reads.read(thread_of)))
        self.counter.moving = False
        thread, _ = yield self.reads.read(thread_of)
        self.assertIsNot(thread, threading.current_thread())
        self.assertIsNotNone(self.here(self.reads.read(thread_of)))

    @defer.inlineCallbacks
    def test_one_on_the_thread_from_the_device_keeps_them_there(self):
        """A read on the read thread that read from a device: the next goes there too."""
        self.counter.moving = True
        yield self.reads.read(thread_of)
        self.counter.moving = False
        d = self.reads.read(thread_of)
        self.assertIsNone(self.here(d))
        yield d

    @defer.inlineCallbacks
    def test_after_a_pause_the_thread_first(self):
        """No read for HOT_FOR seconds: the next goes to the read thread (a drain after a pause)."""
        yield self.reads.read(thread_of)
        self.clock.advance(HOT_FOR / 2)
        self.assertIsNotNone(self.here(self.reads.read(thread_of)))
        self.clock.advance(HOT_FOR)
        d = self.reads.read(thread_of)
        self.assertIsNone(self.here(d))
        yield d

    @defer.inlineCallbacks
    def test_without_the_count_always_the_thread(self):
        """Where the kernel keeps no such count, every read goes to the read thread, as before."""
        reads = HotReads(self.db, self.clock, None)
        for _ in range(3):
            d = reads.read(thread_of)
            self.assertIsNone(self.here(d))
            thread, _ = yield d
            self.assertIsNot(thread, threading.current_thread())

    @defer.inlineCallbacks
    def test_an_error_here_fails_the_deferred(self):
        """A read here that raises fails its Deferred (it does not raise into the caller)."""
        yield self.reads.read(thread_of)

        def broken(cursor):
            raise ValueError("no such thing")

        yield self.assertFailure(self.reads.read(broken), ValueError)
        self.assertIsNotNone(self.here(self.reads.read(thread_of)))  # still here

    @defer.inlineCallbacks
    def test_a_read_that_would_wait_goes_to_the_thread(self):
        """A lock in the way (SQLITE_BUSY here, where nothing waits): the read runs on the read thread."""
        yield self.reads.read(thread_of)
        real = self.db.read_here

        def busy(txn, *args):
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise error

        self.db.read_here = busy
        thread, seen = yield self.reads.read(thread_of)
        self.assertIsNot(thread, threading.current_thread())
        self.assertEqual(seen, ["first"])
        self.db.read_here = real

    @defer.inlineCallbacks
    def test_here_is_read_only(self):
        """The calling thread's connection refuses writes like the read thread's."""
        yield self.reads.read(thread_of)
        yield self.assertFailure(self.reads.read(insert_txn, "no"), sqlite3.OperationalError)
        self.assertEqual((yield self.db.run(bodies_txn)), ["first"])

    @defer.inlineCallbacks
    def test_both_connections_closed_at_stop(self):
        """The stop closes the calling thread's connection too."""
        yield self.reads.read(thread_of)
        self.here(self.reads.read(thread_of))
        here = self.db._here
        self.assertIsNotNone(here)
        yield self.db.stop()
        self.assertIsNone(self.db._here)
        self.assertRaises(sqlite3.ProgrammingError, here.execute, "SELECT 1")


class DeviceReadTests(unittest.TestCase):
    """The kernel's count itself, with the database's pages put out of memory (C{POSIX_FADV_DONTNEED})."""

    @defer.inlineCallbacks
    def test_pages_out_of_memory_send_the_next_read_to_the_thread(self):
        if thread_inblock is None:
            raise unittest.SkipTest("no per-thread count of device reads on this system")
        path = os.path.join(self.mktemp(), "cairn.sqlite")
        os.makedirs(os.path.dirname(path))
        db = Database(reactor, path, [("notes", "tests.dbschema")])
        yield db.start()
        self.addCleanup(db.stop)
        for start in range(0, 2000, 500):
            yield db.run(lambda c, s=start: [insert_txn(c, "x" * 1000 + str(i)) for i in range(s, s + 500)])
        os.sync()
        reads = HotReads(db, task.Clock())
        yield reads.read(thread_of)  # read once on the thread, in memory: the next one here
        db._close_reader()  # no SQLite cache of the pages either
        for name in (path, path + "-wal"):
            if os.path.exists(name):
                fd = os.open(name, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        before = thread_inblock()
        results = []
        reads.read(thread_of).addCallback(results.append)
        if thread_inblock() == before:
            raise unittest.SkipTest("this file system read the pages from memory (tmpfs?)")
        self.assertEqual(results[0][0], threading.current_thread())  # that one ran here, from the device
        thread, seen = yield reads.read(thread_of)
        self.assertIsNot(thread, threading.current_thread())
        self.assertEqual(len(seen), 2000)
