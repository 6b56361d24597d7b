"""
What L{cairn.cluster.mailbox.JetStreamMailboxStore} learns from its
stream rather than from its own calls: the start-up load (depths and
per-peer limits) and the watch of the stream from just after it (what
other writers store and remove, and every message's payload for
L{cairn.cluster.mailbox_recent.Recent}). A mixin, so that each module
stays small.
"""

from cairn.cluster import direct as D
from cairn.cluster.common import KIND, SIZE, WRITER, is_message, kv_entries, recipient_of
from cairn.mailbox.interfaces import Depth, PeerLimits


class Following:
    """The load and the watch of the C{mbox} stream."""

    async def _follow(self):
        """
        Watch the stream (from just after what the load read) for what
        other writers do: the messages they store, and the receipts they
        write -- every removal (acknowledgement, expiry, eviction) writes
        exactly one receipt per message, naming its recipient and size, so
        the depth figures follow removals made elsewhere too. Every item,
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
            if headers.get(WRITER) == self.writer or headers.get(KIND) is not None:
                return  # this store's own writes (counted when made); tombstones
            if parts[1] == "mbox":
                stored_at = float(headers.get(D.STORED) or 0)
                self.jet.thread.to_reactor(self._written_elsewhere, parts[2], len(msg.data or b""), stored_at, seq)
            elif parts[1] == "rcpt" and D.RECIPIENT in headers:
                size = int(headers.get(SIZE) or 0)  # receipts of older nodes have none: bytes stay counted
                self.jet.thread.to_reactor(self._removed_elsewhere, headers[D.RECIPIENT], size, parts[2], seq)

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
        # The whole stream, in order: the messages held, and the receipts,
        # which name the seq of the message they are about (a removal made
        # while this scan ran may show both); its last seq is where the
        # watch of other writers starts (L{_follow}).
        messages, receipted = [], set()
        for held in await D.direct_all(self.jet.nc, self.stream, self._subject(">")):
            self._loaded_upto = max(self._loaded_upto, held.seq)
            kind = held.subject.split(".")[1]
            if kind == "rcpt":
                receipted.add(int(held.subject.split(".")[3]))
            elif is_message(held):
                messages.append(held)
        depths = {}
        for held in messages:
            if held.seq in receipted:
                continue
            recipient = recipient_of(held)
            depth = depths.get(recipient) or Depth(0, 0, float(held.headers[D.STORED]))
            depths[recipient] = Depth(depth.messages + 1, depth.bytes + len(held.data or b""), depth.oldest)
        kv = self.jet.kv["limits"]
        limits = {}
        for key, entry in await kv_entries(kv):
            count, size = entry.value.decode().split(",")
            limits[key] = PeerLimits(int(count) if count else None, int(size) if size else None)
        return depths, limits
