"""
What L{cairn.cluster.mailbox.JetStreamMailboxStore} learns from its
stream rather than from its own calls: the start-up load (depths and
per-peer limits) and the watch of the stream from just after it (what
other writers store and remove, and every message's payload for
L{cairn.cluster.mailbox_recent.Recent}). A mixin, so that each module
stays small.
"""

from twisted.logger import Logger

from cairn.cluster import direct as D
from cairn.cluster import mailbox_ahead
from cairn.cluster.common import KIND, SIZE, WRITER, is_message, kv_entries, recipient_of
from cairn.cluster.mailbox_layout import convert_receipts, is_receipt, parse_marker
from cairn.mailbox.interfaces import Depth, PeerLimits

log = Logger()


def _late_receipts(count):
    log.warn(
        "mailbox: {count} layout-1 receipts found after the upgrade to layout 2 (a node of an older version"
        " still running?): moved to layout 2; stop older nodes before starting this version",
        count=count,
    )


class Following:
    """The load and the watch of the C{mbox} stream."""

    async def _follow(self):
        """
        Watch the stream (from just after what the load read) for what
        other writers do: the messages they store, and the receipts they
        write -- every removal (acknowledgement, expiry, eviction) writes
        exactly one tombstone per message, carrying the receipt and the
        message's size (layout 2), so the depth figures follow removals
        made elsewhere too. Every item,
        this store's own included, also goes to L{Recent} (C{self.recent}),
        payload and all, before the reactor hears of it.
        """
        from nats.js.api import ConsumerConfig, DeliverPolicy

        recent = self.recent

        async def seen(msg):
            headers = msg.headers or {}
            parts, seq = msg.subject.split("."), D.stream_seq(msg)
            if len(parts) < 4:
                return
            recent.seen(D.Held(msg.subject, seq, headers, msg.data or b""), parts[2], parts[1])
            if headers.get(KIND) is not None:
                # A tombstone; with a status, it carries a receipt (layout 2):
                # known to the sender's reads at once, this store's own too
                # (its PubAck may come after the watch).
                if parts[1] == "mbox" and len(parts) == 5 and headers.get(D.STATUS) is not None:
                    self._receipt_written(parts[3], seq)
                    if headers.get(WRITER) != self.writer:
                        size = int(headers.get(SIZE) or 0)
                        self.jet.thread.to_reactor(self._removed_elsewhere, parts[2], size, parts[3], seq)
                return
            if headers.get(WRITER) == self.writer:
                return  # this store's own writes (counted when made)
            if parts[1] == "mbox":
                stored_at = float(headers.get(D.STORED) or 0)
                self.jet.thread.to_reactor(self._written_elsewhere, parts[2], len(msg.data or b""), stored_at, seq)

        # From just after what the load read: nothing written meanwhile is
        # missed, nothing it counted is counted again.
        recent.begin(self._loaded_upto)
        config = ConsumerConfig(
            filter_subjects=[self._subject("mbox", ">"), self._subject("rcpt", ">")],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._loaded_upto + 1,
        )
        await self.jet.js.subscribe(self._subject("mbox", ">"), cb=seen, ordered_consumer=True, config=config)

    def _written_elsewhere(self, recipient, size, stored_at, seq=0):
        # Reads from now on must see it (the watchers below fetch at once).
        self._saw(self._newest, recipient, seq)
        self._last_stored = max(self._last_stored, seq)
        depth = self._depths.get(recipient, Depth())
        oldest = depth.oldest if depth.messages else stored_at
        self._apply({recipient: Depth(depth.messages + 1, depth.bytes + size, oldest)})
        self.watchers(recipient)

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
        kv = self.jet.kv["limits"]
        limits = {}
        for key, entry in await kv_entries(kv):
            count, size = entry.value.decode().split(",")
            limits[key] = PeerLimits(int(count) if count else None, int(size) if size else None)
        return depths, limits
