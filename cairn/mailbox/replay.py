"""
The recipient's defence against a node that replays mailbox messages
(docs/protocol.md §21.11).

A node cannot forge or alter a message (the payload is sealed end to end
and the message id is bound into the seal), but it can hand the same
sealed message over again. A L{ReplayGuard} gives each (sender, message
id) to the application at most once within the window in which the node
may legitimately deliver it, and refuses ids older than that window:

- the node accepts an id whose UUIDv7 time is at most C{max_age} old and
  keeps the message at most C{max_age} after storing it, so a genuine
  delivery carries an id at most C{2 * max_age} old (plus C{skew} for the
  sender's clock); anything older is a replay and is dropped;
- every id given to the application is remembered until it leaves that
  window, in memory (L{MemorySeen}) or, across restarts of the recipient,
  in a small SQLite file (L{SeenFile}).

L{SeenFile} uses the standard library's C{sqlite3} on the calling thread:
it records one small row per delivered message, inside one transaction
per ForwardDeliver batch, in WAL mode with C{synchronous=NORMAL} (no
fsync per batch). A power loss can therefore forget the last batches'
ids; a process crash cannot. That trade-off is written down in §21.11.
"""

import os
import sqlite3

#: The node's default CAIRN_FORWARD_MAX_AGE (7 days); set the guard's to the node's.
DEFAULT_MAX_AGE = 7 * 86400.0
#: Tolerance for the sender's clock running slow.
DEFAULT_SKEW = 3600.0
#: At most this many ids are remembered; past it the earliest-expiring go first.
MAX_REMEMBERED = 1_000_000


def uuid7_time(message_id: bytes):
    """The Unix time (seconds) of a UUIDv7 message id, or None if C{message_id} is not a UUIDv7."""
    return uuid7_times((message_id,))[0]


def uuid7_times(message_ids) -> list:
    """L{uuid7_time} of each of C{message_ids}, in one call (a drain's batch: issue 19)."""
    return [
        int.from_bytes(message_id[:6], "big") / 1000.0
        if len(message_id) == 16 and message_id[6] >> 4 == 7 and message_id[8] >> 6 == 0b10
        else None
        for message_id in message_ids
    ]


class MemorySeen:
    """The remembered ids of one recipient, in memory: (sender, id) -> time until which it is kept."""

    def __init__(self):
        self._until = {}

    def __contains__(self, key) -> bool:
        return key in self._until

    def add_all(self, entries) -> None:
        """Remember every (sender, message id, keep-until) of C{entries}."""
        for sender, message_id, until in entries:
            self._until[(sender, message_id)] = until

    def prune(self, now: float, limit: int) -> None:
        """Forget what expired before C{now}, then the earliest-expiring beyond C{limit}."""
        expired = [key for key, until in self._until.items() if until < now]
        for key in expired:
            del self._until[key]
        if len(self._until) > limit:
            for key, _ in sorted(self._until.items(), key=lambda item: item[1])[: len(self._until) - limit]:
                del self._until[key]

    def __len__(self) -> int:
        return len(self._until)

    def close(self) -> None:
        pass


class SeenFile:
    """L{MemorySeen} kept in an SQLite file (created 0600), so a restarted recipient still refuses replays."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (sender TEXT NOT NULL, id BLOB NOT NULL, until REAL NOT NULL,"
            " PRIMARY KEY (sender, id)) WITHOUT ROWID"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS seen_until ON seen (until)")

    def __contains__(self, key) -> bool:
        return self._db.execute("SELECT 1 FROM seen WHERE sender = ? AND id = ?", key).fetchone() is not None

    def add_all(self, entries) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO seen (sender, id, until) VALUES (?, ?, ?)", entries)

    def prune(self, now: float, limit: int) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM seen WHERE until < ?", (now,))
            excess = len(self) - limit
            if excess > 0:
                self._db.execute(
                    "DELETE FROM seen WHERE (sender, id) IN (SELECT sender, id FROM seen ORDER BY until LIMIT ?)",
                    (excess,),
                )

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM seen").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class ReplayGuard:
    """
    Decides which delivered messages reach the application: see the module
    docstring.

    @param now: a zero-argument callable giving the Unix time (the client's
        clock, so tests can drive it).
    @param seen: where ids are remembered (L{MemorySeen} if None).
    """

    def __init__(self, now, seen=None, max_age: float = DEFAULT_MAX_AGE, skew: float = DEFAULT_SKEW):
        self._now = now
        self.seen = MemorySeen() if seen is None else seen
        self.max_age = max_age
        self.skew = skew
        self._added = 0

    @property
    def window(self) -> float:
        """How old a genuine delivery's id can be."""
        return 2 * self.max_age + self.skew

    def admit(self, deliveries):
        """
        Of C{deliveries} (sender, message id) pairs in delivery order, the
        indices of those to give to the application, each recorded as seen
        before this returns; also a list of (index, reason) for the others.
        """
        now = self._now()
        window = self.window  # once per batch: every delivered message passes here
        oldest = now - window
        seen = self.seen
        # The memory's own dict when it is one: a test in C, not a method call per message.
        known = seen._until if type(seen) is MemorySeen else seen
        admitted, dropped, entries, batch = [], [], [], set()
        if type(deliveries) is not list:  # read twice
            deliveries = list(deliveries)
        times = uuid7_times([message_id for _, message_id in deliveries])
        for index, (sender, message_id) in enumerate(deliveries):
            sent_at, key = times[index], (sender, message_id)
            if sent_at is None:
                dropped.append((index, "the message id is not a UUIDv7"))
            elif sent_at < oldest:
                dropped.append((index, "the message id is older than any genuine delivery (a replay)"))
            elif key in batch or key in known:
                dropped.append((index, "duplicate"))
            else:
                batch.add(key)
                admitted.append(index)
                entries.append((sender, message_id, (sent_at if sent_at > now else now) + window))
        if entries:
            seen.add_all(entries)
            self._added += len(entries)
            if self._added >= 1024:
                self._added = 0
                seen.prune(now, MAX_REMEMBERED)
        return admitted, dropped

    def close(self) -> None:
        self.seen.close()
