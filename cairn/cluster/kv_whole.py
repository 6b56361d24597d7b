"""
Reading a KV bucket whole, then following it: L{watch_whole} and
L{kv_entries}.

nats-py's C{KeyWatcher} (and C{KeyValue.keys()}, built on it) marks the
end of a bucket's initial values with a C{None}. When the consumer's info
answers that nothing is pending and no message has reached the
subscription yet, it sends that C{None} at once. But the server may have
sent every value already, still on the connection behind the info's
answer: the C{None} then comes first, C{keys()} raises C{NoKeysError} for
a bucket full of keys, and a watch's initial values arrive afterwards as
if they were changes. CI met it: a node restarted on JetStream loaded its
relay quotas and byte counts as empty (C{keys()} found none), and the same
read loads the sync cursors and the mailbox's per-peer limits.

Here the end of the initial values is decided from the stream itself, not
from that marker: its last sequence is read before the watch starts. The
consumer of a watch delivers the last value of each key in stream order,
and the stream's last message is the last value of its key, so once the
entry with that revision has arrived every initial value has. If that
message is removed meanwhile (an entry of a bucket with a TTL expired), a
direct read of it says so when nothing comes for C{recheck} seconds; if
it is still there but the consumer has delivered it (nats-py drops server
markers of a kind it does not know), nothing more is coming either.

This works around the library rather than replacing its watch: the
watch itself (an ordered consumer, its resets) is nats-py's.

When nats-py (2.16, C{nats/js/client.py} C{_JSI}) resets an ordered
consumer -- a gap in the consumer seqs of what it receives
(C{Client._process_msg}), an idle heartbeat naming another last
consumer seq (C{check_for_sequence_mismatch}), or nothing at all, not
even a heartbeat, for two heartbeat intervals (C{activity_check}: 10 s
with its default 5 s heartbeat; the consumer's server died, or the
client was cut off that long) -- it makes a new consumer by start
sequence from C{_sseq + 1}, C{_sseq} being the stream seq of the last
message its connection I{received} for the subscription (queued for the
callback or not). So nothing received is delivered again, and nothing
is skipped -- except from seq 1 when it has received nothing yet
(C{_sseq} is 0): then the whole stream comes, whatever the first
consumer's start (a chosen seq, or the last value per key), which is
what a watch from a chosen seq must survive (the mailbox's, the sync
hub's: they skip or re-apply idempotently what they hold). A
reconnection alone resets nothing: nats-py subscribes again to the same
deliver subject, and the server's consumer, if it survived, goes on (a
gap or the missed heartbeats reset it otherwise). A message dropped as
a slow consumer (the subscription's pending limits) would be lost to
the watch for good: C{_sseq} has passed it already, and nothing resets.
So a bucket followed with L{Followed} hears of its watch's drops
(L{cairn.cluster.nats_errors.Drops}) and reads the bucket whole again
with a new watch: every key's last value comes again, and its owner
applies what is newer than what it holds (each compares KV revisions).
A revocation dropped so still reaches the trust store. A watch
of every key (L{watch_whole}) on a bucket that keeps one value per key
(C{history=1}, every bucket here) can therefore never bring a value
older than one it brought: a reset from 1 comes only before it brought
anything, and the stream holds only each key's last value (measured on
nats-server 2.15.1 by forcing the reset both ways).
"""

import asyncio

from twisted.logger import Logger

from cairn.cluster.common import one_line
from cairn.cluster.stream_watch import end

log = Logger()

#: The inactivity threshold of a one-read watch's consumer (seconds):
#: nats-py's unsubscribe leaves an ephemeral consumer on the server until
#: it has been inactive this long (its default is 5 minutes).
ONE_READ_INACTIVE = 5.0

#: Seconds between attempts to read a bucket again after its watch dropped messages.
REREAD_PAUSE = 1.0

#: What a watch's entry carries for a key deleted or purged.
GONE = ("DEL", "PURGE")


def kv_stream_and_prefix(kv):
    """
    The stream of nats-py KeyValue C{kv} and its keys' subject prefix, for
    an ordered consumer from a chosen sequence on the bucket. nats-py
    keeps both only in private attributes (C{_stream}, C{_pre}; no public
    accessor); a release that renames them fails here with one line.
    """
    try:
        return kv._stream, kv._pre
    except AttributeError:
        raise RuntimeError("nats-py KeyValue has no _stream/_pre any more: cairn/cluster/kv_whole.py") from None


