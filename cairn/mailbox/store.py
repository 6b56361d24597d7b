"""
The mailbox stores: L{SQLiteMailboxStore} (the default) and
L{MemoryMailboxStore}, its in-memory twin.

The SQLite store group-commits (L{cairn.groupcommit.GroupCommit}): every mutation
is queued, and whatever was queued while a transaction was in flight goes
into the next one -- one C{BEGIN IMMEDIATE ... COMMIT}, one fdatasync of
the WAL -- each mutation in a savepoint of its own so that one failing
does not undo the others (consecutive enqueues share one savepoint and one
pass of C{executemany}s, and fall back to one by one if it fails).
Acknowledgements (deliveries' and receipts') are gathered for
L{ACK_GATHER} first, into the next transaction of any kind. Only
once the WAL is synced do their Deferreds fire (and the service send the
ForwardAcks, or owe the receipts). Reads wait for the groups written before them to be synced,
so that nothing is delivered (or receipted) before it is durable. The
transactions themselves are in L{cairn.mailbox.transactions} (the sync
hub's store shares L{batch_txn}, imported from here).
"""

import itertools
import sqlite3

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.dbreads import HotReads
from cairn.diskspace import guarded_batch
from cairn.groupcommit import GroupCommit
from cairn.mailbox.interfaces import Depth, IMailboxStore, Receipt, Stored, StoreFull
from cairn.mailbox.transactions import (
    acknowledge_txn,
    admission,
    batch_txn,
    drop_receipts_txn,
    enqueue_refused_txn,
    enqueue_txn,
    expire_txn,
    fetch_txn,
    load_txn,
    purge_txn,
    receipts_txn,
    set_limits_txn,
)
from cairn.wire.constants import ForwardStatus, ReceiptStatus

log = Logger()

#: How many expired rows (of each table) one sweep transaction removes.
EXPIRE_BATCH = 1000

#: Seconds an acknowledgement (ForwardPurge: deliveries and receipts) waits
#: for others, of every recipient and sender, to share its transaction
#: (L{GroupCommit.gather}); 0: at once. See L{SQLiteMailboxStore.acknowledge}.
ACK_GATHER = 0.025


class MailboxFigures:
    """The synchronous figures both stores keep: depths, total bytes, overrides."""

    def __init__(self):
        self._depths = {}
        self._total = 0
        self.limits = {}

    def watch(self, callback):
        """The store is its data's only writer: nothing is written elsewhere to report."""

    def depths(self):
        return dict(self._depths)

    def total_bytes(self):
        return self._total

    def _apply(self, updates):
        for recipient, depth in updates.items():
            old = self._depths.pop(recipient, Depth())
            self._total += depth.bytes - old.bytes
            if depth.messages:
                self._depths[recipient] = depth


