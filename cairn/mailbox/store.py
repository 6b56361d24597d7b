"""
The mailbox stores: L{SQLiteMailboxStore} (the default) and
L{MemoryMailboxStore}, its in-memory twin.

The SQLite store group-commits: every mutation is queued, and whatever
was queued while a transaction was in flight goes into the next one --
one C{BEGIN IMMEDIATE ... COMMIT}, one fsync (C{synchronous=FULL}) --
each mutation in a savepoint of its own so that one failing does not
undo the others. Only after the commit do their Deferreds fire (and the
service send the ForwardAcks).
"""

import itertools
import sqlite3

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.db import GroupCommit
from cairn.mailbox.interfaces import Depth, IMailboxStore, PeerLimits, Receipt, Stored, StoreFull
from cairn.wire.constants import ForwardStatus, ReceiptStatus

log = Logger()

#: How many expired rows (of each table) one sweep transaction removes.
EXPIRE_BATCH = 1000


def admission(size, depth, total, limits, override):
    """
    The limit a new message of C{size} bytes would break, or None.

    The count per recipient is the override's, else the global one; the
    bytes per recipient are capped only by an override; the total by
    C{limits.max_total}.
    """
    max_messages = limits.max_per_peer
    if override is not None and override.max_messages is not None:
        max_messages = override.max_messages
    if depth.messages + 1 > max_messages:
        return ForwardStatus.MAILBOX_FULL
    if override is not None and override.max_bytes is not None and depth.bytes + size > override.max_bytes:
        return ForwardStatus.MAILBOX_FULL
    if total + size > limits.max_total:
        return ForwardStatus.STORAGE_FULL
    return None


class _Cache:
    """The synchronous figures both stores keep: depths, total bytes, overrides."""

    def __init__(self):
        self._depths = {}
        self._total = 0
        self.limits = {}

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


# SQLite transactions (run on the database thread)


def _depth_txn(cursor, recipient):
    row = cursor.execute("SELECT messages, bytes FROM mailbox_depth WHERE recipient = ?", (recipient,)).fetchone()
    return Depth(*row) if row else Depth()


def _write_depths_txn(cursor, depths):
    """Persist C{depths} ({recipient: Depth without oldest}); return them with C{oldest} filled in."""
    out = {}
    for recipient, depth in depths.items():
        if depth.messages <= 0:
            cursor.execute("DELETE FROM mailbox_depth WHERE recipient = ?", (recipient,))
            out[recipient] = Depth()
            continue
        cursor.execute(
            "INSERT INTO mailbox_depth (recipient, messages, bytes) VALUES (?, ?, ?)"
            " ON CONFLICT (recipient) DO UPDATE SET messages = excluded.messages, bytes = excluded.bytes",
            (recipient, depth.messages, depth.bytes),
        )
        oldest = cursor.execute(
            "SELECT stored_at FROM mailbox_messages WHERE recipient = ? ORDER BY seq LIMIT 1", (recipient,)
        ).fetchone()
        out[recipient] = Depth(depth.messages, depth.bytes, oldest[0] if oldest else None)
    return out


def enqueue_txn(cursor, items, now, limits):
    total = cursor.execute("SELECT COALESCE(SUM(bytes), 0) FROM mailbox_depth").fetchone()[0]
    depths, results = {}, []
    for item in items:
        known = cursor.execute(
            "SELECT 1 FROM mailbox_ids WHERE sender = ? AND message_id = ?", (item.sender, item.message_id)
        ).fetchone()
        if known:
            results.append((ForwardStatus.DUPLICATE, None))
            continue
        depth = depths.get(item.recipient) or _depth_txn(cursor, item.recipient)
        row = cursor.execute(
            "SELECT max_messages, max_bytes FROM mailbox_limits WHERE peer_id = ?", (item.recipient,)
        ).fetchone()
        size = len(item.payload)
        refused = admission(size, depth, total, limits, PeerLimits(*row) if row else None)
        if refused is not None:
            results.append((refused, None))
            continue
        expires_at = now + limits.max_age
        cursor.execute(
            "INSERT INTO mailbox_messages (recipient, sender, message_id, stored_at, expires_at, payload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (item.recipient, item.sender, item.message_id, now, expires_at, item.payload),
        )
        seq = cursor.lastrowid
        cursor.execute(
            "INSERT INTO mailbox_ids (sender, message_id, recipient, expires_at) VALUES (?, ?, ?, ?)",
            (item.sender, item.message_id, item.recipient, expires_at),
        )
        depths[item.recipient] = Depth(depth.messages + 1, depth.bytes + size)
        total += size
        results.append((ForwardStatus.STORED, seq))
    return results, _write_depths_txn(cursor, depths)


