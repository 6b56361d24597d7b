"""
L{ReadAhead}: what a fetch of the JetStream mailbox read beyond what it
was asked for (L{cairn.cluster.mailbox_reads.Reading._read_ahead}),
kept per recipient so that the next fetches carrying on from it are
answered from memory.

Why one large read rather than a page per fetch: a drain the watch's
memory (L{cairn.cluster.mailbox_recent}) does not hold -- after a restart,
or messages another node stored -- reads while its own removals are being
written, and each direct-get request then waits on the servers behind the
fsync'd writes (measured with raw nats-py, 4,000 x 1 KiB at R1 and R3: a
read in pages of 256 took 3-15 s with rollups in flight, 0.2-0.4 s on idle
servers; the same read as one request of 4,000 took 0.3-1.7 s with the
writes in flight). The cost is per request, not per message: so the
recipient's backlog is read in one request, bounded by L{READ_AHEAD}
messages and L{READ_AHEAD_BYTES} bytes, usually before its first removal
is written (docs/scaling.md, "Restart drain").

Memory is bounded: per recipient by those two, all together by
L{READ_AHEAD_TOTAL} bytes and L{READ_AHEAD_RECIPIENTS} recipients (the
least recently read are forgotten first; their next fetch reads).

The store's reads and removals use it on the NATS loop; the store's
C{fetch} asks it on the reactor's (L{answer}: what it can answer saves the
two thread hops of a store call, as L{cairn.cluster.mailbox_recent} does):
one lock, held for dictionary work only.
"""

import collections
import threading

#: What one read of a recipient's messages asks for at most: messages, and
#: bytes (the direct get's C{max_bytes}, which counts subjects and headers too).
READ_AHEAD, READ_AHEAD_BYTES = 8192, 8 * 1024 * 1024
#: Payload bytes and recipients kept at most, all recipients together.
READ_AHEAD_TOTAL, READ_AHEAD_RECIPIENTS = 32 * 1024 * 1024, 64


class _Ahead:
    """One recipient's: every message of it in C{(after, upto]}, oldest first."""

    __slots__ = ("after", "upto", "messages", "bytes")

    def __init__(self, after, messages):
        self.after, self.upto = after, messages[-1].seq
        self.messages = collections.deque(messages)
        self.bytes = sum(len(m.data or b"") for m in messages)


class ReadAhead:
    """The recipients' messages read ahead (see the module docstring)."""

    def __init__(self, total=None, recipients=None):
        self.total = READ_AHEAD_TOTAL if total is None else total
        self.recipients = READ_AHEAD_RECIPIENTS if recipients is None else recipients
        self._by = collections.OrderedDict()  # recipient -> _Ahead, least recently read first
        self.bytes = 0
        self._lock = threading.RLock()

    def __len__(self):
        return len(self._by)

    def take(self, recipient, after, limit):
        """
        Up to C{limit} messages of C{recipient} after seq C{after} from what
        was read ahead, and the seq up to which they are all there is:
        C{([...], upto)}. Nothing known from C{after} on: C{([], after)}
        (and what was held is dropped: a cursor elsewhere, read afresh).
        """
        with self._lock:
            return self._take(recipient, after, limit)

    def answer(self, recipient, after, limit, expect):
        """
        What L{take} returns, if it answers the fetch without a read: C{limit}
        messages, or fewer but some and no message known stored (seq
        C{expect}) past them. Else None, and nothing is taken.
        """
        with self._lock:
            ahead = self._by.get(recipient)
            if ahead is None or not ahead.after <= after < ahead.upto:
                return None
            # Sorted; what lies at or before C{after} is at the front (usually nothing).
            behind = next((i for i, held in enumerate(ahead.messages) if held.seq > after), len(ahead.messages))
            left = len(ahead.messages) - behind
            if left < limit and (not left or ahead.upto < expect):
                return None
            return self._take(recipient, after, limit)[0]

    def _take(self, recipient, after, limit):
        ahead = self._by.pop(recipient, None)
        if ahead is None:
            return [], after
        if not ahead.after <= after < ahead.upto:
            self.bytes -= ahead.bytes
            return [], after
        messages, taken = ahead.messages, []
        while messages and messages[0].seq <= after:
            self._let_go(ahead, messages.popleft())
        while messages and len(taken) < limit:
            taken.append(self._let_go(ahead, messages.popleft()))
        if messages:
            ahead.after = taken[-1].seq if taken else after
            self._by[recipient] = ahead  # most recently read
        else:
            self.bytes -= ahead.bytes
        return taken, ahead.upto

    def _let_go(self, ahead, held):
        size = len(held.data or b"")
        ahead.bytes -= size
        self.bytes -= size
        return held

    def keep(self, recipient, after, messages):
        """Keep C{messages}: every message of C{recipient} in C{(after, messages[-1].seq]}."""
        with self._lock:
            self.pop(recipient)
            ahead = self._by[recipient] = _Ahead(after, messages)
            self.bytes += ahead.bytes
            while len(self._by) > 1 and (len(self._by) > self.recipients or self.bytes > self.total):
                self.pop(next(iter(self._by)))

    def first(self, recipient, removed_upto):
        """
        The oldest message of C{recipient} held, if every message of it up
        to C{removed_upto} is removed and this one is the next: else None.
        """
        with self._lock:
            ahead = self._by.get(recipient)
            if ahead is None or removed_upto < ahead.after:
                return None
            return next((held for held in ahead.messages if held.seq > removed_upto), None)

    def pop(self, recipient, default=None):
        """Forget what is held of C{recipient} (its messages were removed, or are being)."""
        with self._lock:
            ahead = self._by.pop(recipient, None)
            if ahead is not None:
                self.bytes -= ahead.bytes
        return default

    def clear(self):
        with self._lock:
            self._by.clear()
            self.bytes = 0
