"""
Reads and small writes over the NATS wire, run on the NATS loop.

nats-py has no call for a batched direct get (ADR-31: C{"batch"} with
C{"next_by_subj"}, answered by a run of messages and an end-of-batch
status), which is how the stores page through a subject -- one round trip
per page instead of one per message -- so L{direct_batch} makes the
request itself. Everything else is nats-py's. (The pipelined publishes
are L{cairn.cluster.pubacks}.)
"""

import asyncio
import functools
import json

import attr

#: Header names the stores write (values are ASCII text).
SENDER, RECIPIENT, ID, STORED, EXPIRES, STATUS, AT, TOPIC = (
    "Cairn-Sender",
    "Cairn-Recipient",
    "Cairn-Id",
    "Cairn-Stored",
    "Cairn-Expires",
    "Cairn-Status",
    "Cairn-At",
    "Cairn-Topic",
)
EXPECT_LAST = "Nats-Expected-Last-Subject-Sequence"
#: JetStream's error codes for a failed C{EXPECT_LAST} check ("wrong last
#: sequence: N", and the clustered form without the N).
WRONG_LAST_SEQUENCE = (10071, 10164)
#: ... and for deleting a message that is not there.
NO_MESSAGE_FOUND = 10057
#: ... and for deleting one another delete removed first, as a single
#: server may answer while both run (a cluster answers NO_MESSAGE_FOUND).
SEQUENCE_NOT_FOUND = 10043


@attr.s(frozen=True, auto_attribs=True)
class Held:
    """One message read from a stream."""

    subject: str
    seq: int
    headers: dict
    data: bytes


class ReadError(Exception):
    """A direct get was answered with an error status."""


class NotConnected(Exception):
    """The client is not connected to NATS now (reconnecting): a read fails at once, as a write does."""

    def __init__(self):
        super().__init__("not connected to NATS")


#: The batch reads under way: id(their subscription) -> (it, the replies dropped); held, so ids are not reused.
_reading = {}


def dropped(error):
    """
    nats-py dropped a message as a slow consumer (C{error}, from the
    connection's error callback, on the NATS loop): if it is a reply to a
    batch read under way (L{direct_batch}), that read fails with
    L{ReadError} instead of returning without it (its caller reads again,
    or fails as for any read). Whether it was one.
    """
    reading = _reading.get(id(getattr(error, "sub", None)))
    if reading is None:
        return False
    reading[1].append(error)
    return True


def _lost(stream, sub):
    """The L{ReadError} of a batch read whose replies C{sub} dropped, or None."""
    lost = _reading[id(sub)][1]
    if lost:
        return ReadError(f"direct get from {stream}: {len(lost)} replies dropped by this node (slow consumer)")
    return None


def _connected(nc):
    # While nats-py reconnects it buffers what is sent: a request would wait
    # out its whole timeout for an answer that cannot come.
    if not nc.is_connected:
        raise NotConnected()


#: A direct get no replica answers (503 no responders: the stream is
#: electing a leader) is asked again for up to this many seconds, after
#: pauses from UNAVAILABLE_PAUSE s doubling to 1 s; then its error stands.
UNAVAILABLE_FOR = 10.0
UNAVAILABLE_PAUSE = 0.05


def _retry_unavailable(read):
    """
    Wrap a direct-get coroutine function so that a 503 (raised by nats-py
    as C{NoRespondersError}, or a L{ReadError} "...: 503") is tried again
    within L{UNAVAILABLE_FOR}: a leader election must not fail a read.
    """

    @functools.wraps(read)
    async def retried(*args, **kwargs):
        from nats.errors import NoRespondersError

        loop = asyncio.get_running_loop()
        end, pause = loop.time() + UNAVAILABLE_FOR, UNAVAILABLE_PAUSE
        while True:
            try:
                return await read(*args, **kwargs)
            except (NoRespondersError, ReadError) as e:
                # A ReadError's text is "direct get from STREAM: STATUS ..." (below).
                unavailable = isinstance(e, NoRespondersError) or str(e).split(": ", 1)[-1].startswith("503")
                if not unavailable or loop.time() >= end:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    return retried


