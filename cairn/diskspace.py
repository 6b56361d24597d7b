"""
Free space on the data directory's file system, and the reserve kept on it.

SQLite needs disk space to delete: a transaction that removes rows writes
its pages to the write-ahead log first. A node that lets new messages fill
the disk to the last byte can then no longer record what was delivered
(the recipient's acknowledgements fail, so every reconnect redelivers
everything, and the senders never get their DELIVERED receipts). So the
node keeps a reserve, C{CAIRN_DISK_RESERVE} bytes: a write that would
bring the free space below it is refused -- new forwards (ForwardAck
STORAGE_ERROR) and sync publishes (SyncAck STORAGE_ERROR) -- while
acknowledgements, purges, receipts, cursors and expiry, which shrink the
database or barely grow it, still commit.

"Free" counts what the database can reuse without growing: the pages on
SQLite's free list (left by deleted rows; the file does not shrink) as
well as the file system's available blocks. Without them a mailbox that
filled the disk and was then drained would stay refused for ever. What
the write-ahead log may still take counts as used: it grows to about
C{wal_autocheckpoint} pages (4 MB) before it is reused, and the pages it
holds grow the database file only at the next checkpoint, so C{statvfs}
alone shows the cost of a write late (measured on a tmpfs: by up to the
log's size). See L{_wal_pending} for what is counted.

The check runs on the database thread once per group commit
(L{guarded_batch}), with the sizes of the writes in the group: one
C{statvfs}, two pragmas and two C{stat}s per transaction, not per
message.

Another program filling the same file system can still take the last
byte; then deletions fail and the mailbox's sweep retries them (see
L{cairn.mailbox.service}).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger

from cairn.mailbox.interfaces import StoreFull

log = Logger()

#: Bytes counted per item beside its payload: its rows and index entries.
ITEM_OVERHEAD = 256


class LowDiskSpace(StoreFull):
    """A write was refused to keep the disk reserve (an expected condition: no traceback)."""


class FreeSpace:
    """
    The free space of the file system holding C{path}, and its reserve.

    @param path: a directory on the file system to watch (the data directory).
    @param reserve: bytes to keep free for deletions and receipts.
    @param statvfs: C{os.statvfs} (a seam: tests give a small "disk").
    @param report: called with a log event's format and fields when the
        free space crosses the reserve (from the database thread; the node
        passes one that logs in the reactor thread).
    """

    def __init__(self, path: str, reserve: int, statvfs: Callable = os.statvfs, report=None):
        self.path = path
        self.reserve = reserve
        #: C{os.statvfs}, or a stand-in (a seam for tests).
        self.statvfs = statvfs
        self._report = report or (lambda fmt, **fields: log.warn(fmt, **fields))
        #: Bytes on the database's free list, as of the last check.
        self.reusable = 0
        #: Whether writes are being refused (set at the first refusal,
        #: cleared once the free space is a reserve's worth above it).
        self.low = False
        #: Writes refused to keep the reserve.
        self.refused = 0
        self._layout = None  # (page size, WAL path or None, WAL checkpoint pages), read once

    def free(self) -> int:
        """Bytes available to the node on the file system now (0 if it cannot be read)."""
        try:
            st = self.statvfs(self.path)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def available(self) -> int:
        """What writes may still use: the free bytes and the database's reusable pages."""
        return self.free() + self.reusable

    def check(self, cursor, sizes: list) -> list:
        """
        Which of the writes of C{sizes} bytes (in order) fit above the reserve.

        Run on the database thread with the transaction's C{cursor}; a
        write that fits is counted against the room of those after it.
        """
        if self._layout is None:
            self._layout = _layout(cursor)
        page_size, db_path, wal_path, wal_pages = self._layout
        self.reusable = cursor.execute("PRAGMA freelist_count").fetchone()[0] * page_size
        database_bytes = cursor.execute("PRAGMA page_count").fetchone()[0] * page_size
        pending = _wal_pending(db_path, wal_path, wal_pages * page_size, database_bytes)
        room = self.available() - self.reserve - pending
        fits = []
        for size in sizes:
            ok = size == 0 or size <= room
            fits.append(ok)
            if ok:
                room -= size
        self._crossed(not all(fits), room)
        return fits

    def _crossed(self, refused: bool, room: int) -> None:
        # One line when writes start being refused, one when there is room
        # again -- a reserve's worth above it, so that senders refilling
        # every byte acknowledgements free do not make the log flap.
        if refused and not self.low:
            self.low = True
            self._report(
                "free disk space on {path} is down to the reserve ({reserve} bytes, CAIRN_DISK_RESERVE):"
                " refusing new messages and sync updates; deliveries and acknowledgements go on",
                path=self.path,
                reserve=self.reserve,
            )
        elif self.low and not refused and room >= self.reserve:
            self.low = False
            self._report("free disk space on {path} is above the reserve again", path=self.path)

    def is_low(self) -> bool:
        """Whether the free space (with the reusable pages last seen) is below the reserve now."""
        return self.available() < self.reserve

    def to_json(self) -> dict:
        """For C{GET /health}: free and reusable bytes, the reserve, whether writes are refused."""
        return {
            "free_bytes": self.free(),
            "reusable_bytes": self.reusable,
            "reserve_bytes": self.reserve,
            "low": self.is_low(),
        }

    def collect_metrics(self):
        """Prometheus families for L{cairn.management.metrics.Metrics.add_collector}."""
        yield GaugeMetricFamily("cairn_disk_free_bytes", "Bytes free on the data directory's file system.", self.free())
        yield GaugeMetricFamily("cairn_disk_reusable_bytes", "Free pages inside the database.", self.reusable)
        yield GaugeMetricFamily("cairn_disk_reserve_bytes", "Free bytes kept for deletions.", self.reserve)
        yield GaugeMetricFamily("cairn_disk_low", "1 while free space is below the reserve.", int(self.is_low()))
        yield CounterMetricFamily("cairn_disk_refused", "Writes refused to keep the disk reserve.", self.refused)


