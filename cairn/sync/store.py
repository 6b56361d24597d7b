"""
The sync stores: L{SQLiteSyncStore} (the default) and L{MemorySyncStore},
its in-memory twin.

The SQLite store group-commits like the mailbox's (see
L{cairn.mailbox.store}): mutations queued while a transaction is in
flight share the next one, each in a savepoint of its own, and their
Deferreds fire only after the commit.
"""

import json

from twisted.internet import defer
from zope.interface import implementer

from cairn.diskspace import guarded_batch
from cairn.groupcommit import GroupCommit
from cairn.mailbox.store import batch_txn, storage_error
from cairn.sync.access import Access, Grants
from cairn.sync.interfaces import ISyncStore, Topic, Update
from cairn.wire.constants import SyncStatus

#: How many expired updates one sweep transaction removes.
EXPIRE_BATCH = 1000


class SyncFigures(Grants):
    """The synchronous figures both stores keep: topics, cursors, total bytes, grants."""

    def __init__(self):
        self._topics = {}
        self._cursors = {}
        self._total = 0
        self._access = {}

    def topics(self):
        return dict(self._topics)

    def cursors(self):
        return {device: dict(held) for device, held in self._cursors.items()}

    def total_bytes(self):
        return self._total

    def watch(self, callback):
        """The store is its data's only writer: nothing is written elsewhere to report."""

    def _apply(self, changes):
        topics, cursors = changes
        for name, topic in topics.items():
            old = self._topics.get(name, Topic())
            self._total += topic.bytes - old.bytes
            self._topics[name] = topic
        for (device, name), seq in cursors.items():
            if seq is None:
                held = self._cursors.get(device, {})
                held.pop(name, None)
                if not held:
                    self._cursors.pop(device, None)
            else:
                self._cursors.setdefault(device, {})[name] = seq


# SQLite transactions (run on the database thread)


def _topic_txn(cursor, name):
    row = cursor.execute("SELECT head, floor, updates, bytes FROM sync_topics WHERE topic = ?", (name,)).fetchone()
    return Topic(*row) if row else Topic()


def _write_topics_txn(cursor, topics):
    for name, t in topics.items():
        cursor.execute(
            "INSERT INTO sync_topics (topic, head, floor, updates, bytes) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (topic) DO UPDATE SET head = excluded.head, floor = excluded.floor,"
            " updates = excluded.updates, bytes = excluded.bytes",
            (name, t.head, t.floor, t.updates, t.bytes),
        )


def _remove_txn(cursor, rows, topics):
    """Delete log rows C{rows} (topic, seq, size), raising each topic's floor; updates C{topics}."""
    for name, seq, size in rows:
        cursor.execute("DELETE FROM sync_log WHERE topic = ? AND seq = ?", (name, seq))
        t = topics.get(name) or _topic_txn(cursor, name)
        topics[name] = Topic(t.head, max(t.floor, seq), t.updates - 1, t.bytes - size)


def _known_seq_txn(cursor, item):
    """The seq of C{item}'s (sender, update id) if it is held already, else None."""
    row = cursor.execute(
        "SELECT seq FROM sync_log WHERE sender = ? AND update_id = ?", (item.sender, item.update_id)
    ).fetchone()
    return row[0] if row else None


def publish_txn(cursor, items, now, limits):
    total = cursor.execute("SELECT COALESCE(SUM(bytes), 0) FROM sync_topics").fetchone()[0]
    topics, results = {}, []
    for item in items:
        known = _known_seq_txn(cursor, item)
        if known is not None:
            results.append((SyncStatus.DUPLICATE, known))
            continue
        t = topics.get(item.topic) or _topic_txn(cursor, item.topic)
        seq, size = t.head + 1, len(item.payload)
        cursor.execute(
            "INSERT INTO sync_log (topic, seq, sender, update_id, stored_at, expires_at, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (item.topic, seq, item.sender, item.update_id, now, now + limits.max_age, item.payload),
        )
        topics[item.topic] = Topic(seq, t.floor, t.updates + 1, t.bytes + size)
        total += size
        results.append((SyncStatus.COMMITTED, seq))
    while total > limits.max_total:
        rows = cursor.execute(
            "SELECT topic, seq, length(payload) FROM sync_log ORDER BY expires_at, seq LIMIT 64"
        ).fetchall()
        if not rows:
            break
        evict = []
        for row in rows:
            if total <= limits.max_total:
                break
            evict.append(row)
            total -= row[2]
        _remove_txn(cursor, evict, topics)
    _write_topics_txn(cursor, topics)
    return results, (topics, {})


