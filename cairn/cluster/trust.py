"""
L{KVTrustStore}: the trust store in the JetStream KV bucket C{<prefix>_trust}.

One key per peer id, its value the record as JSON (the identity key in
hex). As in the SQLite store every record is also held in memory, so
L{is_paired} stays a dictionary look-up; here that mirror is fed by a
watch on the bucket, so a pairing or a revocation written by another
node reaches this one's L{is_paired} within the watch's latency (a
revocation also reaches the watchers registered with L{watch}, so the
node can end the peer's sessions).

Writes are compare-and-set on the key's revision: a write based on a
record another writer has changed since is refused by NATS; the store
then reloads the key and, if the peer's state is still the one the
change was decided on (only C{last_seen} or the name moved), writes again;
otherwise the call fails with L{Conflict} and the mirror shows the
other writer's record. C{last_seen} is written lazily, as in SQLite.
"""

import json

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster.common import storage_error
from cairn.cluster.direct import is_wrong_last
from cairn.cluster.kv_whole import Followed
from cairn.cluster.read_through import ReadThrough
from cairn.cluster.watch import Watchers
from cairn.crypto.identity import parse_peer_id
from cairn.pairing.interfaces import PAIRED, PENDING, ITrustStore, PeerRecord
from cairn.pairing.trust import TrustStoreBase

log = Logger()


class Conflict(Exception):
    """Another node changed the peer's trust state first; nothing was written."""


def _encode(record, revoked_at=None):
    return json.dumps(
        {
            "identity_key": record.identity_key.hex(),
            "state": record.state,
            "name": record.name,
            "method": record.method,
            "requested_at": record.requested_at,
            "paired_at": record.paired_at,
            "last_seen": record.last_seen,
            "revoked_at": revoked_at,
        }
    ).encode()


def _decode(peer_id, value):
    data = json.loads(value)
    return PeerRecord(
        peer_id,
        bytes.fromhex(data["identity_key"]),
        data["state"],
        name=data["name"],
        method=data["method"],
        requested_at=data["requested_at"],
        paired_at=data["paired_at"],
        last_seen=data["last_seen"],
    )


