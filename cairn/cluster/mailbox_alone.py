"""
L{OwnWrites}: what the JetStream mailbox knows of its stream from its own
writes' PubAcks, while it does not watch the stream
(L{cairn.cluster.mailbox_follow}).

Why: a node alone on the stream learns nothing from its watch that its
own PubAcks do not tell it, and the watch cost ~40 us of the NATS
thread's CPU per message stored and more on the servers (docs/scaling.md,
"Enqueue: where the time goes"). So the store starts without it, and
starts it only once another writer may exist
(L{cairn.cluster.mailbox.JetStreamMailboxStore.follow_needed}).

What keeps that exact: every seq of the stream up to L{OwnWrites.upto}
is accounted for -- read by the start-up load, or written by this store
(its PubAck in) -- and the store's own writes above it are released, in
stream order, as the prefix grows, to what the watch would have fed with
them (L{cairn.cluster.mailbox_recent.Recent}, the receipts' start). A seq
that is not this store's shows as a gap, known as one once every publish
written before the one that got a seq past it has its answer (one
connection's publishes get their seqs in the order written: L{issued}'s
numbers). Then the watch starts at C{upto + 1}: nothing another writer
wrote is missed, and nothing counted here is counted again (the watch
skips this store's own writes as it always did). A publish that timed
out may have been stored: its seq then shows as a gap too, and so starts
the watch -- never the reverse.

All on the NATS loop (no lock).
"""

import collections
import heapq

from cairn.cluster import direct as D
from cairn.cluster.pubacks import Stalled

_WAITING = object()


class OwnWrites:
    """The contiguous prefix of the stream this store accounts for (see the module docstring)."""

    def __init__(self, upto):
        #: Every seq up to it is accounted for.
        self.upto = upto
        #: The highest seq of the publishes written before the oldest still waiting for its answer.
        self.bound = upto
        self._held = {}  # seq -> Held, this store's writes above upto
        #: publish number -> its seq, None (no seq), or _WAITING; in the order written, from the oldest waiting.
        self._numbers = collections.OrderedDict()

    def issued(self, number):
        """Publish C{number} is being written."""
        self._numbers[number] = _WAITING

    def answered(self, number, held):
        """
        Publish C{number} was answered: C{held} (its seq set) stored, or
        None (refused, failed, timed out). Returns the writes now part of
        the prefix, in seq order, and whether a seq that is not this
        store's lies just above it (another writer's, or a timed-out one's).
        """
        numbers = self._numbers
        if held is not None:
            self._held[held.seq] = held
        if number in numbers:
            numbers[number] = None if held is None else held.seq
        while numbers:
            number, seq = next(iter(numbers.items()))
            if seq is _WAITING:
                break
            numbers.popitem(last=False)
            if seq is not None and seq > self.bound:
                self.bound = seq
        released = []
        while self.upto + 1 in self._held:
            self.upto += 1
            released.append(self._held.pop(self.upto))
        return released, self.bound > self.upto


class Publishing:
    """
    What the store's modules publish with (C{store.acks}): every write goes
    through L{_publish}. C{publish} is the store's C{_publish} itself (a
    coroutine function returning a future of the seq), not a coroutine
    around it: one coroutine less per message written. Tests replace it.
    """

    def __init__(self, store):
        self.store = store
        self.publish = store._publish


#: Ranges of seqs the watch passed over kept at most (L{Skipped}); past it, the oldest go.
SKIPPED_RANGES = 4096


class Skipped:
    """
    The seqs the watch jumped over: deleted before it read them (a
    removal's rollup, a purge) or outside its filter. A message among them
    was never counted in the depths, so its removal here must not count it
    out (L{cairn.cluster.mailbox_follow.Following._uncount}): the watch can
    be past a message's seq, by the removal's own tombstone, before the
    removal is accounted for, which C{_counted_upto} alone cannot tell.
    Found with a watch started late (a store alone until it saw another
    writer): the depth stayed at -1. Kept as ranges, the oldest dropped
    past L{SKIPPED_RANGES} (then such a removal shows -1, as before).
    """

    def __init__(self):
        self._ranges = collections.deque()  # (first, last), in seq order

    def passed(self, upto, seq):
        """The watch went from seq C{upto} to C{seq}: what lies between was skipped."""
        if seq > upto + 1:
            self._ranges.append((upto + 1, seq - 1))
            if len(self._ranges) > SKIPPED_RANGES:
                self._ranges.popleft()

    def __contains__(self, seq):
        for first, last in reversed(self._ranges):
            if first <= seq <= last:
                return True
            if last < seq:
                return False
        return False


#: This store's messages kept in L{Mine} at most, ahead of the watch and passed over by it; past it, the oldest go.
MINE = 65536


