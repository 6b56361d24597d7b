"""
L{Recent}: the messages of the C{mbox} stream that the store's watch has
seen (L{cairn.cluster.mailbox.JetStreamMailboxStore._follow}), kept in
memory per recipient, so that the fetch after a wake-up is answered
without a read of the stream.

Why: on a replicated stream with C{sync_interval: always} every write is
fsync'd on each replica, and a direct get waits on the replica behind
them; the fetch that follows each store (the wake-up path) queued behind
the previous message's removal writes and often had to go on to the
leader (a follower had not applied it yet), about half of a delivery's
latency (issue 15). The watch delivers each message, payload and all, in
stream order and as soon as the leader has it -- before or with the PubAck
-- so the node already holds what it is about to read.

A recipient's messages are known I{completely} over C{(start, watched]}:
every message stored for it in that range and not since removed is here
(the watch sees the whole stream in order, from just after what the
start-up load read). C{start} is where this node began to keep them (the
watch's start), or where it last forgot them (over the byte budget, or
evicted elsewhere). L{fetch} answers only from a complete range, and only
when the newest message the caller knows of is within it; anything else is
read from the stream as before. So the cache can cost a read, never a
message.

Removals: this node's own acknowledgements and expiries take a message out
at once; another node's show in the watch as the tombstone (same subject)
or the receipt (naming the recipient and the message's seq) each removal
writes. A message removed here before the watch reached it is remembered
until the watch passes it (L{gone}), so that it does not come back.

The watch and the removals feed it on the NATS loop's thread; the store's
C{fetch} asks it on the reactor's (an answer it has saves the two thread
hops of a store call): one lock, held for dictionary work only.
"""

import bisect
import collections
import threading
import time

from cairn.cluster import direct as D
from cairn.cluster.common import is_message

#: Payload bytes kept at most (all recipients together); over it, the least
#: recently used recipients are forgotten (their next fetch reads the stream).
RECENT_BYTES = 16 * 1024 * 1024
#: What one kept message costs beyond its payload (headers, objects), for the budget.
OVERHEAD = 400
#: Recipients remembered as forgotten at most; past it, every recipient starts afresh.
FORGOTTEN = 100_000
#: seqs known ahead of the watch kept at most (L{Recent.ahead}): past it, they wait for the watch.
KNOWN = 10_000
#: Seconds since the watch last delivered anything after which "nothing new"
#: is no longer answered from here (read instead): a watch that stalled
#: while connected must not hide what other nodes store.
FRESH = 5.0


