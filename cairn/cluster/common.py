"""
What the JetStream stores share: names of the mailbox stream's headers,
small helpers, and the mapping of any failure to reach or use JetStream
to L{StoreFull} (the services answer STORAGE_ERROR to it).
"""

from twisted.internet import defer
from twisted.logger import Logger

from cairn.mailbox.interfaces import StoreFull
from cairn.storeservice import observe

log = Logger()

#: Messages read per direct-get page.
PAGE = 256
#: The tombstone's C{Cairn-Kind}; its C{Cairn-Expires} is when the id may be reused.
KIND, DONE = "Cairn-Kind", "done"
#: Which store instance wrote a message (its watch skips its own).
WRITER = "Cairn-Writer"
#: A receipt's: the size in bytes of the message it is about (other writers' watches follow removals).
SIZE = "Cairn-Size"
#: A tombstone's: the C{Cairn-Writer} of the message it replaces (another
#: writer's watch counts the removal out of its depths only where the
#: message was counted in: L{cairn.cluster.mailbox_follow}).
MESSAGE_WRITER = "Cairn-Message-Writer"
#: A buried message's tombstone's (L{cairn.cluster.mailbox_room}): the seq of the message it stands
#: for, deleted before it -- written by whichever node pays the record, so every store counts that
#: message out once, whoever wrote the tombstone (L{cairn.cluster.mailbox_follow}).
REMOVES = "Cairn-Removes"


def recipient_of(held):
    return held.subject.split(".")[2]


def is_message(held):
    return held.headers.get(KIND) is None


def float_text(value):
    return repr(float(value))


async def kv_forget(kv, key):
    from nats.js.errors import KeyNotFoundError

    try:
        await kv.purge(key)
    except KeyNotFoundError:
        pass


async def open_bucket(js, config, nc=None, attempts=5, pause=0.2):
    """
    The KV bucket C{config} names: made if it does not exist, else opened as
    it is (another version of cairn may have made it with other settings).

    Two nodes starting at once on a replicated cluster race: the second
    create is refused while the first one's bucket is not yet readable, so
    opening it may still say it does not exist. Both are tried again a few
    times, pausing a little longer each time, before the last error goes up.

    With C{nc} (the connection the bucket's writes take), return only once
    the bucket answers a publish there (L{cairn.cluster.ready.answering}),
    as the layout's streams and buckets do: a bucket just made may have no
    leader yet, and its first write would be refused.
    """
    import asyncio

    from nats.js.errors import BadRequestError, BucketNotFoundError

    for attempt in range(attempts):
        try:
            kv = await js.create_key_value(config=config)
            break
        except BadRequestError:
            pass
        try:
            kv = await js.key_value(config.bucket)
            break
        except BucketNotFoundError:
            if attempt == attempts - 1:
                raise
        await asyncio.sleep(pause * (attempt + 1))
    if nc is not None:
        from cairn.cluster.ready import answering

        await answering(nc, [(f"KV_{config.bucket}", f"$KV.{config.bucket}.probe")])
    return kv


async def subscribe_in_place(nc, subject, cb, timeout=10.0):
    """
    Subscribe C{cb} to C{subject} on C{nc}; return the subscription once
    the server has it, i.e. once it routes what is published to C{subject}
    from now on, by any connection.

    C{nc.flush()} does not prove it: nats-py (2.16) writes flush's PING to
    the socket at once, ahead of the SUB still queued for its flusher task,
    so the PONG can come back before the server has read the SUB (and a
    server slow to read the rest then drops what another node publishes
    meanwhile; a test saw notices lost that way under load). A message
    published to an inbox of our own, once subscribed, goes through the
    same queue behind the SUB, and NATS handles one connection's commands
    in order: when it comes back, the SUB is in place. (C{timeout}: as
    long as C{flush} waits for its PONG.)
    """
    subscription = await nc.subscribe(subject, cb=cb)
    probe = nc.new_inbox()
    echo = await nc.subscribe(probe)
    try:
        await nc.publish(probe, b"")
        await echo.next_msg(timeout=timeout)
    finally:
        await echo.unsubscribe()
    return subscription


def one_line(error):
    """The first line of C{error}'s message (at most 200 characters), for a log line or a reason."""
    return (str(error).strip() or type(error).__name__).splitlines()[0][:200]


def storage_error(failure):
    """Any failure to reach or use JetStream as L{StoreFull}, so the service answers STORAGE_ERROR."""
    if failure.check(StoreFull):
        return failure
    error = failure.value
    log.warn("cairn: JetStream store call failed: {why}", why=one_line(error))
    raise StoreFull(f"JetStream unavailable ({one_line(error)})")


class StoreCalls:
    """
    What every JetStream store does with its L{cairn.cluster.connection.JetStream}
    (C{self.jet}): name subjects, run a coroutine on the NATS loop (a failure
    becomes L{StoreFull}), and remember it until it ends, so that
    L{flushed} can wait for every call in flight (C{self._pending}, a set).
    """

    def _subject(self, *parts):
        return self.jet.subject(*parts)

    def _run(self, function, *args):
        d = self.jet.run(function, *args).addErrback(storage_error)
        self._pending.add(d)
        return d.addBoth(lambda r: (self._pending.discard(d), r)[1])

    def flushed(self):
        """A Deferred firing once every call in flight has ended."""
        return defer.DeferredList([observe(d) for d in list(self._pending)]).addCallback(lambda _: None)
