"""
The mailbox's SQLite transactions, run on the database thread by
L{cairn.mailbox.store.SQLiteMailboxStore} (see its module docstring).

A mutation C{*_txn(cursor, ...)} returns C{(result, depths)}: the result
for the caller and the new L{Depth}s of the recipients it changed, for the
store's cache. L{batch_txn} runs a group commit's mutations, each in a
savepoint of its own, consecutive enqueues merged into one pass. Keys of
new rows are assigned explicitly (L{_next_rowid_txn}) so that a whole
batch goes in with one C{executemany}.
"""

from cairn.mailbox.interfaces import Depth, PeerLimits, Receipt, Stored, StoreFull
from cairn.wire.constants import ForwardStatus, ReceiptStatus


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


def _next_rowid_txn(cursor, table, key):
    """
    The next AUTOINCREMENT value of C{table}: rows inserted with explicit
    keys counting up from it get what AUTOINCREMENT would have given them
    (one writer), so that a whole batch can go in one C{executemany}.
    """
    used = cursor.execute(f"SELECT COALESCE(MAX({key}), 0) FROM {table}").fetchone()[0]
    row = cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return max(used, row[0] if row else 0) + 1


#: Values bound in one C{IN (...)} list (SQLite's limit is 32766 since 3.32).
IN_CHUNK = 500


def _chunks(values):
    """C{values} (a list) in slices of at most L{IN_CHUNK}."""
    return [values[start : start + IN_CHUNK] for start in range(0, len(values), IN_CHUNK)]


def _known_ids_txn(cursor, items):
    """The (sender, message id)s of C{items} already in mailbox_ids."""
    wanted = {}
    for item in items:
        wanted.setdefault(item.sender, []).append(item.message_id)
    known = set()
    for sender, ids in wanted.items():
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = cursor.execute(
                f"SELECT message_id FROM mailbox_ids WHERE sender = ? AND message_id IN ({','.join('?' * len(chunk))})",
                (sender, *chunk),
            ).fetchall()
            known.update((sender, bytes(row[0])) for row in rows)
    return known


def enqueue_txn(cursor, items, now, limits):
    total = cursor.execute("SELECT COALESCE(SUM(bytes), 0) FROM mailbox_depth").fetchone()[0]
    known = _known_ids_txn(cursor, items)
    depths, overrides, results, accepted = {}, {}, [], []
    for item in items:
        recipient, key = item.recipient, (item.sender, item.message_id)
        if key in known:  # a known id is a duplicate whatever the limits say
            results.append((ForwardStatus.DUPLICATE, None))
            continue
        depth = depths.get(recipient) or _depth_txn(cursor, recipient)
        if recipient not in overrides:
            row = cursor.execute(
                "SELECT max_messages, max_bytes FROM mailbox_limits WHERE peer_id = ?", (recipient,)
            ).fetchone()
            overrides[recipient] = PeerLimits(*row) if row else None
        size = len(item.payload)
        refused = admission(size, depth, total, limits, overrides[recipient])
        if refused is not None:
            results.append((refused, None))
            continue
        known.add(key)  # a second copy in the same batch is a duplicate
        depths[recipient] = Depth(depth.messages + 1, depth.bytes + size)
        total += size
        results.append((ForwardStatus.STORED, len(accepted)))
        accepted.append(item)
    if accepted:
        first = _next_rowid_txn(cursor, "mailbox_messages", "seq")
        expires_at = now + limits.max_age
        cursor.executemany(
            "INSERT INTO mailbox_messages (seq, recipient, sender, message_id, stored_at, expires_at, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (first + i, item.recipient, item.sender, item.message_id, now, expires_at, item.payload)
                for i, item in enumerate(accepted)
            ],
        )
        cursor.executemany(
            "INSERT INTO mailbox_ids (sender, message_id, recipient, expires_at) VALUES (?, ?, ?, ?)",
            [(item.sender, item.message_id, item.recipient, expires_at) for item in accepted],
        )
        results = [(status, None if i is None else first + i) for status, i in results]
    return results, _write_depths_txn(cursor, depths)