def _receipt_txn(cursor, sender, recipient, message_id, status, now, ttl):
    cursor.execute(
        "INSERT INTO mailbox_receipts (sender, recipient, message_id, status, at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (sender, recipient, message_id, int(status), now, now + ttl),
    )
    return Receipt(cursor.lastrowid, sender, recipient, message_id, int(status), now)


def _remove_txn(cursor, rows, status, now, ttl):
    """Delete messages C{rows} (seq, recipient, sender, id, size); owe receipts; return (receipts, depths)."""
    receipts, depths = [], {}
    for seq, recipient, sender, message_id, size in rows:
        cursor.execute("DELETE FROM mailbox_messages WHERE seq = ?", (seq,))
        receipts.append(_receipt_txn(cursor, sender, recipient, bytes(message_id), status, now, ttl))
        depth = depths.get(recipient) or _depth_txn(cursor, recipient)
        depths[recipient] = Depth(depth.messages - 1, depth.bytes - size)
    return receipts, _write_depths_txn(cursor, depths)


def acknowledge_txn(cursor, recipient, seqs, now, ttl):
    rows = []
    for seq in seqs:
        row = cursor.execute(
            "SELECT seq, recipient, sender, message_id, length(payload) FROM mailbox_messages"
            " WHERE seq = ? AND recipient = ?",
            (seq, recipient),
        ).fetchone()
        if row:
            rows.append(row)
    return _remove_txn(cursor, rows, ReceiptStatus.DELIVERED, now, ttl)


def expire_txn(cursor, now, limit, ttl):
    rows = cursor.execute(
        "SELECT seq, recipient, sender, message_id, length(payload) FROM mailbox_messages"
        " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
        (now, limit),
    ).fetchall()
    receipts, depths = _remove_txn(cursor, rows, ReceiptStatus.EXPIRED, now, ttl)
    ids = cursor.execute(
        "DELETE FROM mailbox_ids WHERE (sender, message_id) IN"
        " (SELECT sender, message_id FROM mailbox_ids WHERE expires_at <= ? LIMIT ?)",
        (now, limit),
    ).rowcount
    old = cursor.execute(
        "DELETE FROM mailbox_receipts WHERE rseq IN (SELECT rseq FROM mailbox_receipts WHERE expires_at <= ? LIMIT ?)",
        (now, limit),
    ).rowcount
    more = max(len(rows), ids, old) >= limit
    return (receipts, more), depths


def purge_txn(cursor, peer_id, now, ttl):
    rows = cursor.execute(
        "SELECT seq, recipient, sender, message_id, length(payload) FROM mailbox_messages WHERE recipient = ?",
        (peer_id,),
    ).fetchall()
    receipts, depths = _remove_txn(cursor, rows, ReceiptStatus.EVICTED, now, ttl)
    cursor.execute("DELETE FROM mailbox_ids WHERE recipient = ?", (peer_id,))
    cursor.execute("DELETE FROM mailbox_receipts WHERE sender = ?", (peer_id,))
    cursor.execute("DELETE FROM mailbox_limits WHERE peer_id = ?", (peer_id,))
    return [r for r in receipts if r.sender != peer_id], depths


def set_limits_txn(cursor, peer_id, limits):
    if limits.max_messages is None and limits.max_bytes is None:
        cursor.execute("DELETE FROM mailbox_limits WHERE peer_id = ?", (peer_id,))
    else:
        cursor.execute(
            "INSERT OR REPLACE INTO mailbox_limits (peer_id, max_messages, max_bytes) VALUES (?, ?, ?)",
            (peer_id, limits.max_messages, limits.max_bytes),
        )
    return None, {}


