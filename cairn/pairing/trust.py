"""
The trust store: which remote peers are pending, paired or revoked.

Both implementations keep every record in memory, so L{is_paired} (asked
on every request a session makes) is a dictionary look-up, and a
mutation takes effect for L{is_paired} the moment it is called -- a
revocation never waits for the disk. Their Deferreds fire once the
change is durable: at once for L{MemoryTrustStore}, after the commit for
L{SQLiteTrustStore}. A node holds a few hundred peers at most, so the
whole table in memory is cheap.
"""

import attr
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.crypto.identity import peer_id_for
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED, STATES, ITrustStore, PeerRecord, UnknownPeer

log = Logger()

#: (component, schema package) for L{cairn.db.Database}.
TRUST_SCHEMA = ("trust", "cairn.pairing.schema")

_COLUMNS = ("peer_id", "identity_key", "state", "name", "method", "requested_at", "paired_at", "last_seen")


def _check_identity(peer_id, identity_key):
    if not isinstance(identity_key, bytes) or len(identity_key) != 32 or peer_id_for(identity_key) != peer_id:
        raise ValueError(f"identity key does not belong to {peer_id}")


class TrustStoreBase:
    """The record logic both stores share; subclasses make changes durable."""

    def __init__(self):
        self._records = {}

    # Durability hooks

    def _save(self, record, revoked_at=None):
        raise NotImplementedError

    def _delete(self, peer_id):
        raise NotImplementedError

    def _save_last_seen(self, peer_id, when):
        raise NotImplementedError

    # ITrustStore

    def catch_up(self, peer_ids):
        # The store is its data's only writer: the records are all here (none unsure).
        return defer.succeed(frozenset())

    def is_paired(self, peer_id) -> bool:
        record = self._records.get(peer_id)
        return record is not None and record.state == PAIRED

    def get(self, peer_id):
        return defer.succeed(self._records.get(peer_id))

    def list(self, state=None):
        if state is not None and state not in STATES:
            return defer.fail(ValueError(f"unknown state {state!r}"))
        records = sorted(self._records.values(), key=lambda r: r.peer_id)
        return defer.succeed([r for r in records if state is None or r.state == state])

    def add_pending(self, peer_id, identity_key, name, when):
        try:
            _check_identity(peer_id, identity_key)
        except ValueError as e:
            return defer.fail(e)
        old = self._records.get(peer_id)
        if old is not None and old.state == PAIRED:
            return defer.succeed(old)
        if old is not None and old.state == PENDING:
            if not name or name == old.name:
                return defer.succeed(old)
            record = attr.evolve(old, name=name)
        else:
            record = PeerRecord(
                peer_id,
                identity_key,
                PENDING,
                name=name or (old.name if old else ""),
                requested_at=when,
                last_seen=old.last_seen if old else None,
            )
        return self._change(record)

    def set_paired(self, peer_id, identity_key, name, method, when):
        try:
            _check_identity(peer_id, identity_key)
        except ValueError as e:
            return defer.fail(e)
        old = self._records.get(peer_id)
        record = PeerRecord(
            peer_id,
            identity_key,
            PAIRED,
            name=name or (old.name if old else ""),
            method=method,
            requested_at=old.requested_at if old else None,
            paired_at=when,
            last_seen=old.last_seen if old else None,
        )
        return self._change(record)

    def reject(self, peer_id):
        old = self._records.get(peer_id)
        if old is None or old.state != PENDING:
            return defer.fail(UnknownPeer(peer_id))
        del self._records[peer_id]
        return self._delete(peer_id).addCallback(lambda _: None)

    def revoke(self, peer_id, when):
        old = self._records.get(peer_id)
        if old is None or old.state != PAIRED:
            return defer.fail(UnknownPeer(peer_id))
        return self._change(attr.evolve(old, state=REVOKED), revoked_at=when)

    def touch(self, peer_id, when):
        old = self._records.get(peer_id)
        if old is None:
            return defer.succeed(None)
        self._records[peer_id] = attr.evolve(old, last_seen=when)
        return self._save_last_seen(peer_id, when)

    def _change(self, record, revoked_at=None):
        self._records[record.peer_id] = record
        return self._save(record, revoked_at).addCallback(lambda _: record)