@_retry_unavailable
async def direct_batch(nc, stream, start, batch, subject=None, min_last=0, timeout=5.0, max_bytes=0, large=False):
    """
    Up to C{batch} messages of C{stream} from seq C{start} on (those on
    C{subject}, wildcards allowed), in order; returns C{(messages, last)}
    with C{last} the seq of the last one. With C{max_bytes}, the server
    stops once it has sent that many bytes (subjects, headers and
    payloads; at least one message): fewer than C{batch} then does not
    mean that there are no more.

    Any replica answers a direct get (the one on the server the client
    is connected to first), and a follower may not have applied a write
    the leader has acknowledged: the answer may lack the newest messages.
    The callers that must see a write check for it and ask the leader
    (L{leader_next}).

    @param min_last: sent as C{min_last_seq} (ADR-53), which would have a
        replica that has not applied the stream up to this seq pass the
        request on; but nats-server ignores it (its read-after-write was
        withdrawn before 2.12 shipped, and 2.15 still has none), so it
        guarantees nothing today.
    @param large: the read is expected to bring back many messages (a
        recipient's backlog): its replies are taken by a subscription
        callback (L{_replies_by_callback}) rather than by next_msg().
    """
    _connected(nc)
    request = {"seq": max(start, 1), "batch": batch}
    if subject is not None:
        request["next_by_subj"] = subject
    if min_last:
        request["min_last_seq"] = min_last
    if max_bytes:
        request["max_bytes"] = max_bytes
    inbox = nc.new_inbox()
    if large:
        return await _replies_by_callback(nc, stream, request, inbox, timeout)
    sub = await nc.subscribe(inbox)
    _reading[id(sub)] = (sub, [])
    out, last = [], 0
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        while True:
            msg = await sub.next_msg(timeout=timeout)
            headers = msg.headers or {}
            status = headers.get("Status")
            if status:
                last = int(headers.get("Nats-Last-Sequence") or 0)
                if status not in ("204", "404"):
                    raise ReadError(f"direct get from {stream}: {status} {headers.get('Description', '')}".strip())
                if (error := _lost(stream, sub)) is not None:
                    raise error
                return out, last
            out.append(Held(headers["Nats-Subject"], int(headers["Nats-Sequence"]), headers, msg.data))
    finally:
        _reading.pop(id(sub), None)
        await sub.unsubscribe()


async def _replies_by_callback(nc, stream, request, inbox, timeout):
    """
    L{direct_batch}'s request, its replies taken by a subscription
    callback, not by awaiting next_msg() for each: that makes a task and
    a wait_for per message (nats-py 2.16), which cost more than the
    message's parsing when a read brings back a recipient's whole backlog
    (4,000 x 1 KiB: 125-138 ms instead of 269-278 ms). C{timeout} bounds
    the wait for each reply. (Small reads keep next_msg(): with this, the
    senders' receipt reads during a drain after a restart at R3 were
    measured slower overall, for a reason not found.)
    """
    loop = asyncio.get_running_loop()
    out, end, heard = [], loop.create_future(), [loop.time()]
    end.add_done_callback(lambda f: f.cancelled() or f.exception())  # one that comes after a timeout

    async def reply(msg):
        heard[0] = loop.time()
        if end.done():
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if not status:
            out.append(Held(headers["Nats-Subject"], int(headers["Nats-Sequence"]), headers, msg.data))
        elif status in ("204", "404"):
            end.set_result(int(headers.get("Nats-Last-Sequence") or 0))
        else:
            end.set_exception(ReadError(f"direct get from {stream}: {status} {headers.get('Description', '')}".strip()))

    sub = await nc.subscribe(inbox, cb=reply)
    _reading[id(sub)] = (sub, [])
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        while not end.done():
            idle = loop.time() - heard[0]
            if idle >= timeout:
                from nats.errors import TimeoutError as NatsTimeout

                raise NatsTimeout()
            await asyncio.wait((end,), timeout=timeout - idle)
        last = end.result()
        if (error := _lost(stream, sub)) is not None:
            raise error
        return out, last
    finally:
        _reading.pop(id(sub), None)
        await sub.unsubscribe()


