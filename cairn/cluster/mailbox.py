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
to it otherwise (docs/scaling.md). The overrides are the C{limits}
bucket's, followed by a watch (L{cairn.cluster.mailbox_limits}).
"""

import asyncio
import uuid

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cairn.cluster import direct as D
from cairn.cluster.common import MESSAGE_WRITER, SIZE, WRITER, StoreCalls, float_text, is_message, one_line
from cairn.cluster.mailbox_ahead import ReadAhead
from cairn.cluster.mailbox_alone import MaybeStored, Mine, Publishing, Skipped, unknown_outcome
from cairn.cluster.mailbox_drops import Dropping
from cairn.cluster.mailbox_follow import Following
from cairn.cluster.mailbox_limits import Overrides
from cairn.cluster.mailbox_partly import MaybeRemoved
from cairn.cluster.mailbox_reads import Reading
from cairn.cluster.mailbox_recent import Recent
from cairn.cluster.mailbox_removal import Removal
from cairn.cluster.mailbox_room import BuriedHere
from cairn.cluster.pubacks import Headers
from cairn.cluster.watch import Watchers
from cairn.mailbox.interfaces import Depth, IMailboxStore, PartlyStored, StoreFull
from cairn.mailbox.store import MailboxFigures
from cairn.mailbox.transactions import admission
from cairn.wire.constants import ForwardStatus

log = Logger()

_EMPTY = Depth()


@implementer(IMailboxStore)
class JetStreamMailboxStore(Reading, StoreCalls, Following, Overrides, Removal, Dropping, MailboxFigures):
    """The mailbox in a L{cairn.cluster.connection.JetStream}'s C{mbox} stream and C{limits} bucket."""

    def __init__(self, jetstream):
        super().__init__()
        self.jet = jetstream
        self.stream = jetstream.stream("mbox")
        self._mbox = jetstream.subject("mbox", "")  # a message's subject starts so (L{_message_subject})
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
        # leader (L{Reading._read}, mailbox_reads), so that the read after a
        # wake-up sees the write.
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
        self._mine = Mine()  # on the NATS loop: this store's messages ahead of the watch or passed over (mailbox_alone)
        self._buried_here = BuriedHere()  # on the NATS loop: messages this store buried (mailbox_room)
        self._maybe = MaybeStored()  # on the NATS loop: writes that failed unanswered (mailbox_alone)
        self._maybe_removed = MaybeRemoved()  # on the NATS loop: the same, of removals (mailbox_partly)
        self._override_revisions = {}  # on the NATS loop: peer id -> KV revision of its override (mailbox_limits)
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
        # Full mode lasts while removals buried at the storage limit owe tombstones (mailbox_room).
        jetstream.reserve.settle = self.settle
        #: Where every write to the stream goes (L{_publish}).
        self.acks = Publishing(self)

    # Life cycle

    def start(self):
        def loaded(depths):  # (the overrides reach self.limits from mailbox_limits)
            self._depths, self._total = {}, 0
            self._apply(depths)

        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._load))
        d.addCallback(loaded)
        return d.addCallback(lambda _: self.jet.run(self._begin))

    # Enqueue

    def enqueue(self, items, now, limits):
        items = list(items)
        if items and self.jet.reserve.full:
            # Growth, at JetStream's storage limit: refused, but a message already held is
            # DUPLICATE, as at the SQLite store's disk reserve (one direct get per message, while full only).
            d = self._run(self._known_while_full, items, now)
            return d.addCallback(self.jet.reserve.answer, ForwardStatus.STORAGE_ERROR)
        admitted, refused = [], {}
        depths, reserved = self._depths, self._reserved
        for i, item in enumerate(items):
            recipient, size = item.recipient, len(item.payload)
            held = depths.get(recipient, _EMPTY)
            extra = reserved.get(recipient)
            depth = held if extra is None else Depth(held.messages + extra[0], held.bytes + extra[1])
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
            results = outcome
            if isinstance(outcome, Failure):
                # What a failed call stored is held all the same: counted (it showed -1 once removed).
                results = outcome.value.results if outcome.check(PartlyStored) else None
            if results is not None:
                added = {}  # recipient -> [messages, bytes] stored by this call
                for i, result in enumerate(results):
                    if result is not None and result[0] == ForwardStatus.STORED:
                        seq = result[1]
                        self._last_stored = max(self._last_stored, seq)
                        item = items[i]
                        self._saw(self._newest, item.recipient, seq)
                        count = added.setdefault(item.recipient, [0, 0])
                        count[0] += 1
                        count[1] += len(item.payload)
                changed = {}
                for recipient, (messages, size) in added.items():
                    depth = self._depths.get(recipient, _EMPTY)
                    oldest = depth.oldest if depth.messages else now
                    changed[recipient] = Depth(depth.messages + messages, depth.bytes + size, oldest)
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
        # What every message of the call carries is the same: made once (not per message).
        # C{stored}: what a reader of it needs, its writer too (L{_stored_now}).
        stored = {D.STORED: float_text(now), D.EXPIRES: float_text(expires_at), WRITER: self.writer}
        headers = Headers({D.EXPECT_LAST: "0", **stored})
        publish = self.acks.publish
        futures, retried = {}, {}
        try:
            for i in admitted:
                subject = self._message_subject(items[i])
                if self._maybe and (stamps := self._maybe.take(subject)) is not None:
                    retried[i] = subject, stamps  # a sender's retry of a write that failed unanswered decides it
                futures[i] = subject, await publish(subject, items[i].payload, headers)
        except BaseException:
            for taken in retried.values():  # they decided nothing
                self._maybe.restore(*taken)
            for subject, _ in futures.values():  # written, never awaited: may be stored all the same
                self._maybe.add(subject, stored[D.STORED])
            raise
        results = [None] * len(items)
        failure = None
        for i, (subject, future) in futures.items():
            try:
                results[i] = (ForwardStatus.STORED, await future)
            except Exception as e:
                if not D.is_wrong_last(e):
                    if i in retried:  # not stored, or unknown: the retry decided nothing
                        self._maybe.restore(*retried.pop(i))
                    if unknown_outcome(e):
                        self._maybe.add(subject, stored[D.STORED])
                    failure = failure or e
                    continue
                unanswered = retried.pop(i, (None, None))[1]
                try:
                    results[i] = await self._taken(items[i], now, expires_at, unanswered)
                except Exception as e:
                    if unanswered is not None:  # the retry decided nothing (its read failed)
                        self._maybe.restore(subject, unanswered)
                    failure = failure or e
                else:
                    if results[i][0] == ForwardStatus.STORED:
                        self._mine.stored(results[i][1], self._counted_upto, self._skipped)
            else:
                await self._stored_now(items[i], subject, results[i][1], stored, headers)
        if failure is not None:
            # Some may be stored: the senders retry and get DUPLICATE for those.
            why = f"JetStream did not store the message ({one_line(failure)})"
            if any(result is not None and result[0] == ForwardStatus.STORED for result in results):
                raise PartlyStored(why, results)
            raise StoreFull(why)
        for i, status in refused.items():
            # A known id is a duplicate whatever the limits say.
            results[i] = (ForwardStatus.DUPLICATE, None) if await self._known(items[i], now) else (status, None)
        return results

    async def _known(self, item, now):
        """Whether C{item}'s id is held: its message, or its tombstone within the message's life."""
        held = await D.direct_last(self.jet.nc, self.stream, self._message_subject(item))
        return held is not None and (is_message(held) or float(held.headers[D.EXPIRES]) > now)

    async def _known_while_full(self, items, now):
        """Per item, DUPLICATE if it is held (L{_known}; read together), else None: what a full node answers."""
        known = await asyncio.gather(*(self._known(item, now) for item in items))
        return [(ForwardStatus.DUPLICATE, None) if held else None for held in known]

    async def _stored_now(self, item, subject, seq, stored, headers):
        """
        C{item} is stored as C{seq} of C{subject}, with C{headers} (C{stored}:
        those of them a reader of it needs): known here at once
        (L{Recent.ahead}), and told to C{on_stored}. The writer is among
        them: the node that acknowledges the copy told names it on the
        tombstone (C{Cairn-Message-Writer}), which is how this store knows
        the removal of its own message when its watch passed over the
        message (L{Following._counted_in}). Without it, such a message
        stayed counted here for good (a mailbox stream's leader killed
        under load: the watch, restarted, passed over dozens).
        """
        self._mine.stored(seq, self._counted_upto, self._skipped)
        if self._own is None and seq > self.recent.watched:
            # A store alone does not: its PubAck's own callback (L{Following._answered}), scheduled
            # when the PubAck came in and so run before any read asked after this call's answer,
            # feeds Recent in stream order; both did it for 7 of 8 messages (a call's first comes
            # back to this coroutine after the callback, the others before theirs).
            # With the writer's header: counted when stored, removed here (L{Following._uncount}).
            self.recent.ahead(D.Held(subject, seq, headers, item.payload), item.recipient)
        if self.on_stored is not None:
            try:
                await self.on_stored(item.recipient, D.Held(subject, seq, stored, item.payload))
            except Exception as e:  # a hint only: the watch and the bus's wake-up still deliver it
                log.debug("mailbox: telling the other nodes failed ({why})", why=one_line(e))

    def _message_subject(self, item):
        return f"{self._mbox}{item.recipient}.{item.sender}.{item.message_id.hex()}"

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

    async def _taken(self, item, now, expires_at, unanswered=None):
        """
        The subject of C{item} is not empty: DUPLICATE, unless it holds a
        tombstone past its time. C{unanswered}: the C{Cairn-Stored} of this
        store's writes of it that failed unanswered (mailbox_alone.MaybeStored),
        given back if this decides nothing.
        """
        for _ in range(5):
            held = await D.direct_last(self.jet.nc, self.stream, self._message_subject(item))
            if held is None:
                after = 0  # removed meanwhile
            elif is_message(held) or float(held.headers[D.EXPIRES]) > now:
                mine = held.headers.get(WRITER) == self.writer
                if mine and unanswered is not None and held.headers.get(D.STORED) in unanswered:
                    # Stored after all by this store's write that failed unanswered: counted in now,
                    # and known as this store's (a tombstone naming no writer counts it out: Mine).
                    self._mine.stored(held.seq, self._counted_upto, self._skipped)
                    stored_at = float(held.headers[D.STORED])
                    self.jet.thread.to_reactor(
                        self._written_elsewhere, item.recipient, len(held.data), stored_at, held.seq
                    )
                elif unanswered is not None and self._removed_mine(held):
                    # Stored after all, and removed already (delivered from another node, or this
                    # one): its tombstone counts it out here (the watch's, or this store's own
                    # removal), the record being taken, so it counts in now (it was -1 for good).
                    size = int(held.headers.get(SIZE) or 0)
                    self.jet.thread.to_reactor(self._written_elsewhere, item.recipient, size, float(unanswered[0]))
                return ForwardStatus.DUPLICATE, None
            else:
                after = held.seq
            try:
                return ForwardStatus.STORED, await (await self._publish_message(item, now, expires_at, after))
            except Exception as e:
                if not D.is_wrong_last(e):
                    if unknown_outcome(e):  # may be stored all the same, as an enqueue's write
                        self._maybe.add(self._message_subject(item), float_text(now))
                    raise
        if unanswered is not None:
            self._maybe.restore(self._message_subject(item), unanswered)  # not read: the watch may count it
        return ForwardStatus.DUPLICATE, None  # someone keeps writing it: it is held

    def _removed_mine(self, held):
        """Whether C{held} is the tombstone of a message this store wrote."""
        return not is_message(held) and held.headers.get(MESSAGE_WRITER) == self.writer

    # Flush

    def flushed(self):
        """Every call in flight ended, and every receipt drop waiting done."""
        d = self.jet.run(self._drop_all) if self.jet.thread.running else defer.succeed(None)
        d.addErrback(lambda f: log.warn("mailbox: dropping receipts failed ({why})", why=one_line(f.value)))
        return d.addCallback(lambda _: super(JetStreamMailboxStore, self).flushed())
