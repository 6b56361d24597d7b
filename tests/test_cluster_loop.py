"""
L{cairn.cluster.loop.AsyncioThread}: the NATS client's event loop on a
thread of its own, and what crosses between it and the reactor.
"""

import asyncio

from twisted.internet import defer, reactor
from twisted.logger import LogLevel
from twisted.trial import unittest

from cairn.cluster.loop import AsyncioThread
from tests._harness import eventually, observe_logs


class _CountingReactor:
    """The real reactor, counting the wake-ups the loop's thread asks of it."""

    def __init__(self):
        self.woken = 0

    def callFromThread(self, function, *args):
        self.woken += 1
        reactor.callFromThread(function, *args)

    def callLater(self, delay, function, *args):
        return reactor.callLater(delay, function, *args)


class AsyncioThreadTests(unittest.TestCase):
    def setUp(self):
        self.reactor = _CountingReactor()
        self.thread = AsyncioThread(self.reactor)
        self.thread.start()
        self.addCleanup(self.thread.stop)
        self.loop_woken = []
        wake = self.thread.loop.call_soon_threadsafe

        def counted(function, *args):
            self.loop_woken.append(function)
            return wake(function, *args)

        self.thread.loop.call_soon_threadsafe = counted

    @defer.inlineCallbacks
    def test_results_and_failures(self):
        """A coroutine's result, or its exception, comes back as its Deferred's."""

        async def double(x):
            return 2 * x

        async def fail():
            raise ValueError("no")

        self.assertEqual((yield eventually(self.thread.run(double, 21))), 42)
        failed = self.thread.run(fail)
        yield self.assertFailure(eventually(failed), ValueError)

    @defer.inlineCallbacks
    def test_one_wake_up_per_batch(self):
        """
        Calls handed over in one reactor turn wake the loop once, and what
        their coroutines finish in one pass of the loop wakes the reactor
        once (not once per call each way).
        """
        order = []

        async def one(i):
            order.append(i)
            return i

        calls = [self.thread.run(one, i) for i in range(50)]
        results = yield eventually(defer.gatherResults(calls))
        self.assertEqual(results, list(range(50)))
        self.assertEqual(order, list(range(50)))
        self.assertEqual(len(self.loop_woken), 1)
        self.assertEqual(self.reactor.woken, 1)

    @defer.inlineCallbacks
    def test_order_kept_across_call_and_run(self):
        """A call() made before a run() runs before it on the loop; to_reactor() calls arrive in order."""
        seen, back = [], []
        self.thread.call(seen.append, "call")

        async def ran():
            seen.append("run")
            for i in range(5):
                self.thread.to_reactor(back.append, i)

        yield eventually(self.thread.run(ran))
        self.assertEqual(seen, ["call", "run"])
        self.assertEqual(back, list(range(5)))  # sent back before the result

    @defer.inlineCallbacks
    def test_failing_calls_logged_rest_go_on(self):
        """A call() or to_reactor() function that raises is logged; what was queued after it still runs."""
        logged = []

        def observer(event):
            if event.get("log_level") == LogLevel.critical and "NATS event loop" in event.get("log_format", ""):
                logged.append(event)

        observe_logs(self, observer)
        back = []

        def boom(*_):
            raise RuntimeError("boom")

        async def sends_back():
            self.thread.to_reactor(boom)
            self.thread.to_reactor(back.append, "after")
            return "done"

        self.thread.call(boom)
        self.assertEqual((yield eventually(self.thread.run(sends_back))), "done")
        self.assertEqual(back, ["after"])
        self.assertEqual(len(logged), 2)
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_stop_cancels_what_runs(self):
        """What still runs when the loop stops fails with CancelledError; a call after the stop fails at once."""
        started = defer.Deferred()

        async def forever():
            self.thread.to_reactor(started.callback, None)
            await asyncio.Event().wait()

        waiting = self.thread.run(forever)
        yield eventually(started)
        yield eventually(self.thread.stop())
        yield self.assertFailure(eventually(waiting), defer.CancelledError)

        async def nothing():
            return None

        yield self.assertFailure(self.thread.run(nothing), RuntimeError)