@implementer(ITrustStore)
class KVTrustStore(TrustStoreBase):
    """The trust store in a L{cairn.cluster.connection.JetStream}'s C{trust} bucket."""

    def __init__(self, jetstream):
        super().__init__()
        self.jet = jetstream
        self._revisions = {}  # peer_id -> KV revision of the record we hold
        self._states = {}  # peer_id -> the state at that revision (what changes are decided on)
        self._writing = {}  # peer_id -> writes in flight (the watch's echo of them is ignored)
        self._chains = {}  # peer_id -> fires when this store's last write to it is done
        self._seen = {}
        self._watcher = None
        # catch_up's reads of peers the mirror does not know (bounded: cairn.cluster.read_through).
        self.reads = ReadThrough(
            jetstream,
            lambda peer_ids: self._read(peer_ids),
            lambda entries: self._changes(entries, True),
            "trust",
            "peer(s) not known here",
        )
        #: Called with (peer_id, record or None) for each change made by another writer.
        self.watchers = Watchers()

    def watch(self, callback):
        self.watchers.add(callback)

    @property
    def _kv(self):
        return self.jet.kv["trust"]

    def start(self):
        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._follow))

        def loaded(_):
            records = self._records.values()
            log.info(
                "trust store loaded: {paired} paired, {pending} pending",
                paired=sum(r.state == PAIRED for r in records),
                pending=sum(r.state == PENDING for r in records),
            )

        return d.addCallback(loaded)

    async def _follow(self):
        """Load every record, then keep the mirror current from the bucket's watch (read again after a drop)."""
        self._watcher = Followed(
            self.jet, self._kv, lambda entries, _: self.jet.thread.to_reactor(self._changes, entries, True)
        )
        initial = await self._watcher.start()
        self.jet.thread.to_reactor(self._changes, initial)

    def _changes(self, entries, remote=False, force=False):
        for entry in entries:
            peer_id, revision = entry.key, entry.revision
            if not force and (peer_id in self._writing or revision <= self._revisions.get(peer_id, 0)):
                continue  # our own write (in flight or applied)
            self._revisions[peer_id] = revision
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                record = None
                self._records.pop(peer_id, None)
            else:
                record = _decode(peer_id, entry.value)
                self._records[peer_id] = record
            self._states[peer_id] = record.state if record else None
            if remote:
                self.watchers(peer_id, record)

    # Durability hooks of TrustStoreBase

    def _save(self, record, revoked_at=None):
        # The record carries its last_seen (touch() keeps it in memory).
        self._seen.pop(record.peer_id, None)
        return self._write(record.peer_id, _encode(record, revoked_at), record.state)

    def _delete(self, peer_id):
        return self._write(peer_id, None, None)

    def _write(self, peer_id, value, state):
        # This store's writes to one key go one after the other, each on
        # the revision the previous one made (they were decided in that order).
        self._writing[peer_id] = self._writing.get(peer_id, 0) + 1
        previous = self._chains.get(peer_id)
        d = defer.Deferred()
        if previous is None:
            d.callback(None)
        else:
            previous.addBoth(lambda _: d.callback(None))
        d.addCallback(lambda _: self._write_now(peer_id, value, state))
        self._chains[peer_id] = tail = defer.Deferred()

        def settled(result):
            if self._chains.get(peer_id) is tail:
                del self._chains[peer_id]
            tail.callback(None)
            return result

        return d.addBoth(settled)

    def _write_now(self, peer_id, value, state):
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        expected = self._revisions.get(peer_id, 0)
        decided_on = self._states.get(peer_id)

        async def write(last):
            kv = self._kv
            if value is None:
                await kv.delete(peer_id, last=last or None)
                return None
            if last:
                return await kv.update(peer_id, value, last=last)
            return await kv.create(peer_id, value)

        async def attempt():
            try:
                return await write(expected)
            except Exception as e:
                if not (isinstance(e, KeyWrongLastSequenceError) or is_wrong_last(e)):
                    raise
            # Someone else wrote the key: write again on their revision only
            # if the state this change was decided on still holds.
            try:
                entry = await self._kv.get(peer_id)
            except KeyNotFoundError:
                entry = None
            current = _decode(peer_id, entry.value).state if entry is not None and entry.value else None
            if current not in (decided_on, state):
                raise Conflict(f"{peer_id}'s trust state was changed by another node", entry)
            return await write(entry.revision if entry is not None else 0)

        def written(revision):
            self._revisions[peer_id] = max(self._revisions.get(peer_id, 0), revision or 0)
            self._states[peer_id] = state
            return None

        def refused(failure):
            if failure.check(Conflict) and len(failure.value.args) > 1 and failure.value.args[1] is not None:
                self._changes([failure.value.args[1]], remote=True, force=True)
            return failure

        def done(result):
            self._writing[peer_id] -= 1
            if not self._writing[peer_id]:
                del self._writing[peer_id]
            return result

        # Conflict as it is; any other failure (no room at JetStream's limit, NATS away) as StoreFull.
        d = self.jet.run(attempt).addCallbacks(written, refused).addBoth(done)
        return d.addErrback(lambda f: f if f.check(Conflict) else storage_error(f))

    def catch_up(self, peer_ids):
        """
        Read from the bucket those of C{peer_ids} the mirror does not know
        as paired, so that a pairing (or an approval) made on another node a
        moment ago counts here before the watch brings it (docs/scaling.md,
        "Pairing on any node"). Within the bounds of
        L{cairn.cluster.read_through}; only while NATS is connected; valid
        peer ids only (never a wildcard key); a peer already being read
        waits for that read, so callers fire in the order they asked; never
        fails (an error leaves the mirror as it was). Fires with the peers
        still not known as paired that could not be checked: their read
        failed, or NATS was not connected when they were due a read (beyond
        the bounds, the mirror's answer stands: those are not in it).
        """
        asked = [p for p in peer_ids if not self.is_paired(p) and _is_peer_id(p)]
        return self.reads.ask(asked).addCallback(lambda unsure: frozenset(p for p in unsure if not self.is_paired(p)))

    async def _read(self, peer_ids):
        """The bucket's entries of C{peer_ids} (those it holds), read at once."""
        import asyncio

        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        async def read(peer_id):
            try:
                return await self._kv.get(peer_id)
            except (KeyNotFoundError, KeyDeletedError):
                return None

        entries = await asyncio.gather(*map(read, peer_ids))
        return [entry for entry in entries if entry is not None]

    def _save_last_seen(self, peer_id, when):
        self._seen[peer_id] = when
        return defer.succeed(None)

    def flush(self):
        """Write the pending last-seen times; fires once written."""
        seen, self._seen = self._seen, {}
        writes = []
        for peer_id in sorted(seen):
            record = self._records.get(peer_id)
            if record is not None:
                d = self._write(peer_id, _encode(record), record.state)
                writes.append(d.addErrback(_ignore_conflict).addErrback(storage_error))
        # StoreFull (at JetStream's limit, say): one line in the caller's log, no FirstError left unhandled.
        d = defer.gatherResults(writes, consumeErrors=True)
        return d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)

    def stop(self):
        """Stop following the bucket."""
        if self._watcher is not None:
            self.jet.thread.call(self._watcher.cancel)


def _is_peer_id(value):
    """Whether C{value} is a peer id (so a key of the bucket, never a wildcard)."""
    try:
        parse_peer_id(value)
    except (TypeError, ValueError):
        return False
    return True


def _ignore_conflict(failure):
    failure.trap(Conflict)
    return None
