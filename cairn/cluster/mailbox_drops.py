"""
The receipt drops of L{cairn.cluster.mailbox.JetStreamMailboxStore}: a
sender acknowledges each ForwardReceipt as it comes, and its drops are
gathered for a moment and recorded together in the sender's consumed
marker (layout 2, L{cairn.cluster.mailbox_layout}: the receipts are
tombstones, which stay as the dedup record until the message would have
expired): usually one read of the receipts dropped and one write of the
marker for many, off the drain's path. A mixin, so that each module stays
small.
"""

import asyncio

from twisted.logger import Logger

from cairn.cluster import direct as D
from cairn.cluster.common import PAGE, WRITER, one_line
from cairn.cluster.mailbox_layout import (
    UPTO,
    is_receipt,
    marker_body,
    marker_subject,
    parse_marker,
    receipt_subject,
)

log = Logger()

#: Seconds a sender's receipt drops wait to be recorded together, and how
#: many of them go at once without waiting (L{Dropping.drop_receipts}).
DROP_AFTER, DROP_NOW = 0.25, 1024
#: Attempts at writing a sender's consumed marker that another writer changed meanwhile.
MARKER_ATTEMPTS = 10


class _Drops:
    """
    The receipts of one sender waiting to be dropped (C{pending}), those
    being dropped (C{dropping}), the timer of the next drop, and the lock
    of the one drop at a time.
    """

    def __init__(self):
        self.pending = set()
        self.dropping = set()
        self.timer = None
        self.lock = asyncio.Lock()

    def __contains__(self, rseq):
        return rseq in self.pending or rseq in self.dropping


