"""
The relay's stores: L{SQLiteRelayStore} (the node's database) and
L{MemoryRelayStore}, its in-memory twin for tests and library use.

Both are small: a row of limits per peer the operator limited, and a
row of byte counts per peer that used a circuit.
"""

from twisted.internet import defer
from zope.interface import implementer

from cairn.mailbox.store import storage_error
from cairn.relay.interfaces import IRelayStore, RelayLimits

# SQLite transactions (run on the database thread)


def load_txn(cursor):
    limits = {
        peer_id: RelayLimits(max_bytes, max_rate)
        for peer_id, max_bytes, max_rate in cursor.execute("SELECT peer_id, max_bytes, max_rate FROM relay_limits")
    }
    usage = {
        peer_id: (sent, received)
        for peer_id, sent, received in cursor.execute("SELECT peer_id, bytes_sent, bytes_received FROM relay_usage")
    }
    return limits, usage


def set_limits_txn(cursor, peer_id, limits):
    if limits.is_default():
        cursor.execute("DELETE FROM relay_limits WHERE peer_id = ?", (peer_id,))
        return
    cursor.execute(
        "INSERT INTO relay_limits (peer_id, max_bytes, max_rate) VALUES (?, ?, ?)"
        " ON CONFLICT (peer_id) DO UPDATE SET max_bytes = excluded.max_bytes, max_rate = excluded.max_rate",
        (peer_id, limits.max_bytes, limits.max_rate),
    )


def save_usage_txn(cursor, usage):
    cursor.executemany(
        "INSERT INTO relay_usage (peer_id, bytes_sent, bytes_received) VALUES (?, ?, ?)"
        " ON CONFLICT (peer_id) DO UPDATE SET bytes_sent = excluded.bytes_sent,"
        " bytes_received = excluded.bytes_received",
        [(peer_id, sent, received) for peer_id, (sent, received) in sorted(usage.items())],
    )


def purge_txn(cursor, peer_id):
    cursor.execute("DELETE FROM relay_limits WHERE peer_id = ?", (peer_id,))
    cursor.execute("DELETE FROM relay_usage WHERE peer_id = ?", (peer_id,))


@implementer(IRelayStore)
class SQLiteRelayStore:
    """The relay's tables in the node's L{cairn.db.Database} (schema C{cairn.relay.schema})."""

    def __init__(self, db):
        self.db = db

    def load(self):
        return self.db.run(load_txn)

    def set_limits(self, peer_id, limits):
        return self._write(set_limits_txn, peer_id, limits)

    def save_usage(self, usage):
        return self._write(save_usage_txn, dict(usage))

    def purge(self, peer_id):
        return self._write(purge_txn, peer_id)

    def _write(self, txn, *args):
        """A write whose database error (a full disk) is L{StoreFull}, as the other stores' are."""

        def failed(failure):
            raise storage_error(failure.value)

        return self.db.run(txn, *args).addErrback(failed)


@implementer(IRelayStore)
class MemoryRelayStore:
    """L{IRelayStore} in memory: what a node without a database forgets at exit."""

    def __init__(self):
        self.limits = {}
        self.usage = {}

    def load(self):
        return defer.succeed((dict(self.limits), dict(self.usage)))

    def set_limits(self, peer_id, limits):
        if limits.is_default():
            self.limits.pop(peer_id, None)
        else:
            self.limits[peer_id] = limits
        return defer.succeed(None)

    def save_usage(self, usage):
        self.usage.update(usage)
        return defer.succeed(None)

    def purge(self, peer_id):
        self.limits.pop(peer_id, None)
        self.usage.pop(peer_id, None)
        return defer.succeed(None)
