"""
The per-session window of the mailbox (docs/protocol.md §21): what one
session was sent and has not acknowledged yet, one L{Window} for its
deliveries and one for its receipts (an L{Outbox}).

A window does no I/O. The service asks it for room before reading from the
store (L{Window.begin_read}), tells it what it sent (L{Window.sent}) and
what the peer acknowledged (L{Window.acknowledged}); the window bounds what
the node holds for a session and lets a new session start again from the
first unacknowledged sequence number.
"""

from collections import OrderedDict
from types import MappingProxyType

#: What a window holds while nothing is in flight (most idle sessions): its
#: OrderedDict is made on the first send and freed when all is acknowledged
#: (an empty OrderedDict is 128 bytes, two per session; issue 20).
_NOTHING = MappingProxyType({})


class Window:
    """
    Sequence numbers sent on one session and not yet acknowledged, their
    sizes, and whether a store read to fill the window is running.

    @ivar cursor: the highest sequence number sent on this session.
    @ivar inflight: sequence number -> size, in sequence order.
    @ivar inflight_bytes: the sum of the sizes in flight.
    @ivar reading: a read to fill the window is running.
    @ivar again: something changed while it ran: read again when it ends.
    """

    __slots__ = ("cursor", "inflight", "inflight_bytes", "reading", "again")

    def __init__(self):
        self.cursor = 0
        self.inflight = _NOTHING
        self.inflight_bytes = 0
        self.reading = False
        self.again = False

    def begin_read(self, most: int, most_bytes: int = None) -> int:
        """
        Start a read to fill the window of C{most} entries (and, if given,
        C{most_bytes} bytes); return how many entries it may read. 0: no
        read (the window is full, or a read is running, which then reads
        again once it ends).
        """
        if self.reading:
            self.again = True
            return 0
        room = most - len(self.inflight)
        if room <= 0 or (most_bytes is not None and self.inflight_bytes >= most_bytes):
            return 0
        self.reading, self.again = True, False
        return room

    def end_read(self) -> None:
        """The read started by L{begin_read} is over (done or failed)."""
        self.reading = False

    def sent(self, seq: int, size: int = 0) -> None:
        """C{seq} (of C{size} bytes) was sent: it is in flight, and the cursor moves to it."""
        if self.inflight is _NOTHING:
            self.inflight = OrderedDict()
        self.inflight[seq] = size
        self.inflight_bytes += size
        self.cursor = seq

    def sent_all(self, pairs) -> None:
        """L{sent} for each C{(seq, size)} of C{pairs}, in increasing seq order (a ForwardDeliver's)."""
        if not pairs:
            return
        if self.inflight is _NOTHING:
            self.inflight = OrderedDict()
        self.inflight.update(pairs)
        self.inflight_bytes += sum(size for _, size in pairs)
        self.cursor = pairs[-1][0]

    def acknowledged(self, seqs, upto: int = None) -> None:
        """Free the window of C{seqs} and, if given, of every sequence number up to C{upto}."""
        inflight = self.inflight
        if inflight is _NOTHING:
            return
        if upto is not None:
            # In seq order: what upto frees is a prefix, counted, then cut.
            count = freed = 0
            for seq, size in inflight.items():
                if seq > upto:
                    break
                count += 1
                freed += size
            if count == len(inflight):
                inflight.clear()
            else:
                popitem = inflight.popitem
                for _ in range(count):
                    popitem(last=False)
            self.inflight_bytes -= freed
        for seq in seqs:
            self.inflight_bytes -= inflight.pop(seq, 0)
        if not inflight:
            self.inflight = _NOTHING

    def restore(self, cursor: int, inflight) -> None:
        """Refill the window after a clean restart: C{inflight} as C{(seq, size)} pairs, then C{cursor}."""
        for seq, size in inflight:
            self.sent(seq, size)
        self.cursor = cursor


class Outbox:
    """
    What one session of a paired peer has been sent and not yet
    acknowledged: its L{deliveries} and its L{receipts} windows.

    @ivar retry: the C{DelayedCall} that reads again after a failed read.
    """

    __slots__ = ("session", "deliveries", "receipts", "retry")

    def __init__(self, session):
        self.session = session
        self.deliveries = Window()
        self.receipts = Window()
        self.retry = None
