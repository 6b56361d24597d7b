"""
The last hour of activity, per minute, kept in memory for the management
API (C{GET /history}) and the web console's chart.

L{History} samples cumulative counters the services already keep
(messages stored, messages delivered, bytes relayed per peer) every
L{SAMPLE} seconds and adds what each grew by to the minute in progress;
the finished minutes are kept in a ring of sixty.  Nothing is written to
disk: after a restart the chart starts empty, and a node run by several
processes reports each process's own figures.

A counter given per key (the relay's bytes per peer) is compared key by
key, so that a peer forgotten when it is unpaired takes nothing away from
the others; a counter that goes down (a relay byte count reset by
C{PUT /relay/{peer_id}/quota}) counts from its new value. Either way at
most one sample's worth of that counter's growth is missed.
"""

from collections import deque

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["MINUTE", "SAMPLE", "History"]

log = Logger()

#: Seconds per bucket.
MINUTE = 60.0
#: Seconds between two readings of the counters.
SAMPLE = 5.0


def _growth(before, now):
    """How much a counter (a number, or {key: number}) grew from C{before} to C{now}."""
    if now is None or before is None:
        return 0
    if isinstance(now, dict):
        before = before if isinstance(before, dict) else {}
        return sum(max(0, value - before.get(key, 0)) for key, value in now.items())
    if isinstance(before, dict):
        return 0
    return max(0, now - before)


class History:
    """
    A ring of per-minute increments of a few cumulative counters.

    @param clock: an C{IReactorTime}.
    @param sources: C{{name: callable}}, each callable returning the
        counter's cumulative value now: a number, or a dict of numbers
        whose growth is summed (e.g. bytes per peer).
    @param minutes: how many finished minutes to keep.
    """

    def __init__(self, clock, sources, minutes=60):
        self.clock = clock
        self.sources = dict(sources)
        #: Finished minutes, oldest first: C{(start, {name: increment})}.
        self.ring = deque(maxlen=minutes)
        self._last = None
        self._current = None
        self._minute_start = None
        self._loop = None

    def start(self) -> None:
        """
        Start counting from now (call it once the services have loaded
        their persisted counters, so that loading is not counted as activity).
        """
        if self._loop is not None:
            return
        self._last = self._read()
        self._current = dict.fromkeys(self.sources, 0)
        self._minute_start = self.clock.seconds()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(SAMPLE, now=False)

    def stop(self) -> None:
        """Stop sampling (what is held stays readable)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _read(self) -> dict:
        values = {}
        for name, source in self.sources.items():
            # A failing source must not stop the ring (a LoopingCall ends at
            # its first error): it counts nothing until it answers again.
            try:
                value = source()
                values[name] = dict(value) if isinstance(value, dict) else value
            except Exception:
                log.failure("activity history: reading {name} failed", name=name)
                values[name] = None
        return values

    def _pending(self, values) -> dict:
        """The minute in progress with the growth up to C{values} added."""
        return {name: self._current.get(name, 0) + _growth(self._last.get(name), values.get(name)) for name in values}

    def _tick(self) -> None:
        values = self._read()
        self._current = self._pending(values)
        # Keep the last good reading of a failing source to count from.
        self._last = {name: self._last.get(name) if value is None else value for name, value in values.items()}
        now = self.clock.seconds()
        while now >= self._minute_start + MINUTE:
            self.ring.append((self._minute_start, self._current))
            self._current = dict.fromkeys(self.sources, 0)
            self._minute_start += MINUTE

    def to_json(self) -> dict:
        """
        C{GET /history}: the finished minutes of the last hour, oldest
        first, then the minute in progress (its increments so far).
        """
        names = sorted(self.sources)
        minutes = [{"start": start, **{n: counts.get(n, 0) for n in names}} for start, counts in self.ring]
        if self._minute_start is not None:
            current = self._pending(self._read())
            minutes.append({"start": self._minute_start, **{n: current.get(n, 0) for n in names}})
        return {"interval": MINUTE, "now": self.clock.seconds(), "series": names, "minutes": minutes}