def enqueue_refused_txn(cursor, items, now, limits):
    """
    The result of an L{enqueue_txn} refused at the disk reserve: None (the
    call fails, every item STORAGE_ERROR) unless some item is already
    held; then that one is a DUPLICATE as always and the others
    STORAGE_ERROR (see L{cairn.diskspace.guarded_batch} for the pair returned).
    """
    known = _known_ids_txn(cursor, items)
    if not known:
        return None
    results = [
        (ForwardStatus.DUPLICATE if (item.sender, item.message_id) in known else ForwardStatus.STORAGE_ERROR, None)
        for item in items
    ]
    return (results, {}), any(status == ForwardStatus.STORAGE_ERROR for status, _ in results)


def _remove_txn(cursor, rows, status, now, ttl):
    """Delete messages C{rows} (seq, recipient, sender, id, size); owe receipts; return (receipts, depths)."""
    cursor.executemany("DELETE FROM mailbox_messages WHERE seq = ?", [(row[0],) for row in rows])
    return _removed_txn(cursor, rows, status, now, ttl)


def acknowledge_txn(cursor, recipient, seqs, now, ttl, upto=0):
    # Set-based: a receipt per message written by SQLite from the rows
    # themselves (L{_owe_txn}), not bound from Python row by row.
    rows, first = [], None
    if upto:
        where, params = "recipient = ? AND seq <= ?", (recipient, upto)
        rows = cursor.execute(_SELECT_REMOVED + where + " ORDER BY seq", params).fetchall()
        if rows:
            first = _owe_txn(cursor, where, params, ReceiptStatus.DELIVERED, now, ttl, len(rows))
            cursor.execute("DELETE FROM mailbox_messages WHERE " + where, params)
    # Single seqs: one SELECT, INSERT and DELETE per chunk, not per message.
    for chunk in _chunks(sorted({seq for seq in seqs if seq > upto})):
        where = f"recipient = ? AND seq IN ({','.join('?' * len(chunk))})"
        params = (recipient, *chunk)
        found = cursor.execute(_SELECT_REMOVED + where + " ORDER BY seq", params).fetchall()
        if found:
            start = _owe_txn(cursor, where, params, ReceiptStatus.DELIVERED, now, ttl, len(found))
            first = start if first is None else first  # consecutive with the earlier ones
            rows.extend(found)
            cursor.execute("DELETE FROM mailbox_messages WHERE " + where, params)
    if not rows:
        return [], {}
    return _owed_txn(cursor, rows, first, ReceiptStatus.DELIVERED, now)


#: The columns L{_removed_txn} and L{_owed_txn} take, of the messages removed.
_SELECT_REMOVED = "SELECT seq, recipient, sender, message_id, length(payload) FROM mailbox_messages WHERE "


def _owe_txn(cursor, where, params, status, now, ttl, count):
    """
    Owe a receipt for each of the C{count} messages C{WHERE where} (still
    in the table), in seq order; return the first one's rseq.

    One C{INSERT ... SELECT}: the receipts' rows are copied by SQLite,
    about 1 us per message less than binding them from Python (issue 19's
    drain), and without the GIL. AUTOINCREMENT gives them consecutive
    rseqs in the order inserted (one writer), as L{_next_rowid_txn} would.
    """
    cursor.execute(
        "INSERT INTO mailbox_receipts (sender, recipient, message_id, status, at, expires_at)"
        f" SELECT sender, recipient, message_id, ?, ?, ? FROM mailbox_messages WHERE {where} ORDER BY seq",
        (int(status), now, now + ttl, *params),
    )
    if cursor.rowcount != count:  # the rows read just before in this transaction: never
        raise StoreFull(f"owed {cursor.rowcount} receipts for {count} messages")
    return cursor.lastrowid - count + 1


