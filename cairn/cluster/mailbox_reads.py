"""
The reads of L{cairn.cluster.mailbox.JetStreamMailboxStore} (see its
module docstring): a recipient's messages (L{Reading.fetch}) and a
sender's receipts (L{Reading.receipts}), answered from what the watch
has seen (L{cairn.cluster.mailbox_recent}) or read ahead
(L{cairn.cluster.mailbox_ahead}) when they can be, else read from the
stream, from its leader when a replica lags behind a write known stored.
A mixin, so that each module stays small.
"""

from twisted.internet import defer

from cairn.cluster import direct as D
from cairn.cluster.common import is_message
from cairn.cluster.mailbox_ahead import READ_AHEAD, READ_AHEAD_BYTES
from cairn.cluster.mailbox_handed import HandedOut
from cairn.cluster.mailbox_layout import is_receipt, receipt_subject
from cairn.mailbox.interfaces import Receipt, Stored


class Reading:
    """What reads messages and receipts from the C{mbox} stream."""

    def fetch(self, recipient, after_seq, limit):
        expect = self._newest.get(recipient, 0)
        nc = self.jet.nc
        # While full, what memory holds may be buried (mailbox_room: deleted, its tombstone owed, which
        # is when the watch would drop it): a node delivered again all 30 messages another node had
        # buried before it died (tests/test_cluster_reserve_killed.py). So the stream answers.
        memory = not self.jet.reserve.full
        if memory and nc is not None and nc.is_connected and self.jet.thread.running:
            # Known from the watch: answered here, without the store call's two thread hops.
            known = self.recent.fetch(recipient, after_seq, limit, expect)
            if known is None:
                known = self._ahead.answer(recipient, after_seq, limit, expect)  # or read ahead (mailbox_ahead)
            if known is not None:
                # Before any acknowledgement of them (the loop runs calls in order).
                self.jet.thread.call(self._handed_out, recipient, after_seq, known)
                return defer.succeed([_stored(h) for h in known])
        return self._run(self._fetch, recipient, after_seq, limit, self._last_stored, expect, memory)

    async def _read(self, start, limit, subject, must_see, wanted=None, batch=None, expect=0, max_bytes=0, upto=0):
        """
        Up to C{limit} messages on C{subject} from C{start} that C{wanted}
        accepts, paging past the rest; one that finds none though seq
        C{expect} (a write known stored) is beyond what it saw carries on
        from the stream's leader. With C{max_bytes} (a backlog's read: its
        replies taken as a large read, D.direct_batch), a page the server
        cut at that many bytes ends the read: what it returns is all there
        is up to its last message. With C{upto}, paging stops once a page
        reaches past seq C{upto} (nothing wanted lies beyond it).
        """
        # Tombstones may be interleaved: a little slack. (What lies before
        # C{start} counts as seen: the caller has it.)
        out, batch, seen = [], batch or max(limit, 16), start - 1
        while len(out) < limit:
            page, _ = await D.direct_batch(
                self.jet.nc, self.stream, start, batch, subject, must_see, max_bytes=max_bytes, large=bool(max_bytes)
            )
            self._others_read(page)
            out.extend(h for h in page if wanted is None or wanted(h))
            seen = max([seen] + [h.seq for h in page])
            if len(page) < batch or (upto and seen >= upto):
                break
            start = page[-1].seq + 1
        # Any replica answers a direct get, and a follower may not have
        # applied the newest writes yet (D.direct_batch). A read that found
        # nothing new though a write is known asks the leader, which has it,
        # for the next one: one request. (One that found some need not: its
        # caller reads again once those are delivered -- under load, lagging
        # reads are common, and the leader's API is shared and slower.)
        start = max(start, seen + 1)
        while not out and seen < expect:
            held = await D.leader_next(self.jet.nc, self.jet.js, self.stream, start, subject)
            if held is None:
                break  # removed meanwhile
            self._others_read([held])
            seen, start = held.seq, held.seq + 1
            if wanted is None or wanted(held):
                out.append(held)
        return out[:limit]

    async def _fetch(self, recipient, after_seq, limit, must_see, expect=0, memory=True):
        # Most fetches (the one after a wake-up, a drain's next) are answered
        # from what the watch has seen, without a read (mailbox_recent).
        if not self.jet.nc.is_connected:
            raise D.NotConnected()  # as a read does: what the watch saw may be all there is
        if not memory:  # full (L{fetch})
            subject = self._subject("mbox", recipient, ">")
            held = await self._read(after_seq + 1, limit, subject, must_see, is_message, expect=expect)
            self._handed_out(recipient, after_seq, held)
            return [_stored(h) for h in held]
        known = self.recent.fetch(recipient, after_seq, limit, expect)
        held = known if known is not None else await self._read_ahead(recipient, after_seq, limit, must_see, expect)
        self._handed_out(recipient, after_seq, held)
        return [_stored(h) for h in held]

    def _handed_out(self, recipient, after_seq, held):
        """
        Remember what was handed out (without payloads), by a fetch after
        C{after_seq}, for the acknowledgement that follows, so that it need
        not read the messages again, nor what lies between them. On the
        NATS loop.
        """
        fetched = self._fetched.get(recipient)
        if fetched is None:
            fetched = self._fetched[recipient] = HandedOut()
        fetched.handed(after_seq, [D.Held(h.subject, h.seq, h.headers, b"\0" * len(h.data or b"")) for h in held])

    async def _read_ahead(self, recipient, after_seq, limit, must_see, expect):
        """Up to C{limit} messages of C{recipient} after C{after_seq}, from what was read ahead, or read."""
        # A recipient being drained fetches a window's worth, then one
        # ForwardDeliver's worth after each acknowledgement, while its
        # removals are written: each read request then waits on the
        # servers behind those fsync'd writes, whatever its size. So a read
        # takes the recipient's backlog in one request (bounded: READ_AHEAD,
        # READ_AHEAD_BYTES), before its first removal when the fetch is a
        # session's first, and the fetches that carry on from it are
        # answered from memory (mailbox_ahead). (What another node removes
        # meanwhile may so be delivered again: dropped by id.) The last of
        # what was read ahead goes out as it is, unless a message is known
        # stored past it: topping it up would read, behind the removals,
        # before it is delivered -- usually to find nothing more; the next
        # fetch reads what follows. What the watch saw may hold the rest
        # (a backlog read at the start, newer messages since): no read then.
        held, upto = self._ahead.take(recipient, after_seq, limit)
        if held and len(held) < limit and upto < expect:
            rest = self.recent.fetch(recipient, upto, limit - len(held), expect)
            if rest is not None:
                return held + rest
        if len(held) < limit and not (held and upto >= expect):
            want = max(limit - len(held), READ_AHEAD)
            subject = self._subject("mbox", recipient, ">")
            held += await self._read(
                upto + 1, want, subject, must_see, is_message, expect=expect, max_bytes=READ_AHEAD_BYTES
            )
        held, rest = held[:limit], held[limit:]
        if rest:
            self._ahead.keep(recipient, held[-1].seq, rest)
        return held

    def receipts(self, sender, after_rseq, limit):
        expect = self._newest_receipt.get(sender, 0)
        return self._run(self._receipts, sender, after_rseq, limit, self._last_receipt, expect)

    async def _receipts(self, sender, after_rseq, limit, must_see, expect=0):
        # Layout 2: the receipts are the tombstones among the sender's
        # subjects, less what its consumed marker and the drops waiting say
        # it has (mailbox_layout, mailbox_drops).
        upto, extras, _ = await self._marker(sender)
        drops = self._drops.get(sender)

        def wanted(h):
            return is_receipt(h) and h.seq not in extras and (drops is None or h.seq not in drops)

        start = self._receipts_start(sender, after_rseq, upto)
        held = await self._read(start, limit, receipt_subject(self.jet, sender), must_see, wanted, expect=expect)
        return [_receipt(h) for h in held]


def _stored(held):
    _, _, recipient, sender, message_id = held.subject.split(".")
    stored_at, expires_at = float(held.headers[D.STORED]), float(held.headers[D.EXPIRES])
    return Stored(held.seq, recipient, sender, bytes.fromhex(message_id), stored_at, expires_at, held.data or b"")


def _receipt(held):
    """The L{Receipt} a tombstone carries (layout 2): C{rseq} is the tombstone's seq."""
    _, _, recipient, sender, message_id = held.subject.split(".")
    h = held.headers
    return Receipt(held.seq, sender, recipient, bytes.fromhex(message_id), int(h[D.STATUS]), float(h[D.AT]))
