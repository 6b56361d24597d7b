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
