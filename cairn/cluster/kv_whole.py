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
a slow consumer (the subscription's pending limits) is lost to the
watch for good: C{_sseq} has passed it already, and nothing resets
(the connection logs the error: L{cairn.cluster.nats_errors}). A watch
of every key (L{watch_whole}) on a bucket that keeps one value per key
(C{history=1}, every bucket here) can therefore never bring a value
older than one it brought: a reset from 1 comes only before it brought
anything, and the stream holds only each key's last value (measured on
nats-server 2.15.1 by forcing the reset both ways).
"""

#: The inactivity threshold of a one-read watch's consumer (seconds):
#: nats-py's unsubscribe leaves an ephemeral consumer on the server until
#: it has been inactive this long (its default is 5 minutes).
ONE_READ_INACTIVE = 5.0

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
