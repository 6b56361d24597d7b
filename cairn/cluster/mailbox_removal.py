"""
The removals of L{cairn.cluster.mailbox.JetStreamMailboxStore} (see its
module docstring): acknowledgement, expiry and purge, each one write per
message -- its tombstone, carrying the receipt (layout 2,
L{cairn.cluster.mailbox_layout}); receipt drops: L{cairn.cluster.mailbox_drops};
when an acknowledgement's tombstones are written, and what an expiry or a
purge leaves to it: L{cairn.cluster.mailbox_gathered}. A mixin, so that
each module stays small.
"""

import asyncio

from twisted.internet import task

from cairn.cluster import common as C
from cairn.cluster import direct as D
from cairn.cluster.common import DONE, KIND, PAGE, WRITER, float_text, is_message, recipient_of
from cairn.cluster.mailbox_gathered import Gathering
from cairn.cluster.mailbox_handed import HandedOut
from cairn.cluster.mailbox_layout import receipt_headers
from cairn.cluster.mailbox_partly import PartRemovals
from cairn.cluster.mailbox_room import Room, no_room
from cairn.mailbox.interfaces import Depth, Receipt
from cairn.wire.constants import ReceiptStatus

#: Tombstone writes in flight at most (all removals of a store
#: together). A recipient acknowledges deliveries as fast as it reads them;
#: unbounded, their fsync'd writes queue by the thousand on the servers,
#: ahead of the reads that delivery waits for (those timed out at R1), so
#: they are paced by their PubAcks instead, still many in flight.
REMOVAL_WRITES = 256
#: An acknowledgement refused for want of room while the node is full is tried again
#: after the reserve's release and then at this many of its polls (1 s each) at most.
ACK_RETRIES = 30


