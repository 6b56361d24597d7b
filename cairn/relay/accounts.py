"""
Per-peer relay accounts: byte counts, operator limits, bandwidth pacers,
and their persistence.

Limits (L{RelayLimits}) are written to the store when the operator sets
them and applied once durable. Byte counts change with every RelayData,
so they are written in groups: the first count after C{flush_interval}
seconds without a write writes every changed count (no timer: an idle
relay writes nothing), and so do a circuit's close and a clean stop. A
byte quota is checked against the persisted C{bytes_sent}, so a restart
does not reset it; after a crash (C{kill -9}) the counts are those of
the last write, so a peer may exceed its quota by what it sent in the
C{flush_interval} seconds after that write.
"""

from collections import Counter

from twisted.logger import Logger

from cairn.mailbox.interfaces import StoreFull
from cairn.relay.interfaces import RelayLimits
from cairn.relay.pacing import Pacer
from cairn.relay.store import MemoryRelayStore

log = Logger()

#: Seconds between writes of the byte counts.
FLUSH_INTERVAL = 10.0


def _not_written(failure):
    """A failed write of the counts: a full store (expected: disk, reserve, JetStream away) in one line."""
    if failure.check(StoreFull):
        why = failure.getErrorMessage()
        log.warn("relay: writing byte counts failed ({why}); the next write tries again", why=why)
    else:
        log.failure("relay: writing byte counts failed", failure)


class Accounts:
    """
    The relay's per-peer figures and limits.

    @ivar bytes_sent: RelayData bytes each peer sent (accepted by the node).
    @ivar bytes_received: RelayData bytes forwarded to each peer.
    @ivar limits: L{RelayLimits} by peer id (only peers with a limit).
    @ivar pacers: a L{Pacer} per peer with a rate limit.
    """

    def __init__(self, clock, store=None, flush_interval=FLUSH_INTERVAL):
        self.clock = clock
        self.store = store if store is not None else MemoryRelayStore()
        self.flush_interval = flush_interval
        self.bytes_sent = Counter()
        self.bytes_received = Counter()
        self.limits = {}
        self.pacers = {}
        self._dirty = set()
        self._flushed_at = clock.seconds()

    # Start and stop

    def start(self):
        """Load limits and counts from the store; fires once they apply."""

        def loaded(result):
            limits, usage = result
            for peer_id, (sent, received) in usage.items():
                self.bytes_sent[peer_id] = sent
                self.bytes_received[peer_id] = received
            for peer_id, limit in limits.items():
                self._apply(peer_id, limit)
            if limits or usage:
                log.info(
                    "relay: loaded limits of {limits} and counts of {counts} peer(s)",
                    limits=len(limits),
                    counts=len(usage),
                )

        return self.store.load().addCallback(loaded)

    def stop(self):
        """Drop what waits for rate limits and write the counts one last time."""
        for pacer in self.pacers.values():
            pacer.discard_all()
        return self.flush()

    def flush(self):
        """Write the counts of peers whose counts changed; fires once durable."""
        self._flushed_at = self.clock.seconds()
        if not self._dirty:
            return self.store.save_usage({})  # fires after a write in flight (the stores keep call order)
        peers, self._dirty = self._dirty, set()
        usage = {p: (self.bytes_sent[p], self.bytes_received[p]) for p in peers}

        def failed(failure):
            self._dirty |= {p for p in peers if p in self.bytes_sent or p in self.bytes_received}
            return failure

        return self.store.save_usage(usage).addErrback(failed)

    def flush_soon(self, now=False):
        """L{flush} if the last write is C{flush_interval} old (or C{now}); errors are logged."""
        if self._dirty and (now or self.clock.seconds() - self._flushed_at >= self.flush_interval):
            self.flush().addErrback(_not_written)

    # Counting

    def sent(self, peer_id, size):
        self.bytes_sent[peer_id] += size
        self._dirty.add(peer_id)
        self.flush_soon()

    def received(self, peer_id, size):
        self.bytes_received[peer_id] += size
        self._dirty.add(peer_id)

    def over_quota(self, peer_id, size=0) -> bool:
        """Whether C{size} more bytes from C{peer_id} exceed its byte quota."""
        quota = self.quota(peer_id)
        return quota is not None and self.bytes_sent[peer_id] + size > quota

    def quota(self, peer_id):
        limit = self.limits.get(peer_id)
        return None if limit is None else limit.max_bytes

    def rate(self, peer_id):
        limit = self.limits.get(peer_id)
        return None if limit is None else limit.max_rate

    # Limits

    def set_limits(self, peer_id, limits: RelayLimits):
        """Persist C{limits}, then apply them; fires once both are done."""
        return self.store.set_limits(peer_id, limits).addCallback(lambda _: self._apply(peer_id, limits))

    def _apply(self, peer_id, limits):
        if limits.is_default():
            self.limits.pop(peer_id, None)
        else:
            self.limits[peer_id] = limits
        pacer = self.pacers.get(peer_id)
        if limits.max_rate is None:
            if pacer is not None:
                del self.pacers[peer_id]
                pacer.drain()
        elif pacer is None:
            self.pacers[peer_id] = Pacer(self.clock, limits.max_rate)
        else:
            pacer.set_rate(limits.max_rate)

    def reset_counts(self, peer_id):
        """Zero C{peer_id}'s byte counts; fires once durable."""
        self.bytes_sent.pop(peer_id, None)
        self.bytes_received.pop(peer_id, None)
        self._dirty.discard(peer_id)
        return self.store.save_usage({peer_id: (0, 0)})

    def purge(self, peer_id):
        """Forget everything about C{peer_id}; fires once the store forgot too."""
        self.bytes_sent.pop(peer_id, None)
        self.bytes_received.pop(peer_id, None)
        self.limits.pop(peer_id, None)
        self._dirty.discard(peer_id)
        pacer = self.pacers.pop(peer_id, None)
        if pacer is not None:
            pacer.discard_all()
        return self.store.purge(peer_id)