class Mine:
    """
    The seqs of this store's messages that the watch has not reached yet,
    and of those it passed over (deleted before it read them). A node older
    than the sixteenth session, acknowledging a message from the node bus's
    copy (which it did not keep the writer of), names no writer on the
    tombstone (C{Cairn-Message-Writer} empty): when the watch passed over
    the message, that tombstone alone cannot tell whether the message was
    this store's, counted in at its enqueue, or by the sender's retry that
    found its unanswered write stored (it stayed counted for good, as
    in L{cairn.cluster.mailbox_follow.Following._counted_in}'s leader kill);
    these tell. On the NATS loop.
    """

    def __init__(self):
        self._ahead = []  # a heap of seqs above the watch's position
        self._passed = collections.OrderedDict()  # seq -> None, passed over by the watch

    def stored(self, seq, watched, skipped):
        """This store's message C{seq} is stored; the watch is at seq C{watched}, past the seqs C{skipped}."""
        if seq > watched:
            heapq.heappush(self._ahead, seq)
            if len(self._ahead) > MINE:
                heapq.heappop(self._ahead)
        elif seq in skipped:
            self._pass(seq)

    def passed(self, upto, seq):
        """The watch went from seq C{upto} to C{seq}: this store's messages between were passed over."""
        ahead = self._ahead
        while ahead and ahead[0] <= seq:
            mine = heapq.heappop(ahead)
            if upto < mine < seq:
                self._pass(mine)

    def removed(self, seq):
        """Whether C{seq}, passed over by the watch, was this store's message (forgotten: it counts out once)."""
        return self._passed.pop(seq, self) is None

    def _pass(self, seq):
        self._passed[seq] = None
        while len(self._passed) > SKIPPED_RANGES:
            self._passed.popitem(last=False)


#: Messages kept in L{MaybeStored} at most; past it, the oldest go.
MAYBE = 4096


def unknown_outcome(error):
    """Whether a write that failed with C{error} may be stored all the same: sent, its PubAck never came."""
    return isinstance(error, TimeoutError) and not isinstance(error, Stalled)  # Stalled: never sent


class MaybeStored:
    """
    This store's messages whose write failed without an answer (no PubAck
    in time, or the stream elected a new leader meanwhile:
    L{cairn.cluster.pubacks.LeaderChanged}): JetStream may have stored
    them all the same (the sender, told STORAGE_ERROR, sends again and is
    answered DUPLICATE). Five such forwards were delivered in one run of
    C{tests/test_cluster_reserve_r3_nodes.py}; counted in nowhere on their
    node (its watch skips its own writes) but counted out there at their
    removal, they left its depth below zero for good. Now such a message
    counts in when a read finds it (the watch, L{found}, or the read of
    the sender's retry refused because it is there, L{take}), and its
    removal counts nothing if none did (L{removed}).
    Keyed by subject, with the C{Cairn-Stored} of each unanswered write
    of it (which tells those writes from a retry's stored): a retry
    unanswered too adds its own, and the message held is either's. On
    the NATS loop.
    """

    def __init__(self):
        self._stamps = collections.OrderedDict()  # subject -> the Cairn-Stored of its unanswered writes

    def __bool__(self):
        return bool(self._stamps)

    def add(self, subject, stamp):
        stamps = self._stamps.pop(subject, ())
        self._stamps[subject] = stamps if stamp in stamps else stamps + (stamp,)
        while len(self._stamps) > MAYBE:
            self._stamps.popitem(last=False)

    def take(self, subject):
        """
        The sender sends C{subject} again: the C{Cairn-Stored} of its
        unanswered writes if it is one of those (or None), forgotten while
        the retry's outcome decides it: stored, the first was not; refused
        as taken, the first is held, or was and is removed already -- its
        tombstone names this store as the message's writer -- and counts
        in all the same, as its removal counts out. A retry that decides
        nothing (refused unstored, its read failed) gives them back
        (L{restore}): lost with it, the message stayed uncounted for good.
        """
        return self._stamps.pop(subject, None)

    def restore(self, subject, stamps):
        """Give back what L{take} returned for C{subject}: the retry decided nothing."""
        for stamp in stamps:
            self.add(subject, stamp)

    def _is(self, held):
        stamps = self._stamps.pop(held.subject, None)
        return stamps is not None and held.headers.get(D.STORED) in stamps

    def found(self, held):
        """
        This store's message C{held} is read: whether it is one of those
        (it counts in now). Its subject is forgotten either way (a retry's
        message was counted when stored).
        """
        return bool(self._stamps) and self._is(held)

    def removed(self, held=None, subject=None):
        """
        A message of this store is removed: C{held} (with its headers) or
        only its C{subject} (a tombstone the watch saw, which passed over
        the message); whether it is one of those never counted in.
        """
        if not self._stamps:
            return False
        if held is None:
            return self._stamps.pop(subject, None) is not None
        return self._is(held)
