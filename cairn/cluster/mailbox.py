"""
L{JetStreamMailboxStore}: the mailbox on NATS JetStream.

One stream, C{<prefix>_mbox}, holds three kinds of subject:

  - C{<p>.mbox.<recipient>}: the messages; the stream sequence is the
    server sequence (C{Stored.seq}), so a recipient's order is stream order.
  - C{<p>.ids.<sender>.<id hex>}: one per (sender, message id), kept until
    the message would have expired: the dedup record.
  - C{<p>.rcpt.<sender>.<message seq>}: the receipts owed to a sender;
    C{Receipt.rseq} is the receipt's stream sequence.

An enqueue is one atomic batch per message (ADR-50): the dedup record,
written only if its subject is empty (C{Nats-Expected-Last-Subject-Sequence:
0}), and the message, committed together or not at all. So a duplicate is
refused by the server for the message's whole life (not only within a
dedup window), and no crash leaves one without the other. The batches of
a call are written back to back and their PubAcks awaited together (the
group-commit shape: many in flight, one round trip); STORED is answered
only from a PubAck, which with C{sync_interval: always} means replicated
and fsync'd. A receipt is written (once per message: its subject is
empty-checked too) before the message is deleted, so a crash in between
costs a redelivery, never a receipt.

The limits (per-recipient count and bytes, overrides, the global total)
are checked here against the depth cache plus what is in flight; the
cache is loaded from the stream at start and kept current by this
store's writes. It is exact while this node is the stream's only writer
(part 1); with several writers it is approximate within what the others
wrote since (docs/scaling.md).
"""

import uuid

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster import direct as D
from cairn.cluster.watch import Watchers
from cairn.mailbox.interfaces import Depth, IMailboxStore, PeerLimits, Receipt, Stored, StoreFull
from cairn.mailbox.store import _Cache
from cairn.mailbox.transactions import admission
from cairn.wire.constants import ForwardStatus, ReceiptStatus

log = Logger()

#: Messages read per direct-get page.
PAGE = 256


def _f(value):
    return repr(float(value))


