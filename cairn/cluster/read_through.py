"""
Bounded reads of keys a node's mirror of a shared bucket may lack.

A node answers from mirrors fed by watches (the trust store, the sync
grants); what another node wrote a moment ago reaches them one watch
latency later. Before a node refuses something for want of such a write
(a peer not known as paired, a topic a device's grant does not allow), it
reads the key itself (L{ReadThrough.ask}), within bounds, so that keys
nobody wrote cannot make it read NATS without limit: a call reads at most
C{MISS_BATCH} keys, at most C{MISS_READS} calls read at once, a key is
read again at most every C{MISS_AGAIN} seconds, and a call's reads wait
at most C{MISS_TIMEOUT} seconds; beyond these the mirror answers.
"""

import asyncio

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from cairn.storeservice import observe

log = Logger()

MISS_BATCH = 8
MISS_READS = 4
MISS_AGAIN = 1.0
MISS_TIMEOUT = 0.5
#: Above this many remembered reads, those older than C{MISS_AGAIN} are dropped.
MISSES_KEPT = 10_000


class ReadThrough:
    """
    The bounded reads of one mirror.

    @param jet: the L{cairn.cluster.connection.JetStream} (its clock, its
        state, its NATS loop).
    @param read: a coroutine function C{read(keys)}, run on the NATS loop,
        that reads C{keys} (and may apply what it read there).
    @param apply: called on the reactor with C{read}'s result, or None.
    @param name: the mirror, and C{what}: its keys, in the warning of a failed read.
    """

    def __init__(self, jet, read, apply=None, name="store", what="key(s)"):
        self.jet = jet
        self._read = read
        self._apply = apply
        self.name, self.what = name, what
        self._missed = {}  # key -> when it was last read
        self.in_flight = 0  # reads in flight
        self._reading = {}  # key -> the read in flight that reads it
        self._failed = set()  # keys whose last read failed (timed out, NATS lost)

    def ask(self, keys):
        """
        Read those of C{keys} that are due, within the bounds; a key being
        read waits for that read, so callers fire in the order they asked.
        Never fails (an error leaves the mirror as it was): fires with the
        keys that could not be checked -- their last read failed, or NATS
        was not connected when they were due a read.
        """
        now = self.jet.clock.seconds()
        keys = list(dict.fromkeys(keys))
        waits = {self._reading[k] for k in keys if k in self._reading}  # a read in flight: wait for it too
        due = [k for k in keys if k not in self._reading and now - self._missed.get(k, now - MISS_AGAIN) >= MISS_AGAIN]
        connected = self.jet.state == "ok"
        if due and self.in_flight < MISS_READS and connected:
            waits.add(self._read_now(due[:MISS_BATCH], now))
        unread = () if connected else due

        def unsure(_=None):
            return frozenset(k for k in keys if k in self._failed or k in unread)

        if not waits:
            return defer.succeed(unsure())
        # Each caller's own Deferred, fired in the order they asked.
        return defer.DeferredList([observe(d) for d in waits]).addCallback(unsure)

    def _read_now(self, wanted, now):
        if len(self._missed) > MISSES_KEPT:
            self._missed = {k: t for k, t in self._missed.items() if now - t < MISS_AGAIN}
            self._failed &= self._missed.keys()
        self.in_flight += 1
        d = self.jet.run(self._timed, wanted)
        for key in wanted:
            self._missed[key] = now
            self._reading[key] = d

        def done(result):
            self.in_flight -= 1
            failed = isinstance(result, Failure)
            for key in wanted:
                if self._reading.get(key) is d:
                    del self._reading[key]
                (self._failed.add if failed else self._failed.discard)(key)
            return result

        d.addBoth(done)
        if self._apply is not None:
            d.addCallback(self._apply)
        return d.addErrback(self._read_failed, len(wanted))

    async def _timed(self, keys):
        return await asyncio.wait_for(self._read(keys), MISS_TIMEOUT)

    def _read_failed(self, failure, count):
        log.warn(
            "{name}: reading {count} {what} failed: {why}",
            name=self.name,
            count=count,
            what=self.what,
            why=failure.getErrorMessage(),
        )