def publish_refused_txn(cursor, items, now, limits):
    """
    The result of a L{publish_txn} refused at the disk reserve: None (the
    call fails, every update STORAGE_ERROR) unless some update is already
    held; then that one is a DUPLICATE with its seq as always (protocol.md
    §24.3) and the others STORAGE_ERROR (see
    L{cairn.diskspace.guarded_batch} for the pair returned).
    """
    seqs = [_known_seq_txn(cursor, item) for item in items]
    if all(seq is None for seq in seqs):
        return None
    results = [(SyncStatus.STORAGE_ERROR, None) if seq is None else (SyncStatus.DUPLICATE, seq) for seq in seqs]
    return (results, ({}, {})), None in seqs


def fetch_txn(cursor, name, after_seq, limit):
    rows = cursor.execute(
        "SELECT topic, seq, sender, update_id, stored_at, payload FROM sync_log"
        " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
        (name, after_seq, limit),
    ).fetchall()
    return [Update(r[0], r[1], r[2], bytes(r[3]), r[4], bytes(r[5])) for r in rows]


def subscribe_txn(cursor, device, wanted):
    out = {}
    for name, seq in wanted.items():
        t = _topic_txn(cursor, name)
        row = cursor.execute("SELECT seq FROM sync_cursors WHERE device = ? AND topic = ?", (device, name)).fetchone()
        if seq is not None:
            value = max(0, min(seq, t.head))
        elif row is not None:
            value = row[0]
        else:
            value = t.floor
        if row is None or row[0] != value:
            # Unchanged cursors are not written: a device resubscribing on a
            # full disk still gets its replay.
            cursor.execute(
                "INSERT INTO sync_cursors (device, topic, seq) VALUES (?, ?, ?)"
                " ON CONFLICT (device, topic) DO UPDATE SET seq = excluded.seq",
                (device, name, value),
            )
        out[name] = value
    return out, ({}, {(device, name): value for name, value in out.items()})


def set_cursor_txn(cursor, device, name, seq):
    row = cursor.execute("SELECT seq FROM sync_cursors WHERE device = ? AND topic = ?", (device, name)).fetchone()
    if row is None:
        return None, ({}, {})  # not subscribed (or unpaired meanwhile)
    value = max(row[0], min(seq, _topic_txn(cursor, name).head))
    if value != row[0]:
        cursor.execute("UPDATE sync_cursors SET seq = ? WHERE device = ? AND topic = ?", (value, device, name))
    return value, ({}, {(device, name): value})


def expire_txn(cursor, now, limit):
    rows = cursor.execute(
        "SELECT topic, seq, length(payload) FROM sync_log WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
        (now, limit),
    ).fetchall()
    topics = {}
    _remove_txn(cursor, rows, topics)
    _write_topics_txn(cursor, topics)
    return (len(rows), len(rows) >= limit), (topics, {})


def purge_txn(cursor, device):
    names = [r[0] for r in cursor.execute("SELECT topic FROM sync_cursors WHERE device = ?", (device,)).fetchall()]
    cursor.execute("DELETE FROM sync_cursors WHERE device = ?", (device,))
    cursor.execute("DELETE FROM sync_access WHERE device = ?", (device,))
    return len(names), ({}, {(device, name): None for name in names})


def set_access_txn(cursor, device, access):
    if access is None:
        cursor.execute("DELETE FROM sync_access WHERE device = ?", (device,))
    else:
        cursor.execute(
            "INSERT INTO sync_access (device, read, write) VALUES (?, ?, ?)"
            " ON CONFLICT (device) DO UPDATE SET read = excluded.read, write = excluded.write",
            (device, json.dumps(list(access.read)), json.dumps(list(access.write))),
        )
    return access, ({}, {})


def load_access_txn(cursor):
    rows = cursor.execute("SELECT device, read, write FROM sync_access").fetchall()
    return {r[0]: Access(tuple(json.loads(r[1])), tuple(json.loads(r[2]))) for r in rows}


def load_txn(cursor):
    topics = {
        r[0]: Topic(*r[1:])
        for r in cursor.execute("SELECT topic, head, floor, updates, bytes FROM sync_topics").fetchall()
    }
    cursors = {(r[0], r[1]): r[2] for r in cursor.execute("SELECT device, topic, seq FROM sync_cursors").fetchall()}
    return topics, cursors


