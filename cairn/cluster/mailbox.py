"""
L{JetStreamMailboxStore}: the mailbox on NATS JetStream.

The stream C{<prefix>_mbox} holds (layout 2, L{cairn.cluster.mailbox_layout}):

  - C{<p>.mbox.<recipient>.<sender>.<message id hex>}: one subject per
    message. It holds the message until it is removed (acknowledged,
    expired, evicted), then a small tombstone (C{Cairn-Kind: done}) that
    keeps the id known until the message would have expired and carries
    the receipt owed to the sender. The stream sequence is the server
    sequence (C{Stored.seq}): a recipient's order is stream order. The
    tombstone's seq is the receipt's C{Receipt.rseq}; a sender's receipts
    are read with the filter C{<p>.mbox.*.<sender>.*}.
  - C{<p>.rdone.<sender>}: the receipts the sender has consumed (its
    marker, L{cairn.cluster.mailbox_drops}).

An enqueue is one publish per message, written only if its subject is
empty (C{Nats-Expected-Last-Subject-Sequence: 0}): a duplicate is refused
by the server, atomically with the store, for the message's whole life
(not only within a dedup window), and no crash can separate the dedup
record from the message -- they are one. The publishes of a call (and of
concurrent calls) are written back to back and their PubAcks awaited
together: the group-commit shape, many in flight on one connection.
STORED is answered only from a PubAck, which with C{sync_interval:
always} means replicated and fsync'd. (Atomic batches, ADR-50, would also
do, but each commits alone: measured 20x slower pipelined.)

An acknowledgement is one write per message: its tombstone, carrying the
receipt, replaces it with a rollup conditional on the message still being
the subject's last (C{Nats-Rollup: sub}): the receipt and the removal are
one, so two concurrent acknowledgements owe one receipt and no crash can
separate them (layout 1 wrote the receipt, then the tombstone: two).

The limits (per-recipient count and bytes, overrides, the global total)
are checked here against the depth cache plus what is in flight; the
cache is loaded from the stream at start and kept current by this
store's writes: exact while this node is the stream's only writer, local
to it otherwise (docs/scaling.md).
"""

import uuid

import attr
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster import direct as D
from cairn.cluster.common import WRITER, StoreCalls, float_text, is_message, kv_forget, one_line
from cairn.cluster.mailbox_ahead import READ_AHEAD, READ_AHEAD_BYTES, ReadAhead
from cairn.cluster.mailbox_alone import Publishing, Skipped
from cairn.cluster.mailbox_drops import Dropping
from cairn.cluster.mailbox_follow import Following
from cairn.cluster.mailbox_layout import is_receipt, receipt_subject
from cairn.cluster.mailbox_recent import Recent
from cairn.cluster.mailbox_removal import HandedOut, Removal
from cairn.cluster.watch import Watchers
from cairn.mailbox.interfaces import Depth, IMailboxStore, Receipt, Stored, StoreFull
from cairn.mailbox.store import MailboxFigures
from cairn.mailbox.transactions import admission
from cairn.wire.constants import ForwardStatus

log = Logger()