@implementer(IMailboxStore)
class JetStreamMailboxStore(_Cache):
    """The mailbox in a L{cairn.cluster.connection.JetStream}'s C{mbox} stream and C{limits} bucket."""

    def __init__(self, jetstream):
        super().__init__()
        self.jet = jetstream
        self.stream = jetstream.stream("mbox")
        self._reserved = {}  # recipient -> [messages, bytes] admitted, not yet acked
        self._reserved_total = 0
        self._pending = set()
        self._last_acked = 0  # the highest stream seq a PubAck gave us: reads must see it
        self.watchers = Watchers()

    @property
    def acks(self):
        return self.jet.acks

    def _subject(self, *parts):
        return self.jet.subject(*parts)

    def _run(self, function, *args):
        d = self.jet.run(function, *args).addErrback(_storage_error)
        self._pending.add(d)
        return d.addBoth(lambda r: (self._pending.discard(d), r)[1])

    # Life cycle

    def start(self):
        def loaded(result):
            depths, self.limits = result
            self._depths, self._total = {}, 0
            self._apply(depths)

        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._load))
        return d.addCallback(loaded)

    def flushed(self):
        return defer.DeferredList([_observe(d) for d in list(self._pending)]).addCallback(lambda _: None)

    def watch(self, callback):
        self.watchers.add(callback)

    async def _load(self):
        from nats.js.errors import NoKeysError

        depths = {}
        for held in await D.direct_all(self.jet.nc, self.stream, self._subject("mbox", "*")):
            recipient = held.subject.rsplit(".", 1)[1]
            depth = depths.get(recipient) or Depth(0, 0, float(held.headers[D.STORED]))
            depths[recipient] = Depth(depth.messages + 1, depth.bytes + len(held.data or b""), depth.oldest)
        kv = self.jet.kv["limits"]
        limits = {}
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        for key in keys:
            entry = await kv.get(key)
            count, size = entry.value.decode().split(",")
            limits[key] = PeerLimits(int(count) if count else None, int(size) if size else None)
        return depths, limits

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
                        self._last_acked = max(self._last_acked, seq)
                        item = items[i]
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
            item = items[i]
            batch = uuid.uuid4().hex
            ids = self._subject("ids", item.sender, item.message_id.hex())
            await nc.publish(
                ids,
                b"",
                headers={
                    "Nats-Batch-Id": batch,
                    "Nats-Batch-Sequence": "1",
                    D.EXPECT_LAST: "0",
                    D.RECIPIENT: item.recipient,
                    D.EXPIRES: _f(expires_at),
                },
            )
            futures[i] = await self.acks.publish(
                self._subject("mbox", item.recipient),
                item.payload,
                headers={
                    "Nats-Batch-Id": batch,
                    "Nats-Batch-Sequence": "2",
                    "Nats-Batch-Commit": "1",
                    D.SENDER: item.sender,
                    D.ID: item.message_id.hex(),
                    D.STORED: _f(now),
                    D.EXPIRES: _f(expires_at),
                },
            )
        results = [None] * len(items)
        failure = None
        for i, future in futures.items():
            try:
                results[i] = (ForwardStatus.STORED, await future)
            except Exception as e:
                if D.is_wrong_last(e):
                    results[i] = (ForwardStatus.DUPLICATE, None)
                else:
                    failure = failure or e
        if failure is not None:
            # Some may be stored: the senders retry and get DUPLICATE for those.
            raise StoreFull(f"JetStream did not store the message ({_one_line(failure)})")
        for i, status in refused.items():
            # A known id is a duplicate whatever the limits say.
            item = items[i]
            known = await D.direct_last(nc, self.stream, self._subject("ids", item.sender, item.message_id.hex()))
            results[i] = (ForwardStatus.DUPLICATE, None) if known is not None else (status, None)
        return results

    # Reads

    def fetch(self, recipient, after_seq, limit):
        return self._run(self._fetch, recipient, after_seq, limit, self._last_acked)

    async def _read(self, start, limit, subject, must_see):
        # Answered only by a replica that has applied what we were acknowledged.
        held, _ = await D.direct_batch(self.jet.nc, self.stream, start, limit, subject, min_last=must_see)
        return held

    async def _fetch(self, recipient, after_seq, limit, must_see):
        held = await self._read(after_seq + 1, limit, self._subject("mbox", recipient), must_see)
        return [_stored(recipient, h) for h in held]

    def receipts(self, sender, after_rseq, limit):
        return self._run(self._receipts, sender, after_rseq, limit, self._last_acked)

    async def _receipts(self, sender, after_rseq, limit, must_see):
        held = await self._read(after_rseq + 1, limit, self._subject("rcpt", sender, "*"), must_see)
        return [_receipt(sender, h) for h in held]

    # Removal

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
        nc, subject = self.jet.nc, self._subject("mbox", recipient)
        found = await D.direct_all(nc, self.stream, subject, upto=upto) if upto else []
        for seq in sorted(set(s for s in seqs if s > upto)):
            held = await D.direct_seq(nc, self.stream, seq)
            if held is not None and held.subject == subject:
                found.append(held)
        receipts, last, counted = await self._owe(found, ReceiptStatus.DELIVERED, now, ttl)
        js = self.jet.js
        if upto:
            await js.purge_stream(self.stream, subject=subject, seq=upto + 1)
        for held in found:
            if held.seq > upto:
                await D.delete(js, self.stream, held.seq)
        return receipts, await self._depth_changes(counted), last

    async def _owe(self, found, status, now, ttl, skip_sender=None):
        """
        Write one receipt per message of C{found} (once ever each); the new
        L{Receipt}s, the last seq, and the messages this call is the first
        to remove (those a concurrent call receipted are counted there).
        """
        futures = []
        counted = []
        for held in found:
            sender = held.headers[D.SENDER]
            if sender == skip_sender:
                counted.append(held)
                continue
            future = await self.acks.publish(
                self._subject("rcpt", sender, str(held.seq)),
                b"",
                headers={
                    D.EXPECT_LAST: "0",
                    D.RECIPIENT: held.subject.rsplit(".", 1)[1],
                    D.ID: held.headers[D.ID],
                    D.STATUS: str(int(status)),
                    D.AT: _f(now),
                    D.EXPIRES: _f(now + ttl),
                },
            )
            futures.append((held, sender, future))
        receipts, last = [], 0
        for held, sender, future in futures:
            try:
                rseq = await future
            except Exception as e:
                if D.is_wrong_last(e):
                    continue  # receipted by an earlier attempt whose delete did not happen
                raise
            last = max(last, rseq)
            counted.append(held)
            recipient = held.subject.rsplit(".", 1)[1]
            receipts.append(Receipt(rseq, sender, recipient, bytes.fromhex(held.headers[D.ID]), int(status), now))
        return receipts, last, counted

    async def _depth_changes(self, removed):
        """{recipient: (messages removed, bytes removed, new oldest stored_at)} for L{_removed}."""
        out = {}
        for held in removed:
            recipient = held.subject.rsplit(".", 1)[1]
            count, size, _ = out.get(recipient, (0, 0, None))
            out[recipient] = (count + 1, size + len(held.data or b""), None)
        for recipient, (count, size, _) in list(out.items()):
            first, _ = await D.direct_batch(self.jet.nc, self.stream, 1, 1, self._subject("mbox", recipient))
            out[recipient] = (count, size, float(first[0].headers[D.STORED]) if first else None)
        return out

    def drop_receipts(self, sender, rseqs):
        return self._run(self._drop_receipts, sender, list(rseqs))

    async def _drop_receipts(self, sender, rseqs):
        prefix = self._subject("rcpt", sender, "")
        for rseq in rseqs:
            held = await D.direct_seq(self.jet.nc, self.stream, rseq)
            if held is not None and held.subject.startswith(prefix):
                await D.delete(self.jet.js, self.stream, rseq)

    def expire(self, now, limit, receipt_ttl):
        d = self._run(self._expire, now, limit, receipt_ttl)

        def expired(result):
            receipts, more, depths, last = result
            self._removed((receipts, depths, last))
            return receipts, more

        return d.addCallback(expired)

    async def _expire(self, now, limit, ttl):
        # Everything in the stream was written with the same max_age from
        # the clock of its time, so what is due is (nearly) a prefix: scan
        # from the start until an item is not due yet.
        kinds = {"mbox": [], "ids": [], "rcpt": []}
        start, scanned = 1, 0
        while scanned < 3 * limit:
            held, _ = await D.direct_batch(self.jet.nc, self.stream, start, PAGE, self._subject(">"))
            if not held:
                break
            for item in held:
                scanned += 1
                if float(item.headers.get(D.EXPIRES, "inf")) > now:
                    scanned = 3 * limit
                    break
                kind = kinds[item.subject.split(".")[1]]
                if len(kind) < limit:
                    kind.append(item)
            if len(held) < PAGE:
                break
            start = held[-1].seq + 1
        messages = kinds["mbox"]
        receipts, last, counted = await self._owe(messages, ReceiptStatus.EXPIRED, now, ttl)
        for item in messages + kinds["ids"] + kinds["rcpt"]:
            await D.delete(self.jet.js, self.stream, item.seq)
        more = max(len(k) for k in kinds.values()) >= limit
        return receipts, more, await self._depth_changes(counted), last

    def purge(self, peer_id, now, receipt_ttl):
        d = self._run(self._purge, peer_id, now, receipt_ttl)

        def purged(result):
            self.limits.pop(peer_id, None)
            return self._removed(result)

        return d.addCallback(purged)

    async def _purge(self, peer_id, now, ttl):
        js, nc, subject = self.jet.js, self.jet.nc, self._subject("mbox", peer_id)
        held = await D.direct_all(nc, self.stream, subject)
        receipts, last, counted = await self._owe(held, ReceiptStatus.EVICTED, now, ttl, skip_sender=peer_id)
        await js.purge_stream(self.stream, subject=subject)
        for message in held:
            ids = self._subject("ids", message.headers[D.SENDER], message.headers[D.ID])
            await js.purge_stream(self.stream, subject=ids)
        await js.purge_stream(self.stream, subject=self._subject("rcpt", peer_id, ">"))
        await _kv_forget(self.jet.kv["limits"], peer_id)
        return receipts, await self._depth_changes(counted), last

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
            await _kv_forget(kv, peer_id)
            return
        value = f"{'' if limits.max_messages is None else limits.max_messages},"
        value += "" if limits.max_bytes is None else str(limits.max_bytes)
        await kv.put(peer_id, value.encode())


async def _kv_forget(kv, key):
    from nats.js.errors import KeyNotFoundError

    try:
        await kv.purge(key)
    except KeyNotFoundError:
        pass


def _stored(recipient, held):
    h = held.headers
    return Stored(
        held.seq,
        recipient,
        h[D.SENDER],
        bytes.fromhex(h[D.ID]),
        float(h[D.STORED]),
        float(h[D.EXPIRES]),
        held.data or b"",
    )


def _receipt(sender, held):
    h = held.headers
    return Receipt(held.seq, sender, h[D.RECIPIENT], bytes.fromhex(h[D.ID]), int(h[D.STATUS]), float(h[D.AT]))


def _observe(d):
    observer = defer.Deferred()
    d.addBoth(lambda r: (observer.callback(None), r)[1])
    return observer


def _one_line(error):
    return (str(error).strip() or type(error).__name__).splitlines()[0][:200]


def _storage_error(failure):
    """Any failure to reach or use JetStream as L{StoreFull}, so the service answers STORAGE_ERROR."""
    if failure.check(StoreFull):
        return failure
    error = failure.value
    log.warn("cairn: JetStream mailbox call failed: {why}", why=_one_line(error))
    raise StoreFull(f"JetStream unavailable ({_one_line(error)})")
