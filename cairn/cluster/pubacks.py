"""
L{Acks}: pipelined JetStream publishes, each a future of its PubAck.

Apart from L{cairn.cluster.direct} (the reads and small writes every store
makes over the NATS wire) because it is a piece of its own: the
publishes in flight on one connection, their replies and their one
timer. It is made once per connection (L{cairn.cluster.connection}), and
what a refused publish fails with, L{PublishError}, stays with the other
JetStream error codes in L{cairn.cluster.direct}.
"""

import asyncio
import collections
import json
import re
import time

from cairn.cluster.common import subscribe_in_place
from cairn.cluster.direct import PublishError

#: JetStream's refusal of a write for want of storage (its servers' or
#: account's limit, e.g. C{max_file_store}): "insufficient resources".
NO_ROOM = 10023
#: Every refusal for want of storage: L{NO_ROOM} (a server's limit), an
#: account's limit ("resource limits exceeded for account", 10002: what an
#: account's C{jetstream { max_file }} answers, measured on nats-server
#: 2.15.1) and "insufficient storage resources available" (10047).
NO_ROOM_CODES = frozenset((NO_ROOM, 10002, 10047))

#: The headers of the probe sent while writes are stalled: refused by the
#: stream (10060) without storing anything, as at start-up (L{cairn.cluster.ready}).
PROBE_HEADERS = {"Nats-Expected-Stream": "-"}

#: The subject JetStream announces a stream's new leader on (in the
#: stream's account), the stream's name as its last token.
LEADER_ELECTED = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED."

#: What nats-py refuses in a subject (whitespace: it would let a subject inject protocol commands).
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")
#: What a header name may hold (RFC 7230's token, as nats-py checks it).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Headers(dict):
    """
    Headers that many publishes share unchanged (every message of one
    enqueue call carries the same ones): L{Acks.publish} encodes them once
    (L{block}) instead of once per message.

    Why by hand: nats-py encodes a publish's headers anew for every
    message, and its check of each value (C{str.translate} with a mapping,
    which looks up every distinct character of the value and fails the
    look-up for all but CR and LF) made a publish with the mailbox's four
    headers cost 9.8 us of thread CPU against 4.5 with the block made
    once (measured in isolation; docs/scaling.md, "Enqueue: the servers'
    share and the node's"). The block is what nats-py would send for the
    same headers (C{tests/test_cluster_direct.py} compares them). Not to
    be changed once made: the block is made once.
    """

    _block = None

    @property
    def block(self):
        """The encoded header block (C{NATS/1.0}, C{name: value} lines, the empty line), as nats-py writes it."""
        if self._block is None:
            lines = [b"NATS/1.0\r\n"]
            for name, value in self.items():
                name = name.strip()
                if not name:
                    continue  # as nats-py does
                if not _HEADER_NAME.fullmatch(name):
                    raise ValueError(f"bad header name {name!r}")
                value = value.strip().replace("\r", " ").replace("\n", " ")
                lines.append(f"{name}: {value}\r\n".encode())
            lines.append(b"\r\n")
            self._block = b"".join(lines)
        return self._block


class Stalled(TimeoutError):
    """A write not sent: JetStream has answered none since a PubAck timed out (a probe is asking)."""


class LeaderChanged(TimeoutError):
    """
    A write in flight when one of the node's streams elected a new leader:
    its PubAck may never come (a server that died with it took it), so it
    fails as after the timeout, without waiting for it (L{Acks}).
    """


class Disconnected(TimeoutError):
    """
    A write in flight when the connection to NATS was lost: its PubAck may
    have gone with the connection, and an election of its stream's while
    this node heard nothing is missed, so it fails as after the timeout,
    without waiting for it (L{Acks.disconnected}).
    """


