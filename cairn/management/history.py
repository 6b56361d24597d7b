"""
The last hour of activity, per minute, kept in memory for the management
API (C{GET /history}) and the web console's chart.

L{History} samples cumulative counters the services already keep
(messages stored, messages delivered, bytes relayed) once a minute and
keeps the difference of each minute in a ring of sixty.  Nothing is
written to disk: after a restart the chart starts empty, and a node run
by several processes reports each process's own figures.  A counter that
goes down (relay byte counts are reset by C{PUT /relay/{peer_id}/quota}
and forgotten when a peer is unpaired) starts again from its new value:
that minute under-reports rather than showing a negative figure.
"""

from collections import deque

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["MINUTE", "History"]

log = Logger()

#: Seconds per bucket.
MINUTE = 60.0


class History:
    """
    A ring of per-minute increments of a few cumulative counters.

    @param clock: an C{IReactorTime}.
    @param sources: C{{name: callable}}, each callable returning the
        counter's cumulative value now (a number that normally only grows).
    @param minutes: how many finished minutes to keep.
    """

    def __init__(self, clock, sources, minutes=60):
        self.clock = clock
        self.sources = dict(sources)
        self.minutes = minutes
        #: Finished minutes, oldest first: C{(start, {name: increment})}.
        self.ring = deque(maxlen=minutes)
        self._baseline = None
        self._minute_start = None
        self._loop = None

    def start(self) -> None:
        """
        Start counting from now (call it once the services have loaded
        their persisted counters, so that loading is not counted as activity).
        """
        if self._loop is not None:
            return
        self._baseline = self._read()
        self._minute_start = self.clock.seconds()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(MINUTE, now=False)

    def stop(self) -> None:
        """Stop sampling (what is held stays readable)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _read(self) -> dict:
        values = {}
        for name, source in self.sources.items():
            # A failing source must not stop the ring (a LoopingCall ends at
            # its first error): it counts nothing this minute.
            try:
                values[name] = source()
            except Exception:
                log.failure("activity history: reading {name} failed", name=name)
                values[name] = None
        return values

    def _increments(self, now_values) -> dict:
        increments = {}
        for name, value in now_values.items():
            before = self._baseline.get(name)
            if value is None or before is None or value < before:
                increments[name] = 0
            else:
                increments[name] = value - before
        return increments

    def _tick(self) -> None:
        values = self._read()
        self.ring.append((self._minute_start, self._increments(values)))
        self._baseline = {
            name: value if value is not None else self._baseline.get(name) for name, value in values.items()
        }
        self._minute_start = self.clock.seconds()

    def to_json(self) -> dict:
        """
        C{GET /history}: the finished minutes of the last hour, oldest
        first, then the minute in progress (its increments so far).
        """
        names = sorted(self.sources)
        minutes = [{"start": start, **{n: counts.get(n, 0) for n in names}} for start, counts in self.ring]
        if self._minute_start is not None:
            current = self._increments(self._read())
            minutes.append({"start": self._minute_start, **{n: current.get(n, 0) for n in names}})
        return {"interval": MINUTE, "now": self.clock.seconds(), "series": names, "minutes": minutes}
