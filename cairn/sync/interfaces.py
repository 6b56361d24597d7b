"""
The sync hub's seam: L{ISyncStore} and the values that cross it.

A store holds one log per topic (each update once, whatever the number
of devices), a durable cursor per (device, topic), and per topic its
head (last seq given), floor (last seq removed by retention) and size.
Mutations fire once durable; the figures (L{ISyncStore.topics},
L{ISyncStore.cursors}, L{ISyncStore.total_bytes}) are answered
synchronously from a cache loaded at start and kept current by this
store's own writes: exact for a store that is its data's only writer
(SQLite, memory). A store that is not (JetStream) also follows what the
other writers store and remove, and reports it through
L{ISyncStore.watch}: its figures are exact once it has seen their writes
and removals, so they lag them by its watch latency (docs/scaling.md,
"What is exact and what is per node").
"""

import attr
from zope.interface import Attribute, Interface

#: (component, schema package) for L{cairn.db.Database}.
SYNC_SCHEMA = ("sync", "cairn.sync.schema")


@attr.s(frozen=True, auto_attribs=True)
class Publish:
    """A SyncPublish that passed the protocol checks, to be stored."""

    sender: str
    topic: str
    update_id: bytes
    payload: bytes = attr.ib(repr=False)


@attr.s(frozen=True, auto_attribs=True)
class Update:
    """An update held in a topic's log; C{seq} counts per topic."""

    topic: str
    seq: int
    sender: str
    update_id: bytes
    stored_at: float
    payload: bytes = attr.ib(repr=False)


@attr.s(frozen=True, auto_attribs=True)
class Topic:
    """A topic's state: last seq given, last seq removed by retention, updates and bytes held."""

    head: int = 0
    floor: int = 0
    updates: int = 0
    bytes: int = 0

    @property
    def oldest_seq(self) -> int:
        """The first seq a device can still be given (C{head + 1} when the log is empty)."""
        return self.floor + 1


class ISyncStore(Interface):
    """Durable storage of the sync hub. Every method but the cache reads returns a Deferred."""

    def start():
        """Load the caches; fires once L{topics} and L{cursors} are accurate."""

    def flushed():
        """A Deferred firing once every mutation submitted so far is durable (or has failed)."""

    def watch(callback):
        """
        Call C{callback(topic)} (on the reactor thread) whenever an update
        to C{topic} is stored, or updates of it are removed by retention,
        by another writer of the same data (another node); the figures
        already include it. A store that is its data's only writer never
        calls it.
        """

    def publish(items, now, limits):
        """
        Append each L{Publish} of C{items} to its topic unless its
        (sender, id) is held already, then remove the oldest updates (of
        any topic) while the total is over C{limits.max_total}.

        @return: a Deferred firing, once durable, with one
            C{(SyncStatus, seq)} per item (the held seq for a duplicate).
        """

    def fetch(topic, after_seq, limit):
        """Up to C{limit} L{Update}s of C{topic} with C{seq > after_seq}, in order."""

    def subscribe(device, cursors):
        """
        Make sure C{device} has a cursor on each topic of C{cursors}
        ({topic: seq or None}): a given seq replaces it (clamped to
        C{0..head}); a new one without a seq starts at the topic's floor.
        Fires with {topic: cursor}.
        """

    def set_cursor(device, topic, seq):
        """Raise C{device}'s cursor on C{topic} to C{seq} (never lower, never past the head); fires with it."""

    def expire(now, limit):
        """Remove up to C{limit} updates with C{expires_at <= now}; fires with C{(removed, more)}."""

    def purge(device):
        """Drop every cursor of C{device}, and its access grant; fires with how many cursors."""

    def set_access(device, access):
        """Persist C{device}'s L{cairn.sync.access.Access} (C{None}: back to the default); fires with it."""

    def access():
        """{device: L{cairn.sync.access.Access}} of the grants (cached, synchronous)."""

    def grant_of(device):
        """C{device}'s own L{cairn.sync.access.Access} in L{access}, or None (the default applies); no copy."""

    def catch_up_access(device):
        """
        Make L{access} current for C{device} before a refusal: a store that
        shares its data with other writers reads C{device}'s grant where it
        is stored and applies it if it is newer than the one it holds (never
        older: its watch may have applied a newer one meanwhile), within
        bounds (docs/scaling.md, "Sync grants on any node"). Never fails:
        fires with whether the grant is known current -- False when it could
        not be read (the read failed or timed out, or the shared store is
        out of reach). A store that is its data's only writer fires True at once.
        """

    def topics():
        """{topic: L{Topic}} (cached, synchronous)."""

    def cursors():
        """{device: {topic: seq}} (cached, synchronous)."""

    def total_bytes():
        """Payload bytes held across all topics (cached, synchronous)."""

    commits = Attribute("Transactions committed for mutations (for tests and benches).")


class ISyncHub(Interface):
    """The sync hub as the node and the management API see it (L{cairn.sync.service.SyncService})."""

    def start():
        """Load the store and start the retention sweep; fires once ready."""

    def stop():
        """Stop the sweep and take no more requests; fires once queued commits are done."""

    def sweep():
        """Remove what retention no longer keeps; fires once done (never fails)."""

    def purge(peer_id):
        """The pairing purge hook: drop every cursor of C{peer_id}."""

    def stats():
        """The JSON of C{GET /sync}."""

    def collect_metrics():
        """Prometheus metric families."""