class Dropping:
    """What drops receipts from the C{mbox} stream."""

    def drop_receipts(self, sender, rseqs):
        rseqs = list(rseqs)

        def dropped(result):
            if rseqs and max(rseqs) >= self._newest_receipt.get(sender, 0):
                self._newest_receipt.pop(sender, None)  # none newer to wait for
            return result

        return self._run(self._drop_receipts, sender, rseqs).addCallback(dropped)

    async def _drop_receipts(self, sender, rseqs):
        # A sender acknowledges each ForwardReceipt as it comes. Its drops
        # are not removed at once but gathered for DROP_AFTER seconds (or
        # DROP_NOW of them) and removed together: usually one prefix, one
        # read and one purge for many, instead of a read and a purge per
        # receipt -- each purge a write of the stream that the next
        # message's publish queued behind (issue 15). Until then the
        # sender's reads skip them (L{_receipts}); a crash meanwhile costs
        # the sender those receipts again, never one it is owed.
        if not rseqs:
            return
        drops = self._drops.get(sender)
        if drops is None:
            drops = self._drops[sender] = _Drops()
        drops.pending.update(rseqs)
        if len(drops.pending) >= DROP_NOW:
            await self._drop_pending(sender, drops)
        elif drops.timer is None:
            drops.timer = asyncio.get_running_loop().call_later(DROP_AFTER, self._drop_later, sender, drops)

    def _drop_later(self, sender, drops):
        drops.timer = None

        async def drop():
            try:
                await self._drop_pending(sender, drops)
            except Exception as e:
                self.jet.thread.to_reactor(_drop_failed, one_line(e))
                if drops.timer is None and self._drops.get(sender) is drops:
                    drops.timer = asyncio.get_running_loop().call_later(DROP_AFTER, self._drop_later, sender, drops)

        asyncio.ensure_future(drop())

    async def _drop_pending(self, sender, drops):
        """Remove what C{drops} holds, one drop at a time per sender (each takes every receipt queued meanwhile)."""
        async with drops.lock:
            batch, drops.pending = drops.pending, set()
            drops.dropping = batch
            try:
                if batch:
                    await self._drop_now(sender, batch)
            except BaseException:
                drops.pending |= batch  # the next drop tries them again
                raise
            finally:
                drops.dropping = set()
                if not drops.pending and drops.timer is None and self._drops.get(sender) is drops:
                    del self._drops[sender]

    async def _drop_all(self):
        """Remove every drop waiting (L{flushed}: a clean stop leaves none to the next start)."""
        for sender, drops in list(self._drops.items()):
            if drops.timer is not None:
                drops.timer.cancel()
                drops.timer = None
            await self._drop_pending(sender, drops)

    async def _drop_now(self, sender, rseqs):
        # One read of the sender's receipts from its marker's C{upto} to the
        # highest dropped: the marker's C{upto} moves over the dropped
        # prefix (the usual case, receipts are handed out in order), the
        # rest are kept in it one by one. Seeing a receipt means the
        # replica answering has applied every write before it, so C{upto}
        # never passes one it did not see.
        rseqs = set(rseqs)

        async def advance(upto, extras):
            dropped = {r for r in extras | rseqs if r > upto}
            if not dropped:
                return None
            # From where its receipt reads start: not through the sender's
            # messages still held before its first receipt.
            top, start = max(dropped), self._receipts_start(sender, 0, upto)
            held = await D.direct_all(self.jet.nc, self.stream, receipt_subject(self.jet, sender), start, PAGE, top)
            for h in held:
                if not is_receipt(h):
                    continue
                if h.seq not in dropped:
                    break
                upto = h.seq
            return upto, frozenset(r for r in dropped if r > upto)

        await self._write_marker(sender, advance)

    async def _consume_all(self, sender):
        """Mark every receipt owed to C{sender} so far consumed (it was unpaired)."""
        drops = self._drops.pop(sender, None)
        if drops is not None and drops.timer is not None:
            drops.timer.cancel()
            drops.timer = None
        info = await self.jet.js_writes.stream_info(self.stream)
        last = info.state.last_seq

        async def everything(upto, extras):
            return (last, frozenset(r for r in extras if r > last)) if last > upto else None

        await self._write_marker(sender, everything)

    async def _marker(self, sender, leader=False):
        """C{(upto, extras, seq)} of C{sender}'s consumed marker (cached: a stale one costs duplicates only)."""
        known = self._consumed.get(sender)
        if known is None or leader:
            subject = marker_subject(self.jet, sender)
            if leader:
                held = await D.leader_last(self.jet.nc, self.jet.js, self.stream, subject)
            else:
                held = await D.direct_last(self.jet.nc, self.stream, subject)
            known = self._consumed[sender] = parse_marker(held)
        return known

    async def _write_marker(self, sender, change):
        """
        Rewrite C{sender}'s consumed marker as C{await change(upto, extras)}
        says (None: unchanged), conditional on it being the last one read:
        a concurrent writer's change is read again and built on.
        """
        leader = False
        for _ in range(MARKER_ATTEMPTS):
            upto, extras, seq = await self._marker(sender, leader)
            changed = await change(upto, extras)
            if changed is None:
                return
            upto, extras = changed
            headers = {UPTO: str(upto), D.EXPECT_LAST: str(seq), WRITER: self.writer}
            if seq:
                headers["Nats-Rollup"] = "sub"
            future = await self.acks.publish(marker_subject(self.jet, sender), marker_body(extras), headers)
            try:
                written = await future
            except Exception as e:
                if not D.is_wrong_last(e):
                    raise
                leader = True  # another writer's: read it from the leader, which has it
                continue
            self.recent.written(written)
            self._consumed[sender] = (upto, extras, written)
            return
        raise RuntimeError("the consumed marker kept changing")

    def _receipt_written(self, sender, rseq):
        """A receipt to C{sender} at C{rseq} exists: its reads start no later than that (on the NATS loop)."""
        first = self._first_receipt.get(sender)
        if first is None or rseq < first:
            self._first_receipt[sender] = rseq

    def _receipts_start(self, sender, after_rseq, upto):
        """
        Where a read of C{sender}'s receipts after C{after_rseq} starts: past
        what its marker says is consumed, and past what lies before the
        first receipt known to it -- every receipt up to what the watch has
        seen is known (the start-up load, the watch, this store's writes),
        so a sender with none skips its held messages (its filter's other
        items) up to there.
        """
        first = self._first_receipt.get(sender, float("inf"))
        return int(max(after_rseq, upto, min(first, self.recent.watched + 1) - 1)) + 1


def _drop_failed(why):
    log.warn("mailbox: dropping receipts failed ({why}); retrying", why=why)