class Removal(Gathering, PartRemovals, Room):
    """What removes messages and receipts from the C{mbox} stream."""

    def acknowledge(self, recipient, seqs, now, receipt_ttl, upto=0):
        seqs, owed = list(seqs), []  # owed: the receipts of what the attempts that failed removed
        reserve = self.jet.reserve

        def once(_=None):
            d = self._run(self._acknowledge, recipient, seqs, now, receipt_ttl, upto)
            return d.addErrback(self._in_part, owed)

        def again(failure, attempt=0):
            # Refused at JetStream's storage limit (the refusal made the node full:
            # L{cairn.cluster.reserve}): again after the release, then at each poll of the
            # reserve while full, at most ACK_RETRIES times: at R3 the servers' figures of an
            # account's usage agree again only seconds after the release (docs/scaling.md,
            # "Sizing"). Past that, or not full, the delivery's sweep retries it, as before.
            if not reserve.full or attempt > ACK_RETRIES:
                return failure
            wait = reserve.released() if attempt == 0 else task.deferLater(reserve.clock, reserve.poll, lambda: None)
            return wait.addCallback(once).addErrback(again, attempt + 1)

        d = once().addErrback(again).addCallback(self._removed)
        return d.addCallbacks(lambda receipts: owed + receipts, self._owed, errbackArgs=(owed,))

    def _removed(self, result):
        receipts, depths, last = result
        self._last_receipt = max(self._last_receipt, last)
        for receipt in receipts:
            self._saw(self._newest_receipt, receipt.sender, receipt.rseq)
        changed = {}
        for recipient, (count, size, oldest) in depths.items():
            depth = self._depths.get(recipient, Depth())
            if oldest is None and depth.messages > count:
                oldest = depth.oldest  # one stored meanwhile: kept (it may be older than the truth)
            changed[recipient] = Depth(depth.messages - count, depth.bytes - size, oldest)
            if changed[recipient].messages <= 0:
                self._newest.pop(recipient, None)  # nothing left to wait for
        self._apply(changed)
        return receipts

    async def _acknowledge(self, recipient, seqs, now, ttl, upto):
        nc, prefix = self.jet.nc, self._subject("mbox", recipient, "")
        fetched = self._fetched.get(recipient)
        if fetched is None:
            fetched = self._fetched[recipient] = HandedOut()
        found = []
        # Acknowledgements in flight for this recipient: the range they took
        # or read is not read again here; they are waited for (below). Each
        # ends after the one started before it, so the last one started
        # stands for them all (a wait on each was a walk of those in flight).
        earlier = {fetched.last} if fetched.last is not None and not fetched.last.done() else set()
        loop = asyncio.get_running_loop()
        mine, ended = loop.create_future(), loop.create_future()
        fetched.inflight.add(mine)
        fetched.last = ended
        # Every message of the recipient up to here is removed: a cumulative
        # acknowledgement reads only above it. (The recipient's subjects keep
        # a tombstone per earlier message, in seq order among its messages: a
        # read from the stream's start went through all of them, one request
        # per one or two, each time -- hundreds per acknowledgement after a
        # few hundred messages, which the next delivery's read queued behind.)
        floor = self._acked_upto.get(recipient, 0)
        known = []
        try:
            if upto:
                # What this node handed out is known, taken from the front of
                # what is left (HandedOut); read only what lies before it
                # (handed out by an earlier process, before a restart) and
                # above what the calls before this one took or read.
                known = fetched.take(upto)
                start = max(floor, fetched.covered)
                fetched.covered = max(fetched.covered, upto)
                below = fetched.below(known[0]) if known else upto
                # With known ones, what lies below the first is nearly always
                # nothing or a few tombstones: small pages (each item read is
                # parsed, payload and all).
                page = 4 if known else PAGE
                held = []
                if below > start:
                    held = await D.direct_all(nc, self.stream, prefix + ">", start=start + 1, page=page, upto=below)
                found = [h for h in held if is_message(h)] + [fetched[seq] for seq in known if seq in fetched]
            for seq in sorted(set(s for s in seqs if s > upto)):
                held = fetched.get(seq) or await D.direct_seq(nc, self.stream, seq)
                if held is not None and held.subject.startswith(prefix) and is_message(held):
                    found.append(held)
        except BaseException:
            self._not_acknowledged(recipient, fetched, known, mine, ended)
            raise
        # A recipient acknowledges each delivery as it comes, cumulatively:
        # the calls in flight overlap. What an earlier call is writing is
        # left to it (this one waits for it), so that each message gets one
        # tombstone (with its receipt) written, not one per call covering it.
        # (An earlier call that fails is retried by the service.)
        acking = self._acking.setdefault(recipient, {})
        earlier |= {acking[h.seq] for h in found if h.seq in acking}
        found = [h for h in found if h.seq not in acking]
        for held in found:
            acking[held.seq] = mine
        ok = False
        try:
            if found:
                await self._gathered()
            # One write per message: its tombstone, carrying the receipt
            # (layout 2), a rollup conditional on the message being its
            # subject's last -- so two concurrent removals owe one receipt.
            receipts, last, counted = await self._owe(found, ReceiptStatus.DELIVERED, now, ttl)
            for held in found:
                fetched.pop(held.seq, None)
                self.recent.remove(recipient, held.seq)
            if not fetched and fetched.inflight == {mine} and self._fetched.get(recipient) is fetched:
                self._fetched.pop(recipient, None)
            ok = True
        finally:
            for held in found:
                if acking.get(held.seq) is mine:
                    del acking[held.seq]
            if not acking and self._acking.get(recipient) is acking:
                del self._acking[recipient]
            if ok:
                fetched.inflight.discard(mine)
                mine.set_result(True)
            else:
                self._not_acknowledged(recipient, fetched, known, mine, ended)
        # This call removed (or found removed) everything up to C{upto} that
        # the calls before it had not taken: once each of those succeeded too,
        # everything up to there is removed, and later reads start above it.
        # (Each ends after the one before it, telling whether all did: so the
        # floor moves during a drain too, where nearly every acknowledgement
        # has an earlier one in flight.)
        complete = True
        try:
            if earlier:
                await asyncio.wait(earlier)
                complete = all(future.result() for future in earlier)
            if complete and upto > floor:
                self._acked_upto[recipient] = max(upto, self._acked_upto.get(recipient, 0))
        finally:
            ended.set_result(complete)
        return receipts, await self._depth_changes(self._uncount(counted)), last

    def _not_acknowledged(self, recipient, fetched, known, mine, ended):
        """
        An acknowledgement failed (the service retries it): what it took is
        put back, and the next reads again above what is known removed.
        """
        fetched.put_back(known)
        fetched.covered = self._acked_upto.get(recipient, 0)
        fetched.inflight.discard(mine)
        for future in (mine, ended):
            if not future.done():
                future.set_result(False)

    async def _write(self, subject, payload, headers):
        """Publish one tombstone once fewer than L{REMOVAL_WRITES} are in flight; its PubAck future."""
        if self._removal_writes is None:
            self._removal_writes = asyncio.Semaphore(REMOVAL_WRITES)
        slots = self._removal_writes
        await slots.acquire()
        try:
            future = await self.acks.publish(subject, payload, headers=headers)
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(lambda _: slots.release())
        return future

    async def _owe(self, found, status, now, ttl, skip_sender=None):
        """
        Remove each message of C{found} by its tombstone, which carries the
        receipt owed to its sender (none to C{skip_sender}); the new
        L{Receipt}s, the last seq, and the messages this call is the first
        to remove (those a concurrent call removed are counted there).
        However it ends, each write is answered or ended (L{MaybeRemoved.ended}).
        """
        try:
            buried = await self._send_removals(found, status, now, ttl, skip_sender)
            return await self._await_removals(buried, status, now)
        finally:
            self._maybe_removed.ended((held.seq for held in found), self._unanswered_removal)

    async def _send_removals(self, found, status, now, ttl, skip_sender=None):
        """
        Publish the tombstone replacing each message of C{found}, with the
        receipt of C{status} owed to its sender (layout 2: one write per
        removal); C{[(held, owes a receipt, PubAck future)]}.

        The tombstone keeps the id known until the message would have
        expired, and the receipt until C{now + ttl}: it stays until the
        later of the two (the expiry sweep removes it then).
        """
        futures = []
        for held in found:
            sender = held.subject.split(".")[3]
            if sender == skip_sender:
                headers = {KIND: DONE, D.EXPIRES: held.headers[D.EXPIRES], C.SIZE: str(len(held.data or b""))}
            else:
                expires = float_text(max(float(held.headers[D.EXPIRES]), now + ttl))
                headers = receipt_headers(status, now, expires, len(held.data or b""))
            headers.update({"Nats-Rollup": "sub", D.EXPECT_LAST: str(held.seq), WRITER: self.writer})
            headers[C.MESSAGE_WRITER] = held.headers.get(WRITER, "")
            self._maybe_removed.begun(held.seq, headers)  # (mailbox_partly.MaybeRemoved)
            futures.append((held, sender != skip_sender, headers, await self._write(held.subject, b"", headers)))
        return futures

    async def _await_removals(self, futures, status, now):
        """
        The L{Receipt}s written, the last seq, and the messages removed by
        C{futures} (L{_send_removals}); a removal refused because the
        message is no longer its subject's last was made by a concurrent
        call, which owes its receipt; those refused for want of room with
        the reserve released are buried (L{cairn.cluster.mailbox_room}).
        Every write is awaited before the first failure is raised.
        """
        receipts, last, counted, failure, refused = [], 0, [], None, []
        removed = []  # (held, receipt owed, tombstone seq or None while owed)
        for held, owed, headers, future in futures:
            try:
                removed.append((held, owed, await future))
                self._maybe_removed.answered(held.seq)
            except Exception as e:
                if (rseq := self._maybe_removed.answered(held.seq, headers, e)) is not None:
                    removed.append((held, owed, rseq))  # unanswered, but stored: the watch read it
                elif no_room(e):
                    refused.append((held, owed, headers, e))
                elif not D.is_wrong_last(e):
                    failure = failure or e
        buried = await self._bury([r[:3] for r in refused]) if refused and failure is None else None
        if refused:
            removed, failure = removed + (buried or []), failure or (None if buried is not None else refused[0][3])
        for held, owed, rseq in removed:
            counted.append(held)
            if rseq is None:
                continue  # buried, its tombstone owed: its receipt comes with it
            self.recent.written(rseq)  # removed here (by the caller): the watch's copy adds nothing
            if owed:
                _, _, recipient, sender, message_id = held.subject.split(".")
                last = max(last, rseq)
                self._receipt_written(sender, rseq)
                receipts.append(Receipt(rseq, sender, recipient, bytes.fromhex(message_id), int(status), now))
        if failure is not None:
            if counted:  # what was removed counts out all the same (mailbox_partly)
                raise await self._unfinished(failure, receipts, last, counted)
            raise failure
        return receipts, last, counted

    def expire(self, now, limit, receipt_ttl):
        d = self._run(self._expire, now, limit, receipt_ttl)

        def expired(result):
            receipts, more, depths, last = result
            self._removed((receipts, depths, last))
            return receipts, more

        return d.addCallbacks(expired, self._in_part)

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
        due = self._expiry_due(now)  # what other nodes acknowledge meanwhile: DELIVERED
        while scanned < 3 * limit:
            held, _ = await D.direct_batch(self.jet.nc, self.stream, start, PAGE, self._subject(">"))
            for item in held:
                scanned += 1
                if item.subject.split(".")[1] == "rdone":
                    continue  # a sender's consumed marker: kept
                if float(item.headers.get(D.EXPIRES, "inf")) > due:
                    scanned = 3 * limit
                    break
                if item.subject.split(".")[1] == "mbox" and is_message(item):
                    if len(messages) < limit:
                        messages.append(item)
                elif len(gone) < limit:
                    gone.append(item)  # a tombstone (with its receipt) past its time
            if len(held) < PAGE:
                break
            start = held[-1].seq + 1
        more = max(len(messages), len(gone)) >= limit
        # What a recipient acknowledged is DELIVERED, not EXPIRED: it is
        # left to the acknowledgements (L{_left_to_acknowledgements}).
        messages = await self._left_to_acknowledgements(messages)
        for message in messages:
            self._fetched.get(recipient_of(message), {}).pop(message.seq, None)
            self._ahead.pop(recipient_of(message), None)
        # Each expired message is replaced by its tombstone carrying the
        # EXPIRED receipt (one write); what is past its time goes.
        receipts, last, counted = await self._owe(messages, ReceiptStatus.EXPIRED, now, ttl)
        for message in messages:
            self.recent.remove(recipient_of(message), message.seq)
        deletions = D.delete_all(self.jet.js_writes, self.stream, [item.seq for item in gone])
        await self._after_removals(deletions, receipts, last, counted)
        return receipts, more, await self._depth_changes(self._uncount(counted)), last

    def purge(self, peer_id, now, receipt_ttl):
        # What other nodes acknowledged of it is DELIVERED (L{_other_nodes_acknowledged}).
        d = self._other_nodes_acknowledged()
        d.addCallback(lambda _: self._run(self._purge, peer_id, now, receipt_ttl))

        def purged(result):
            self.limits.pop(peer_id, None)
            return self._removed(result)

        return d.addCallbacks(purged, self._in_part)

    async def _purge(self, peer_id, now, ttl):
        nc, subject = self.jet.nc, self._subject("mbox", peer_id, ">")
        held = [h for h in await D.direct_all(nc, self.stream, subject) if is_message(h)]
        # What it acknowledged is DELIVERED, not EVICTED (L{_left_to_acknowledgements}).
        held = await self._left_to_acknowledgements(held)
        self._fetched.pop(peer_id, None)
        self._ahead.pop(peer_id, None)
        self._acked_upto.pop(peer_id, None)
        # Its messages are replaced by tombstones carrying the EVICTED
        # receipts (what it sent itself: no receipt), and every receipt
        # owed to it is marked consumed.
        receipts, last, counted = await self._owe(held, ReceiptStatus.EVICTED, now, ttl, skip_sender=peer_id)
        self.recent.forget(peer_id, purged=True)
        await self._after_removals(self._consume_all(peer_id), receipts, last, counted)
        await self._after_removals(self._forget_override(peer_id), receipts, last, counted)  # (mailbox_limits)
        return receipts, await self._depth_changes(self._uncount(counted)), last