@implementer(ITrustStore)
class MemoryTrustStore(TrustStoreBase):
    """The in-memory twin: the same behaviour, durable only as long as the process."""

    def start(self):
        return defer.succeed(None)

    def _save(self, record, revoked_at=None):
        return defer.succeed(None)

    def _delete(self, peer_id):
        return defer.succeed(None)

    def flush(self):
        """Nothing is pending in memory-only storage."""
        return defer.succeed(None)

    def _save_last_seen(self, peer_id, when):
        return defer.succeed(None)


# SQLite transactions (run on the database thread)


def load_txn(cursor):
    rows = cursor.execute(f"SELECT {', '.join(_COLUMNS)} FROM trust_peers").fetchall()
    return [
        PeerRecord(
            peer_id=row[0],
            identity_key=bytes(row[1]),
            state=row[2],
            name=row[3],
            method=row[4],
            requested_at=row[5],
            paired_at=row[6],
            last_seen=row[7],
        )
        for row in rows
    ]


def save_txn(cursor, record, revoked_at=None):
    cursor.execute(
        "INSERT INTO trust_peers"
        " (peer_id, identity_key, state, name, method, requested_at, paired_at, last_seen, revoked_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (peer_id) DO UPDATE SET"
        " identity_key = excluded.identity_key, state = excluded.state, name = excluded.name,"
        " method = excluded.method, requested_at = excluded.requested_at,"
        " paired_at = excluded.paired_at, last_seen = excluded.last_seen,"
        " revoked_at = COALESCE(excluded.revoked_at, trust_peers.revoked_at)",
        (
            record.peer_id,
            record.identity_key,
            record.state,
            record.name,
            record.method,
            record.requested_at,
            record.paired_at,
            record.last_seen,
            revoked_at,
        ),
    )


def delete_txn(cursor, peer_id):
    cursor.execute("DELETE FROM trust_peers WHERE peer_id = ?", (peer_id,))


def last_seen_txn(cursor, seen):
    """Write many C{(peer_id, when)} last-seen times in one statement batch."""
    cursor.executemany("UPDATE trust_peers SET last_seen = ? WHERE peer_id = ?", [(w, p) for p, w in seen])


@implementer(ITrustStore)
class SQLiteTrustStore(TrustStoreBase):
    """
    The trust store in the node's SQLite database (table C{trust_peers}).

    Trust changes are written before their Deferred fires. C{last_seen} is
    advisory and changes on every session, so it is written lazily: kept
    in memory (where L{list} and L{get} read it) and flushed in one
    transaction by L{flush} (the pairing service calls it every minute and
    on stop), with the next trust change, never once per session.

    @param db: a L{cairn.db.Database} whose components include
        L{TRUST_SCHEMA}, already started.
    """

    def __init__(self, db):
        super().__init__()
        self.db = db
        self._seen = {}

    def start(self):
        def loaded(records):
            self._records = {r.peer_id: r for r in records}
            log.info(
                "trust store loaded: {paired} paired, {pending} pending",
                paired=sum(r.state == PAIRED for r in records),
                pending=sum(r.state == PENDING for r in records),
            )

        return self.db.run(load_txn).addCallback(loaded)

    def _with_seen(self, txn, *args):
        """Run C{txn} with any pending last-seen times, in one transaction."""
        seen, self._seen = self._seen, {}
        calls = [(txn, args)]
        if seen:
            calls.append((last_seen_txn, (sorted(seen.items()),)))
        return self.db.run_many(calls)

    def _save(self, record, revoked_at=None):
        return self._with_seen(save_txn, record, revoked_at)

    def _delete(self, peer_id):
        return self._with_seen(delete_txn, peer_id)

    def _save_last_seen(self, peer_id, when):
        self._seen[peer_id] = when
        return defer.succeed(None)

    def flush(self):
        """Write the pending last-seen times; fires once durable."""
        seen, self._seen = self._seen, {}
        if not seen:
            return defer.succeed(None)
        return self.db.run(last_seen_txn, sorted(seen.items()))
