"""
What L{cairn.cluster.mailbox.JetStreamMailboxStore} learns from its
stream rather than from its own calls: the start-up load (depths,
per-peer limits, and each recipient's backlog as the read-ahead) and,
once another writer may exist (L{Following.follow_needed}), the watch of
the stream from the first seq the store does not account for (what other
writers store and remove, and every message's payload for
L{cairn.cluster.mailbox_recent.Recent}); until then, the store's own
writes in stream order (L{cairn.cluster.mailbox_alone}). A mixin, so
that each module stays small.
"""

import asyncio

from twisted.logger import Logger

from cairn.cluster import direct as D
from cairn.cluster import mailbox_ahead
from cairn.cluster.common import KIND, MESSAGE_WRITER, REMOVES, SIZE, WRITER, is_message, one_line, recipient_of
from cairn.cluster.mailbox_alone import OwnWrites
from cairn.cluster.mailbox_layout import convert_receipts, is_receipt, parse_marker
from cairn.cluster.stream_watch import StreamWatch
from cairn.mailbox.interfaces import Depth

log = Logger()

#: Seconds between attempts to start the watch.
RETRY = 1.0


def _not_watching(why):
    log.warn("mailbox: could not watch the stream, trying again ({why})", why=why)


def _late_receipts(count):
    log.warn(
        "mailbox: {count} layout-1 receipts found after the upgrade to layout 2 (a node of an older version"
        " still running?): moved to layout 2; stop older nodes before starting this version",
        count=count,
    )


def _count_out(tombstone):
    """What L{Following._removed_elsewhere} is told of C{tombstone}: its recipient, size, sender if a receipt, seq."""
    parts, headers = tombstone.subject.split("."), tombstone.headers
    return parts[2], int(headers.get(SIZE) or 0), parts[3] if headers.get(D.STATUS) is not None else None, tombstone.seq


