"""
Keepalives and attachment timers of a session (docs/protocol.md §8.2).

Every attached session sends a Keepalive carrying its ack every
C{keepalive_interval} seconds, and drops its transport at the first tick
at least C{keepalive_timeout} after it last heard from the peer; a
detached session ends after its TTL.

The ticks of all of a L{Peer}'s sessions go through one L{KeepaliveWheel}
(issue 20): sessions whose next tick falls in the same slot of
1/L{SLOTS} of the interval share a bucket, and one C{DelayedCall} -- for
the earliest bucket -- drives them all. A C{DelayedCall} per session cost
about 360 bytes (the call and its heap entries) and a heap operation of
O(log n) at every tick; a bucket entry is a dict slot. Twisted has no
timer wheel of its own; this one is small enough to keep here.

A tick may come up to one slot I{early} the first time after an attach
(the slot is rounded down), never late; then each tick is exactly one
interval after the last, as before.
"""

import heapq
import math

from twisted.logger import Logger

from cairn.session.errors import SessionClosed
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType

log = Logger()

#: Slots per keepalive interval: how finely the wheel rounds the first tick.
SLOTS = 32


class KeepaliveWheel:
    """
    Calls C{session._keepalive_tick()} for every scheduled session when its
    slot comes, from one C{DelayedCall} on C{clock} for the earliest slot.
    A session keeps the slot L{add} returned in C{session._keepalive}
    (None once stopped).

    @ivar buckets: {slot time: {session: None}} (a dict, for O(1) removal in order).
    """

    def __init__(self, clock):
        self.clock = clock
        self.buckets = {}
        #: The slot times of L{buckets} (a heap; emptied slots are skipped when popped).
        self._times = []
        self._call = None

    def __len__(self):
        return sum(len(bucket) for bucket in self.buckets.values())

    def add(self, session, delay: float) -> float:
        """Tick C{session} about C{delay} seconds from now (at most one slot earlier); return its slot."""
        grain = delay / SLOTS
        due = self.clock.seconds() + delay
        # Rounded down, with a little slack for float error, so that
        # whole intervals on a test's clock land exactly on their slot.
        slot = math.floor(due / grain + 1e-9) * grain
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = {}
            heapq.heappush(self._times, slot)
            if self._call is None or slot < self._call.getTime():
                self._schedule(slot)
        bucket[session] = None
        return slot

    def remove(self, session, slot: float) -> None:
        """Forget C{session}'s tick in C{slot} (from L{add})."""
        bucket = self.buckets.get(slot)
        if bucket is not None:
            bucket.pop(session, None)
            if not bucket:
                del self.buckets[slot]
                if not self.buckets:
                    # Nothing left to tick: no call left pending (a stopped
                    # client's reactor is left clean).
                    self._times.clear()
                    if self._call is not None and self._call.active():
                        self._call.cancel()
                    self._call = None

    def _schedule(self, slot):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(max(0.0, slot - self.clock.seconds()), self._fire)

    def _fire(self):
        self._call = None
        now = self.clock.seconds()
        while self._times and self._times[0] <= now:
            slot = heapq.heappop(self._times)
            bucket = self.buckets.pop(slot, None)
            for session in bucket or ():
                if session._keepalive != slot:
                    # Stopped since (by another session's tick, in this
                    # same pass: its bucket had already left the wheel).
                    continue
                try:
                    session._keepalive_tick()
                except Exception:
                    log.failure("keepalive tick of {session} failed", session=session)
        while self._times and self._times[0] not in self.buckets:
            heapq.heappop(self._times)
        # The sessions ticked above scheduled their next slots, not
        # necessarily the earliest one left.
        if self._times:
            self._schedule(self._times[0])
        elif self._call is not None:
            self._call.cancel()
            self._call = None


class Keepalive:
    """
    Attachment timers of a L{cairn.session.session.Session}: keepalive
    ticks on the peer's L{KeepaliveWheel}, the detached TTL. A mixin; the
    session owns C{local}, C{clock}, C{connection}, C{closed},
    C{_keepalive} (its wheel slot or None), C{_expiry} and C{_last_rx}.
    """

    __slots__ = ()  # the state is in the slots of the class using it

    def attach(self, connection) -> None:
        """Carry the session over C{connection} from now on."""
        old, self.connection = self.connection, connection
        if old is not None and old is not connection:
            old.replaced()
        self._stop_expiry()
        self._last_rx = self.clock.seconds()
        self._start_keepalive()

    def detach(self, connection) -> None:
        """C{connection} is gone; keep the session resumable for the TTL."""
        if self.connection is not connection:
            return
        self.connection = None
        self._stop_keepalive()
        if self.closed is None:
            self._expiry = self.clock.callLater(self.local.detached_ttl(self), self._expire)
            self.local.session_detached(self)

    def _expire(self):
        self._expiry = None
        self._end(SessionClosed(CloseCode.TIMEOUT, "detached longer than the session TTL"))

    def _stop_expiry(self):
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def _start_keepalive(self):
        self._stop_keepalive()
        interval = self.local.keepalive_interval
        if interval and interval > 0:
            self._keepalive = self.local.keepalives.add(self, interval)

    def _stop_keepalive(self):
        if self._keepalive is not None:
            self.local.keepalives.remove(self, self._keepalive)
        self._keepalive = None

    def _keepalive_tick(self):
        # Next tick first: the checks below may detach the session, which
        # removes it.
        self._keepalive = None
        self._start_keepalive()
        if self.clock.seconds() - self._last_rx >= self.local.keepalive_timeout:
            log.info("session {sid} keepalive timeout", sid=self.session_id.hex()[:8])
            connection = self.connection
            if connection is not None:
                connection.drop_transport()
            return
        self._send_ack()

    def _send_ack(self):
        self._since_ack = 0
        self.send_payload(MessageType.KEEPALIVE, cbor.dumps_keepalive(self.recv_seq))
