"""
The removals of L{cairn.cluster.mailbox.JetStreamMailboxStore} (see its
module docstring): acknowledgement (receipt, then tombstone), dropped
receipts, expiry and purge. A mixin, so that each module stays small.
"""

import asyncio

from cairn.cluster import direct as D
from cairn.cluster.common import DONE, KIND, PAGE, _f, _is_message, _kv_forget, _recipient
from cairn.mailbox.interfaces import Depth, Receipt
from cairn.wire.constants import ReceiptStatus


class Removal:
    """What removes messages and receipts from the C{mbox} stream."""

    def acknowledge(self, recipient, seqs, now, receipt_ttl, upto=0):
        d = self._run(self._acknowledge, recipient, list(seqs), now, receipt_ttl, upto)
        return d.addCallback(self._removed)

    def _removed(self, result):
        receipts, depths, last = result
        self._last_acked = max(self._last_acked, last)
        changed = {}
        for recipient, (count, size, oldest) in depths.items():
            depth = self._depths.get(recipient, Depth())
            changed[recipient] = Depth(depth.messages - count, depth.bytes - size, oldest)
        self._apply(changed)
        return receipts

    async def _acknowledge(self, recipient, seqs, now, ttl, upto):
        nc, prefix = self.jet.nc, self._subject("mbox", recipient, "")
        fetched = self._fetched.get(recipient, {})
        found = []
        if upto:
            known = sorted(seq for seq in fetched if seq <= upto)
            # What this node handed out is known; read only what lies before it
            # (handed out by an earlier process, before a restart).
            below = (known[0] - 1) if known else upto
            page = 1 if known else 64  # with known ones, the first item read is nearly always known[0]
            held = await D.direct_all(nc, self.stream, prefix + ">", page=page, upto=below) if below > 0 else []
            found = [h for h in held if _is_message(h)] + [fetched[seq] for seq in known]
        for seq in sorted(set(s for s in seqs if s > upto)):
            held = fetched.get(seq) or await D.direct_seq(nc, self.stream, seq)
            if held is not None and held.subject.startswith(prefix) and _is_message(held):
                found.append(held)
        receipts, last, _ = await self._owe(found, ReceiptStatus.DELIVERED, now, ttl)
        counted = await self._bury(found)
        for held in found:
            fetched.pop(held.seq, None)
        if not fetched:
            self._fetched.pop(recipient, None)
        return receipts, await self._depth_changes(counted), last

    async def _bury(self, found):
        """Replace each message of C{found} by its tombstone; those this call replaced (not a concurrent one)."""
        futures = []
        for held in found:
            future = await self.acks.publish(
                held.subject,
                b"",
                headers={
                    "Nats-Rollup": "sub",
                    D.EXPECT_LAST: str(held.seq),
                    KIND: DONE,
                    D.EXPIRES: held.headers[D.EXPIRES],
                },
            )
            futures.append((held, future))
        counted = []
        for held, future in futures:
            try:
                await future
            except Exception as e:
                if D.is_wrong_last(e):
                    continue  # already replaced by a concurrent acknowledgement
                raise
            counted.append(held)
        return counted

    async def _owe(self, found, status, now, ttl, skip_sender=None):
        """
        Write one receipt per message of C{found} (once ever each); the new
        L{Receipt}s, the last seq, and the messages this call is the first
        to remove (those a concurrent call receipted are counted there).
        """
        futures = []
        counted = []
        for held in found:
            _, _, recipient, sender, message_id = held.subject.split(".")
            if sender == skip_sender:
                counted.append(held)
                continue
            future = await self.acks.publish(
                self._subject("rcpt", sender, str(held.seq)),
                b"",
                headers={
                    D.EXPECT_LAST: "0",
                    D.RECIPIENT: recipient,
                    D.ID: message_id,
                    D.STATUS: str(int(status)),
                    D.AT: _f(now),
                    D.EXPIRES: _f(now + ttl),
                },
            )
            futures.append((held, sender, recipient, message_id, future))
        receipts, last = [], 0
        for held, sender, recipient, message_id, future in futures:
            try:
                rseq = await future
            except Exception as e:
                if D.is_wrong_last(e):
                    continue  # receipted by an earlier attempt whose delete did not happen
                raise
            last = max(last, rseq)
            counted.append(held)
            receipts.append(Receipt(rseq, sender, recipient, bytes.fromhex(message_id), int(status), now))
        return receipts, last, counted

    async def _depth_changes(self, removed):
        """{recipient: (messages removed, bytes removed, new oldest stored_at)} for L{_removed}."""
        out = {}
        for held in removed:
            recipient = _recipient(held)
            count, size, _ = out.get(recipient, (0, 0, None))
            out[recipient] = (count + 1, size + len(held.data or b""), None)
        for recipient, (count, size, _) in list(out.items()):
            # Tombstones come after the messages they replaced: the first item is nearly always a message.
            first = await self._read(1, 1, self._subject("mbox", recipient, ">"), 0, _is_message, batch=2)
            out[recipient] = (count, size, float(first[0].headers[D.STORED]) if first else None)
        return out

    def drop_receipts(self, sender, rseqs):
        return self._run(self._drop_receipts, sender, list(rseqs))

    async def _drop_receipts(self, sender, rseqs):
        prefix = self._subject("rcpt", sender, "")

        async def drop(rseq):
            held = await D.direct_seq(self.jet.nc, self.stream, rseq)
            if held is not None and held.subject.startswith(prefix):
                await D.delete(self.jet.js, self.stream, rseq)

        await asyncio.gather(*(drop(rseq) for rseq in rseqs))

    def expire(self, now, limit, receipt_ttl):
        d = self._run(self._expire, now, limit, receipt_ttl)

        def expired(result):
            receipts, more, depths, last = result
            self._removed((receipts, depths, last))
            return receipts, more

        return d.addCallback(expired)

    async def _expire(self, now, limit, ttl):
        if self._sweeping is None:
            self._sweeping = asyncio.Lock()
        async with self._sweeping:  # one sweep at a time: the next scans what the last left
            return await self._expire_now(now, limit, ttl)

    async def _expire_now(self, now, limit, ttl):
        # Everything in the stream was written with the same max_age from
        # the clock of its time, so what is due is (nearly) a prefix: scan
        # from the start until an item is not due yet.
        messages, gone = [], []
        start, scanned = 1, 0
        while scanned < 3 * limit:
            held, _ = await D.direct_batch(self.jet.nc, self.stream, start, PAGE, self._subject(">"))
            for item in held:
                scanned += 1
                if float(item.headers.get(D.EXPIRES, "inf")) > now:
                    scanned = 3 * limit
                    break
                if item.subject.split(".")[1] == "mbox" and _is_message(item):
                    if len(messages) < limit:
                        messages.append(item)
                elif len(gone) < limit:
                    gone.append(item)  # a tombstone past its time, or an old receipt
            if len(held) < PAGE:
                break
            start = held[-1].seq + 1
        for message in messages:
            self._fetched.get(_recipient(message), {}).pop(message.seq, None)
        receipts, last, counted = await self._owe(messages, ReceiptStatus.EXPIRED, now, ttl)
        await asyncio.gather(*(D.delete(self.jet.js, self.stream, item.seq) for item in messages + gone))
        more = max(len(messages), len(gone)) >= limit
        return receipts, more, await self._depth_changes(counted), last

    def purge(self, peer_id, now, receipt_ttl):
        d = self._run(self._purge, peer_id, now, receipt_ttl)

        def purged(result):
            self.limits.pop(peer_id, None)
            return self._removed(result)

        return d.addCallback(purged)

    async def _purge(self, peer_id, now, ttl):
        js, nc, subject = self.jet.js, self.jet.nc, self._subject("mbox", peer_id, ">")
        held = [h for h in await D.direct_all(nc, self.stream, subject) if _is_message(h)]
        self._fetched.pop(peer_id, None)
        receipts, last, counted = await self._owe(held, ReceiptStatus.EVICTED, now, ttl, skip_sender=peer_id)
        await js.purge_stream(self.stream, subject=subject)  # messages and tombstones (their ids)
        await js.purge_stream(self.stream, subject=self._subject("rcpt", peer_id, ">"))
        await _kv_forget(self.jet.kv["limits"], peer_id)
        return receipts, await self._depth_changes(counted), last

