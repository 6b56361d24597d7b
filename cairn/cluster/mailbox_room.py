"""
The way out of JetStream's storage limit when the reserve was not enough
(docs/scaling.md "The storage reserve", "Sizing"): a mixin of
L{cairn.cluster.mailbox.JetStreamMailboxStore}'s removals.

At an R3 account's limit JetStream itself stores past the limit before its
first refusal (up to 3.5 MB a replica measured with three nodes), and the
operator may lower the limit below what is held: once the ballast is
released the mailbox alone can still be over it, and then every tombstone
is refused and nothing drains. Over the limit JetStream refuses every
publish (10002: a message, a rollup tombstone, a KV put or delete, any
stream) but takes what stores nothing: a message's deletion, a purge, a
stream update, a consumer's creation (nats-server 2.15.1, measured: the
same section). So a removal whose tombstones are refused for want of room
while the ballast is released I{buries} its messages:

  1. it records what their tombstones must say (subject, headers: the
     receipt owed) as the metadata of a durable consumer C{owed-<uuid>} on
     the reserve stream -- kept by the servers' meta layer, not in the
     account's storage, so JetStream takes it at the limit, and a crash
     after it loses nothing;
  2. it deletes the messages (no record needed: the consumer is it);
  3. it writes their tombstones, each only if its subject is empty
     (C{Nats-Expected-Last-Subject-Sequence: 0}), and deletes the
     consumer once all are there. Refused still (too little deleted so
     far), they stay owed: every node's reserve poll (L{settle}) writes
     every node's owed tombstones once room allows, and no node leaves full
     mode while any is owed.

The removal then counts the messages out as removed (the recipient's
acknowledgement is done: nothing is delivered again) and returns the
receipts written; those still owed reach their senders when their
tombstones are written (through the watch, like another node's). While a
message is buried without its tombstone its id is known to no one, but
every node is full (the ballast is gone): a sender's retry is answered
STORAGE_ERROR, never stored again, until the tombstone is there.
"""

import asyncio
import json
import uuid

from twisted.logger import Logger

from cairn.cluster import direct as D
from cairn.cluster.common import KIND, REMOVES, one_line
from cairn.cluster.pubacks import NO_ROOM_CODES
from cairn.mailbox.interfaces import Receipt

log = Logger()

#: The name of a consumer recording buried removals starts with this.
OWED = "owed-"
#: Its metadata key: JSON C{[[seq, subject, receipt owed, tombstone headers], ...]}.
KEY = "cairn-owed"
#: Seconds after a burial during which L{Room.settle} still counts something owed (two reserve polls).
BURIED_LATELY = 2.0
#: Seconds another node's record is seen before this node deletes a message of it still held (its
#: burial was cut short: that node stopped). Sooner, the burial may be under way there: deleting its
#: message first left that node counting it in its depth for good (its deletion found nothing).
OTHERS_AFTER = 30.0
#: Marks kept in L{BuriedHere} at most.
MARKS = 65536


class BuriedHere:
    """
    Which tombstones of buried messages count nothing here (on the NATS
    loop). Two records may hold the same message (a node died in its
    burial, and the next node's removal of the message buried it again):
    whichever record's tombstone is written first, a store counts the
    message out once. Before, the other record's tombstone counted out
    what this store's burial had counted out already (-30 for good on a
    restarted node, C{tests/test_cluster_reserve_killed.py}), or nothing
    counted out a message whose burial here found it deleted by another
    node's (+30).

      - A message this store is burying (L{burying}, before its deletion:
        a tombstone may come while the deletion is in flight) is either
        removed here (L{buried}: counted out by the burial, its tombstone
        counts nothing) or was deleted first by another node's burial
        (its tombstone counts it out, seen meanwhile or later).
      - A message the start-up load did not read although a record still
        owes its tombstone (deleted before the load: never counted in
        here; L{uncounted}).

    Each mark goes when its tombstone is seen; the oldest past L{MARKS}.
    """

    def __init__(self):
        self._seqs = {}  # seq -> _BURYING, _COUNTED, or the count-out of a tombstone seen meanwhile

    def burying(self, seqs):
        for seq in seqs:
            self._seqs[seq] = _BURYING
        self._trim()

    def buried(self, seqs, removed):
        """
        The deletions of C{seqs} are made, those of C{removed} by this
        store; the count-outs of tombstones seen meanwhile of the others
        (deleted by another node first: theirs to count).
        """
        late = []
        for seq in seqs:
            state = self._seqs.pop(seq, None)
            if seq in removed:
                if state is _BURYING:
                    self._seqs[seq] = _COUNTED  # its tombstone is still to come
            elif state not in (None, _BURYING, _COUNTED):
                late.append(state)
        return late

    def uncounted(self, seqs):
        """Messages never counted in here: their tombstones count nothing."""
        for seq in seqs:
            self._seqs[seq] = _COUNTED
        self._trim()

    def counts(self, seq, count_out):
        """A tombstone of buried message C{seq} is seen: whether it counts out now (C{count_out}: how, if later)."""
        state = self._seqs.get(seq)
        if state is None:
            return True
        if state is _BURYING:
            self._seqs[seq] = count_out  # the burial's deletion decides (L{buried})
        else:
            del self._seqs[seq]
        return False

    def _trim(self):
        while len(self._seqs) > MARKS:
            del self._seqs[next(iter(self._seqs))]