@implementer(ISyncStore)
class SQLiteSyncStore(SyncFigures):
    """The sync hub in the node's L{cairn.db.Database}, group-committed."""

    def __init__(self, db):
        super().__init__()
        self.db = db
        # New updates are refused at the disk reserve (what is already held is
        # still acknowledged DUPLICATE); cursors and expiry still commit.
        batch = guarded_batch(batch_txn, db.space, {publish_txn: publish_refused_txn})
        self._group = GroupCommit(db, batch, self._apply, storage_error)

    @property
    def commits(self) -> int:
        return self._group.commits

    def start(self):
        def loaded(changes):
            self._topics, self._cursors, self._total = {}, {}, 0
            self._apply(changes)
            return self.db.run(load_access_txn)

        def access_loaded(access):
            self._access = access

        return self.db.run(load_txn).addCallback(loaded).addCallback(access_loaded)

    def flushed(self):
        """A Deferred firing once every queued mutation has committed (or failed)."""
        return self._group.flushed()

    def _submit(self, txn, *args):
        return self._group.submit(txn, *args)

    # ISyncStore

    def publish(self, items, now, limits):
        return self._submit(publish_txn, list(items), now, limits)

    def fetch(self, topic, after_seq, limit):
        return self.db.run(fetch_txn, topic, after_seq, limit)

    def subscribe(self, device, cursors):
        return self._submit(subscribe_txn, device, dict(cursors))

    def set_cursor(self, device, topic, seq):
        return self._submit(set_cursor_txn, device, topic, seq)

    def expire(self, now, limit):
        return self._submit(expire_txn, now, limit)

    def purge(self, device):
        return self._submit(purge_txn, device).addCallback(self._purged, device)

    def _purged(self, count, device):
        self._set_access(device, None)
        return count

    def set_access(self, device, access):
        def set(value):
            self._set_access(device, value)
            return value

        return self._submit(set_access_txn, device, access).addCallback(set)


@implementer(ISyncStore)
class MemorySyncStore(SyncFigures):
    """The in-memory twin: the same behaviour, durable only as long as the process."""

    def __init__(self):
        super().__init__()
        self.commits = 0  # nothing is committed in memory
        self._log = {}  # (topic, seq) -> (Update, expires_at)
        self._ids = {}  # (sender, id) -> (topic, seq)

    def start(self):
        return defer.succeed(None)

    def flushed(self):
        return defer.succeed(None)  # every mutation is done when it returns

    def _remove(self, keys, topics):
        for key in keys:
            update, _ = self._log.pop(key)
            del self._ids[(update.sender, update.update_id)]
            t = topics.get(update.topic) or self._topics.get(update.topic, Topic())
            topics[update.topic] = Topic(t.head, max(t.floor, update.seq), t.updates - 1, t.bytes - len(update.payload))

    def publish(self, items, now, limits):
        results, topics = [], {}
        total = self._total
        for item in items:
            known = self._ids.get((item.sender, item.update_id))
            if known is not None:
                results.append((SyncStatus.DUPLICATE, known[1]))
                continue
            t = topics.get(item.topic) or self._topics.get(item.topic, Topic())
            seq = t.head + 1
            update = Update(item.topic, seq, item.sender, item.update_id, now, item.payload)
            self._log[(item.topic, seq)] = (update, now + limits.max_age)
            self._ids[(item.sender, item.update_id)] = (item.topic, seq)
            topics[item.topic] = Topic(seq, t.floor, t.updates + 1, t.bytes + len(item.payload))
            total += len(item.payload)
            results.append((SyncStatus.COMMITTED, seq))
        if total > limits.max_total:
            evict = []
            for key, (update, _) in sorted(self._log.items(), key=lambda kv: (kv[1][1], kv[0][1])):
                if total <= limits.max_total:
                    break
                evict.append(key)
                total -= len(update.payload)
            self._remove(evict, topics)
        self._apply((topics, {}))
        return defer.succeed(results)

    def fetch(self, topic, after_seq, limit):
        seqs = sorted(s for (t, s) in self._log if t == topic and s > after_seq)
        return defer.succeed([self._log[(topic, s)][0] for s in seqs[:limit]])

    def subscribe(self, device, cursors):
        out = {}
        for name, seq in cursors.items():
            t = self._topics.get(name, Topic())
            held = self._cursors.get(device, {}).get(name)
            if seq is not None:
                out[name] = max(0, min(seq, t.head))
            else:
                out[name] = held if held is not None else t.floor
        self._apply(({}, {(device, name): value for name, value in out.items()}))
        return defer.succeed(out)

    def set_cursor(self, device, topic, seq):
        held = self._cursors.get(device, {}).get(topic)
        if held is None:
            return defer.succeed(None)
        value = max(held, min(seq, self._topics.get(topic, Topic()).head))
        self._apply(({}, {(device, topic): value}))
        return defer.succeed(value)

    def expire(self, now, limit):
        due = [k for k, (_, expires_at) in self._log.items() if expires_at <= now]
        due.sort(key=lambda k: self._log[k][1])
        topics = {}
        self._remove(due[:limit], topics)
        self._apply((topics, {}))
        return defer.succeed((min(len(due), limit), len(due) >= limit))

    def purge(self, device):
        names = list(self._cursors.get(device, {}))
        self._apply(({}, {(device, name): None for name in names}))
        self._set_access(device, None)
        return defer.succeed(len(names))

    def set_access(self, device, access):
        self._set_access(device, access)
        return defer.succeed(access)