def drop_receipts_txn(cursor, sender, rseqs):
    for rseq in rseqs:
        cursor.execute("DELETE FROM mailbox_receipts WHERE rseq = ? AND sender = ?", (rseq, sender))
    return None, {}


def fetch_txn(cursor, recipient, after_seq, limit):
    rows = cursor.execute(
        "SELECT seq, recipient, sender, message_id, stored_at, expires_at, payload FROM mailbox_messages"
        " WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?",
        (recipient, after_seq, limit),
    ).fetchall()
    return [Stored(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], bytes(r[6])) for r in rows]


def receipts_txn(cursor, sender, after_rseq, limit):
    rows = cursor.execute(
        "SELECT rseq, sender, recipient, message_id, status, at FROM mailbox_receipts"
        " WHERE sender = ? AND rseq > ? ORDER BY rseq LIMIT ?",
        (sender, after_rseq, limit),
    ).fetchall()
    return [Receipt(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]


def load_txn(cursor):
    depths = {}
    for recipient, messages, size in cursor.execute("SELECT recipient, messages, bytes FROM mailbox_depth").fetchall():
        oldest = cursor.execute(
            "SELECT stored_at FROM mailbox_messages WHERE recipient = ? ORDER BY seq LIMIT 1", (recipient,)
        ).fetchone()
        depths[recipient] = Depth(messages, size, oldest[0] if oldest else None)
    limits = {
        row[0]: PeerLimits(row[1], row[2])
        for row in cursor.execute("SELECT peer_id, max_messages, max_bytes FROM mailbox_limits").fetchall()
    }
    return depths, limits


def _batch_txn(cursor, calls):
    """Run each C{(txn, args)} in a savepoint of its own; return [(ok, result or exception)]."""
    out = []
    for txn, args in calls:
        cursor.execute("SAVEPOINT mailbox_op")
        try:
            result = txn(cursor, *args)
        except Exception as e:  # this op fails alone; the others still commit
            if not cursor.connection.in_transaction:
                # SQLite rolled the whole transaction back itself (it does on
                # SQLITE_FULL): every op of the batch is lost. Open an empty
                # transaction for Database to roll back, and fail them all.
                cursor.execute("BEGIN IMMEDIATE")
                raise StoreFull(str(e)) from e
            cursor.execute("ROLLBACK TO mailbox_op")
            cursor.execute("RELEASE mailbox_op")
            out.append((False, e))
        else:
            cursor.execute("RELEASE mailbox_op")
            out.append((True, result))
    return out


@implementer(IMailboxStore)
class SQLiteMailboxStore(_Cache):
    """
    The mailbox in the node's L{cairn.db.Database}, group-committed.

    @ivar commits: transactions committed for mutations (for tests and benches).
    """

    def __init__(self, db):
        super().__init__()
        self.db = db
        self._group = GroupCommit(db, _batch_txn, self._apply, _storage_error)

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
        return self._submit(enqueue_txn, list(items), now, limits)

    def fetch(self, recipient, after_seq, limit):
        return self.db.run(fetch_txn, recipient, after_seq, limit)

    def acknowledge(self, recipient, seqs, now, receipt_ttl):
        return self._submit(acknowledge_txn, recipient, list(seqs), now, receipt_ttl)

    def receipts(self, sender, after_rseq, limit):
        return self.db.run(receipts_txn, sender, after_rseq, limit)

    def drop_receipts(self, sender, rseqs):
        return self._submit(drop_receipts_txn, sender, list(rseqs))

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


def _storage_error(error):
    """A database error as L{StoreFull} (keeping its text) so the service maps it to one code."""
    if isinstance(error, StoreFull):
        return error
    if isinstance(error, sqlite3.Error) or type(error).__name__ == "DatabaseError":
        return StoreFull(str(error))
    return error


@implementer(IMailboxStore)
class MemoryMailboxStore(_Cache):
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

    def acknowledge(self, recipient, seqs, now, receipt_ttl):
        found = [self._messages[s] for s in seqs if s in self._messages and self._messages[s].recipient == recipient]
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
