"""What the capacity scenarios and their child processes share."""

import math
import time

from twisted.internet import defer

from bench._common import gather, sleep

PSK = "capacity bench pre-shared key, long enough to not be weak"
#: Seconds before a connect that has not given a session counts as failed.
CONNECT_TIMEOUT = 30.0
#: Issue 20's target: this many sessions in less than L{RSS_TARGET} of node RSS.
TARGET_SESSIONS = 100_000
RSS_TARGET = 2**30


def failure_name(failure) -> str:
    return f"{failure.type.__name__}: {failure.getErrorMessage()[:80]}"


def percentile(values, share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(share * len(ordered))) - 1)]


def gather_limited(deferreds, limit: int):
    """Wait for every Deferred that C{deferreds} makes, drawing at most C{limit} at a time."""
    left = iter(deferreds)

    @defer.inlineCallbacks
    def worker():
        # Each worker waits for one Deferred at a time; all share the iterator.
        yield from left

    return gather(worker() for _ in range(limit))


@defer.inlineCallbacks
def poll(reactor, predicate, timeout: float, start: float = None, every: float = 0.01):
    """Fire with the seconds since C{start} (default: now) once C{predicate()} is true."""
    start = time.perf_counter() if start is None else start
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not done after {timeout:g} s")
        yield sleep(reactor, every)
    return time.perf_counter() - start


@defer.inlineCallbacks
def wait_for(reactor, node, predicate, timeout: float, start: float = None, every: float = 0.02):
    """L{poll} on the node's stats: fire once C{predicate(stats)} is true (every C{every} seconds)."""
    start = time.perf_counter() if start is None else start
    while not predicate(stats := (yield node.ask("stats"))):
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"the node was not there after {timeout:g} s: {stats}")
        yield sleep(reactor, every)
    return time.perf_counter() - start
