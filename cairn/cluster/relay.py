"""
L{KVRelayStore}: the relay's per-peer limits and byte counts in the
JetStream KV bucket C{<prefix>_relay} (keys C{limits.<peer>} and
C{usage.<peer>}, values as text).

The relay hands L{save_usage} absolute figures every flush interval.
This store remembers the figures it last read or wrote per peer and
writes the difference as a compare-and-set add on the key's revision: if
another writer (another node) moved the figure meanwhile, the difference
is added to theirs, so counts from several writers add up instead of
overwriting each other. (This node's own figures, used for its quota
checks, learn of the others' at the next load: the overshoot is bounded
by the flush interval times the number of nodes, see docs/scaling.md.)
"""

import asyncio

from zope.interface import implementer

from cairn.cluster.common import storage_error
from cairn.cluster.direct import is_wrong_last
from cairn.cluster.kv_whole import kv_entries
from cairn.relay.interfaces import IRelayStore, RelayLimits


def _number(text):
    return int(text) if text else None


@implementer(IRelayStore)
class KVRelayStore:
    """The relay's limits and byte counts in a L{cairn.cluster.connection.JetStream}'s C{relay} bucket."""

    def __init__(self, jetstream):
        self.jet = jetstream
        self._saved = {}  # peer_id -> (sent, received) as last read or written here
        self._saving = None  # asyncio.Lock (on the NATS loop)

    @property
    def _kv(self):
        return self.jet.kv["relay"]

    def _run(self, function, *args):
        return self.jet.when_ready().addCallback(lambda _: self.jet.run(function, *args)).addErrback(storage_error)

    def load(self):
        return self._run(self._load)

    async def _load(self):
        limits, usage = {}, {}
        for key, entry in await kv_entries(self._kv, self.jet.js):
            kind, peer_id = key.split(".", 1)
            a, b = entry.value.decode().split(",")
            if kind == "limits":
                limits[peer_id] = RelayLimits(_number(a), _number(b))
            else:
                usage[peer_id] = (int(a), int(b))
        self._saved = dict(usage)
        return limits, usage

    def set_limits(self, peer_id, limits):
        return self._run(self._set_limits, peer_id, limits)

    async def _set_limits(self, peer_id, limits):
        from nats.js.errors import KeyNotFoundError

        if limits.is_default():
            try:
                await self._kv.purge(f"limits.{peer_id}")
            except KeyNotFoundError:
                pass
            return
        a = "" if limits.max_bytes is None else str(limits.max_bytes)
        b = "" if limits.max_rate is None else str(limits.max_rate)
        await self._kv.put(f"limits.{peer_id}", f"{a},{b}".encode())

    def save_usage(self, usage):
        return self._run(self._save_usage, dict(usage))

    async def _save_usage(self, usage):
        # One save at a time, in call order: each adds its delta to the
        # base the one before it wrote (two at once would both add the
        # same bytes), and an empty save fires after those in flight.
        if self._saving is None:
            self._saving = asyncio.Lock()
        async with self._saving:
            await self._save_usage_now(usage)

    async def _save_usage_now(self, usage):
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        for peer_id, (sent, received) in usage.items():
            base = self._saved.get(peer_id, (0, 0))
            delta = (sent - base[0], received - base[1])
            if (sent, received) == (0, 0):
                delta = None  # a reset (the operator's): absolute zero
            key = f"usage.{peer_id}"
            for _ in range(20):
                try:
                    entry = await self._kv.get(key)
                    revision = entry.revision
                    current = tuple(int(x) for x in entry.value.decode().split(","))
                except KeyNotFoundError:
                    revision, current = 0, (0, 0)
                new = (0, 0) if delta is None else (current[0] + delta[0], current[1] + delta[1])
                value = f"{new[0]},{new[1]}".encode()
                try:
                    if revision:
                        await self._kv.update(key, value, last=revision)
                    else:
                        await self._kv.create(key, value)
                except Exception as e:
                    if isinstance(e, KeyWrongLastSequenceError) or is_wrong_last(e):
                        continue  # another writer added first: add to theirs
                    raise
                self._saved[peer_id] = (sent, received)
                break

    def purge(self, peer_id):
        return self._run(self._purge, peer_id)

    async def _purge(self, peer_id):
        from nats.js.errors import KeyNotFoundError

        for key in (f"limits.{peer_id}", f"usage.{peer_id}"):
            try:
                await self._kv.purge(key)
            except KeyNotFoundError:
                pass
        self._saved.pop(peer_id, None)