@implementer(IMailboxStore)
class SQLiteMailboxStore(MailboxFigures):
    """
    The mailbox in the node's L{cairn.db.Database}, group-committed.

    @param clock: the C{IReactorTime} acknowledgements are gathered on
        (default: the database's reactor).
    @param gather: seconds acknowledgements are gathered (L{ACK_GATHER}).
    @ivar commits: transactions committed for mutations (for tests and benches).
    """

    def __init__(self, db, clock=None, gather=ACK_GATHER):
        super().__init__()
        self.db = db
        # New messages are refused at the disk reserve (what is already held
        # is still acknowledged DUPLICATE); deletions still commit.
        batch = guarded_batch(batch_txn, db.space, {enqueue_txn: enqueue_refused_txn})
        self._group = GroupCommit(db, batch, self._apply, storage_error, clock=clock, gather=gather)
        #: Enqueues submitted and not yet answered (so perhaps written, not synced).
        self._enqueuing = 0
        #: Fetches and receipts' reads: in the reactor's thread while they find their pages in memory.
        self._reads = HotReads(db, clock if clock is not None else db.reactor)

    @property
    def commits(self) -> int:
        return self._group.commits

    def start(self):
        def loaded(result):
            depths, self.limits = result
            self._depths, self._total = {}, 0
            self._apply(depths)

        return self.db.run(load_txn).addCallback(loaded)

    def flushed(self):
        """A Deferred firing once every queued mutation has committed (or failed)."""
        return self._group.flushed()

    def _submit(self, txn, *args):
        return self._group.submit(txn, *args)

    # IMailboxStore

    def enqueue(self, items, now, limits):
        self._enqueuing += 1

        def answered(result):
            self._enqueuing -= 1
            return result

        return self._submit(enqueue_txn, list(items), now, limits).addBoth(answered)

    # Reads run on the database's reader (Database.read), or in the
    # reactor's thread while they find their pages in memory (HotReads): not
    # queued behind the group commits, whose COMMITs (and the WAL
    # checkpoints in them) would otherwise hold every fetch of a drain for
    # as long as they take.

    def _read(self, txn, *args):
        # What a read shows may include groups written but not yet synced:
        # wait for them, so that nothing is delivered before it is durable.
        return self._group.shown_synced(self._reads.read(txn, *args))

    def fetch(self, recipient, after_seq, limit):
        # Only an enqueue makes messages appear: while none is unanswered,
        # every message a fetch can see is already synced (what unsynced
        # acknowledgements deleted is simply not seen), so the fetch need
        # not wait for the sync of their groups. A drain then runs at the
        # pace of its reads instead of one fsync per page.
        d = self._reads.read(fetch_txn, recipient, after_seq, limit)
        return self._group.shown_synced(d, lambda: self._enqueuing)

    # Acknowledgements are gathered (issue 19): a drain's recipient
    # acknowledges a page of deliveries at a time and each sender its
    # receipts, and each such transaction rewrote the same pages (the
    # recipient's messages and depth, the receipts inserted and then
    # deleted) -- the largest part of the node's CPU in a drain
    # (bench/README.rst, "Mailbox drain, round 3"). Gathered for
    # ACK_GATHER, they share one transaction and one sync with each other
    # and with anything else written meanwhile. Nothing is removed before
    # the recipient acknowledged it; a DELIVERED receipt is owed (the
    # Deferred fires) only once its row is synced; a clean stop writes
    # them at once (flushed); a kill -9 loses at most what was acknowledged
    # in the interval, which is delivered again and dropped by id
    # (docs/reliability.md). Submission order is kept: a purge or an
    # expiry queued behind an acknowledgement takes it along first.

    def acknowledge(self, recipient, seqs, now, receipt_ttl, upto=0):
        return self._group.gather(acknowledge_txn, recipient, list(seqs), now, receipt_ttl, upto)

    def receipts(self, sender, after_rseq, limit):
        return self._read(receipts_txn, sender, after_rseq, limit)

    def drop_receipts(self, sender, rseqs):
        return self._group.gather(drop_receipts_txn, sender, list(rseqs))

    def expire(self, now, limit, receipt_ttl):
        return self._submit(expire_txn, now, limit, receipt_ttl)

    def purge(self, peer_id, now, receipt_ttl):
        def purged(receipts):
            self.limits.pop(peer_id, None)
            return receipts

        return self._submit(purge_txn, peer_id, now, receipt_ttl).addCallback(purged)

    def set_limits(self, peer_id, limits):
        def saved(_):
            if limits.max_messages is None and limits.max_bytes is None:
                self.limits.pop(peer_id, None)
            else:
                self.limits[peer_id] = limits

        return self._submit(set_limits_txn, peer_id, limits).addCallback(saved)


def storage_error(error):
    """A database error as L{StoreFull} (keeping its text) so the service maps it to one code."""
    if isinstance(error, StoreFull):
        return error
    if isinstance(error, sqlite3.Error) or type(error).__name__ == "DatabaseError":
        return StoreFull(str(error))
    return error