async def watch_whole(kv, js, recheck=1.0, inactive_threshold=None):
    """
    Watch every key of the KV bucket C{kv} (on the JetStream context
    C{js}); return C{(watcher, initial)}: the nats-py watcher, which goes
    on with the changes after C{initial}, and every entry the bucket held
    when the watch started (deleted keys as entries with a C{DEL} or
    C{PURGE} operation). The watcher may still yield a C{None} after
    them (nats-py's marker): skip it. C{inactive_threshold}: seconds after
    which the server removes the watch's consumer once unsubscribed
    (nats-py's default, 5 minutes, for a watch the node keeps).
    """
    from nats.errors import TimeoutError
    from nats.js.errors import NotFoundError

    stream, _ = kv_stream_and_prefix(kv)
    state = (await js.stream_info(stream)).state
    last = state.last_seq if state.messages else 0
    watcher = await kv.watchall(inactive_threshold=inactive_threshold)
    initial = []
    while last:
        try:
            entry = await watcher.updates(timeout=recheck)
        except TimeoutError:
            try:
                await js.get_msg(stream, seq=last)
            except NotFoundError:
                break  # removed since: what came is all there is
            if (await watcher._sub.consumer_info()).delivered.stream_seq >= last:
                break  # delivered and dropped by nats-py (a marker of a kind it does not know)
            continue
        if entry is None:
            continue  # nats-py's marker, perhaps early (see above)
        initial.append(entry)
        if entry.revision >= last:
            break
    return watcher, initial


async def kv_entries(kv, js):
    """
    Every key of the KV bucket C{kv} with its entry, as a list of
    C{(key, entry)} (deleted keys left out), read in one watch.
    """
    watcher, initial = await watch_whole(kv, js, inactive_threshold=ONE_READ_INACTIVE)
    await watcher.stop()  # (nats-py leaves the consumer to the server's inactivity timer)
    latest = {}
    for entry in initial:
        latest[entry.key] = entry
    return [(key, entry) for key, entry in latest.items() if entry.operation not in GONE]


class Followed:
    """
    A KV bucket read whole (L{watch_whole}) and then followed, on the NATS
    loop: L{start} returns the entries it held, and each change after
    them goes to C{changed([entry], False)}. When the watch drops messages
    as a slow consumer, the bucket is read whole again from a new watch
    and all of it goes to C{changed(entries, True)}: the owner applies
    what is newer than what it holds (the dropped change among it).
    L{cancel} ends it (on the loop).

    @ivar rereads: how many times the bucket was read again so.
    """

    def __init__(self, jet, kv, changed):
        self.jet, self.kv, self.changed = jet, kv, changed
        self.rereads = 0
        self._watcher = self._task = None

    async def start(self):
        initial = await self._watch()
        self._task = asyncio.get_running_loop().create_task(self._follow())
        return initial

    def cancel(self):
        if self._watcher is not None:
            self.jet.drops.discard(self._watcher)
        if self._task is not None:
            self._task.cancel()

    async def _watch(self):
        watcher, initial = await watch_whole(self.kv, self.jet.js)
        self._watcher = watcher
        self.jet.drops.add(watcher, self._dropped)
        return initial

    def _dropped(self, error):
        # Within nats-py's read of the socket: nothing awaited here. The
        # follower stops, and a task of its own reads the bucket again.
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return  # reading again already (a drop is told once per message)
        self.jet.drops.discard(watcher)
        log.warn("cairn: the watch of {bucket} dropped changes (slow consumer): reading it again", bucket=self.kv._name)
        self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._again(watcher))

    async def _follow(self):
        try:
            async for entry in self._watcher:
                if entry is not None:
                    self.changed([entry], False)
        except asyncio.CancelledError:
            pass

    async def _again(self, dropped):
        try:
            await end(dropped._sub)
            while True:
                try:
                    initial = await self._watch()
                    break
                except Exception as e:
                    log.warn("cairn: reading {bucket} again failed ({why})", bucket=self.kv._name, why=one_line(e))
                    await asyncio.sleep(REREAD_PAUSE)
        except asyncio.CancelledError:
            return
        self.rereads += 1
        self.changed(initial, True)
        await self._follow()
