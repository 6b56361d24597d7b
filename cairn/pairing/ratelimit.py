"""
Failure counting in a sliding window, on the injected clock.
"""

from collections import OrderedDict, deque


class FailureLimiter:
    """
    At most C{max_failures} failures per key within C{window} seconds.

    Memory is bounded: at most C{max_keys} keys are tracked, the least
    recently failing dropped first.
    """

    def __init__(self, clock, max_failures: int, window: float, max_keys: int = 10_000):
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures = OrderedDict()

    def _recent(self, key):
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self.clock.seconds() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def limited(self, key) -> bool:
        """Whether C{key} has used up its failures for now."""
        times = self._recent(key)
        return times is not None and len(times) >= self.max_failures

    def failed(self, key) -> None:
        """Record one failure of C{key}."""
        times = self._recent(key)
        if times is None:
            times = self._failures[key] = deque()
        self._failures.move_to_end(key)
        times.append(self.clock.seconds())
        while len(times) > self.max_failures:
            times.popleft()
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def retry_after(self, key) -> float:
        """Seconds until C{key} may try again (0 if it may now)."""
        if not self.limited(key):
            return 0.0
        return max(0.0, self._failures[key][0] + self.window - self.clock.seconds())