class Acks:
    """
    Pipelined JetStream publishes: L{publish} writes a message with a
    reply subject of its own and returns a future of its PubAck's stream
    seq, so that many can be in flight on one connection.

    nats-py's own C{publish_async} leaves the future unresolved when the
    server answers with an error (its reply handler raises instead of
    setting the exception, nats-py 2.16), and a refused write is an
    ordinary answer here (a duplicate), hence this small replacement.

    Every publish has the same time to be answered, so they expire in the
    order they were written: one timer, for the oldest one waiting, serves
    them all (a timer and two done-callbacks per publish were a tenth of
    the NATS thread's work per enqueued message).

    @ivar stalled_since: the wall-clock time (C{time.time()}) since which
        JetStream has stored no write -- a publish went unanswered, or was
        refused for want of storage (L{NO_ROOM}) -- or None; C{stalled_why}
        says which, the last time. JetStream answers nothing, not even an
        error, for a stream that cannot write (a full disk stops a stream
        until its server restarts), and refuses every write once its
        storage limit is reached: while the connection itself is fine,
        this is how the node knows (L{JetStream.health}). The next stored
        write, or any other answer, ends it.

    While the last word from JetStream is a PubAck that never came, a
    write waits for nothing: it fails at once with L{Stalled} (the callers
    answer STORAGE_ERROR, as after the timeout), and one probe at a time
    (L{PROBE_HEADERS}, to the subject whose write went unanswered; it
    stores nothing) asks whether JetStream answers again; its answer, or any
    other, ends it (but not C{stalled_since}: only a write's answer does).
    C{failed_fast} counts the writes failed so.

    When one of the node's streams (C{streams}: each one's name and the
    prefixes of its subjects) elects a new leader, every write in flight
    to it fails at once with L{LeaderChanged}: a write the dead leader had
    taken is answered by no one, and was waited for the whole timeout
    (30 s: a device's forward in flight when the mailbox stream's leader
    was killed took 31 s, three NATS machines under systemd,
    docs/scaling.md). Failed, it is sent again with its message id, as
    after a timeout, and stored once. So do the writes in flight when the
    connection is lost (L{Disconnected}), and a write whose PubAck, or an
    election, NATS dropped as a slow consumer (L{dropped}).
    """

    def __init__(self, nc, timeout=5.0, streams=None):
        self.nc = nc
        self.timeout = timeout
        #: {stream name: its subjects' prefixes}: the streams whose elections fail their writes in flight.
        self.streams = streams or {}
        self._prefix = None
        self.subscriptions = []  # the PubAcks' and the elections' (L{dropped})
        #: token -> (future, deadline on the loop's clock), oldest first
        self._futures = collections.OrderedDict()
        self._next = 0
        self._timer = None
        self.stalled_since = None
        self.stalled_why = None
        #: Called on the loop with the description of each write refused for want of room
        #: (the node's reserve, L{cairn.cluster.reserve}), or None.
        self.on_no_room = None
        #: The subject of a write whose PubAck never came, while nothing has been answered since (else None).
        self._unanswered = None
        self._probing = False
        self._probe_token = None
        self.failed_fast = 0
        #: Whether this nats-py has the private parts L{_send} uses (else: its own publish, always).
        self._can_send = all(hasattr(nc, name) for name in ("_send_command", "_flush_queue", "_flush_pending"))

    async def start(self):
        """
        Subscribe before the first write, at the connection's start
        (L{cairn.cluster.connection}): the streams' elections' subscription
        is then in place at the server (L{subscribe_in_place}), so no
        election is missed and no write in flight waits out the timeout for
        one. A first L{publish} without it subscribes without that proof
        (it may not wait: its batch's publishes go out in call order).
        """
        if self._prefix is None:
            await self._start(in_place=True)

    async def _start(self, in_place=False):
        self._prefix = self.nc.new_inbox()
        # The PubAcks' own subscription needs no proof: each write's PUB follows its SUB on this connection.
        self.subscriptions = [await self.nc.subscribe(self._prefix + ".*", cb=self._reply)]
        if self.streams and in_place:
            self.subscriptions.append(await subscribe_in_place(self.nc, LEADER_ELECTED + "*", self._elected))
        elif self.streams:
            self.subscriptions.append(await self.nc.subscribe(LEADER_ELECTED + "*", cb=self._elected))

    async def _elected(self, msg):
        self.leader_changed(msg.subject.rsplit(".", 1)[1])

    def leader_changed(self, stream):
        """C{stream} has a new leader: fail every write in flight to it with L{LeaderChanged}."""
        prefixes = self.streams.get(stream)
        if not prefixes:
            return  # not one of the node's streams (a bucket's, another deployment's)
        for token, (future, _, subject) in list(self._futures.items()):
            if subject.startswith(prefixes):
                del self._futures[token]
                if not future.done():
                    _fail(future, LeaderChanged(f"{stream} elected a new leader while the write was in flight"))

    def disconnected(self):
        """The connection was lost (on the loop): every write in flight fails with L{Disconnected}."""
        waiting, self._futures = self._futures, collections.OrderedDict()
        for future, _, _ in waiting.values():
            if not future.done():
                _fail(future, Disconnected("the connection to NATS was lost while the write was in flight"))

    def dropped(self, error):
        """
        NATS dropped a message of the writes' subscriptions (a slow
        consumer, L{cairn.cluster.nats_errors.Drops}; C{error.subject}: its
        subject): an election is taken as one, a PubAck's write fails as unanswered.
        """
        subject = str(error.subject)
        if subject.startswith(LEADER_ELECTED):
            self.leader_changed(subject[len(LEADER_ELECTED) :])
            return
        waiting = self._futures.pop(subject.rsplit(".", 1)[-1], None)
        if waiting is not None and not waiting[0].done():
            _fail(waiting[0], TimeoutError("its PubAck was dropped by this node (slow consumer)"))

    async def _reply(self, msg):
        token = msg.subject.rsplit(".", 1)[1]
        waiting = self._futures.pop(token, None)
        if waiting is None or waiting[0].done():
            return
        future = waiting[0]
        self._unanswered = None  # JetStream answers (whatever it says)
        headers = msg.headers or {}
        if headers.get("Status") == "503":
            self.stalled_since = None  # an answer (not JetStream's storage: the connection's concern)
            _fail(future, PublishError(503, "no JetStream stream answered (no responders)"))
            return
        try:
            # Decoded first: json.loads of bytes guesses their encoding each time (~1 us a PubAck).
            answer = json.loads(msg.data.decode())
        except ValueError:
            _fail(future, PublishError(0, "unreadable PubAck"))
            return
        if "error" in answer:
            error = answer["error"]
            code, description = error.get("err_code"), error.get("description", "refused")
            if code in NO_ROOM_CODES:
                self._stalled(description)
                if self.on_no_room is not None:
                    self.on_no_room(description)
            elif token == self._probe_token:
                # The probe's refusal ends the failing fast, not the stall: a stream whose server
                # cannot write may still answer a probe's header check, so only a write's answer
                # says that writes are stored again.
                future.set_result(None)
                return
            else:
                self.stalled_since = None  # JetStream answers: a refusal of this write only
            _fail(future, PublishError(code, description))
        else:
            self.stalled_since = None
            future.set_result(int(answer["seq"]))

    def clear(self):
        """A reconnection: the streams write again (or say so)."""
        self.stalled_since = self._unanswered = None

    def _stalled(self, why):
        if self.stalled_since is None:
            self.stalled_since = time.time()
        self.stalled_why = why

    async def publish(self, subject, payload, headers, issued=None):
        """
        Write one message; returns a future of its stream seq (failing with
        L{PublishError}, or C{TimeoutError} when no PubAck comes in time).

        @param issued: called with the publish's number just before it is
            written: the numbers follow the order in which this connection
            writes the publishes (nothing is awaited between the call and
            the write), which is the order of their stream seqs.
        """
        if self._prefix is None:
            await self._start()
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._unanswered is not None:
            # Issued (so its caller accounts for it as for a refused write) but not sent.
            if issued is not None:
                issued(self._next)
            self.failed_fast += 1
            if not self._probing:
                await self._probe(loop)
            _fail(future, Stalled(f"not tried: JetStream answers no write ({self.stalled_why}); probing"))
            return future
        self._futures[token] = (future, loop.time() + self.timeout, subject)
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self.timeout, self._expire)
        if issued is not None:
            issued(self._next)
        try:
            reply = f"{self._prefix}.{token}"
            if isinstance(headers, Headers) and self._direct(subject, payload):
                await self._send(subject, reply, headers.block, payload)
            else:
                await self.nc.publish(subject, payload, reply=reply, headers=headers)
        except BaseException:
            self._futures.pop(token, None)
            future.cancel()
            raise
        return future

    async def _probe(self, loop):
        """One publish that the stream refuses without storing, to the subject left unanswered; one at a time."""
        self._next += 1
        token = str(self._next)
        future = loop.create_future()
        self._futures[token] = (future, loop.time() + self.timeout, self._unanswered)
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self.timeout, self._expire)
        self._probing, self._probe_token = True, token

        def done(_):
            self._probing = False

        future.add_done_callback(done)
        try:
            await self.nc.publish(self._unanswered, b"", reply=f"{self._prefix}.{token}", headers=PROBE_HEADERS)
        except Exception:
            self._futures.pop(token, None)
            future.cancel()

    def _direct(self, subject, payload):
        """
        Whether a publish can be written with its header block as made
        (L{_send}): a connected client that is not draining, a payload
        within the server's limit and a subject without whitespace.
        Anything else goes through nats-py's own C{publish}, which refuses
        or buffers it as it always did.
        """
        nc = self.nc
        return (
            nc.is_connected
            and not nc.is_draining_pubs
            and len(payload) <= nc.max_payload
            and subject
            and _BAD_SUBJECT.search(subject) is None
            and self._can_send
        )

    async def _send(self, subject, reply, block, payload):
        """
        What nats-py's C{publish} does with headers (nats-py 2.16+), the
        block encoded once (L{Headers}): the HPUB command queued, then
        flushed as nats-py flushes its own (one write per loop pass).
        """
        nc = self.nc
        command = f"HPUB {subject} {reply} {len(block)} {len(block) + len(payload)}\r\n".encode()
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(payload)
        await nc._send_command(b"".join((command, block, payload, b"\r\n")))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    def _expire(self):
        """The timer: fail every publish past its time, then wait for the oldest one left."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._futures:
            token, (future, deadline, subject) = next(iter(self._futures.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            del self._futures[token]
            if not future.done():
                self._stalled(f"no PubAck within {self.timeout:g} s")
                self._unanswered = subject
                _fail(future, TimeoutError("no PubAck from JetStream in time"))


def _fail(future, error):
    future.set_exception(error)
    # Retrieved here: a caller that stopped early (another publish failed)
    # must not leave an "exception never retrieved" behind; one that awaits
    # it still gets it.
    future.exception()