async def direct_all(nc, stream, subject, start=1, page=1000, upto=None):
    """Every message of C{stream} on C{subject} from C{start} (to C{upto} inclusive), paging."""
    out = []
    while True:
        held, _ = await direct_batch(nc, stream, start, page, subject)
        for message in held:
            if upto is not None and message.seq > upto:
                return out
            out.append(message)
        if len(held) < page:
            return out
        start = held[-1].seq + 1


@_retry_unavailable
async def direct_seq(nc, stream, seq, timeout=5.0):
    """The message at C{seq} of C{stream}, or None."""
    _connected(nc)
    msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=timeout)
    headers = msg.headers or {}
    if headers.get("Status"):
        if headers["Status"] == "404":
            return None
        raise ReadError(f"direct get from {stream}: {headers['Status']} {headers.get('Description', '')}".strip())
    return Held(headers["Nats-Subject"], int(headers["Nats-Sequence"]), headers, msg.data)


@_retry_unavailable
async def direct_last(nc, stream, subject, timeout=5.0):
    """The last message on C{subject} of C{stream}, or None."""
    _connected(nc)
    msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout)
    headers = msg.headers or {}
    if headers.get("Status"):
        if headers["Status"] == "404":
            return None
        raise ReadError(f"direct get from {stream}: {headers['Status']} {headers.get('Description', '')}".strip())
    return Held(headers["Nats-Subject"], int(headers["Nats-Sequence"]), headers, msg.data)


@_retry_unavailable
async def leader_next(nc, js, stream, start, subject):
    """
    The first message of C{stream} on C{subject} at seq C{start} or after,
    or None: asked of the stream's leader (a message get, not a direct
    get), which has applied every write it acknowledged.
    """
    from nats.js.errors import NotFoundError

    _connected(nc)
    try:
        raw = await js.get_msg(stream, seq=max(start, 1), subject=subject, next=True)
    except NotFoundError:
        return None
    return Held(raw.subject, raw.seq, raw.headers or {}, raw.data or b"")


@_retry_unavailable
async def leader_last(nc, js, stream, subject):
    """
    The last message of C{stream} on C{subject}, or None: asked of the
    stream's leader (a message get, not a direct get), as L{leader_next}.
    """
    from nats.js.errors import NotFoundError

    _connected(nc)
    try:
        raw = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    return Held(raw.subject, raw.seq, raw.headers or {}, raw.data or b"")


async def delete(js, stream, seq):
    """
    Delete message C{seq} of C{stream}; whether this call removed it (one
    already gone, removed by a concurrent call, is not an error).
    """
    try:
        await js.delete_msg(stream, seq)
    except Exception as e:
        if getattr(e, "err_code", None) not in (NO_MESSAGE_FOUND, SEQUENCE_NOT_FOUND):
            raise
        return False
    return True


#: Delete requests (JetStream API calls, not pipelined publishes) in flight at once.
DELETES_AT_ONCE = 16


async def delete_all(js, stream, seqs, return_exceptions=False):
    """L{delete} each of C{seqs}, L{DELETES_AT_ONCE} at a time; each one's answer (or exception, if asked)."""
    answers = []
    for i in range(0, len(seqs), DELETES_AT_ONCE):
        deletes = (delete(js, stream, seq) for seq in seqs[i : i + DELETES_AT_ONCE])
        answers += await asyncio.gather(*deletes, return_exceptions=return_exceptions)
    return answers


def stream_seq(msg):
    """
    The stream seq of C{msg}, delivered by a push consumer: read from its
    reply subject (C{$JS.ACK.<stream>.<consumer>.<delivered>.<stream
    seq>.<consumer seq>.<time>.<pending>}), as nats-py's ordered consumer
    reads it, without building nats-py's whole C{Metadata} (a date among
    it), which cost a watch a few microseconds per message; any other form
    goes through nats-py.
    """
    tokens = msg.reply.split(".") if msg.reply else ()
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    return msg.metadata.sequence.stream


def is_wrong_last(error) -> bool:
    """Whether C{error} is JetStream refusing a write whose expected last subject seq did not hold."""
    return getattr(error, "err_code", None) in WRONG_LAST_SEQUENCE


class PublishError(Exception):
    """JetStream refused a publish; C{err_code} is its error code."""

    def __init__(self, err_code, description):
        super().__init__(description)
        self.err_code = err_code
