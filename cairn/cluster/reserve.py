"""
The JetStream storage reserve (C{CAIRN_CLUSTER_RESERVE}, docs/scaling.md
"The storage reserve"): what lets the mailbox drain at NATS's storage limit.

At its limit (C{max_file_store}, or an account's) JetStream refuses every
write "insufficient resources" (L{cairn.cluster.pubacks.NO_ROOM}), the
acknowledgements' tombstones as much as new messages, so a full mailbox
could never shrink. The SQLite store keeps free disk space for that
(L{cairn.diskspace}); cairn does not read JetStream's limit (account info
gives an account's C{max_file} but -1 for a server's C{max_file_store},
docs/scaling.md "Sizing"), so the room is kept the other way round,
as a ballast: the stream C{<prefix>_reserve} holds C{CAIRN_CLUSTER_RESERVE}
bytes of placeholder messages, written once when the stream is new. When a
write of this node is refused for want of room, or the node sees the
ballast gone (another node released it, or at start-up), the node is
I{full}: it refuses growth itself (new forwards and sync updates, answered
STORAGE_ERROR as the SQLite reserve does) and releases the ballast with
one purge (not a publish: JetStream takes it at the limit), so that the
acknowledgements' tombstones -- each one removes a larger message -- commit
and the mailbox drains. Small writes that barely grow the store (tombstones,
receipt markers, KV cursors, trust, pairing, relay counts) go on.

The ballast's absence is the shared state: a node entering full mode
tells the others on the node bus, who enter at once (L{Reserve.told}), and
every node reads the reserve stream's state every L{POLL} seconds, so a
node that missed the notice stops growth within that. A full node writes
the ballast again, and leaves full mode, once the deployment's streams
(the reserve's aside) hold 2 x the reserve fewer bytes than when it
entered: after the ballast, a reserve's worth of room is left (no
flapping); any node seeing the ballast back (newer than its release)
leaves too, and the node that wrote it tells the others, who look at once.

While full, what is already held is still answered DUPLICATE
(L{Reserve.answer}), as the SQLite stores do at their disk reserve.

Where JetStream stored past its limit by more than the reserve, the
mailbox alone is over it once the ballast is gone: the removals then bury
their messages (L{cairn.cluster.mailbox_room}), and a node does not leave
full mode while any buried removal still owes its tombstone
(L{Reserve.settle}).
"""

import time

from twisted.internet import defer, task
from twisted.logger import Logger

from cairn.cluster.common import one_line
from cairn.diskspace import LowDiskSpace

log = Logger()

#: Seconds between reads of the reserve stream's state: how soon a node
#: learns that another released the ballast, or wrote it again.
POLL = 1.0
#: Seconds full, nothing owed, without 2 x the reserve freed, after which the ballast is written
#: anyway if JetStream takes it (and tried again after as long while it does not): a node that
#: entered full mode again just after leaving, the mailbox drained meanwhile, had nothing more to
#: free and stayed full for good (tests/test_cluster_reserve_killed.py: 1 of 13 runs here, once in CI).
STUCK_AFTER = 60.0
#: Bytes of one ballast message (several for a larger reserve; NATS's
#: C{max_payload} is 1 MiB by default).
PIECE = 256 * 1024


class Ballast:
    """
    The reserve stream's operations, each a Deferred (run on the NATS loop).
    The in-memory twin for tests is C{tests.test_cluster_reserve.FakeBallast}.
    """

    def __init__(self, jet):
        self.jet = jet
        self.stream = jet.stream("reserve")

    def state(self):
        """C{(first seq, last seq, messages)} of the reserve stream."""
        return self.jet.run(self._state)

    async def _state(self):
        state = (await self.jet.js.stream_info(self.stream)).state
        return state.first_seq, state.last_seq, state.messages

    def release(self):
        """Purge the ballast; fires with the stream's last seq."""
        return self.jet.run(self._release)

    async def _release(self):
        await self.jet.js_writes.purge_stream(self.stream)
        return (await self._state())[1]

    def write(self, size):
        """
        Write C{size} bytes of ballast where as much room is left beyond it:
        a probe of C{size} bytes first (subjects C{p<n>}), then the ballast,
        then the probe purged. Fires with True, or False if JetStream refused
        a piece for want of room (what was written is released again).

        Why the probe: the bytes freed since entering full mode say how much
        room there is only if the usage was at the limit then; where JetStream
        had stored past it (the removals buried: L{cairn.cluster.mailbox_room})
        the ballast alone fitted with no room left, the next writes were
        refused, and the node entered full mode again with too little left
        to drain to leave it (measured: docs/scaling.md "The storage reserve").
        """
        return self.jet.run(self._write_back, size)

    async def _write_back(self, size):
        if not await write_ballast(self.jet, size, probe=True):
            return False
        probe_upto = (await self._state())[1]
        if not await write_ballast(self.jet, size):
            return False
        await self.jet.js_writes.purge_stream(self.stream, seq=probe_upto + 1)  # what lies below: the probe
        return True

    def used(self):
        """Bytes held by the deployment's other streams and buckets (one replica's)."""
        return self.jet.run(self._used)

    async def _used(self):
        from cairn.cluster.layout import probes

        total = 0
        for name, _ in probes(self.jet):
            if name != self.stream:
                total += (await self.jet.js.stream_info(name)).state.bytes
        return total