class Recent:
    """The messages the watch has seen, per recipient, complete from a seq on (see the module docstring)."""

    def __init__(self, budget=None, clock=time.monotonic):
        self.budget = RECENT_BYTES if budget is None else budget
        self._clock = clock
        self._fresh_at = clock()
        #: The last stream seq the watch processed.
        self.watched = 0
        self._start = 0  # where every recipient not in _forgotten is complete from
        self._forgotten = {}  # recipient -> seq it is complete from
        self._held = collections.OrderedDict()  # recipient -> {seq: Held}, least recently used first
        # recipient -> its seqs, ascending (added in stream order), for a fetch's
        # bisect; removed ones stay until the list is twice what is held (L{_compact}).
        self._order = {}
        self._subjects = {}  # message subject -> seq (a tombstone names only its subject)
        self._bytes = 0
        #: seqs above L{watched} removed here before the watch reached them.
        self.gone = set()
        #: seqs above L{watched} known before the watch reached them: (recipient, Held) of a
        #: message (L{ahead}), None for anything else (L{written}).
        self._known = {}
        self._lock = threading.RLock()

    def resize(self, budget):
        """Keep at most C{budget} bytes from now on (0: nothing, every fetch reads)."""
        with self._lock:
            self.budget = budget
            self._fit()

    def _fit(self):
        while self._bytes > self.budget and self._held:
            self.forget(next(iter(self._held)))

    def begin(self, upto):
        """The watch starts just after stream seq C{upto}."""
        with self._lock:
            self.watched = self._start = upto

    # Fed by the watch, in stream order

    def seen(self, held, recipient, kind):
        """The watch processed C{held} (C{kind}: C{"mbox"} or C{"rcpt"})."""
        with self._lock:
            self._fresh_at = self._clock()  # the watch is alive, whatever it brought
            if held.seq <= self.watched:
                return  # taken already, from its PubAck (L{ahead}, L{written})
            self.watched = max(self.watched, held.seq)
            if kind == "rcpt":
                self._receipted(held)
            elif not is_message(held):
                seq = self._subjects.get(held.subject)
                if seq is not None:
                    self.remove(recipient, seq)
            elif held.seq in self.gone:
                self.gone.discard(held.seq)
            else:
                self._add(recipient, held)
            if self._known:
                for seq in [seq for seq in self._known if seq <= self.watched]:
                    del self._known[seq]
                self._advance()
            if self.gone:
                self.gone = {seq for seq in self.gone if seq > self.watched}

    def _receipted(self, held):
        recipient = held.headers.get(D.RECIPIENT)
        if recipient is None:
            return
        from cairn.wire.constants import ReceiptStatus

        if held.headers.get(D.STATUS) == str(int(ReceiptStatus.EVICTED)):
            # A purge also removes what its peer sent itself, with no receipt.
            self.forget(recipient)
            return
        try:
            seq = int(held.subject.split(".")[3])
        except (IndexError, ValueError):
            return
        self.remove(recipient, seq)

    def _add(self, recipient, held):
        messages = self._held.get(recipient)
        if messages is None:
            messages = self._held[recipient] = {}
        else:
            self._held.move_to_end(recipient)
        messages[held.seq] = held
        self._order.setdefault(recipient, []).append(held.seq)
        self._subjects[held.subject] = held.seq
        self._bytes += len(held.data) + OVERHEAD
        self._fit()

    def ahead(self, held, recipient):
        """
        Message C{held} of C{recipient} is known stored (its PubAck, here
        or on another node: the node bus's notice) before the watch has
        reached it. Once every seq between what the watch processed and
        it is known too (L{written}, or another message told so), nothing
        unknown can lie between: it is taken as if seen, and the watch's
        own copy is skipped. Whether it is taken now.
        """
        with self._lock:
            if held.seq <= self.watched or not is_message(held):
                return False
            self._known[held.seq] = (recipient, held)
            self._advance()
            return held.seq <= self.watched

    def written(self, seq):
        """
        This store wrote seq C{seq}, which is no message to deliver (a
        tombstone of a removal it made and applies itself, a consumed
        marker): known, for L{ahead}, before the watch brings it.
        """
        with self._lock:
            if seq > self.watched:
                self._known[seq] = None
                self._advance()

    def _advance(self):
        known = self._known
        while self.watched + 1 in known:
            entry = known.pop(self.watched + 1)
            self.watched += 1
            if entry is None:
                continue
            recipient, held = entry
            if held.seq in self.gone:
                self.gone.discard(held.seq)
            else:
                self._add(recipient, held)
        if known and len(known) > KNOWN:
            # Stuck behind a write the watch has not brought yet: the watch
            # will bring these too.
            known.clear()

    # Removals made here

    def remove(self, recipient, seq):
        """Message C{seq} of C{recipient} is removed (acknowledged, expired)."""
        with self._lock:
            if seq > self.watched:
                self.gone.add(seq)
                return
            messages = self._held.get(recipient)
            held = messages.pop(seq, None) if messages else None
            if held is None:
                return
            self._subjects.pop(held.subject, None)
            self._bytes -= len(held.data) + OVERHEAD
            if not messages:
                del self._held[recipient]
                self._order.pop(recipient, None)
            else:
                self._compact(recipient, messages)

    def _compact(self, recipient, messages):
        """Drop the removed seqs from C{recipient}'s list once they are as many as the held ones (amortised)."""
        order = self._order.get(recipient)
        if order is not None and len(order) > 2 * len(messages) + 32:
            self._order[recipient] = list(messages)  # added in stream order: ascending

    def forget(self, recipient, purged=False):
        """
        Keep nothing of C{recipient}'s: complete again only from what the
        watch sees next -- or, C{purged} (its messages purged here, some
        perhaps not seen by the watch yet), never again in this process.
        """
        with self._lock:
            self._order.pop(recipient, None)
            for held in (self._held.pop(recipient, None) or {}).values():
                self._subjects.pop(held.subject, None)
                self._bytes -= len(held.data) + OVERHEAD
            self._forgotten[recipient] = float("inf") if purged else self.watched
            if len(self._forgotten) > FORGOTTEN:
                # Everyone starts afresh from here (purged ones included: what
                # the watch sees from now on is what exists).
                self._held.clear()
                self._order.clear()
                self._subjects.clear()
                self._forgotten.clear()
                self._bytes = 0
                self._start = self.watched

    # Reads

    def fetch(self, recipient, after, limit, expect):
        """
        Up to C{limit} messages of C{recipient} after seq C{after}, in
        order, if they are known completely and the newest message known
        stored for it (C{expect}) has been seen; None otherwise (read the
        stream). (Nothing new is answered only while the watch has
        delivered something in the last L{FRESH} seconds.)
        """
        with self._lock:
            if after < self._forgotten.get(recipient, self._start) or expect > self.watched:
                return None
            messages = self._held.get(recipient) or {}
            # Its seqs in stream order (the watch's): the first after C{after}
            # found by bisection, not by a walk from the oldest held (a drain
            # fetching window by window walked its backlog on each fetch).
            order = self._order.get(recipient, ())
            found, i = [], bisect.bisect_right(order, after)
            while i < len(order) and len(found) < limit:
                held = messages.get(order[i])
                if held is not None:
                    found.append(held)
                i += 1
            if not found and self._clock() - self._fresh_at > FRESH:
                return None  # nothing new, says a watch that has been silent a while: read
            if messages:
                self._held.move_to_end(recipient)
            return found
