"""
Removal for L{cairn.cluster.sync.JetStreamSyncStore}: retention's
evictions and expiry's sweeps delete the oldest updates (a marker keeps an
emptied topic's head), one sweep or eviction at a time, and then tell the
other nodes the topics' new floors with a floor notice on
C{<p>.sync.<topic>.floor} (only ever raised: written expecting the last
notice read, the older ones purged), from which their watches derive
their figures (L{cairn.cluster.sync_figures}). A mixin, so that each
module stays small.
"""

import asyncio

from twisted.logger import Logger

from cairn.cluster import direct as D
from cairn.cluster.common import WRITER, one_line
from cairn.cluster.sync_figures import Changes
from cairn.cluster.sync_follow import KIND, SEQ, token_topic, topic_token

#: Updates read per direct-get batch (the removal scans, the fetches and the load).
PAGE = 256

log = Logger()


class Removal:
    """Evictions, sweeps and the floor notices that tell other nodes of them."""

    async def _remove(self, updates, changes):
        """
        Delete C{updates} (held messages), noting floors in C{changes};
        markers keep emptied heads. Returns those this call removed.
        """
        out = []
        for held in updates:
            topic = token_topic(held.subject.rsplit(".", 1)[1])
            seq = int(held.headers[SEQ])
            lock = self._locks.setdefault(topic, asyncio.Lock())
            async with lock:
                last = self._last.get(topic)
                if last is not None and last[0] == held.seq:
                    # The head itself goes: leave a marker that remembers it.
                    try:
                        marker = await (
                            await self.jet.acks.publish(
                                held.subject,
                                b"",
                                headers={
                                    KIND: "floor",
                                    SEQ: str(seq),
                                    D.EXPECT_LAST: str(held.seq),
                                    WRITER: self.writer,
                                },
                            )
                        )
                        self._last[topic] = (marker, seq)
                    except Exception as e:
                        if not D.is_wrong_last(e):
                            raise
                        self._last.pop(topic, None)  # a newer update holds the head
                removed = await D.delete(self.jet.js, self.stream, held.seq)
            if not removed:
                continue  # a concurrent sweep or eviction removed (and counted) it
            ids = self._subject("syncids", held.headers[D.SENDER], held.headers[D.ID])
            await self.jet.js.purge_stream(self.stream, subject=ids)
            changes.cut(topic, seq)
            out.append(held)
        return out

    async def _tell_floors(self, floors):
        """
        Write a floor notice for each topic of C{floors} ({topic: floor})
        that raises it, for the other nodes' watches. A failure is logged:
        the removal is done, and only the other nodes' figures miss it
        (until they start again).
        """
        for topic, floor in floors.items():
            try:
                await self._tell_floor(topic, floor)
            except Exception as e:
                self.jet.thread.to_reactor(_notice_failed, topic, one_line(e))

    async def _tell_floor(self, topic, floor):
        # Notices on a topic only ever raise its floor (each written
        # expecting the last one it read, and only when above it), so the
        # older ones can be purged: a watch that misses one to the purge
        # gets a higher floor from the next.
        subject = self._subject("sync", topic_token(topic), "floor")
        for _ in range(20):
            known = self._notices.get(topic)
            if known is None:
                held = await D.leader_last(self.jet.nc, self.jet.js, self.stream, subject)
                known = (held.seq, int(held.headers[SEQ])) if held is not None else (0, 0)
                self._notices[topic] = known
            if known[1] >= floor:
                return  # another node told it (or more) already
            future = await self.jet.acks.publish(
                subject,
                b"",
                headers={KIND: "floor", SEQ: str(floor), D.EXPECT_LAST: str(known[0]), WRITER: self.writer},
            )
            try:
                stream_seq = await future
            except Exception as e:
                if not D.is_wrong_last(e):
                    raise
                self._notices.pop(topic, None)  # another node's notice came first: read it
                continue
            self._notices[topic] = (stream_seq, floor)
            await self.jet.js.purge_stream(self.stream, subject=subject, seq=stream_seq)
            return
        raise D.PublishError(0, f"floor of topic {topic!r}: too many concurrent writers")

    async def _oldest(self, wanted, skip=()):
        """
        The oldest updates (markers skipped, stale markers deleted; those
        at a seq in C{skip} too) while C{wanted(held, out)} holds.
        """
        out, start, seen = [], 1, 0
        subject = self._subject("sync", "*")

        async def take(held):
            if held.seq in skip:
                return True
            if held.headers.get(KIND) == "floor":
                topic = token_topic(held.subject.rsplit(".", 1)[1])
                last = self._last.get(topic)
                if last is not None and last[0] != held.seq:
                    await D.delete(self.jet.js, self.stream, held.seq)  # superseded
                return True
            if not wanted(held, out):
                return False
            out.append(held)
            return True

        while True:
            page, _ = await D.direct_batch(self.jet.nc, self.stream, start, PAGE, subject)
            for held in page:
                seen = held.seq
                if not await take(held):
                    return out
            if len(page) < PAGE:
                break
            start = page[-1].seq + 1
        # A replica behind (D.direct_batch) lacks the newest updates: an
        # eviction would free less than the excess, a sweep leave updates
        # due. The rest, up to the newest update known stored, is read from
        # the leader (nothing to read when the replica was current).
        expect = max(self._newest.values(), default=0)
        while seen < expect:
            held = await D.leader_next(self.jet.nc, self.jet.js, self.stream, seen + 1, subject)
            if held is None:
                break  # removed meanwhile
            seen = held.seq
            if not await take(held):
                break
        return out

    async def _evict(self, excess, changes):
        taken = [0]  # bytes the current scan took

        def wanted(held, out):
            if taken[0] >= excess:
                return False
            taken[0] += len(held.data or b"")
            return True

        # A replica behind may still show updates already removed (this
        # node's last eviction, another node's sweep): removing them frees
        # nothing, so the scan goes again past them until the excess is
        # freed or nothing is left.
        gone = set()
        async with self._removal_lock():
            while excess > 0:
                taken[0] = 0
                found = await self._oldest(wanted, gone)
                removed = await self._remove(found, changes)
                excess -= sum(len(h.data or b"") for h in removed)
                if len(removed) == len(found):
                    break
                gone.update(h.seq for h in found)
            await self._tell_floors(changes.floors)

    def expire(self, now, limit):
        d = self._run(self._expire, now, limit)

        def done(result):
            count, more, changes = result
            self._merge(changes)
            return count, more

        return d.addCallback(done)

    def _removal_lock(self):
        # Sweeps and evictions one at a time (on the NATS loop): a second
        # one scans after the first has deleted, so nothing is removed twice.
        if self._removing is None:
            self._removing = asyncio.Lock()
        return self._removing

    async def _expire(self, now, limit):
        changes, gone, count = Changes(), set(), 0

        def wanted(held, out):
            return len(out) < limit - count and float(held.headers[D.EXPIRES]) <= now

        # As in L{_evict}: past updates a replica behind still shows though
        # removed (this sweep's previous batch), which would otherwise fill
        # the batch again and again while the service loops for more.
        async with self._removal_lock():
            while True:
                due = await self._oldest(wanted, gone)
                removed = await self._remove(due, changes)
                count += len(removed)
                if len(removed) == len(due):
                    break  # a full batch, or all that is due
                gone.update(h.seq for h in due)
            await self._tell_floors(changes.floors)
        return count, count >= limit, changes


def _notice_failed(topic, why):
    log.warn("sync: telling the other nodes of removals from {topic!r} failed ({why})", topic=topic, why=why)
