"""
The node bus on NATS core subjects (L{INodeBus}), over the node's one
connection (L{cairn.cluster.connection.JetStream}; no second client).

Each node subscribes to C{<prefix>.node.<its name>.>}:

  - C{<prefix>.node.<name>.wake|owe|topic}: a notice; the payload is the
    peer id (or topic) in UTF-8. A notice goes to this node's callbacks
    directly and to each other node that L{IPresence} says holds a
    session of the peer concerned (C{topic}: to every live node).
  - C{<prefix>.node.<name>.req.<kind>}: a request with a reply subject;
    the answer is what this node's handler for C{kind} returns (bytes).

Notices are at most once (core NATS): one lost costs latency, never a
message (the services re-check, see L{cairn.storeservice.StoreService}).
One that NATS is known to have dropped (the subscription a slow
consumer: L{cairn.cluster.nats_errors.Drops}) makes them re-check at
once (L{INodeBus.on_missed}), once for the drops of one reactor turn;
so does a reconnection to NATS (what was sent here meanwhile is lost).

  - C{<prefix>.node.<name>.full|room}: the sending node (its name is the
    payload) entered the storage reserve's full mode, or left it by
    writing the ballast again (L{cairn.cluster.reserve}); sent to every
    live node, which enters at once, or looks at the ballast at once,
    instead of at its next poll. One lost costs at most that poll.

A message stored for a recipient whose session is on another node is told
to that node as soon as its PubAck is in, on the NATS loop (L{stored}):
C{<prefix>.node.<name>.msg.<seq>}, a CBOR map of the message (recipient,
stream seq, subject, stored and expiry times, writer, payload), instead of a
C{wake} sent once the reactor has heard of the PubAck. The node it reaches
takes the message as known stored when it is the very next seq after what
its own watch of the stream has processed (nothing can then lie between:
L{cairn.cluster.mailbox_recent.Recent.ahead}), so it delivers it without
waiting for its watch or reading the stream; and the notice wakes its
sessions as a C{wake} does. A notice of a seq its watch has already
processed is dropped unread: the watch brought the message, and its
sessions were woken by it (L{NatsBus._message}). (A node of an earlier
version ignores the kind: its watch delivers, as before; one that sends
C{<prefix>.node.<name>.msg}, without the seq, is read as before; one
without the message's writer, from a node older than the sixteenth
session, only wakes the sessions, whose fetch reads the stream.)
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster.bus import FULL, NOTICES, ROOM, TOPIC, WAKE, INodeBus, LocalBus, NoRoute
from cairn.cluster.common import WRITER, one_line, subscribe_in_place
from cairn.wire import cbor

log = Logger()

#: Seconds a request to another node may take before it fails with L{NoRoute}.
REQUEST_TIMEOUT = 5.0
#: Seconds an C{owe} notice to other nodes waits, gathering the same
#: sender's: receipts are not urgent, and each notice costs the sender's
#: node a read of its receipts, which the next message's write then queues
#: behind (docs/scaling.md, "Cross-node delivery: told with the PubAck").
OWE_GATHER = 0.05
#: The notice kind carrying a stored message (L{NatsBus.stored}).
MESSAGE = "msg"
#: What the subject of a C{msg} notice continues with before the message's stream seq.
MESSAGE_SEQ = MESSAGE + "."
#: Payload bytes a C{msg} notice carries at most; a larger message is told as a plain C{wake}.
MESSAGE_MAX = 64 * 1024


@implementer(INodeBus)
class NatsBus(LocalBus):
    """
    @param jet: the node's L{cairn.cluster.connection.JetStream}.
    @param presence: the node's L{IPresence} (which nodes to tell).
    """

    def __init__(self, jet, presence, node, mailbox=None, clock=None):
        super().__init__(node)
        self.jet = jet
        self.presence = presence
        self.clock = clock if clock is not None else jet.thread.reactor
        self._owing = {}  # sender -> the DelayedCall telling the other nodes (L{OWE_GATHER})
        self._subscription = None
        self._missing = False  # a drop's re-check is on its way to the reactor
        #: Notices sent to and received from other nodes, by kind (metrics, tests).
        self.sent = dict.fromkeys(NOTICES + (MESSAGE,), 0)
        self.received = dict.fromkeys(NOTICES + (MESSAGE,), 0)
        #: C{msg} notices received whose message the mailbox took before its watch did.
        self.taken = 0
        #: C{msg} notices received whose message the watch had already brought: dropped unread.
        self.known = 0
        #: recipient -> the nodes told of a message for it from the NATS loop whose
        #: wake-up (L{wake}, on the reactor) has not come yet: it need not go to them.
        self._told = {}
        self._mailbox = mailbox
        if mailbox is not None:
            mailbox.on_paid = self.owe  # receipts of buried removals written at last (mailbox_room)
            # Alone, there is no node to tell: the store calls nothing per
            # message (nor builds what it would pass) until another is heard of.
            presence.on_other_node(self._several)

    def _several(self):
        """Another node is heard of: the mailbox tells this bus of each message stored (L{stored})."""
        self._mailbox.on_stored = self.stored

    def _follow_reserve(self, reserve):
        """Tell every other live node when this one enters or leaves full mode; act on what they tell."""
        reserve.on_change = lambda full: self._tell(FULL if full else ROOM, self.node, self.presence.nodes())
        self.subscribe(FULL, lambda node: reserve.told(True, node))
        self.subscribe(ROOM, lambda node: reserve.told(False, node))

    def _subject(self, node, *parts):
        return self.jet.subject("node", node, *parts)

    # Life cycle

    def start(self):
        self._follow_reserve(self.jet.reserve)  # before the connection, so a start-up entry is told too
        self.jet.reconnected.add(self._reconnected)
        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._subscribe))
        return d

    async def _subscribe(self):
        own = self._subject(self.node)
        skip = len(own) + 1

        async def received(msg):
            rest = msg.subject[skip:]
            if rest.startswith(MESSAGE_SEQ):
                self._message(msg.data, rest[len(MESSAGE_SEQ) :])
            elif rest == MESSAGE:
                self._message(msg.data)  # a node of an earlier version: no seq in the subject
            elif rest.startswith("req."):
                self.jet.thread.to_reactor(self._answer, rest[4:], msg.data, msg.reply)
            else:
                self.jet.thread.to_reactor(self._noticed, rest, msg.data)

        # Only once the server has the subscription do notices addressed here arrive (what start() promises).
        self._subscription = await subscribe_in_place(self.jet.nc, own + ".>", received)
        self.jet.drops.add(self._subscription, self._dropped)

    def _dropped(self, error):
        # On the NATS loop, for each notice dropped: one re-check for those dropped meanwhile.
        if not self._missing:
            self._missing = True
            self.jet.thread.to_reactor(self._recheck)

    def _recheck(self):
        self._missing = False
        self.missed()

    def _reconnected(self):
        # Notices sent here while this node was away from NATS were lost.
        if self._subscription is not None:
            self.missed()

    def stop(self):
        for call in self._owing.values():
            if call.active():
                call.cancel()
        self._owing.clear()
        subscription, self._subscription = self._subscription, None
        if subscription is None or not self.jet.thread.running:
            return defer.succeed(None)
        self.jet.thread.call(self.jet.drops.discard, subscription)

        async def unsubscribe():
            await subscription.unsubscribe()

        d = self.jet.run(unsubscribe)
        return d.addErrback(lambda f: None)  # the connection is closing anyway

    # Notices

    def _noticed(self, kind, data):
        if kind not in self.received:
            return  # a newer node's notice kind: nothing to do here
        self.received[kind] += 1
        try:
            key = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        self.notices(kind, key)

    def _tell(self, kind, key, nodes):
        payload = key.encode("utf-8")
        subjects = [self._subject(node, kind) for node in nodes if node != self.node]
        if not subjects:
            return
        self.sent[kind] += len(subjects)

        async def publish():
            for subject in subjects:
                await self.jet.nc.publish(subject, payload)

        d = self.jet.run(publish)
        d.addErrback(lambda f: log.debug("bus: a {kind} notice not sent ({why})", kind=kind, why=one_line(f.value)))

    def wake(self, recipient):
        super().wake(recipient)
        told = self._told.pop(recipient, None)
        nodes = self.presence.where(recipient)
        if told is not None:
            nodes = [node for node in nodes if node not in told]  # told already, from the NATS loop
        self._tell("wake", recipient, nodes)

    # Messages told from the NATS loop

    async def stored(self, recipient, held):
        """
        On the NATS loop, as soon as C{held} (a message for C{recipient}) is
        stored: tell the other nodes holding a session of C{recipient}.
        """
        if len(held.data) > MESSAGE_MAX:
            return
        nodes = self.presence.elsewhere(recipient)
        if not nodes:
            return
        body = cbor.dumps(
            {"r": recipient, "seq": held.seq, "subject": held.subject, "h": dict(held.headers), "p": bytes(held.data)}
        )
        for node in nodes:
            await self.jet.nc.publish(self._subject(node, MESSAGE, str(held.seq)), body)
        # Read and written on either thread, one dictionary operation at a time (atomic in CPython).
        self._told[recipient] = self._told.get(recipient, frozenset()) | frozenset(nodes)
        self.sent[MESSAGE] += len(nodes)

    def _message(self, data, seq=None):
        """
        On the NATS loop: a C{msg} notice (L{stored}) from another node,
        for stream seq C{seq} (text, from its subject; None from a node of
        an earlier version).

        A notice of a seq the mailbox's watch has already processed is
        dropped before it is decoded: the watch brought the message (its
        payload and all) and woke the recipient's sessions
        (L{cairn.cluster.mailbox_follow.Following._written_elsewhere}), so
        the notice adds nothing. Before, every notice was decoded, though
        only 5 and 11 of 20 were taken ahead of the watch in the runs
        counted (in-process nodes, one server and three): each message was read
        twice on this node (the watch's copy and the notice's CBOR), and
        the sessions were woken twice for it (a second fetch finding
        nothing new: 3 fetches per message, now 2; docs/scaling.md,
        "Cross-node delivery: one read per message").
        """
        from cairn.cluster import direct as D

        self.received[MESSAGE] += 1
        if seq is not None and self._mailbox is not None:
            try:
                told = int(seq)
            except ValueError:
                return  # a hint: the watch delivers the message anyway
            if told <= self._mailbox.recent.watched:
                self.known += 1
                return
        try:
            body = cbor.loads(data)
            recipient, headers = body["r"], body["h"]
            # The writer is named on the tombstone of its removal here (L{cairn.cluster.mailbox_follow}).
            kept = {D.STORED: headers[D.STORED], D.EXPIRES: headers[D.EXPIRES], WRITER: headers.get(WRITER)}
            held = D.Held(body["subject"], body["seq"], kept, body["p"])
            float(held.headers[D.STORED]), float(held.headers[D.EXPIRES])
            parts = held.subject.split(".")
            if not (
                isinstance(recipient, str)
                and isinstance(held.seq, int)
                and held.seq > 0
                and isinstance(held.data, bytes)
                and len(parts) == 5
                and parts[2] == recipient
                and len(bytes.fromhex(parts[4])) == 16
            ):
                raise TypeError("a msg notice of the wrong shape")
        except Exception:
            return  # a hint: the watch delivers the message anyway
        # A notice without the writer (a node older than the sixteenth session) is a wake-up
        # only, the fetch reading the message from the stream: its copy, acknowledged here, left
        # a tombstone naming no writer, and the writer's node, whose watch had passed over the
        # message, kept it counted for good; the stream's copy names it.
        mailbox = self._mailbox
        if mailbox is not None and not isinstance(held.headers[WRITER], str):
            self.jet.thread.to_reactor(mailbox.told_stored, recipient, held.seq)
        elif mailbox is not None and mailbox.recent.ahead(held, recipient):
            self.taken += 1
        self.jet.thread.to_reactor(self.notices, WAKE, recipient)

    def owe(self, sender):
        super().owe(sender)  # this node's sessions: at once
        if sender not in self._owing:
            self._owing[sender] = self.clock.callLater(OWE_GATHER, self._owe_now, sender)

    def _owe_now(self, sender):
        del self._owing[sender]
        self._tell("owe", sender, self.presence.where(sender))

    def fan_out(self, topic):
        super().fan_out(topic)
        self._tell(TOPIC, topic, self.presence.nodes())

    # Requests

    def _answer(self, kind, data, reply):
        handler = self._handlers.get(kind)
        if not reply or handler is None:
            return  # no reply subject, or nothing served: the asker times out (NoRoute)
        d = defer.maybeDeferred(handler, data)

        def send(answer):
            async def respond():
                await self.jet.nc.publish(reply, answer)

            return self.jet.run(respond)

        d.addCallback(send)
        d.addErrback(lambda f: log.failure("bus: answering a {kind} request failed", f, kind=kind))

    def request(self, node, kind, body):
        if node == self.node:
            return super().request(node, kind, body)
        subject = self._subject(node, "req", kind)

        async def ask():
            msg = await self.jet.nc.request(subject, body, timeout=REQUEST_TIMEOUT)
            return msg.data

        d = self.jet.run(ask)

        def failed(failure):
            raise NoRoute(f"node {node!r} did not answer a {kind!r} request ({one_line(failure.value)})")

        return d.addErrback(failed)
