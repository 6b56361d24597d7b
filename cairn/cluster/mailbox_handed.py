"""
L{HandedOut}: what a recipient's fetches of the C{mbox} stream handed out
and its acknowledgements have not removed yet, per recipient, for
L{cairn.cluster.mailbox_reads} (which fills it) and
L{cairn.cluster.mailbox_removal} (which takes from it).
"""

import heapq


class HandedOut(dict):
    """
    A recipient's messages handed out and not yet acknowledged, C{{seq:
    Held}}, with their seqs in a heap, so that a cumulative acknowledgement
    up to seq N takes what it covers from the front: its cost follows what
    it acknowledges, not what is handed out (a drain's window, and the
    removals in flight, were walked by every acknowledgement). (A heap, not
    a deque: a refetch after a Reconnect hands out older seqs again.)

    A seq stays in the dictionary until its removal is written (a failed
    acknowledgement puts what it took back, L{put_back}); one taken by an
    acknowledgement in flight is no longer in that heap, but still in a
    second one, of every seq here (L{first}). Both drop seqs removed from
    the dictionary lazily.

    Each seq also keeps where the fetch that handed it out began: a fetch
    answers every message of the recipient after its start, in order, so
    none lies between that start and the seq but those the same fetch
    handed out, and an acknowledgement need not read there (L{below}).
    (It read there each time: between one message and the next lies the
    previous one's tombstone.)
    """

    def __init__(self):
        super().__init__()
        self._heap, self._all = [], []
        #: seq -> the seq after which the fetch that handed it out began (the lowest, if handed out again).
        self._since = {}
        #: The highest C{upto} of the cumulative acknowledgements started: each
        #: took or read everything above the one before it (L{Removal._acknowledge}).
        self.covered = 0
        #: Futures of the acknowledgements in flight (each set once its removals are
        #: written or failed: whether they were written).
        self.inflight = set()
        #: A future of the acknowledgement started last, set when it ends: after
        #: its removals are written (or failed) and the one started before it
        #: ended; whether it and every one started before it succeeded.
        self.last = None

    def __setitem__(self, seq, held):
        if seq not in self:
            heapq.heappush(self._heap, seq)
            heapq.heappush(self._all, seq)
        super().__setitem__(seq, held)

    def __delitem__(self, seq):
        super().__delitem__(seq)
        self._since.pop(seq, None)

    def pop(self, seq, *default):
        self._since.pop(seq, None)
        return super().pop(seq, *default)

    def handed(self, after, held):
        """C{held} (in seq order, without payloads) was handed out by a fetch of what follows seq C{after}."""
        since = self._since
        for h in held:
            self[h.seq] = h
            known = since.get(h.seq)
            since[h.seq] = after if known is None else min(known, after)

    def below(self, seq):
        """
        Up to where an acknowledgement reaching C{seq} may have to read below
        it for messages not known here: the start of the fetch that handed
        C{seq} out, or C{seq - 1}.
        """
        return min(seq - 1, self._since.get(seq, seq - 1))

    def take(self, upto):
        """The seqs up to C{upto} still here and not taken yet, ascending: taken."""
        heap, out = self._heap, []
        while heap and heap[0] <= upto:
            seq = heapq.heappop(heap)
            if seq in self and (not out or out[-1] != seq):
                out.append(seq)
        return out

    def put_back(self, seqs):
        """Seqs L{take}n whose removal failed: to be taken again (those still here)."""
        for seq in seqs:
            if seq in self:
                heapq.heappush(self._heap, seq)

    def first(self):
        """The oldest message here (handed out in order: the oldest held), or None."""
        heap = self._all
        while heap and heap[0] not in self:
            heapq.heappop(heap)
        return self[heap[0]] if heap else None
