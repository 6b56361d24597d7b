"""
The sync stores: L{SQLiteSyncStore} (the default) and L{MemorySyncStore},
its in-memory twin.

The SQLite store group-commits like the mailbox's (see
L{cairn.mailbox.store}): mutations queued while a transaction is in
flight share the next one, each in a savepoint of its own, and their
Deferreds fire only after the commit. Its fetches read on a connection of
their own (L{cairn.dbreads.HotReads}) and show nothing unsynced. The
transactions themselves are in L{cairn.sync.transactions}.
"""


from twisted.internet import defer
from zope.interface import implementer

from cairn.dbreads import HotReads
from cairn.diskspace import guarded_batch
from cairn.groupcommit import GroupCommit
from cairn.mailbox.store import batch_txn, storage_error
from cairn.sync.access import Grants
from cairn.sync.interfaces import ISyncStore, Topic, Update
from cairn.sync.transactions import (
    expire_txn,
    fetch_txn,
    load_access_txn,
    load_txn,
    publish_refused_txn,
    publish_txn,
    purge_txn,
    set_access_txn,
    set_cursor_txn,
    subscribe_txn,
)
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
        #: Fetches: in the reactor's thread while they find their pages in memory.
        self._reads = HotReads(db, db.reactor)
        #: Publishes submitted and not yet answered (so perhaps written, not synced).
        self._publishing = 0

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
        self._publishing += 1

        def answered(result):
            self._publishing -= 1
            return result

        return self._submit(publish_txn, list(items), now, limits).addBoth(answered)

    def fetch(self, topic, after_seq, limit):
        # On a connection of their own (L{HotReads}), not queued behind the
        # group commits. A read may show a publish written whose WAL sync
        # is not done: then it waits for that sync, so that no device is
        # given an update a crash could still undo (the writer's
        # connection, which fetches used before, showed them too). Only a
        # publish makes updates appear, so with none unanswered nothing
        # it shows is unsynced (as for the mailbox's fetches).
        d = self._reads.read(fetch_txn, topic, after_seq, limit)
        return self._group.shown_synced(d, lambda: self._publishing)

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