def _layout(cursor):
    """
    The database's page size, its file's path, its write-ahead log's path
    (None if not in WAL mode) and the log's checkpoint size in pages.
    """
    page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
    path = cursor.execute("PRAGMA database_list").fetchone()[2]
    wal = cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    pages = cursor.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    return page_size, path, (path + "-wal" if path and wal else None), pages


def _wal_pending(db_path, wal_path, limit: int, database_bytes: int) -> int:
    """
    Disk space the write-ahead log may still take that no C{statvfs}
    shows yet: the pages it holds beyond the end of the database file
    (C{database_bytes} is the database's size with them) are added to that
    file at the next checkpoint, and it may hold about C{limit} bytes of
    frames (C{wal_autocheckpoint} pages) before a checkpoint lets it be
    written over from its start -- room a transaction after them needs,
    a deletion as much as a write (the pages it changes are written to the
    log; with full secure delete, as Debian's SQLite defaults to, every
    freed page too -- the node's connection deletes with
    C{secure_delete=FAST}, L{cairn.db.open_connection}).

    The log's own size is not counted again: its file is already used
    space in C{statvfs}'s figure, and frames are written over in it.
    Counting it twice kept a drained database refused for ever once a
    burst had grown the log past C{limit} (the log does not shrink).
    """
    if wal_path is None:
        return 0
    return limit + max(database_bytes - _size(db_path), 0)


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def payload_bytes(items) -> int:
    """What storing C{items} (each with a C{payload}) takes, overhead included."""
    return sum(len(item.payload) + ITEM_OVERHEAD for item in items)


def guarded_batch(batch_txn, space: FreeSpace | None, growing):
    """
    Wrap a group commit's C{batch_txn(cursor, calls)} so that the calls
    whose txn is in C{growing} (their first argument: the items to store)
    fail with L{LowDiskSpace} when they would eat into the reserve; every
    other call runs as before.

    C{growing} is a set of txns, or a mapping from each to None or to a
    C{refused(cursor, *args)} run for a call refused here. It returns None
    for the failure, or C{(result, refused)}: the call's result instead of
    the failure (e.g. per item, so that what is already stored is still
    acknowledged as such) and whether any of its items was still refused.

    L{FreeSpace.refused} counts the calls that were refused something: a
    call answered wholly from what is already held (a sender's retry) is
    not a refusal.
    """
    if space is None:
        return batch_txn
    refusals = growing if isinstance(growing, dict) else dict.fromkeys(growing)

    def batch(cursor, calls):
        sizes = [payload_bytes(args[0]) if txn in refusals else 0 for txn, args in calls]
        if not any(sizes):
            return batch_txn(cursor, calls)
        fits = space.check(cursor, sizes)
        if all(fits):
            return batch_txn(cursor, calls)
        admitted = [call for call, ok in zip(calls, fits) if ok]
        results = iter(batch_txn(cursor, admitted) if admitted else [])
        refused = LowDiskSpace("free disk space is below the reserve")
        out = []
        for (txn, args), ok in zip(calls, fits):
            if ok:
                out.append(next(results))
                continue
            instead = refusals[txn]
            answer = instead(cursor, *args) if instead is not None else None
            if answer is None:
                space.refused += 1
                out.append((False, refused))
                continue
            value, some_refused = answer
            space.refused += bool(some_refused)
            out.append((True, value))
        return out

    return batch
