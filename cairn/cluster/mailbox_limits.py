"""
The per-peer overrides of L{cairn.cluster.mailbox.JetStreamMailboxStore}
(C{PUT /mailbox/{peer}/limits} on any node): the KV bucket C{<prefix>_limits},
one key per peer, C{"<max messages>,<max bytes>"} (either empty: none).
A mixin, so that each module stays small.

The store admits against L{IMailboxStore.limits}, its copy of the
bucket: read whole at the start-up load, then kept current by a watch of
the bucket, so that an override set or removed through another node
applies here within the watch's latency. (Before, the copy was read only
at start: another node's override applied here only at this node's next
start, although docs/scaling.md said it was watched.)

Every change reaches the copy through L{_override_seen}, on the NATS
loop, with the KV revision it is stored at -- the load's, the watch's,
this store's own writes' -- and applies only if newer than the one the
copy holds, so the reactor applies them in revision order whichever way
they came: a watch behind this store's own write, or one replaying the
bucket (L{cairn.cluster.kv_whole} says when nats-py does), never rolls
an override back.
"""

from cairn.cluster.common import kv_forget
from cairn.cluster.kv_whole import GONE, Followed
from cairn.mailbox.interfaces import PeerLimits


def _decode(entry):
    """The L{PeerLimits} of a bucket entry, or None for a deleted key or an unreadable value."""
    if entry.operation in GONE or not entry.value:
        return None
    try:
        count, size = entry.value.decode().split(",")
        return PeerLimits(int(count) if count else None, int(size) if size else None)
    except ValueError:
        return None


class Overrides:
    """The overrides of a L{cairn.cluster.mailbox.JetStreamMailboxStore} (it needs C{jet}, C{limits}, C{_run})."""

    _overrides_watch = None  # the bucket followed (kv_whole.Followed; its revisions: the store's _override_revisions)

    async def _load_overrides(self):
        """At the start-up load, on the NATS loop: the bucket read whole into the copy, then followed."""

        def changed(entries, _):
            for entry in entries:
                self._override_seen(entry.key, entry.revision, _decode(entry))

        self._overrides_watch = Followed(self.jet, self.jet.kv["limits"], changed)
        changed(await self._overrides_watch.start(), True)

    def _override_seen(self, peer_id, revision, limits):
        """
        On the NATS loop: C{peer_id}'s override (None: none) as stored at
        KV C{revision}, handed to the reactor only if newer than the one
        the copy holds.
        """
        if revision <= self._override_revisions.get(peer_id, 0):
            return
        self._override_revisions[peer_id] = revision
        self.jet.thread.to_reactor(self._override_changed, peer_id, limits)

    def _override_changed(self, peer_id, limits):
        if limits is None:
            self.limits.pop(peer_id, None)
        else:
            self.limits[peer_id] = limits

    def set_limits(self, peer_id, limits):
        # The copy is changed (L{_override_seen}) before this call's answer.
        return self._run(self._set_limits, peer_id, limits)

    async def _set_limits(self, peer_id, limits):
        if limits.max_messages is None and limits.max_bytes is None:
            await self._forget_override(peer_id)
            return
        value = f"{'' if limits.max_messages is None else limits.max_messages},"
        value += "" if limits.max_bytes is None else str(limits.max_bytes)
        self._override_seen(peer_id, await self.jet.kv["limits"].put(peer_id, value.encode()), limits)

    async def _forget_override(self, peer_id):
        """Remove C{peer_id}'s override; its purge's marker is read for its revision (a purge answers none)."""
        from nats.js.errors import KeyNotFoundError

        kv = self.jet.kv["limits"]
        await kv_forget(kv, peer_id)
        try:
            entry = await kv.get(peer_id)
        except KeyNotFoundError as e:
            entry = e.entry  # the purge's marker (None: never set)
        except Exception:
            entry = None  # removed all the same: the watch brings the marker's revision
        if entry is None:
            self.jet.thread.to_reactor(self._override_changed, peer_id, None)
        else:
            self._override_seen(peer_id, entry.revision, _decode(entry))
