"""
L{JetStreamSyncStore}: the sync hub on NATS JetStream.

The stream C{<prefix>_sync} holds, per topic, the subject
C{<p>.sync.<topic>} (the topic name base64url-encoded, so any name is a
subject token) and the dedup records C{<p>.syncids.<sender>.<id hex>}.
Each update carries its per-topic seq (C{Cairn-Seq}); a publish is an
atomic batch (ADR-50) of the dedup record (written only if its subject is
empty) and the update, written only if the topic's subject still ends at
the message this node read (C{Nats-Expected-Last-Subject-Sequence}): the
optimistic concurrency that keeps the seqs 1, 2, 3, ... contiguous and
never reused even with several writers -- a writer that lost the race
reads the new last message and tries again. When retention removes the
last update of a topic, a marker (C{Cairn-Kind: floor}) carrying the head
is written first, so the head survives an empty log.

Every removal (retention, expiry, eviction; L{cairn.cluster.sync_removal}) is then told to the other
nodes by a floor notice on C{<p>.sync.<topic>.floor} carrying the new
floor (only ever raised: written with an expected last subject seq, the
older notices purged); their watches lower their figures from it
(L{cairn.cluster.sync_figures}: derived from the floor, so a removal
reported twice counts once).

The cursors and access grants are in the KV bucket C{<prefix>_cursors}
(L{cairn.cluster.sync_cursors}). The caches (L{topics}, L{cursors},
L{total_bytes}, L{access}) are loaded at start and kept current by this
store's own writes and by watches of what other writers store
(L{cairn.cluster.sync_follow}; how exact they are is in docs/scaling.md).
"""

import asyncio
import uuid

from zope.interface import implementer

from cairn.cluster import direct as D
from cairn.cluster.common import WRITER, StoreCalls
from cairn.cluster.sync_cursors import Cursors
from cairn.cluster.sync_figures import Changes, DerivedFigures, apply
from cairn.cluster.sync_follow import KIND, SEQ, Follow, token_topic, topic_token
from cairn.cluster.sync_removal import PAGE, Removal
from cairn.sync.interfaces import ISyncStore, Update
from cairn.sync.store import SyncFigures
from cairn.wire.constants import SyncStatus