class Following:
    """The load and the watch of the C{mbox} stream."""

    # The watch, and while it does not run, this store's own writes (mailbox_alone)

    def follow_needed(self):
        """
        Another writer of the stream may exist (another node is seen, or
        this store found another's write): watch the stream from the first
        seq this store does not account for. The one way the watch starts;
        from any thread, any number of times.
        """
        if self.jet.thread.running:
            self.jet.thread.call(self._start_following)
        else:
            self.following = True  # before the start: it watches from its load

    async def _begin(self):
        """After the load, on the NATS loop: from here on, seqs above the load's are accounted for."""
        self.recent.begin(self._loaded_upto)
        self._counted_upto = max(self._counted_upto, self._loaded_upto)
        if self.following:
            self._watch_from(self._loaded_upto)
        else:
            self._own = OwnWrites(self._loaded_upto)

    def _start_following(self):
        if self.following and self._own is None:
            return  # watching, or asked before the start (L{_begin} watches)
        self.following = True
        own, self._own = self._own, None
        if own is not None:
            self._watch_from(own.upto)

    def _watch_from(self, upto):
        self._watching = asyncio.get_running_loop().create_task(self._follow(upto))

    async def _publish(self, subject, payload, headers):
        """Every write of this store to its stream: a future of its seq (L{cairn.cluster.pubacks.Acks.publish})."""
        own = self._own
        if own is None:
            return await self.jet.acks.publish(subject, payload, headers)
        numbers = []

        def issued(number):
            own.issued(number)
            numbers.append(number)

        try:
            future = await self.jet.acks.publish(subject, payload, headers, issued=issued)
        except BaseException:
            if numbers:
                self._answered(own, numbers[0], None)
            raise
        future.add_done_callback(lambda f: self._answered(own, numbers[0], f, subject, headers, payload))
        return future

    def _answered(self, own, number, future, subject=None, headers=None, payload=None):
        if self._own is not own:
            return  # the watch runs now: it reports what this store wrote
        held = None
        if future is not None and not future.cancelled() and future.exception() is None:
            held = D.Held(subject, future.result(), headers, payload)
        released, other = own.answered(number, held)
        for held in released:
            self._seen(held)
        if other:
            self._start_following()

    def _others_read(self, held):
        """A read found C{held}: another writer's past what this store accounts for starts the watch."""
        own = self._own
        if own is not None and any(h.seq > own.upto and h.headers.get(WRITER) != self.writer for h in held):
            self._start_following()

    def _seen(self, held):
        """
        One item of the stream, in stream order, from the watch or from
        this store's own writes (mailbox_alone): to L{Recent}, and what
        another writer did to the depths and wake-ups.
        """
        headers, parts, seq = held.headers, held.subject.split("."), held.seq
        if len(parts) < 4:
            return
        self.recent.seen(held, parts[2], parts[1])
        if seq <= self._counted_upto:
            # Processed already: the watch replays. nats-py recreates its consumer from
            # the last seq it received + 1 -- from 1 when it received none yet (every
            # message held, and every removal, was counted again; kv_whole says when).
            return
        if self._counted_upto >= self._loaded_upto:
            self._skipped.passed(self._counted_upto, seq)
            self._mine.passed(self._counted_upto, seq)
        self._counted_upto = max(self._counted_upto, seq)
        uncounted = False
        if self._uncounted:
            uncounted = seq in self._uncounted
            # The watch is past them: the others were deleted (their removal's rollup) before it read them.
            self._uncounted = {s for s in self._uncounted if s > seq}
        if headers.get(KIND) is not None:
            # A tombstone; with a status, it carries a receipt (layout 2):
            # known to the sender's reads at once, this store's own too
            # (its PubAck may come after the watch).
            if parts[1] != "mbox" or len(parts) != 5:
                return
            if headers.get(D.STATUS) is not None:
                self._receipt_written(parts[3], seq)
            count_out = _count_out(held)
            if headers.get(WRITER) == self.writer and self._maybe_removed.seen(held):
                self._unanswered_removal(held)
                return
            if self._maybe and headers.get(MESSAGE_WRITER) == self.writer != headers.get(WRITER):
                if self._maybe.removed(subject=held.subject):  # (this store's removals: L{_uncount})
                    return  # its write that failed unanswered, never counted in (mailbox_alone.MaybeStored)
            if self._counts_out(headers, count_out):
                self.jet.thread.to_reactor(self._removed_elsewhere, *count_out)
            return
        if headers.get(WRITER) == self.writer and not (self._maybe and self._maybe.found(held)):
            return  # this store's own writes (counted when made; not one that failed unanswered)
        if uncounted:
            return  # removed here before the watch brought it (L{_uncount}): not counted in, nor out
        if parts[1] == "mbox":
            stored_at = float(headers.get(D.STORED) or 0)
            self.jet.thread.to_reactor(self._written_elsewhere, parts[2], len(held.data), stored_at, seq)

    def _unanswered_removal(self, tombstone):
        """
        This store's C{tombstone}, whose write failed unanswered or was
        never awaited, stored after all (mailbox_partly.MaybeRemoved): its
        message counts out if it counted in (not a write of this store
        that failed unanswered). On the NATS loop.
        """
        if self._maybe and self._maybe.removed(subject=tombstone.subject):
            return
        if self._counted_in(tombstone.headers):
            self.jet.thread.to_reactor(self._removed_elsewhere, *_count_out(tombstone))

    def _counts_out(self, headers, count_out):
        """
        Whether a tombstone (C{headers}) seen by the watch counts its
        message out of this store's depths: another writer's removal of a
        message counted in here; a buried message's tombstone
        (L{cairn.cluster.mailbox_room}), whoever wrote it, unless this
        store's own burial counted the message out already. (A burial here
        that found its message deleted by another node's burial left it
        to that node's tombstone; when its own record's tombstone came
        first, nothing counted it out: +30 for good in
        C{tests/test_cluster_reserve_killed.py}.)
        """
        buried = headers.get(REMOVES)
        if buried is None:
            return headers.get(WRITER) != self.writer and self._counted_in(headers)
        try:
            seq = int(buried)
        except ValueError:
            return False
        return self._counted_in(headers, seq) and self._buried_here.counts(seq, count_out)

    def _counted_in(self, headers, seq=None):
        """
        Whether the message that another writer's tombstone (C{headers})
        replaces is in this store's depths, so that its removal counts
        out: this store's own message (counted at its enqueue), or another
        writer's that the load or the watch read -- not one the watch
        passed over, deleted by this very tombstone's rollup before the
        watch reached it (L{cairn.cluster.mailbox_alone.Skipped}). Counting that one out
        showed its recipient's depth at -1 for good. A tombstone without
        the message's writer (a node of an older version) counts out as
        before when it carries a receipt; one naming nobody (an empty
        writer: a node older than the sixteenth session, removing it from
        the node bus's copy) counts out a message the watch passed over
        only if it was this store's (L{cairn.cluster.mailbox_alone.Mine}).
        """
        writer = headers.get(MESSAGE_WRITER)
        if writer is None:
            return headers.get(D.STATUS) is not None
        if seq is None:
            seq = int(headers.get(D.EXPECT_LAST) or 0)  # a removal's tombstone is conditional on its message
        if writer == self.writer or seq not in self._skipped:
            return True
        # Named by nobody: a node older than the sixteenth session removed it from its bus copy (mailbox_alone.Mine).
        return writer == "" and self._mine.removed(seq)

    async def _follow(self, upto):
        """
        Watch the stream from just after seq C{upto} (what the load read,
        or what this store accounts for) for what other writers do: the
        messages they store, and the receipts they write -- every removal
        (acknowledgement, expiry, eviction) writes exactly one tombstone
        per message, carrying the receipt and the message's size (layout
        2), so the depth figures follow removals made elsewhere too. Every
        item, this store's own included, also goes to L{Recent}
        (C{self.recent}), payload and all, before the reactor hears of it.
        """
        from nats.js.api import ConsumerConfig, DeliverPolicy

        seen = self._seen

        async def watched(msg):
            seen(D.Held(msg.subject, D.stream_seq(msg), msg.headers or {}, msg.data or b""))

        # From just after what is accounted for: nothing written meanwhile
        # is missed, nothing counted is counted again.
        config = ConsumerConfig(
            filter_subjects=[self._subject("mbox", ">"), self._subject("rcpt", ">")],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=upto + 1,
        )
        # Resumed from the last seq applied if nats-py drops what it brings (L{StreamWatch}).
        self._stream_watch = watch = StreamWatch(self.jet, self._subject("mbox", ">"), watched, config)
        while True:
            try:
                await watch.start()
                return
            except Exception as e:
                # Fetches that the watch's memory cannot answer read meanwhile.
                self.jet.thread.to_reactor(_not_watching, one_line(e))
                await asyncio.sleep(RETRY)

    def _written_elsewhere(self, recipient, size, stored_at, seq=0):
        # Reads from now on must see it (the watchers below fetch at once).
        self._saw(self._newest, recipient, seq)
        self._last_stored = max(self._last_stored, seq)
        depth = self._depths.get(recipient, Depth())
        oldest = depth.oldest if depth.messages else stored_at
        self._apply({recipient: Depth(depth.messages + 1, depth.bytes + size, oldest)})
        self.watchers(recipient)

    def told_stored(self, recipient, seq):
        """
        Another node told of message C{seq} for C{recipient} with a notice
        not taken as the message (L{cairn.cluster.nats_bus.NatsBus._message}):
        the fetch it wakes reads the stream until it sees that seq.
        """
        self._saw(self._newest, recipient, seq)

    def _removed_elsewhere(self, recipient, size, sender=None, rseq=0):
        # The oldest stored_at is kept while messages remain (it may be older
        # than the truth until this node's next start or own removal reads it).
        if sender is not None:
            self._saw(self._newest_receipt, sender, rseq)
            self._last_receipt = max(self._last_receipt, rseq)
        depth = self._depths.get(recipient, Depth())
        messages = depth.messages - 1
        self._apply({recipient: Depth(messages, depth.bytes - size, depth.oldest if messages else None)})
        if messages <= 0:
            self._newest.pop(recipient, None)  # nothing left to wait for

    def _uncount(self, removed):
        """
        Of the messages C{removed} here, those whose removal counts in the
        depths: not another writer's message that the watch has not brought
        yet (known from the node bus's notice, L{Recent.ahead}, and
        acknowledged before the watch's copy), since its arrival was not
        counted either -- counting it out now showed the depth at -1 until
        the watch's copy came (or for good, when the removal's rollup
        deleted it before the watch read it). Its copy is then skipped
        (L{_seen}). On the NATS loop.
        """
        counted = []
        for held in removed:
            if held.headers.get(WRITER) != self.writer and (held.seq > self._counted_upto or held.seq in self._skipped):
                self._uncounted.add(held.seq)
            elif self._maybe and held.headers.get(WRITER) == self.writer and self._maybe.removed(held):
                pass  # this store's write that failed unanswered, never counted in (mailbox_alone.MaybeStored)
            else:
                counted.append(held)
        return counted

    @staticmethod
    def _saw(newest, key, seq):
        if seq > newest.get(key, 0):
            newest[key] = seq

    def watch(self, callback):
        self.watchers.add(callback)

    async def _load(self):
        # The whole stream, in order: the messages held, the tombstones
        # carrying receipts (where each sender's receipt reads start) and
        # the senders' consumed markers (layout 2, mailbox_layout); its
        # last seq is where the watch of other writers starts (L{_follow}).
        converted = await convert_receipts(self.jet, self.jet.nc)
        if converted:
            self.jet.thread.to_reactor(_late_receipts, converted)
        # The stream's last seq before the read: what lies at or below it and
        # is not read was deleted (a seq nobody's write needs accounting for).
        info = await self.jet.js.stream_info(self.stream)
        self._loaded_upto = max(self._loaded_upto, info.state.last_seq)
        messages, markers, firsts = [], {}, {}
        for held in await D.direct_all(self.jet.nc, self.stream, self._subject(">")):
            self._loaded_upto = max(self._loaded_upto, held.seq)
            parts = held.subject.split(".")
            if parts[1] == "rdone":
                markers[parts[2]] = parse_marker(held)
            elif parts[1] != "mbox":
                continue
            elif is_message(held):
                messages.append(held)
            elif is_receipt(held):
                firsts.setdefault(parts[3], []).append(held.seq)
        await self._unloaded({held.seq for held in messages})
        self._consumed.update(markers)
        for sender, seqs in firsts.items():
            upto = markers.get(sender, (0,))[0]
            unconsumed = [seq for seq in seqs if seq > upto]
            if unconsumed:
                self._receipt_written(sender, unconsumed[0])
        depths, backlogs = {}, {}
        for held in messages:
            recipient = recipient_of(held)
            depth = depths.get(recipient) or Depth(0, 0, float(held.headers[D.STORED]))
            depths[recipient] = Depth(depth.messages + 1, depth.bytes + len(held.data or b""), depth.oldest)
            backlog = backlogs.setdefault(recipient, [])
            if len(backlog) < mailbox_ahead.READ_AHEAD and depth.bytes < mailbox_ahead.READ_AHEAD_BYTES:
                backlog.append(held)
        # What was read to count the depths is each recipient's backlog, in
        # order and complete from the stream's start: kept as read ahead
        # (within the same bounds), so that the first fetch of a drain after
        # the start is answered from memory rather than read again before
        # its first delivery (docs/scaling.md, "Restart drain").
        for recipient, backlog in backlogs.items():
            self._ahead.keep(recipient, 0, backlog)
        await self._load_overrides()  # the per-peer overrides (mailbox_limits)
        return depths