async def write_ballast(jet, size, nc=None, probe=False):
    """
    On the NATS loop: C{size} bytes in pieces of at most L{PIECE} (on the
    probe's subjects if C{probe}: L{Ballast.write}); False if refused for want of room.
    """
    from nats.js.errors import APIError

    from cairn.cluster.pubacks import NO_ROOM_CODES

    stream, piece, i = jet.stream("reserve"), min(PIECE, (nc or jet.nc).max_payload // 2), 0
    while size > 0:
        try:
            # One message per subject (max_msgs_per_subject 1): two nodes writing it at once replace each other's.
            subject = jet.subject("reserve", f"p{i}" if probe else str(i))
            await jet.js_writes.publish(subject, bytes(min(piece, size)), stream=stream)
        except APIError as e:
            if e.err_code in NO_ROOM_CODES:
                return False
            raise
        size, i = size - piece, i + 1
    return True


async def prepare(jet, nc, size):
    """
    At start-up, with the layout: the ballast written if the reserve
    stream is new, or written again if it holds less than C{size} (the
    reserve was raised since: each piece replaces its subject's, so the
    pieces written before are not counted twice; a reserve lowered keeps
    the larger ballast, which errs on the side of room); C{True} if the
    ballast is there (or no reserve is kept), C{False} if it is missing
    (released: the node starts full) or could not be written whole.
    """
    if not size:
        return True
    state = (await jet.js.stream_info(jet.stream("reserve"))).state
    if state.last_seq == 0 or 0 < state.bytes < size:
        return await write_ballast(jet, size, nc)
    return state.messages > 0


class Reserve:
    """
    Full mode (on the reactor thread): L{full}, what the stores check
    before growing; L{no_room}, called for every write JetStream refused
    for want of room; L{begin} once connected; a poll every L{POLL} s.

    @ivar refused: growth refused while full (new forwards, sync updates).
    @ivar releases: purges of the ballast this node made.
    """

    def __init__(self, ops, size, clock, now=time.time, poll=POLL):
        self.ops, self.size, self.clock, self.now, self.poll = ops, size, clock, now, poll
        self.full = False
        self.since = None  # wall-clock time full mode was entered
        self.why = None
        self.baseline = None  # the other streams' bytes when entering (None: not read yet)
        self._tried_at = None  # on L{clock}: when full mode was entered, or the ballast last tried (STUCK_AFTER)
        self._released_upto = None  # the reserve stream's last seq once released (this episode)
        self._told = None  # entered on another node's notice: "told", then "looked" (the ballast seen there)
        self._told_at = self._looked_upto = None  # when that notice came; the ballast's last seq seen then
        self.refused = self.releases = 0
        self._busy = self._again = False
        self._loop = None
        self._waiting = []  # Deferreds of L{released}
        #: Called while full at each step before the reserve is written again: a Deferred firing with how many
        #: records of removals buried at the limit are still owed (the mailbox's L{cairn.cluster.mailbox_room}
        #: settle); the node stays full while any is. None: nothing to settle.
        self.settle = None
        #: Called with True when this node enters full mode (not when told so by another, L{told}), and with
        #: False when it leaves it by writing the ballast again: the node bus tells the other nodes
        #: (L{cairn.cluster.nats_bus.NatsBus}), so that they need not wait for their poll.
        self.on_change = None

    def begin(self, present):
        """Connected: C{present} is L{prepare}'s answer; the poll starts."""
        if not self.size:
            return
        if not present:
            self._enter("the reserve was found released at start-up")
            self.step()
        if self._loop is None:
            self._loop = task.LoopingCall(self.step)
            self._loop.clock = self.clock
            self._loop.start(self.poll, now=False).addErrback(lambda f: log.failure("cairn: reserve poll", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def no_room(self, why="insufficient resources"):
        """A write of this node's was refused for want of room."""
        if self.size and not self.full:
            self._enter(why)
            self.step()

    def told(self, full, node):
        """
        Node C{node} announced that it entered full mode (C{full}) or left
        it by writing the ballast again: act now rather than at the next
        poll (which stays the backstop: a notice lost costs one poll).
        """
        if not self.size:
            return
        if full and not self.full:
            self._enter(f"node {node[:64]!r} met it and told the others", announce=False)
            self._told, self._told_at = "told", self.clock.seconds()
            self.step()
        elif not full and self.full:
            self.step()  # the ballast back, newer than the release: left (L{_work})

    def released(self):
        """
        A Deferred firing once the step under way (or the next) is done:
        a write refused for want of room is worth trying once more then,
        the ballast released (or the reason to keep it known).
        """
        d = defer.Deferred()
        self._waiting.append(d)
        if not self._busy:
            self.step()
        return d

    def refuse(self):
        """The error a store fails a growing write with while full (counted)."""
        self.refused += 1
        return LowDiskSpace("JetStream's storage is down to the reserve (CAIRN_CLUSTER_RESERVE)")

    def answer(self, known, refused):
        """
        While full, the results of a growing call whose items, if held
        already, have their answers in C{known} (DUPLICATE and its seq;
        None for an item not held): the call fails (L{refuse}) if none is
        held; else a held item keeps its answer and the others are
        C{refused} (STORAGE_ERROR), counted once -- as the SQLite stores
        answer at their disk reserve (L{cairn.diskspace.guarded_batch}).
        """
        if all(answer is None for answer in known):
            raise self.refuse()
        if None in known:
            self.refused += 1
        return [(refused, None) if answer is None else answer for answer in known]

    def collect_metrics(self):
        """Prometheus families for L{cairn.management.metrics.Metrics.add_collector} (a node on JetStream)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "cairn_cluster_reserve_bytes", "JetStream storage kept as a ballast (CAIRN_CLUSTER_RESERVE).", self.size
        )
        yield GaugeMetricFamily(
            "cairn_cluster_reserve_full", "1 while full mode refuses growth (JetStream at its limit).", int(self.full)
        )
        yield CounterMetricFamily(
            "cairn_cluster_reserve_refused", "Store calls refused something in full mode.", self.refused
        )

    def reason(self):
        """For C{/health} while full."""
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return (
            f"JetStream's storage limit reached at {since} ({self.why}): the reserve of {self.size} bytes"
            " (CAIRN_CLUSTER_RESERVE) is released; refusing new messages and sync updates until"
            f" {2 * self.size} bytes are freed; deliveries and acknowledgements go on"
        )

    def _enter(self, why, announce=True):
        self.full, self.since, self.why = True, self.now(), why
        self._tried_at = self.clock.seconds()
        self.baseline = self._released_upto = self._told = None
        if announce:
            self._announce(True)
        log.warn(
            "cairn: JetStream's storage limit reached ({why}): releasing the reserve ({size} bytes,"
            " CAIRN_CLUSTER_RESERVE); refusing new messages and sync updates; deliveries and acknowledgements go on",
            why=why,
            size=self.size,
        )

    def _leave(self, who, announce=False):
        self.full = False
        log.info("cairn: JetStream's storage has room again ({who}): the reserve is kept again", who=who)
        if announce:
            self._announce(False)

    def _announce(self, full):
        if self.on_change is not None:
            try:
                self.on_change(full)
            except Exception:  # a hint only: the others' polls learn it anyway
                log.failure("cairn: announcing the reserve's state failed")

    def step(self):
        """Read the reserve's state and act on it; one at a time (a step asked meanwhile runs after)."""
        if self._busy:
            self._again = True
            return defer.succeed(None)
        self._busy = True
        d = self._work()
        d.addErrback(lambda f: log.debug("cairn: the reserve's state: {why}", why=one_line(f.value)))

        def done(_):
            self._busy = False
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(None)
            if self._again:
                self._again = False
                self.step()

        return d.addCallback(done)

    @defer.inlineCallbacks
    def _work(self):
        first, last, messages = yield self.ops.state()
        if not self.full:
            if last == 0 or messages > 0:
                return
            self._enter("another node released the reserve")
        if messages > 0:
            if self._released_upto is not None and first > self._released_upto:
                self._leave("another node wrote the reserve again")
                return
            if self._told is not None and self._released_upto is None:
                # The node that told releases the ballast itself; not here, so that a notice come late
                # (after that node wrote the ballast again) cannot take a fresh one away. Still there at
                # a look a poll after the notice: the notice was stale (or its node could not release
                # it): left. Not at a look made sooner (an acknowledgement's retry asks one at once):
                # that node's purge may not have landed yet, and leaving then let three nodes' senders
                # store the whole reserve (docs/scaling.md "Sizing"). A ballast newer than the one
                # seen: released and written again meanwhile: left.
                if self._told == "looked":
                    if first > self._looked_upto:
                        self._leave("another node wrote the reserve again")
                    elif self.clock.seconds() - self._told_at >= self.poll:
                        self._leave("the reserve is still there: the notice was stale")
                    return
                self._told, self._looked_upto = "looked", last
                return
            # Released first: the acknowledgements refused meanwhile wait for it (L{released}).
            self._released_upto = yield self.ops.release()
            self.releases += 1
        elif self._released_upto is None:
            self._released_upto = last
        if self.baseline is None:
            # The other streams' bytes: what the tombstones written since the release took off is
            # counted as not freed (the criterion errs on the side of room).
            self.baseline = yield self.ops.used()
            return
        if self.settle is not None and (yield self.settle()):
            return  # tombstones still owed: no sender's retry may be stored before them
        used = yield self.ops.used()
        stuck = self.clock.seconds() - self._tried_at >= STUCK_AFTER
        if used > self.baseline - 2 * self.size and not stuck:
            return
        self._tried_at = self.clock.seconds()
        if (yield self.ops.write(self.size)):
            freed = f"{self.baseline - used} bytes freed"
            self._leave(freed if not stuck else f"{freed}, {STUCK_AFTER:g} s full: JetStream took the reserve", True)
        else:
            log.warn("cairn: the reserve could not be written again (insufficient resources); still full")
            self._released_upto = None  # what was written of it goes again