_BURYING, _COUNTED = object(), object()


def no_room(error):
    """Whether C{error} is JetStream refusing a write for want of storage."""
    return getattr(error, "err_code", None) in NO_ROOM_CODES


class Room:
    """Burying removals whose tombstones JetStream refuses for want of room (see the module docstring)."""

    _burying = None  # an asyncio.Lock, made on the NATS loop: one burial or settle at a time
    _records_seen = None  # on the NATS loop: another node's record name -> when first seen
    _buried_at = float("-inf")  # the NATS loop's time of the last burial
    #: Called on the reactor with each sender that receipts written by L{settle} are owed to (the node
    #: bus's C{owe}: L{cairn.cluster.nats_bus.NatsBus}), as the service's removals tell theirs.
    on_paid = None

    async def _released(self):
        """Whether the reserve's ballast is released now (written once, holding nothing): on the NATS loop."""
        state = (await self.jet.js.stream_info(self.jet.stream("reserve"))).state
        return state.last_seq > 0 and state.messages == 0

    async def _bury(self, refused):
        """
        C{refused}: C{[(held, receipt owed, tombstone headers)]} whose
        tombstones were refused for want of room. None if the ballast is
        still there (the release comes first); else C{[(held, receipt owed,
        tombstone seq or None while owed)]} of the messages this call
        removed (not one gone meanwhile: a concurrent removal's).
        """
        from nats.js.api import ConsumerConfig

        async with self._lock():  # one at a time: at the limit the servers answer slowly (timeouts seen)
            if not await self._released():
                return None
            entries = []
            for held, owed, headers in refused:
                headers = {k: v for k, v in headers.items() if k not in ("Nats-Rollup", D.EXPECT_LAST)}
                entries.append([held.seq, held.subject, owed, headers])
            name = f"{OWED}{self.writer}-{uuid.uuid4().hex}"
            subject, metadata = self.jet.subject("reserve", "owed"), {KEY: json.dumps(entries)}
            config = ConsumerConfig(durable_name=name, filter_subject=subject, metadata=metadata)
            await self.jet.js_writes.add_consumer(self.jet.stream("reserve"), config=config)
            # Recorded: from here on each message is removed (a deletion that failed is made again by L{settle}).
            seqs = [held.seq for held, _, _ in refused]
            self._buried_here.burying(seqs)
            gone = await D.delete_all(self.jet.js_writes, self.stream, seqs, return_exceptions=True)
            # Not one a concurrent removal deleted first (it counts it). These count out here (the
            # caller): their tombstones, whoever writes them, count nothing more here (L{_seen}).
            removed = [(held, owed) for (held, owed, _), ok in zip(refused, gone) if ok is not False]
            late = self._buried_here.buried(seqs, {held.seq for held, _ in removed})
            for count_out in late:
                self.jet.thread.to_reactor(self._removed_elsewhere, *count_out)
            try:
                written, _ = await self._pay(name, entries, finish=True)
            except Exception as e:  # removed all the same, their tombstones owed (L{settle})
                written = {}
                self.jet.thread.to_reactor(log.warn, "mailbox: writing buried tombstones: {why}", why=one_line(e))
        self._buried_at = asyncio.get_running_loop().time()
        self.jet.thread.to_reactor(_buried, len(refused), len(written))
        return [(held, owed, written.get(held.subject)) for held, owed in removed]

    async def _unloaded(self, loaded):
        """
        At the start-up load, after its scan (C{loaded}: the seqs of the
        messages it read): the buried messages it did not read although a
        record still owes their tombstones were deleted before it, never
        counted in here (L{BuriedHere.uncounted}). A record made after the
        scan deleted its messages after its record: read here, then.
        """
        from nats.js.errors import NotFoundError

        try:
            infos = await self.jet.js.consumers_info(self.jet.stream("reserve"))
        except NotFoundError:
            return  # no reserve stream yet: nothing buried
        seqs = []
        for info in infos:
            try:
                entries = json.loads((info.config.metadata or {})[KEY]) if info.name.startswith(OWED) else []
            except (KeyError, ValueError):
                continue  # unreadable: L{settle} says so
            seqs += [entry[0] for entry in entries if entry[0] <= self._loaded_upto and entry[0] not in loaded]
        self._buried_here.uncounted(seqs)

    def _lock(self):
        if self._burying is None:
            self._burying = asyncio.Lock()
        return self._burying

    async def _pay(self, name, entries, finish):
        """
        Write the tombstones of record C{name}'s C{entries} (each once: its
        subject empty, or its tombstone already there) and delete the record
        once all are; C{({subject: tombstone seq written here}, owed still)}.
        A message still held is deleted first if C{finish} (else left to the
        burial under way).
        """
        stream, written, owed = self.stream, {}, False
        for seq, subject, _, headers in entries:
            if owed:
                break  # refused for want of room: the others would be too
            try:
                headers = {**headers, D.EXPECT_LAST: "0", REMOVES: str(seq)}
                ack = await self.jet.js_writes.publish(subject, b"", headers=headers, stream=stream)
            except Exception as e:
                if no_room(e):
                    owed = True
                elif not D.is_wrong_last(e):
                    raise
                elif await self._still_held(subject, seq):
                    if finish:  # its burial's deletion failed: made here (recorded: removed)
                        await D.delete(self.jet.js_writes, stream, seq)
                    owed = True  # its tombstone at the next settle
                continue
            written[subject] = ack.seq
            self.recent.written(ack.seq)
        if not owed:
            await self._forget(name)
        return written, owed

    async def _still_held(self, subject, seq):
        """Whether the subject of a buried message (C{seq}) still holds that message (not deleted yet)."""
        last = await D.leader_last(self.jet.nc, self.jet.js, self.stream, subject)
        return last is not None and last.seq == seq and last.headers.get(KIND) is None

    async def _forget(self, name):
        from nats.js.errors import NotFoundError

        try:
            await self.jet.js_writes.delete_consumer(self.jet.stream("reserve"), name)
        except NotFoundError:
            pass  # another node paid it too

    def settle(self):
        """
        Write every node's owed tombstones that room allows (the reserve's
        poll, while full); fires with how many records are still owed (one
        more if this store buried within L{BURIED_LATELY} s).
        """
        return self.jet.run(self._settle)  # not a store call the service waits for: the reserve's step logs a failure

    async def _settle(self):
        async with self._lock():
            return await self._settle_now()

    async def _settle_now(self):
        # A burial this recent: JetStream refused tombstones for room a moment ago (at R3 the
        # reserve's leader may already take the ballast back while the mailbox's still refuses).
        now = asyncio.get_running_loop().time()
        owed = int(now - self._buried_at < BURIED_LATELY)
        seen, self._records_seen = self._records_seen or {}, {}
        for info in await self.jet.js.consumers_info(self.jet.stream("reserve")):
            if not info.name.startswith(OWED):
                continue
            first = self._records_seen[info.name] = seen.get(info.name, now)
            mine = info.name.startswith(OWED + self.writer)
            if not mine:
                # Another writer's (a process before this one's restart, too): its tombstones count out
                # here through the watch (L{cairn.cluster.mailbox_follow.Following._counts_out}).
                self._start_following()
            finish = mine or now - first >= OTHERS_AFTER
            try:
                entries = json.loads((info.config.metadata or {})[KEY])
                written, left = await self._pay(info.name, entries, finish)
            except (KeyError, ValueError) as e:
                why = f"{info.name}: {one_line(e)}"
                self.jet.thread.to_reactor(log.warn, "mailbox: an unreadable record of owed removals ({why})", why=why)
                owed += 1
                continue
            owed += left
            receipts = []
            for _, subject, owed_receipt, headers in entries:
                if owed_receipt and subject in written:
                    _, _, recipient, sender, message_id = subject.split(".")
                    status, at = int(headers[D.STATUS]), float(headers[D.AT])
                    self._receipt_written(sender, written[subject])
                    receipts.append(Receipt(written[subject], sender, recipient, bytes.fromhex(message_id), status, at))
            if written:
                self.jet.thread.to_reactor(self._paid, len(written), receipts, info.name)
        return owed

    def _paid(self, count, receipts, name):
        """On the reactor: owed tombstones written; their senders are told (L{on_paid})."""
        for receipt in receipts:
            self._saw(self._newest_receipt, receipt.sender, receipt.rseq)
            self._last_receipt = max(self._last_receipt, receipt.rseq)
        if self.on_paid is not None:
            for sender in {receipt.sender for receipt in receipts}:
                self.on_paid(sender)
        log.info("mailbox: {count} owed tombstones written ({name})", count=count, name=name)


def _buried(count, written):
    log.warn(
        "mailbox: JetStream is over its storage limit with the reserve released: {count} removed messages"
        " deleted, their receipts recorded (the reserve stream's consumers {prefix}*); {written} tombstones written"
        " at once, the rest when room allows",
        count=count,
        prefix=OWED,
        written=written,
    )
