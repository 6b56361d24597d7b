"""
An asyncio event loop on a thread of its own, bridged to the reactor.

nats-py is an asyncio library. Rather than require the asyncio reactor
(C{twistd --reactor=asyncio}), the client runs on a private event loop in
a dedicated thread, the way L{cairn.db.Database} runs SQLite on a thread
of its own: coroutines are handed over with
C{asyncio.run_coroutine_threadsafe} and their results come back to the
reactor thread with C{reactor.callFromThread}, as Deferreds. So the node
runs under whatever reactor twistd or trial picks, and storage never
blocks the reactor. The cost is one thread hop each way per store call
(a few microseconds; the stores pipeline their calls, so it is paid
concurrently, not per message in series).
"""

import asyncio
import threading

from twisted.internet import defer
from twisted.python.failure import Failure


class AsyncioThread:
    """
    A private asyncio loop running in a daemon thread.

    @ivar loop: the event loop (None until L{start}).
    """

    def __init__(self, reactor, name="cairn-nats"):
        self.reactor = reactor
        self.name = name
        self.loop = None
        self._thread = None
        self._stopped = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        """Start the loop's thread; returns once the loop runs (a few milliseconds)."""
        if self.running:
            return
        self.loop = asyncio.new_event_loop()
        self._stopped = defer.Deferred()
        ready = threading.Event()
        stopped = self._stopped

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            try:
                self.loop.run_forever()
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()
                self.reactor.callFromThread(stopped.callback, None)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, function, *args, **kwargs):
        """
        Run coroutine function C{function(*args, **kwargs)} on the loop.

        @return: a Deferred firing on the reactor thread with its result
            (or failing with its exception).
        """
        d = defer.Deferred()
        if not self.running:
            return defer.fail(RuntimeError("the NATS event loop is not running"))
        future = asyncio.run_coroutine_threadsafe(function(*args, **kwargs), self.loop)
        future.add_done_callback(lambda f: self.reactor.callFromThread(_settle, d, f))
        return d

    def call(self, function, *args):
        """Call plain C{function(*args)} on the loop's thread (fire and forget)."""
        if self.running:
            self.loop.call_soon_threadsafe(function, *args)

    def to_reactor(self, function, *args):
        """From the loop's thread: call C{function(*args)} on the reactor thread."""
        self.reactor.callFromThread(function, *args)

    def stop(self):
        """Stop the loop (cancelling what still runs on it); fires once its thread is done."""
        if not self.running:
            return defer.succeed(None)
        self.loop.call_soon_threadsafe(self.loop.stop)
        return self._stopped


def _settle(d, future):
    if future.cancelled():
        d.errback(Failure(defer.CancelledError("cancelled on the NATS event loop")))
        return
    error = future.exception()
    if error is not None:
        d.errback(Failure(error, type(error), error.__traceback__))
    else:
        d.callback(future.result())
