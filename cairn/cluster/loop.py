"""
An asyncio event loop on a thread of its own, bridged to the reactor.

nats-py is an asyncio library. Rather than require the asyncio reactor
(C{twistd --reactor=asyncio}), the client runs on a private event loop in
a dedicated thread, the way L{cairn.db.Database} runs SQLite on a thread
of its own: coroutines are handed over to the loop and their results come
back to the reactor thread as Deferreds. So the node runs under whatever
reactor twistd or trial picks, and storage never blocks the reactor.

What crosses goes in batches, one wake-up of the other thread per batch:
everything handed over (L{run}, L{call}) waits in one queue for the loop,
which is woken once the reactor has done its turn's work, and everything
coming back (results, L{to_reactor}) waits in one queue for the reactor,
which is woken once the loop has run what was ready. A wake-up is a
system call, and the woken thread first waits for the GIL the other one
holds: one per store call and one per result each way, as before, was
1,010 wake-ups each way for 8,000 enqueued messages; batched, 400 and
314, and the publishes of one reactor turn leave in one socket write
(docs/scaling.md, "Enqueue: where the time goes"). Both queues keep their
order: a L{call} made before a L{run} runs before it.
(C{asyncio.run_coroutine_threadsafe} and C{reactor.callFromThread} wake
the other thread at every call; this is the same pair with a queue in
front of each.)
"""

import asyncio
import collections
import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


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
        #: To the loop: (Deferred or None, function, args, kwargs), oldest first.
        self._inbox = collections.deque()
        self._inbox_woken = False
        #: To the reactor: (function, args), oldest first.
        self._outbox = collections.deque()
        self._outbox_woken = False

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
                # What was handed over before the stop still starts (and is
                # cancelled below with the rest), so that its Deferred fires.
                self._take()
                while True:
                    pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                    if not pending:
                        break
                    for task in pending:
                        task.cancel()
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()
                # Handed over too late to start (the loop closed): failed, not left waiting.
                late = [item[0] for item in self._inbox if item[0] is not None]
                self._inbox.clear()
                for d in late:
                    self._outbox.append((d.errback, (Failure(RuntimeError("the NATS event loop is not running")),)))
                # What is sent back and not yet given (its wake-up may have
                # been dropped with the loop) goes before the stop is told.
                self.reactor.callFromThread(self._give)
                self.reactor.callFromThread(stopped.callback, None)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    # From the reactor to the loop

    def run(self, function, *args, **kwargs):
        """
        Run coroutine function C{function(*args, **kwargs)} on the loop.

        @return: a Deferred firing on the reactor thread with its result
            (or failing with its exception).
        """
        if not self.running:
            return defer.fail(RuntimeError("the NATS event loop is not running"))
        d = defer.Deferred()
        self._hand_over((d, function, args, kwargs))
        return d

    def call(self, function, *args):
        """Call plain C{function(*args)} on the loop's thread (fire and forget)."""
        if self.running:
            self._hand_over((None, function, args, None))

    def _hand_over(self, item):
        self._inbox.append(item)
        if not self._inbox_woken:
            # The loop is woken once the reactor has done this turn's work
            # (the next turn's timed calls run before it waits again): woken
            # earlier, it would wait for the GIL this thread still holds.
            self._inbox_woken = True
            self.reactor.callLater(0, self._wake_loop)

    def _wake_loop(self):
        try:
            self.loop.call_soon_threadsafe(self._take)
        except RuntimeError:  # the loop closed meanwhile
            self._inbox_woken = False
            late = [item[0] for item in self._inbox if item[0] is not None]
            self._inbox.clear()
            for d in late:
                d.errback(Failure(RuntimeError("the NATS event loop is not running")))

    def _take(self):
        """On the loop: start everything handed over so far, in order."""
        # Cleared first: what is handed over from now on wakes the loop again.
        self._inbox_woken = False
        inbox = self._inbox
        while inbox:
            d, function, args, kwargs = inbox.popleft()
            if d is None:
                try:
                    function(*args)
                except Exception:
                    log.failure("cairn: a call on the NATS event loop failed")
                continue
            try:
                task = self.loop.create_task(function(*args, **kwargs))
            except BaseException:
                self.to_reactor(d.errback, Failure())
                continue
            task.add_done_callback(lambda t, d=d: self.to_reactor(_settle, d, t))

    # From the loop to the reactor

    def to_reactor(self, function, *args):
        """From the loop's thread: call C{function(*args)} on the reactor thread."""
        self._outbox.append((function, args))
        if not self._outbox_woken:
            # Likewise, once the loop has run what is ready now (e.g. every
            # PubAck of one read from NATS).
            self._outbox_woken = True
            self.loop.call_soon(self.reactor.callFromThread, self._give)

    def _give(self):
        """On the reactor: call everything sent back so far, in order."""
        self._outbox_woken = False
        outbox = self._outbox
        while outbox:
            function, args = outbox.popleft()
            try:
                function(*args)
            except Exception:
                log.failure("cairn: a call from the NATS event loop failed")

    def stop(self):
        """Stop the loop (cancelling what still runs on it); fires once its thread is done."""
        if not self.running:
            return defer.succeed(None)
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed: the thread is ending (its Deferred has fired or is about to)
            pass
        return self._stopped


def _settle(d, task):
    if task.cancelled():
        d.errback(Failure(defer.CancelledError("cancelled on the NATS event loop")))
        return
    error = task.exception()
    if error is not None:
        d.errback(Failure(error, type(error), error.__traceback__))
    else:
        d.callback(task.result())