@implementer(ISyncStore)
class JetStreamSyncStore(StoreCalls, Cursors, Follow, Removal, DerivedFigures, SyncFigures):
    """The sync hub in a L{cairn.cluster.connection.JetStream}'s C{sync} stream and C{cursors} bucket."""

    def __init__(self, jetstream):
        super().__init__()
        self.jet = jetstream
        self.stream = jetstream.stream("sync")
        self.commits = 0  # no transactions here; kept for the interface
        self._pending = set()
        self._locks = {}  # topic -> asyncio.Lock (on the NATS loop)
        self._last = {}  # topic -> (stream seq, topic seq) of its subject's last message
        # The stream seq of each topic's newest update known stored (this
        # store's writes, and the others' its watch reported; on the NATS
        # loop): a fetch that ends below it was answered by a replica that
        # has not applied it yet and carries on from the leader (L{_fetch}).
        # Removing a topic's newest update writes a floor marker after it, so
        # a read of a topic emptied since still reaches it without the leader.
        self._newest = {}
        self._removing = None
        self._notices = {}  # topic -> (stream seq, floor) of its newest floor notice (on the NATS loop)
        #: Marks this store's writes, so that its watch reports only the others'.
        self.writer = uuid.uuid4().hex
        # The watch starts from the stream's end as the load began: a removal
        # told (a floor notice) while the load ran is not missed, and what
        # the load read again is applied again, idempotently (sync_figures).
        self._watch_from = 1
        self._init_cursors()
        self._init_follow()
        self._init_figures()

    # Loading

    def start(self):
        def loaded(result):
            logs, cursors, access = result
            self._topics, self._cursors, self._total = {}, {}, 0
            self._logs = logs
            self._apply(({name: log.topic() for name, log in logs.items()}, cursors))
            self._access = access

        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._load))
        d.addCallback(loaded)
        return d.addCallback(lambda _: self.jet.run(self._follow))

    async def _load(self):
        changes = Changes()
        self._watch_from = (await self.jet.js.stream_info(self.stream)).state.last_seq + 1
        subject = self._subject("sync", "*")
        every = await D.direct_all(self.jet.nc, self.stream, subject)
        # Any replica answers a direct get, and a follower may not have
        # applied the newest acknowledged writes (D.direct_batch): the rest
        # is read from the leader -- when the replica was current, one
        # request that finds nothing.
        while True:
            held = await D.leader_next(
                self.jet.nc, self.jet.js, self.stream, (every[-1].seq if every else 0) + 1, subject
            )
            if held is None:
                break
            every.append(held)
        first = {}  # topic -> its first update's seq
        for held in every:
            topic = token_topic(held.subject.rsplit(".", 1)[1])
            seq = int(held.headers[SEQ])
            if held.headers.get(KIND) == "floor":
                changes.cut(topic, seq)  # emptied: the marker keeps the head
            else:
                first.setdefault(topic, seq)
                changes.add(topic, seq, len(held.data or b""))
                self._saw(topic, held.seq)  # reads must see it (L{_fetch})
            self._last[topic] = (held.seq, seq)
        for topic, seq in first.items():
            changes.cut(topic, seq - 1)  # retention removes a prefix: all below the first held
        logs = {}
        apply(logs, changes)
        cursors, access = await self._load_cursors()
        return logs, cursors, access

    # Publishing

    def publish(self, items, now, limits):
        items = list(items)
        if items and self.jet.reserve.full:
            # Growth, at JetStream's storage limit: refused, but an update already held is
            # DUPLICATE with its seq, as at the SQLite store's disk reserve (a read per update, while full only).
            d = self._run(self._known_while_full, items)
            return d.addCallback(self.jet.reserve.answer, SyncStatus.STORAGE_ERROR)
        d = self._run(self._publish, items, now, limits, self.total_bytes())

        def done(result):
            results, changes = result
            self._merge(changes)
            return results

        return d.addCallback(done)

    async def _publish(self, items, now, limits, total):
        results, changes = [], Changes()
        for item in items:
            status, seq, size = await self._publish_one(item, now, now + limits.max_age)
            results.append((status, seq))
            if status == SyncStatus.COMMITTED:
                changes.add(item.topic, seq, size)
                total += size
            elif status == SyncStatus.DUPLICATE:
                # Held: counted unless this node knows it already (L{TopicLog.add} is idempotent). Its own
                # write stored but never answered (a PubAck timeout, a new leader) was known nowhere here.
                changes.add(item.topic, seq, len(item.payload))
        if total > limits.max_total:
            await self._evict(total - limits.max_total, changes)
        return results, changes

    async def _known_while_full(self, items):
        """Per update, DUPLICATE and its seq if its dedup record is held, else None (read together)."""

        async def known(item):
            held = await D.direct_last(self.jet.nc, self.stream, self._ids(item))
            return None if held is None else (SyncStatus.DUPLICATE, int(held.headers[SEQ]))

        return await asyncio.gather(*(known(item) for item in items))

    def _ids(self, item):
        """The subject of C{item}'s dedup record."""
        return self._subject("syncids", item.sender, item.update_id.hex())

    async def _publish_one(self, item, now, expires_at):
        lock = self._locks.setdefault(item.topic, asyncio.Lock())
        subject = self._subject("sync", topic_token(item.topic))
        ids = self._ids(item)
        async with lock:
            for _ in range(20):
                last = self._last.get(item.topic)
                if last is None:
                    held = await D.direct_last(self.jet.nc, self.stream, subject)
                    last = (held.seq, int(held.headers[SEQ])) if held is not None else (0, 0)
                seq = last[1] + 1
                batch = uuid.uuid4().hex
                await self.jet.nc.publish(
                    ids,
                    b"",
                    headers={
                        "Nats-Batch-Id": batch,
                        "Nats-Batch-Sequence": "1",
                        D.EXPECT_LAST: "0",
                        D.TOPIC: topic_token(item.topic),
                        SEQ: str(seq),
                    },
                )
                future = await self.jet.acks.publish(
                    subject,
                    item.payload,
                    headers={
                        "Nats-Batch-Id": batch,
                        "Nats-Batch-Sequence": "2",
                        "Nats-Batch-Commit": "1",
                        D.EXPECT_LAST: str(last[0]),
                        SEQ: str(seq),
                        D.SENDER: item.sender,
                        D.ID: item.update_id.hex(),
                        D.STORED: repr(float(now)),
                        D.EXPIRES: repr(float(expires_at)),
                        WRITER: self.writer,
                    },
                )
                try:
                    stream_seq = await future
                except Exception as e:
                    if not D.is_wrong_last(e):
                        raise
                    # Read from the leader: a replica behind (D.direct_batch)
                    # would answer with the same stale last message, or miss
                    # the dedup record, every time.
                    known = await D.leader_last(self.jet.nc, self.jet.js, self.stream, ids)
                    if known is not None:
                        return SyncStatus.DUPLICATE, int(known.headers[SEQ]), 0
                    held = await D.leader_last(self.jet.nc, self.jet.js, self.stream, subject)
                    # Another writer got there first: expect its message.
                    self._last[item.topic] = (held.seq, int(held.headers[SEQ])) if held is not None else (0, 0)
                    continue
                if stream_seq > self._last.get(item.topic, (0, 0))[0]:
                    self._last[item.topic] = (stream_seq, seq)
                self._saw(item.topic, stream_seq)
                return SyncStatus.COMMITTED, seq, len(item.payload)
        raise D.PublishError(0, f"topic {item.topic!r}: too many concurrent writers")

    def fetch(self, topic, after_seq, limit):
        return self._run(self._fetch, topic, after_seq, limit)

    def _saw(self, topic, stream_seq):
        if stream_seq > self._newest.get(topic, 0):
            self._newest[topic] = stream_seq

    async def _fetch(self, topic, after_seq, limit):
        # Stream seqs and topic seqs both rise: page from the stream start
        # (the topic's first message) and skip what is at or below after_seq.
        out, start, seen = [], 1, 0
        subject = self._subject("sync", topic_token(topic))

        def take(held):
            seq = int(held.headers[SEQ])
            if held.headers.get(KIND) == "floor" or seq <= after_seq:
                return
            h = held.headers
            update_id, stored = bytes.fromhex(h[D.ID]), float(h[D.STORED])
            out.append(Update(topic, seq, h[D.SENDER], update_id, stored, held.data or b""))

        while len(out) < limit:
            page, _ = await D.direct_batch(self.jet.nc, self.stream, start, PAGE, subject)
            for held in page:
                seen = held.seq
                take(held)
                if len(out) >= limit:
                    return out
            if len(page) < PAGE:
                break
            start = page[-1].seq + 1
        # Any replica answers a direct get, and a follower may not have
        # applied the newest writes yet (D.direct_batch): the rest is read
        # from the leader, which has -- usually one update, one request.
        expect = self._newest.get(topic, 0)
        while len(out) < limit and seen < expect:
            held = await D.leader_next(self.jet.nc, self.jet.js, self.stream, seen + 1, subject)
            if held is None:
                break  # removed meanwhile
            seen = held.seq
            take(held)
        return out
