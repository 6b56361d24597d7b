"""
How L{cairn.cluster.sync.JetStreamSyncStore} follows what other writers
(other nodes on the same streams) store.

Two ordered consumers, both from "now on" (the start-up load read what
came before):

  - headers only, on the updates' subjects C{<p>.sync.*}: an update
    another writer stored (its C{Cairn-Writer} is not ours) raises the
    topic's head and counts, and the store's L{watch} callbacks are told
    the topic, so the sync service fans it out to this node's
    subscribers. A floor marker another writer stored means its
    retention removed the topic's updates up to the head: the floor
    follows. JetStream reports no deletes, so every removal is also
    told by a floor notice on C{<p>.sync.<topic>.floor} (written by the
    node that removed; L{cairn.cluster.sync}), which this watch covers
    too: the topic's floor rises, and its count and bytes follow, derived
    from the floor (L{cairn.cluster.sync_figures}), so a removal two
    nodes made or told counts once;
  - on the C{cursors} bucket's stream: cursors and access grants
    (C{_access.<device>}) written or purged elsewhere. An entry applies
    only when its KV revision is newer than the one this store last saw
    for the key, so a late echo of an older write never rolls a value back.

Both start from a chosen seq, so a reset of nats-py's ordered consumer
before it received anything replays the stream from seq 1
(L{cairn.cluster.kv_whole} says when): the updates' watch re-applies
what it brings to no effect (a topic's head and floor only rise, an
update is counted once, L{cairn.cluster.sync_figures}), and the cursor
watch skips every revision it holds (the start-up load's included).
"""

import base64
import json

from cairn.cluster.common import WRITER
from cairn.cluster.kv_whole import kv_stream_and_prefix
from cairn.cluster.stream_watch import StreamWatch
from cairn.cluster.sync_figures import Changes
from cairn.cluster.watch import Watchers
from cairn.sync.access import Access

SEQ, KIND = "Cairn-Seq", "Cairn-Kind"
ACCESS = "_access."
_GONE = ("DEL", "PURGE")


def topic_token(topic):
    """A topic name as one subject token (base64url, so any name is a token)."""
    return base64.urlsafe_b64encode(topic.encode()).decode().rstrip("=") or "_"


def token_topic(token):
    """The topic name a subject token of L{topic_token} stands for."""
    if token == "_":
        return ""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


class Follow:
    """
    The watches of a L{cairn.cluster.sync.JetStreamSyncStore} (a mixin:
    it needs C{jet}, C{_last}, C{_notices}, C{_revisions}, C{_saw}, C{_merge}, C{_apply}).
    """

    def _init_follow(self):
        self.watchers = Watchers()
        self._grant_revisions = {}  # device -> KV revision of its access grant

    def watch(self, callback):
        self.watchers.add(callback)

    async def _follow(self):
        from nats.js.api import ConsumerConfig, DeliverPolicy

        base = self.jet.subject("sync") + "."

        async def updated(msg):
            h = msg.headers or {}
            if h.get(WRITER) == self.writer or SEQ not in h:
                return
            token, _, notice = msg.subject[len(base) :].partition(".")
            name = token_topic(token)
            stream_seq, seq = msg.metadata.sequence.stream, int(h[SEQ])
            if notice:
                # Another node's removal (C{<topic>.floor}): everything up to seq is gone.
                if stream_seq > self._notices.get(name, (0, 0))[0]:
                    self._notices[name] = (stream_seq, seq)  # this node's next notice expects it
                self.jet.thread.to_reactor(self._written_elsewhere, name, seq, 0, True)
                return
            if stream_seq > self._last.get(name, (0, 0))[0]:
                self._last[name] = (stream_seq, seq)  # the next publish expects this
            if h.get(KIND) != "floor":
                self._saw(name, stream_seq)  # reads from now on must see it
            size = int(h.get("Nats-Msg-Size") or 0)
            self.jet.thread.to_reactor(self._written_elsewhere, name, seq, size, h.get(KIND) == "floor")

        async def cursor(msg):
            h = msg.headers or {}
            key = msg.subject[len(prefix) :]
            revision = msg.metadata.sequence.stream
            gone = h.get("KV-Operation") in _GONE or h.get("Nats-Marker-Reason") is not None
            if key.startswith(ACCESS):
                self._grant_seen(key[len(ACCESS) :], revision, None if gone else json.loads(msg.data))
                return
            device, token = key.split(".", 1)
            self._cursor_seen(device, token_topic(token), revision, None if gone else int(msg.data))

        # From the stream's end as the load began: an update stored or a
        # removal told while it ran is not missed, and what the load had
        # read already applies again to no effect (sync_figures).
        # (C{sync.>}: the updates and markers, C{sync.*}, and the floor notices, C{sync.*.floor}.)
        config = ConsumerConfig(
            filter_subjects=[self.jet.subject("sync", ">")],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._watch_from,
        )
        # Each resumed from the last seq applied if nats-py drops what it brings (L{StreamWatch}).
        updates = StreamWatch(self.jet, self.jet.subject("sync", ">"), updated, config, headers_only=True)
        self._stream_watches = [updates]
        stream, prefix = kv_stream_and_prefix(self.jet.kv["cursors"])
        config = ConsumerConfig(
            filter_subjects=[prefix + ">"],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._cursors_loaded_upto + 1,
        )
        self._stream_watches.append(StreamWatch(self.jet, prefix + ">", cursor, config, stream=stream))
        for watch in self._stream_watches:
            await watch.start()

    def _grant_seen(self, device, revision, grant):
        """
        On the NATS loop: C{device}'s grant (its JSON; None: back to the
        default) as stored at KV C{revision}, read by the watch or by
        L{catch_up_access}: applied only if newer than the one this store
        holds. Checked and handed to the reactor in one step, so the
        reactor applies grants in revision order, whichever read them.
        """
        if revision <= self._grant_revisions.get(device, 0):
            return
        self._grant_revisions[device] = revision
        self.jet.thread.to_reactor(self._granted_elsewhere, device, grant)

    def _cursor_seen(self, device, name, revision, seq):
        """
        On the NATS loop: C{device}'s cursor on topic C{name} (None:
        purged) as stored at KV C{revision}, read by the watch or answered
        to this store's own write: applied only if newer than the one this
        store holds, as grants are (L{_grant_seen}). So the device's
        cursor moved through another node between this node's write and
        its answer stays moved: applied at the answer, the older value
        replaced it, for good.
        """
        if revision <= self._revisions.get((device, name), 0):
            return
        self._revisions[(device, name)] = revision
        self.jet.thread.to_reactor(self._cursor_elsewhere, device, name, seq)

    # On the reactor thread

    def _written_elsewhere(self, name, seq, size, floor):
        changes = Changes()
        if floor:
            # Retention elsewhere removed every update up to seq: the
            # service's next pump tells subscribers behind it (SyncReset).
            changes.cut(name, seq)
        else:
            changes.add(name, seq, size)
        self._merge(changes)
        self.watchers(name)

    def _granted_elsewhere(self, device, grant):
        self._set_access(device, None if grant is None else Access(tuple(grant["read"]), tuple(grant["write"])))

    def _cursor_elsewhere(self, device, name, seq):
        self._apply(({}, {(device, name): seq}))