@implementer(IMailboxStore)
class JetStreamMailboxStore(StoreCalls, Following, Removal, Dropping, MailboxFigures):
    """The mailbox in a L{cairn.cluster.connection.JetStream}'s C{mbox} stream and C{limits} bucket."""

    def __init__(self, jetstream):
        super().__init__()
        self.jet = jetstream
        self.stream = jetstream.stream("mbox")
        self._reserved = {}  # recipient -> [messages, bytes] admitted, not yet acked
        self._reserved_total = 0
        self._pending = set()
        # The highest stream seqs of the messages and of the receipts this
        # store was acknowledged: a read of either must see them. Kept apart
        # so that a fetch of messages does not wait for a replica to apply
        # the receipts (and tombstones) a drain is writing meanwhile.
        self._last_stored = self._last_receipt = 0
        # The highest seq known stored of each recipient's messages, and of
        # each sender's receipts (this store's writes, and the others' its
        # watch reported): a read of them that ends below it was answered
        # by a replica that has not applied it yet and carries on from the
        # leader (L{_read}), so that the read after a wake-up sees the write.
        self._newest, self._newest_receipt = {}, {}
        self.watchers = Watchers()
        self._sweeping = None
        self._fetched = {}  # recipient -> {seq: Held without payload} handed out, not yet acknowledged
        #: What fetches read ahead, per recipient, on the NATS loop (mailbox_ahead).
        self._ahead = ReadAhead()
        #: What the watch has seen, on the NATS loop: most fetches are answered from it (mailbox_recent).
        self.recent = Recent()
        self._loaded_upto = 0  # the last stream seq the start-up scan read
        self._removal_writes = None  # an asyncio.Semaphore, made on the NATS loop
        self._drops = {}  # sender -> receipts being dropped (mailbox_drops._Drops)
        #: On the NATS loop: sender -> its consumed marker (upto, extras, seq), as last read or written,
        #: and sender -> the lowest seq of a receipt to it known (mailbox_drops, mailbox_layout).
        self._consumed, self._first_receipt = {}, {}
        self._acking = {}  # recipient -> {seq: future of the acknowledgement writing its receipt}
        #: recipient -> a seq up to which all its messages are removed (a cumulative acknowledgement's),
        #: used on the NATS loop: the acknowledgements' reads start above it (mailbox_removal).
        self._acked_upto = {}
        #: On the NATS loop: the last stream seq whose message, if another writer's, is counted in the
        #: depths (the watch's position, L{Following._seen}), and the seqs of other writers' messages
        #: removed here above it -- neither counted nor uncounted, so a depth never goes below zero.
        self._counted_upto, self._uncounted = 0, set()
        self._skipped = Skipped()  # seqs the watch passed over (mailbox_alone)
        #: Marks this store's writes, so that its watch reports only the others'.
        self.writer = uuid.uuid4().hex
        #: A coroutine function called on the NATS loop with C{(recipient, Held)} for each message as soon as
        #: its PubAck is in (the node bus tells the recipient's other nodes: L{cairn.cluster.nats_bus}).
        self.on_stored = None
        #: Whether the watch runs (or is starting): another writer may exist (L{follow_needed}).
        self.following = False
        #: Until then, on the NATS loop: the stream's seqs accounted for by this store's own writes (mailbox_alone).
        self._own = None
        self._watching = None  # the task starting the watch
        #: Where every write to the stream goes (L{_publish}).
        self.acks = Publishing(self)

    # Life cycle

    def start(self):
        def loaded(result):
            depths, self.limits = result
            self._depths, self._total = {}, 0
            self._apply(depths)

        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._load))
        d.addCallback(loaded)
        return d.addCallback(lambda _: self.jet.run(self._begin))

    # Enqueue

    def enqueue(self, items, now, limits):
        items = list(items)
        admitted, refused = [], {}
        for i, item in enumerate(items):
            recipient, size = item.recipient, len(item.payload)
            held = self._depths.get(recipient, Depth())
            extra = self._reserved.get(recipient, (0, 0))
            depth = Depth(held.messages + extra[0], held.bytes + extra[1])
            override = self.limits.get(recipient)
            status = admission(size, depth, self._total + self._reserved_total, limits, override)
            if status is not None:
                refused[i] = status
                continue
            self._reserve(recipient, 1, size)
            admitted.append(i)
        expires_at = now + limits.max_age
        d = self._run(self._enqueue, items, admitted, refused, now, expires_at)

        def done(outcome):
            for i in admitted:
                self._reserve(items[i].recipient, -1, -len(items[i].payload))
            if isinstance(outcome, list):
                changed = {}
                for i, (status, seq) in enumerate(outcome):
                    if status == ForwardStatus.STORED:
                        self._last_stored = max(self._last_stored, seq)
                        item = items[i]
                        self._saw(self._newest, item.recipient, seq)
                        depth = changed.get(item.recipient) or self._depths.get(item.recipient, Depth())
                        oldest = depth.oldest if depth.messages else now
                        changed[item.recipient] = Depth(depth.messages + 1, depth.bytes + len(item.payload), oldest)
                self._apply(changed)
            return outcome

        return d.addBoth(done)

    def _reserve(self, recipient, messages, size):
        count, total = self._reserved.get(recipient, (0, 0))
        count, total = count + messages, total + size
        if count:
            self._reserved[recipient] = (count, total)
        else:
            self._reserved.pop(recipient, None)
        self._reserved_total += size

    async def _enqueue(self, items, admitted, refused, now, expires_at):
        nc = self.jet.nc
        if admitted and not nc.is_connected:
            # Fail at once rather than queue in nats-py's reconnect buffer.
            raise StoreFull("not connected to NATS")
        futures = {}
        for i in admitted:
            futures[i] = await self._publish_message(items[i], now, expires_at, 0)
        results = [None] * len(items)
        failure = None
        for i, future in futures.items():
            try:
                results[i] = (ForwardStatus.STORED, await future)
            except Exception as e:
                if not D.is_wrong_last(e):
                    failure = failure or e
                    continue
                try:
                    results[i] = await self._taken(items[i], now, expires_at)
                except Exception as e:
                    failure = failure or e
            else:
                await self._stored_now(items[i], results[i][1], now, expires_at)
        if failure is not None:
            # Some may be stored: the senders retry and get DUPLICATE for those.
            raise StoreFull(f"JetStream did not store the message ({one_line(failure)})")
        for i, status in refused.items():
            # A known id is a duplicate whatever the limits say.
            held = await D.direct_last(nc, self.stream, self._message_subject(items[i]))
            known = held is not None and (is_message(held) or float(held.headers[D.EXPIRES]) > now)
            results[i] = (ForwardStatus.DUPLICATE, None) if known else (status, None)
        return results

    async def _stored_now(self, item, seq, now, expires_at):
        """C{item} is stored as C{seq}: known here at once (L{Recent.ahead}), and told to C{on_stored}."""
        headers = {D.STORED: float_text(now), D.EXPIRES: float_text(expires_at)}
        held = D.Held(self._message_subject(item), seq, headers, item.payload)
        # Marked as this store's (counted when stored, removed here: L{Following._uncount}).
        self.recent.ahead(attr.evolve(held, headers={**headers, WRITER: self.writer}), item.recipient)
        if self.on_stored is not None:
            try:
                await self.on_stored(item.recipient, held)
            except Exception as e:  # a hint only: the watch and the bus's wake-up still deliver it
                log.debug("mailbox: telling the other nodes failed ({why})", why=one_line(e))

    def _message_subject(self, item):
        return self._subject("mbox", item.recipient, item.sender, item.message_id.hex())

    async def _publish_message(self, item, now, expires_at, after):
        """Publish C{item} if its subject ends at seq C{after} (0: empty); a future of its seq."""
        headers = {
            D.EXPECT_LAST: str(after),
            D.STORED: float_text(now),
            D.EXPIRES: float_text(expires_at),
            WRITER: self.writer,
        }
        if after:
            headers["Nats-Rollup"] = "sub"  # the expired tombstone goes
        return await self.acks.publish(self._message_subject(item), item.payload, headers=headers)

    async def _taken(self, item, now, expires_at):
        """The subject of C{item} is not empty: DUPLICATE, unless it holds a tombstone past its time."""
        for _ in range(5):
            held = await D.direct_last(self.jet.nc, self.stream, self._message_subject(item))
            if held is None:
                after = 0  # removed meanwhile
            elif is_message(held) or float(held.headers[D.EXPIRES]) > now:
                return ForwardStatus.DUPLICATE, None
            else:
                after = held.seq
            try:
                return ForwardStatus.STORED, await (await self._publish_message(item, now, expires_at, after))
            except Exception as e:
                if not D.is_wrong_last(e):
                    raise
        return ForwardStatus.DUPLICATE, None  # someone keeps writing it: it is held

    # Reads

    def fetch(self, recipient, after_seq, limit):
        expect = self._newest.get(recipient, 0)
        nc = self.jet.nc
        if nc is not None and nc.is_connected and self.jet.thread.running:
            # Known from the watch: answered here, without the store call's two thread hops.
            known = self.recent.fetch(recipient, after_seq, limit, expect)
            if known is None:
                known = self._ahead.answer(recipient, after_seq, limit, expect)  # or read ahead (mailbox_ahead)
            if known is not None:
                self.jet.thread.call(self._handed_out, recipient, known)  # before any acknowledgement of them
                return defer.succeed([_stored(h) for h in known])
        return self._run(self._fetch, recipient, after_seq, limit, self._last_stored, expect)

    async def _read(self, start, limit, subject, must_see, wanted=None, batch=None, expect=0, max_bytes=0):
        """
        Up to C{limit} messages on C{subject} from C{start} that C{wanted}
        accepts, paging past the rest; one that finds none though seq
        C{expect} (a write known stored) is beyond what it saw carries on
        from the stream's leader. With C{max_bytes} (a backlog's read: its
        replies taken as a large read, D.direct_batch), a page the server
        cut at that many bytes ends the read: what it returns is all there
        is up to its last message.
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
            if len(page) < batch:
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

    async def _fetch(self, recipient, after_seq, limit, must_see, expect=0):
        # Most fetches (the one after a wake-up, a drain's next) are answered
        # from what the watch has seen, without a read (mailbox_recent).
        if not self.jet.nc.is_connected:
            raise D.NotConnected()  # as a read does: what the watch saw may be all there is
        known = self.recent.fetch(recipient, after_seq, limit, expect)
        held = known if known is not None else await self._read_ahead(recipient, after_seq, limit, must_see, expect)
        self._handed_out(recipient, held)
        return [_stored(h) for h in held]

    def _handed_out(self, recipient, held):
        """
        Remember what was handed out (without payloads) for the
        acknowledgement that follows, so that it need not read the messages
        again. On the NATS loop.
        """
        fetched = self._fetched.get(recipient)
        if fetched is None:
            fetched = self._fetched[recipient] = HandedOut()
        for h in held:
            fetched[h.seq] = D.Held(h.subject, h.seq, h.headers, b"\0" * len(h.data or b""))

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
        # fetch reads what follows.
        held, upto = self._ahead.take(recipient, after_seq, limit)
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

    def flushed(self):
        """Every call in flight ended, and every receipt drop waiting done."""
        d = self.jet.run(self._drop_all) if self.jet.thread.running else defer.succeed(None)
        d.addErrback(lambda f: log.warn("mailbox: dropping receipts failed ({why})", why=one_line(f.value)))
        return d.addCallback(lambda _: super(JetStreamMailboxStore, self).flushed())

    def set_limits(self, peer_id, limits):
        def saved(_):
            if limits.max_messages is None and limits.max_bytes is None:
                self.limits.pop(peer_id, None)
            else:
                self.limits[peer_id] = limits

        return self._run(self._set_limits, peer_id, limits).addCallback(saved)

    async def _set_limits(self, peer_id, limits):
        kv = self.jet.kv["limits"]
        if limits.max_messages is None and limits.max_bytes is None:
            await kv_forget(kv, peer_id)
            return
        value = f"{'' if limits.max_messages is None else limits.max_messages},"
        value += "" if limits.max_bytes is None else str(limits.max_bytes)
        await kv.put(peer_id, value.encode())


def _stored(held):
    _, _, recipient, sender, message_id = held.subject.split(".")
    stored_at, expires_at = float(held.headers[D.STORED]), float(held.headers[D.EXPIRES])
    return Stored(held.seq, recipient, sender, bytes.fromhex(message_id), stored_at, expires_at, held.data or b"")


def _receipt(held):
    """The L{Receipt} a tombstone carries (layout 2): C{rseq} is the tombstone's seq."""
    _, _, recipient, sender, message_id = held.subject.split(".")
    h = held.headers
    return Receipt(held.seq, sender, recipient, bytes.fromhex(message_id), int(h[D.STATUS]), float(h[D.AT]))
