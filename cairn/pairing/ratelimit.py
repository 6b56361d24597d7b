"""
Counting pairing events per source in a sliding window, on the injected
clock (docs/protocol.md §20.6).

Sources are grouped the way one party usually holds addresses: an IPv4
address is one source, an IPv6 address counts for its /64 (a host is
routinely given a whole /64, so single IPv6 addresses cost an attacker
nothing), and an IPv4-mapped IPv6 address counts as its IPv4 address.
"""

import ipaddress
from collections import OrderedDict, deque

#: The key of the shared bucket used while the table is full (not an address).
OVERFLOW = "(overflow)"


def source_key(host: str) -> str:
    """The rate-limit key of a transport host: IPv4 as is, IPv6 as its /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class FailureLimiter:
    """
    At most C{max_failures} events per key within C{window} seconds.

    Memory is bounded by C{max_keys} tracked keys. A full table never
    evicts a key that still has events in the window (that would let an
    attacker flush its own record -- or anyone's -- by failing from many
    other sources): events of keys that find the table full are counted in
    one shared overflow bucket instead, under the same limit, until
    entries age out. Sources already tracked keep their own count.
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

    def _prune(self):
        # Oldest-first order: stop at the first key still inside the window.
        horizon = self.clock.seconds() - self.window
        for key in list(self._failures):
            times = self._failures[key]
            if times and times[-1] > horizon:
                break
            del self._failures[key]

    def _key(self, key):
        """C{key}, or the overflow bucket if C{key} is untracked and the table full."""
        if key in self._failures or len(self._failures) < self.max_keys:
            return key
        self._prune()
        if key in self._failures or len(self._failures) < self.max_keys:
            return key
        return OVERFLOW

    def limited(self, key) -> bool:
        """Whether C{key} has used up its events for now."""
        times = self._recent(self._key(key))
        return times is not None and len(times) >= self.max_failures

    def failed(self, key) -> None:
        """Record one event of C{key}."""
        key = self._key(key)
        times = self._recent(key)
        if times is None:
            times = self._failures[key] = deque()
        self._failures.move_to_end(key)
        times.append(self.clock.seconds())
        while len(times) > self.max_failures:
            times.popleft()

    def forgive(self, key) -> None:
        """Take back the most recent event of C{key} (it turned out legitimate)."""
        key = self._key(key)
        times = self._recent(key)
        if times:
            times.pop()
            if not times:
                del self._failures[key]

    def retry_after(self, key) -> float:
        """Seconds until C{key} may try again (0 if it may now)."""
        key = self._key(key)
        if not self.limited(key):
            return 0.0
        return max(0.0, self._failures[key][0] + self.window - self.clock.seconds())

    def __len__(self):
        return len(self._failures)