@implementer(IMailboxStore)
class MemoryMailboxStore(MailboxFigures):
    """The in-memory twin: the same behaviour, durable only as long as the process."""

    def __init__(self):
        super().__init__()
        self._messages = {}  # seq -> Stored
        self._ids = {}  # (sender, id) -> (recipient, expires_at)
        self._receipts = {}  # rseq -> (Receipt, expires_at)
        self._seqs = itertools.count(1)
        self._rseqs = itertools.count(1)

    def start(self):
        return defer.succeed(None)

    def flushed(self):
        return defer.succeed(None)  # every mutation is done when it returns

    def _depth_of(self, recipient):
        held = [m for m in self._messages.values() if m.recipient == recipient]
        if not held:
            return Depth()
        return Depth(len(held), sum(len(m.payload) for m in held), min(held, key=lambda m: m.seq).stored_at)

    def enqueue(self, items, now, limits):
        results = []
        for item in items:
            if (item.sender, item.message_id) in self._ids:
                results.append((ForwardStatus.DUPLICATE, None))
                continue
            depth = self._depth_of(item.recipient)
            refused = admission(len(item.payload), depth, self._total, limits, self.limits.get(item.recipient))
            if refused is not None:
                results.append((refused, None))
                continue
            seq = next(self._seqs)
            expires_at = now + limits.max_age
            self._messages[seq] = Stored(
                seq, item.recipient, item.sender, item.message_id, now, expires_at, item.payload
            )
            self._ids[(item.sender, item.message_id)] = (item.recipient, expires_at)
            self._apply({item.recipient: self._depth_of(item.recipient)})
            results.append((ForwardStatus.STORED, seq))
        return defer.succeed(results)

    def fetch(self, recipient, after_seq, limit):
        held = sorted(s for s, m in self._messages.items() if m.recipient == recipient and s > after_seq)
        return defer.succeed([self._messages[s] for s in held[:limit]])

    def _remove(self, messages, status, now, ttl):
        receipts = []
        for message in messages:
            del self._messages[message.seq]
            rseq = next(self._rseqs)
            receipt = Receipt(rseq, message.sender, message.recipient, message.message_id, int(status), now)
            self._receipts[rseq] = (receipt, now + ttl)
            receipts.append(receipt)
        self._apply({m.recipient: self._depth_of(m.recipient) for m in messages})
        return receipts

    def acknowledge(self, recipient, seqs, now, receipt_ttl, upto=0):
        wanted = set(seqs) | {s for s in self._messages if s <= upto}
        found = [self._messages[s] for s in sorted(wanted) if s in self._messages]
        found = [m for m in found if m.recipient == recipient]
        return defer.succeed(self._remove(found, ReceiptStatus.DELIVERED, now, receipt_ttl))

    def receipts(self, sender, after_rseq, limit):
        held = sorted(r for r, (receipt, _) in self._receipts.items() if receipt.sender == sender and r > after_rseq)
        return defer.succeed([self._receipts[r][0] for r in held[:limit]])

    def drop_receipts(self, sender, rseqs):
        for rseq in rseqs:
            if rseq in self._receipts and self._receipts[rseq][0].sender == sender:
                del self._receipts[rseq]
        return defer.succeed(None)

    def expire(self, now, limit, receipt_ttl):
        due = sorted((m for m in self._messages.values() if m.expires_at <= now), key=lambda m: m.expires_at)
        old = [r for r, (_, expires_at) in self._receipts.items() if expires_at <= now][:limit]
        for rseq in old:
            del self._receipts[rseq]
        ids = [k for k, (_, expires_at) in self._ids.items() if expires_at <= now][:limit]
        for key in ids:
            del self._ids[key]
        receipts = self._remove(due[:limit], ReceiptStatus.EXPIRED, now, receipt_ttl)
        return defer.succeed((receipts, max(len(due), len(old), len(ids)) >= limit))

    def purge(self, peer_id, now, receipt_ttl):
        held = sorted((m for m in self._messages.values() if m.recipient == peer_id), key=lambda m: m.seq)
        receipts = self._remove(held, ReceiptStatus.EVICTED, now, receipt_ttl)
        self._ids = {k: v for k, v in self._ids.items() if v[0] != peer_id}
        self._receipts = {k: v for k, v in self._receipts.items() if v[0].sender != peer_id}
        self.limits.pop(peer_id, None)
        return defer.succeed([r for r in receipts if r.sender != peer_id])

    def set_limits(self, peer_id, limits):
        if limits.max_messages is None and limits.max_bytes is None:
            self.limits.pop(peer_id, None)
        else:
            self.limits[peer_id] = limits
        return defer.succeed(None)
