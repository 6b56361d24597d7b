"""
Per-peer bandwidth limits on the relay: a token bucket on the injected clock.

A L{Pacer} stands between the node's acceptance of a rate-limited peer's
RelayData and its forwarding: the bucket refills at C{rate} bytes per
second up to C{burst}; a RelayData is forwarded while the bucket is not
in debt, and its size is then taken from it (so a body larger than the
bucket still goes, and the debt delays the next one). Over any span the
peer's forwarded bytes are at most C{burst + rate * span} plus one body.

The queue needs no bound of its own: what waits in it was accepted
within the circuits' flow-control windows and is not yet credited, so a
circuit direction never has more than its window queued (see
L{cairn.relay.service}); the sender stalls on its own credit.
"""

from collections import deque


class Pacer:
    """
    One peer's token bucket and the RelayData waiting for it.

    @param clock: an C{IReactorTime}.
    @param rate: bytes per second (at least 1).
    @param burst: bucket size in bytes; default one second at C{rate}.
    @ivar queued: bytes waiting, over all of the peer's circuits.
    """

    def __init__(self, clock, rate: int, burst: int = None):
        self.clock = clock
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.tokens = float(self.burst)
        self.stamp = clock.seconds()
        self.queued = 0
        self._queue = deque()
        self._timer = None

    def __repr__(self):
        return f"<Pacer rate={self.rate} tokens={self.tokens:.0f} queued={self.queued}>"

    def set_rate(self, rate: int) -> None:
        """Change the rate (and the default burst) from now on."""
        self._refill()
        self.rate = rate
        self.burst = rate
        self.tokens = min(self.tokens, float(self.burst))
        self._cancel()
        self._run()

    def submit(self, key, size: int, forward) -> None:
        """Call C{forward()} once the bucket allows C{size} more bytes (in order)."""
        self._queue.append((key, size, forward))
        self.queued += size
        if self._timer is None:
            self._run()

    def discard(self, key) -> None:
        """Drop what waits under C{key} (a circuit that closed)."""
        kept = deque(item for item in self._queue if item[0] != key)
        self.queued = sum(size for _, size, _ in kept)
        self._queue = kept
        if not kept:
            self._cancel()

    def discard_all(self) -> None:
        """Drop everything waiting and stop the timer (the node stops, or the peer was unpaired)."""
        self._cancel()
        self._queue.clear()
        self.queued = 0

    def drain(self) -> None:
        """Forward everything waiting now (the limit was lifted)."""
        self._cancel()
        while self._queue:
            self._pop()

    def _pop(self):
        _, size, forward = self._queue.popleft()
        self.queued -= size
        forward()
        return size

    def _refill(self):
        now = self.clock.seconds()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _due(self):
        self._timer = None
        self._refill()
        # The timer was set for the moment the debt is paid: float rounding
        # must not cost another turn of the clock.
        self.tokens = max(self.tokens, 0.0)
        self._run()

    def _run(self):
        self._refill()
        while self._queue and self.tokens >= 0:
            self.tokens -= self._pop()
        if self._queue and self._timer is None:
            self._timer = self.clock.callLater(-self.tokens / self.rate, self._due)
