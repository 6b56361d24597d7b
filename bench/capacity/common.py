"""What the capacity scenarios and their child processes share."""

import math
import random
import time

from twisted.internet import defer
from twisted.python.failure import Failure

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


@defer.inlineCallbacks
def resume_like_a_fleet(reactor, client, session, attempts, attempt_timeout, lockstep=False, failed=None):
    """
    Resume C{session} the way L{cairn.client.Client}'s automatic resume
    does: after the first backoff wait less its random share
    (C{RESUME_BACKOFF}, C{RESUME_JITTER}), then again after each failed
    attempt, the wait doubling. C{lockstep}: the worst case the bench had
    before (every session at once, and again at once after each failure).
    Each attempt fails after C{attempt_timeout} (a WebSocket whose opening
    handshake times out never fails C{resume()}, bench/README.rst).
    C{failed(failure)} is called for each failed attempt. Fires with
    whether the session was resumed.
    """
    from cairn.failover import RESUME_BACKOFF, RESUME_JITTER

    delay, factor, ceiling = RESUME_BACKOFF
    for _ in range(attempts):
        if not lockstep:
            yield sleep(reactor, delay * (1.0 - RESUME_JITTER * random.random()))
            delay = min(delay * factor, ceiling)
        try:
            yield client.resume(session).addTimeout(attempt_timeout, reactor)
        except Exception:
            if failed is not None:
                failed(failure_name(Failure()))
            continue
        return True
    return False


def resume_mode(lockstep: bool) -> str:
    """How L{resume_like_a_fleet} resumes, for the bench's output."""
    if lockstep:
        return "all at once, and again at once after each failed attempt (--lockstep)"
    from cairn.failover import RESUME_BACKOFF, RESUME_JITTER

    start, factor, ceiling = RESUME_BACKOFF
    return (
        f"like cairn.client's automatic resume: first after {start:g} s, the wait x{factor:g} after each failed "
        f"attempt up to {ceiling:g} s, each wait less a random share of up to {RESUME_JITTER:.0%}"
    )
