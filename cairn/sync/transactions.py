"""
The sync hub's SQLite transactions, run on the database thread by
L{cairn.sync.store.SQLiteSyncStore} (reads: on a connection of their own,
L{cairn.dbreads}). Like the mailbox's (L{cairn.mailbox.transactions}), a
mutation returns C{(result, changes)}: the result for the caller and the
topics and cursors it changed, for the store's cache.
"""

import json

from cairn.sync.access import Access
from cairn.sync.interfaces import Topic, Update
from cairn.wire.constants import SyncStatus


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
