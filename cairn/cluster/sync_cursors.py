"""
The cursors and access grants of L{cairn.cluster.sync.JetStreamSyncStore}:
its KV bucket C{<prefix>_cursors}, beside the updates' stream.

A cursor is the key C{<device>.<topic token>}, raised with
compare-and-set (never lower); a device's access grant (docs/protocol.md
§24.9) is the key C{_access.<device>} of the same bucket (JSON
C{{"read": [...], "write": [...]}}; peer ids never start with C{_}).
Other writers' changes arrive through the watch (L{cairn.cluster.sync_follow}).
This store's own writes apply at the KV revision they are stored at, as
the watch's entries do (L{Follow._cursor_seen}, L{Follow._grant_seen}):
in revision order, whichever brought them, before the call's answer.
"""

import asyncio
import json

from twisted.internet import defer

from cairn.cluster import direct as D
from cairn.cluster.kv_whole import kv_entries, kv_stream_and_prefix
from cairn.cluster.read_through import ReadThrough
from cairn.cluster.sync_follow import ACCESS, token_topic, topic_token
from cairn.sync.access import Access
from cairn.sync.interfaces import Topic


class Cursors:
    """
    The cursor and access-grant calls of a L{cairn.cluster.sync.JetStreamSyncStore}
    (a mixin: it needs C{jet}, C{_run}, C{_set_access}, the figures'
    C{_topics} and C{_cursors}, and L{cairn.cluster.sync_follow.Follow}'s
    C{_grant_revisions}, C{_grant_seen} and C{_cursor_seen}).
    """

    def _init_cursors(self):
        self._revisions = {}  # (device, topic) -> KV revision
        self._cursor_locks = {}  # cursor key -> asyncio.Lock (on the NATS loop)
        self._cursors_loaded_upto = 0  # the last cursors-bucket revision the start-up load read
        # catch_up_access's reads (bounded: cairn.cluster.read_through).
        self._grant_reads = ReadThrough(self.jet, self._read_grants, name="sync", what="access grant(s)")

    async def _load_cursors(self):
        """C{(cursors, access)} as stored: {(device, topic): seq}, {device: L{Access}}."""
        cursors, access = {}, {}
        for key, entry in await kv_entries(self.jet.kv["cursors"], self.jet.js):
            self._cursors_loaded_upto = max(self._cursors_loaded_upto, entry.revision)
            if key.startswith(ACCESS):
                grant = json.loads(entry.value)
                access[key[len(ACCESS) :]] = Access(tuple(grant["read"]), tuple(grant["write"]))
                self._grant_revisions[key[len(ACCESS) :]] = entry.revision
                continue
            device, token = key.split(".", 1)
            cursors[(device, token_topic(token))] = int(entry.value)
            self._revisions[(device, token_topic(token))] = entry.revision
        return cursors, access

    def subscribe(self, device, cursors):
        wanted = {}
        for name, seq in cursors.items():
            t = self._topics.get(name, Topic())
            held = self._cursors.get(device, {}).get(name)
            if seq is not None:
                wanted[name] = max(0, min(seq, t.head))
            else:
                wanted[name] = held if held is not None else t.floor
        changed = {n: v for n, v in wanted.items() if self._cursors.get(device, {}).get(n) != v}
        return self._run(self._put_cursors, device, changed).addCallback(lambda _: wanted)

    async def _put_cursors(self, device, values):
        kv = self.jet.kv["cursors"]
        for name, value in values.items():
            self._cursor_seen(device, name, await kv.put(f"{device}.{topic_token(name)}", str(value).encode()), value)

    def set_cursor(self, device, topic, seq):
        held = self._cursors.get(device, {}).get(topic)
        if held is None:
            return defer.succeed(None)
        head = self._topics.get(topic, Topic()).head
        return self._run(self._raise_cursor, device, topic, min(seq, head))

    async def _raise_cursor(self, device, topic, seq):
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv, key = self.jet.kv["cursors"], f"{device}.{topic_token(topic)}"
        # One raise of a cursor at a time from this node (a device acknowledges
        # a burst of updates at once): compare-and-set then only races other
        # nodes, not this node's own requests.
        async with self._cursor_locks.setdefault(key, asyncio.Lock()):
            for _ in range(20):
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError as e:
                    if e.entry is not None:  # the purge's marker, with its revision
                        self._cursor_seen(device, topic, e.entry.revision, None)
                    return None  # unsubscribed (or purged) meanwhile
                current = int(entry.value)
                if seq <= current:
                    self._cursor_seen(device, topic, entry.revision, current)
                    return current
                try:
                    self._cursor_seen(device, topic, await kv.update(key, str(seq).encode(), last=entry.revision), seq)
                    return seq
                except KeyWrongLastSequenceError:
                    continue  # another writer moved it: never lower it
        raise D.PublishError(0, f"cursor {device}/{topic}: too many concurrent writers")

    def purge(self, device):
        names = list(self._cursors.get(device, {}))
        return self._run(self._purge, device, names).addCallback(lambda _: len(names))

    async def _purge(self, device, names):
        for name in names:
            self._cursor_seen(device, name, await self._purge_key(f"{device}.{topic_token(name)}"), None)
        self._grant_seen(device, await self._purge_key(ACCESS + device), None)

    async def _purge_key(self, key):
        """
        Purge C{key} of the cursors bucket as nats-py's C{KeyValue.purge}
        does (a rollup marker), but return the marker's revision, which
        C{purge} drops: the purge then applies in revision order too.
        """
        from nats.js.api import Header
        from nats.js.kv import KV_OP, KV_PURGE, MSG_ROLLUP_SUBJECT

        stream, prefix = kv_stream_and_prefix(self.jet.kv["cursors"])
        headers = {KV_OP: KV_PURGE, Header.ROLLUP: MSG_ROLLUP_SUBJECT}
        return (await self.jet.js.publish(prefix + key, headers=headers, stream=stream)).seq

    # Access grants (cached; other writers' grants arrive through the watch)

    def set_access(self, device, access):
        # Applied at the revision it is stored at, as another node's grant is (L{Follow._grant_seen}),
        # before this call's answer: a newer grant stored meanwhile through another node, which the
        # watch may have applied already, stays (applied at the answer, the older one replaced it).
        return self._run(self._put_access, device, access).addCallback(lambda _: access)

    async def _put_access(self, device, access):
        if access is None:
            revision, grant = await self._purge_key(ACCESS + device), None
        else:
            grant = access.to_json()
            revision = await self.jet.kv["cursors"].put(ACCESS + device, json.dumps(grant).encode())
        self._grant_seen(device, revision, grant)

    def catch_up_access(self, device):
        """
        Read C{device}'s grant key (a grant made on another node a moment
        ago counts before the watch brings it; L{ISyncStore.catch_up_access}),
        within the bounds of L{cairn.cluster.read_through}: read again at
        most once a second, 0.5 s at most, never while NATS is not connected.
        """
        return self._grant_reads.ask([device]).addCallback(lambda unsure: device not in unsure)

    async def _read_grants(self, devices):
        """Read the grant keys of C{devices} and apply what is newer (L{Follow._grant_seen})."""
        from nats.js.errors import KeyNotFoundError

        kv = self.jet.kv["cursors"]

        async def read(device):
            try:
                entry = await kv.get(ACCESS + device)
            except KeyNotFoundError as e:
                entry = e.entry  # purged (back to the default): the marker, with its revision; never granted: None
            if entry is not None:
                self._grant_seen(device, entry.revision, json.loads(entry.value) if entry.value else None)

        await asyncio.gather(*map(read, devices))
