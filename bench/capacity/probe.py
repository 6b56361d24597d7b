"""
Where a process's stalls come from (issue 20, the bystander's latency):
its garbage collections, timed by generation through C{gc.callbacks}, and
its reactor's lateness, from a call scheduled every C{every} seconds.

A collection that takes 300 ms and a reactor turn that takes 300 ms look
the same to the bystander; this tells them apart. Cheap enough to run in
every bench process: one C{perf_counter} per collection, one timed call
per C{every}.
"""

import gc
import time

from twisted.internet import task


class Stalls:
    """Collections and reactor lateness since L{start} (or the last L{reset})."""

    def __init__(self, reactor, every: float = 0.05):
        self.reactor = reactor
        self.every = every
        self._started = None
        self._expected = None
        self._loop = None
        self.reset()

    def reset(self):
        #: Per generation: [count, total seconds, max seconds, objects walked in the slowest].
        self.collections = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        self.late = []
        #: Ticks more than 100 ms late: (late, main-thread CPU share over the tick).
        self.stalls = []

    def start(self):
        gc.callbacks.append(self._gc)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._expected = time.perf_counter() + self.every
        self._last = (time.perf_counter(), time.thread_time())
        self._loop.start(self.every, now=False)
        return self

    def stop(self):
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _gc(self, phase, info):
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            took = time.perf_counter() - self._started
            self._started = None
            figures = self.collections[info["generation"]]
            figures[0] += 1
            figures[1] += took
            figures[2] = max(figures[2], took)

    def _tick(self):
        now, cpu = time.perf_counter(), time.thread_time()
        late = max(0.0, now - self._expected)
        self.late.append(late)
        if late > 0.1:
            # Busy (the reactor thread ran: work, a collection) or starved
            # (it waited for a core: the machine's load)?
            self.stalls.append((late, (cpu - self._last[1]) / max(now - self._last[0], 1e-9)))
        self._expected = now + self.every
        self._last = (now, cpu)

    def summary(self) -> dict:
        """JSON-able figures: collections by generation, lateness percentiles (seconds)."""
        ordered = sorted(self.late)

        def at(share):
            return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")

        return {
            "gc": {str(g): {"count": c, "total": t, "max": m} for g, (c, t, m) in self.collections.items()},
            "late": {"ticks": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1] if ordered else 0.0},
            "over_100ms": len(self.stalls),
            # Of those, late ticks whose reactor thread had the CPU at least half the time.
            "busy": sum(1 for _, share in self.stalls if share >= 0.5),
            "busy_late": sum(late for late, share in self.stalls if share >= 0.5),
            "starved_late": sum(late for late, share in self.stalls if share < 0.5),
            "gc_count": gc.get_count(),
            "frozen": gc.get_freeze_count(),
        }


def describe(name: str, s: dict) -> str:
    """One line for L{Stalls.summary}'s figures."""
    gcs = ", ".join(
        f"gen {g}: {f['count']} in {f['total'] * 1e3:.0f} ms (max {f['max'] * 1e3:.1f} ms)" for g, f in s["gc"].items()
    )
    late = s["late"]
    return (
        f"{name}: reactor late p50 {late['p50'] * 1e3:.1f} ms, p99 {late['p99'] * 1e3:.1f} ms, max "
        f"{late['max'] * 1e3:.0f} ms, {s['over_100ms']} of {late['ticks']} ticks > 100 ms ({s['busy']} busy: "
        f"{s['busy_late']:.1f} s; the rest starved of a core: {s['starved_late']:.1f} s); collections {gcs}; "
        f"frozen {s['frozen']:,}"
    )