def _removed_txn(cursor, rows, status, now, ttl):
    """
    Owe receipts for deleted messages C{rows} (seq, recipient, sender, id,
    size) and write the new depths; return (receipts, depths).
    """
    if not rows:
        return [], {}
    first = _next_rowid_txn(cursor, "mailbox_receipts", "rseq")
    expires_at = now + ttl
    cursor.executemany(
        "INSERT INTO mailbox_receipts (rseq, sender, recipient, message_id, status, at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(first + i, r[2], r[1], r[3], int(status), now, expires_at) for i, r in enumerate(rows)],
    )
    return _owed_txn(cursor, rows, first, status, now)


def _owed_txn(cursor, rows, first, status, now):
    """The receipts owed for removed messages C{rows} (rseqs from C{first}) and the new depths."""
    receipts = [Receipt(first + i, r[2], r[1], bytes(r[3]), int(status), now) for i, r in enumerate(rows)]
    changes = {}
    for _, recipient, _, _, size in rows:
        messages, size_sum = changes.get(recipient, (0, 0))
        changes[recipient] = (messages + 1, size_sum + size)
    depths = {}
    for recipient, (count, size) in changes.items():
        depth = _depth_txn(cursor, recipient)
        depths[recipient] = Depth(depth.messages - count, depth.bytes - size)
    return receipts, _write_depths_txn(cursor, depths)


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
    # One statement per chunk: an executemany still steps one per receipt.
    for chunk in _chunks(sorted(set(rseqs))):
        cursor.execute(
            f"DELETE FROM mailbox_receipts WHERE sender = ? AND rseq IN ({','.join('?' * len(chunk))})",
            (sender, *chunk),
        )
    return None, {}


def fetch_txn(cursor, recipient, after_seq, limit):
    rows = cursor.execute(
        "SELECT seq, recipient, sender, message_id, stored_at, expires_at, payload FROM mailbox_messages"
        " WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?",
        (recipient, after_seq, limit),
    ).fetchall()
    return list(map(Stored._make, rows))  # the columns in Stored's order (BLOBs come as bytes)


def receipts_txn(cursor, sender, after_rseq, limit):
    rows = cursor.execute(
        "SELECT rseq, sender, recipient, message_id, status, at FROM mailbox_receipts"
        " WHERE sender = ? AND rseq > ? ORDER BY rseq LIMIT ?",
        (sender, after_rseq, limit),
    ).fetchall()
    return list(map(Receipt._make, rows))


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


def _op_txn(cursor, txn, args):
    """Run C{txn} in a savepoint of its own; return (ok, result or exception)."""
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
        return False, e
    cursor.execute("RELEASE mailbox_op")
    return True, result


def _enqueues_txn(cursor, calls):
    """
    Several enqueue_txn C{calls} (same limits) as one: one savepoint, one
    pass, the latest C{now} for all; their (ok, value)s, or None if the
    merged op failed (then they run one by one).
    """
    items = [item for args in calls for item in args[0]]
    now = max(args[1] for args in calls)
    ok, value = _op_txn(cursor, enqueue_txn, (items, now, calls[0][2]))
    if not ok:
        return None
    results, depths = value
    out, start = [], 0
    for args in calls:
        out.append((True, (results[start : start + len(args[0])], depths)))
        depths, start = {}, start + len(args[0])
    return out


def batch_txn(cursor, calls):
    """Run each C{(txn, args)} in a savepoint of its own (runs of enqueues merged); return [(ok, value)]."""
    out = []
    i = 0
    while i < len(calls):
        txn, args = calls[i]
        if txn is enqueue_txn:
            j = i + 1
            while j < len(calls) and calls[j][0] is enqueue_txn and calls[j][1][2] == args[2]:
                j += 1
            if j - i > 1:
                merged = _enqueues_txn(cursor, [a for _, a in calls[i:j]])
                if merged is not None:
                    out.extend(merged)
                    i = j
                    continue
                for later, later_args in calls[i:j]:
                    out.append(_op_txn(cursor, later, later_args))
                i = j
                continue
        out.append(_op_txn(cursor, txn, args))
        i += 1
    return out
