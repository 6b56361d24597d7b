"""
File-descriptor pressure, so that a flood of connections cannot lock the
operator out (docs/reliability.md, "File descriptors").

Every socket costs a descriptor and the process has C{RLIMIT_NOFILE} of
them. Once they are gone, C{accept} fails on every listener alike, the
management API's too. L{DescriptorGauge} keeps C{reserve} of them free:

  - C{ok}: fewer than C{limit - reserve} in use; everything is accepted.
  - C{high}: from C{limit - reserve}: new cairn connections are still
    accepted, but a session of a peer that is not paired is closed with
    Close 12 once established (L{cairn.session.unpaired}): the lower half
    of the reserve is for paired peers.
  - C{critical}: from C{limit - reserve / 2}: new cairn connections are
    closed as soon as accepted, without a word (an answer would keep the
    descriptor until it is written, and Twisted accepts up to a hundred
    connections in one go). The upper
    half is for the management listener, which is never gated, and for the
    node's own files and outbound connections.

Counting: the number of descriptors in use is read from C{/proc/self/fd}
(or C{/dev/fd}) at most once a second, on the injected clock; in between
it is estimated from that count plus every connection admitted since, and
from the lowest free descriptor, which the kernel hands out first (the
gauge duplicates a descriptor it holds and closes the copy to learn it:
every descriptor below it is in use). The estimate errs on the high
side, which refuses early rather than late.

The descriptor duplicated is C{/dev/null}, opened once per process and
kept (L{_lowest_free_descriptor}): opening C{/dev/null} for every probe
(twice per accepted connection) cost a path lookup and a new open file
each time, about 3-4 times what a C{dup} costs.
"""

import errno
import os
import resource

from twisted.logger import Logger

log = Logger()

#: Default C{CAIRN_FD_RESERVE}.
FD_RESERVE = 128
#: Seconds between two counts of the open descriptors.
RECOUNT_EVERY = 1.0
OK, HIGH, CRITICAL = "ok", "high", "critical"


def _count_open() -> int:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            # One entry is the directory listing's own descriptor.
            return len(os.listdir(directory)) - 1
        except OSError:
            continue
    return 0


#: The descriptor L{_lowest_free_descriptor} duplicates (C{/dev/null}), once opened.
_probe = None


def _lowest_free_descriptor():
    """
    The lowest descriptor number free now (the kernel gives it to the next
    descriptor made), or None when none is free.
    """
    global _probe
    for _ in range(2):
        try:
            if _probe is None:
                _probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            fd = os.dup(_probe)
        except OSError as e:
            if e.errno == errno.EBADF:
                _probe = None  # someone closed it: open it again
                continue
            return None
        os.close(fd)
        return fd
    return None


def soft_limit() -> int:
    """The process's soft C{RLIMIT_NOFILE} (a large number if unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 2**20


class DescriptorGauge:
    """
    Descriptor pressure against the soft C{RLIMIT_NOFILE}; see the module docstring.

    @param clock: the C{IReactorTime} timing the recounts.
    @param reserve: descriptors kept free (C{CAIRN_FD_RESERVE}); at most
        half the limit is reserved whatever is asked.
    @param limit: the descriptor limit (default: the process's soft limit).
    @param count: C{() -> int}, the descriptors in use (for tests).
    """

    def __init__(self, clock, reserve=FD_RESERVE, limit=None, count=_count_open):
        self.clock = clock
        self.limit = limit if limit is not None else soft_limit()
        self.reserve = max(2, min(reserve, self.limit // 2))
        if self.reserve < reserve:
            log.warn(
                "CAIRN_FD_RESERVE {asked} is more than half the descriptor limit {limit}: reserving {reserve}",
                asked=reserve,
                limit=self.limit,
                reserve=self.reserve,
            )
        self._count = count
        self._counted = 0
        self._counted_at = None
        self._since = 0
        #: Connections refused at the critical mark (for /health and /metrics).
        self.refused = 0

    @property
    def high_water(self) -> int:
        return self.limit - self.reserve

    @property
    def critical_water(self) -> int:
        return self.limit - self.reserve // 2

    def in_use(self) -> int:
        """Descriptors in use: counted at most once a second, estimated in between."""
        now = self.clock.seconds()
        if self._counted_at is None or now - self._counted_at >= RECOUNT_EVERY:
            self._counted, self._counted_at, self._since = self._count(), now, 0
        return max(self._counted + self._since, self._lowest_free())

    def _lowest_free(self) -> int:
        fd = _lowest_free_descriptor()
        if fd is None:
            return self.limit  # not even one free: as critical as it gets
        return fd

    def state(self) -> str:
        used = self.in_use()
        if used >= self.critical_water:
            return CRITICAL
        if used >= self.high_water:
            return HIGH
        return OK

    def short(self) -> bool:
        """Whether sessions of unpaired peers are to be turned away now."""
        return self.state() != OK

    def admit(self) -> bool:
        """A new cairn connection was accepted: keep it (True) or refuse it at once."""
        if self.state() == CRITICAL:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warn(
                    "descriptors critical ({used} of {limit} in use): refused {count} connection(s) so far",
                    used=self.in_use(),
                    limit=self.limit,
                    count=self.refused,
                )
            return False
        self._since += 1
        return True

    def report(self) -> dict:
        """The figures C{/health} shows."""
        return {
            "in_use": self.in_use(),
            "limit": self.limit,
            "high_water": self.high_water,
            "critical_water": self.critical_water,
            "state": self.state(),
            "refused": self.refused,
        }
