"""
The receipt drops of L{cairn.cluster.mailbox.JetStreamMailboxStore}: a
sender acknowledges each ForwardReceipt as it comes, and its drops are
gathered for a moment and removed together (usually one read and one
purge of a prefix of its receipts). A mixin, so that each module stays
small.
"""

import asyncio

from twisted.logger import Logger

from cairn.cluster import direct as D
from cairn.cluster.common import one_line
from cairn.cluster.mailbox_removal import DELETES_AT_ONCE

log = Logger()

#: Seconds a sender's receipt drops wait to be removed together, and how
#: many of them go at once without waiting (L{Dropping.drop_receipts}).
DROP_AFTER, DROP_NOW = 0.25, 1024


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
        js, prefix, top = self.jet.js_writes, self._subject("rcpt", sender, ""), max(rseqs)
        # One read of the sender's receipts up to the highest dropped: when
        # it drops them all (the usual case, receipts are handed out in
        # order), one purge below top + 1 removes them -- two requests, not
        # a read and a delete per receipt. Later receipts have higher
        # stream seqs, so the purge cannot reach one written since the read.
        held = await D.direct_all(self.jet.nc, self.stream, prefix + ">", upto=top)
        present = {h.seq for h in held}
        if present and present <= set(rseqs):
            await js.purge_stream(self.stream, subject=prefix + ">", seq=top + 1)
            return
        # Not a prefix: a delete request each, a few at a time (the API
        # queue is shared with every other node's requests).
        doomed = sorted(present & set(rseqs))
        for i in range(0, len(doomed), DELETES_AT_ONCE):
            await asyncio.gather(*(D.delete(js, self.stream, rseq) for rseq in doomed[i : i + DELETES_AT_ONCE]))


def _drop_failed(why):
    log.warn("mailbox: dropping receipts failed ({why}); retrying", why=why)
