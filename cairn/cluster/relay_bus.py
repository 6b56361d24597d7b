"""
L{NatsRelayBus}: the L{IRelayBus} of a node on NATS (docs/scaling.md,
"Relay across nodes"), on the node's one connection
(L{cairn.cluster.connection.JetStream}).

Relay traffic between nodes is core NATS, not JetStream: a circuit's
messages are worth nothing after the circuit, and its flow control is end
to end (the window), so nothing is stored. Each circuit has its own
subject, C{<prefix>.relay.<node>.<circuit id hex>} (pings:
C{<prefix>.relay.<node>.ping}); a node subscribes once to
C{<prefix>.relay.<its name>.*}. NATS keeps the order of one
publisher's messages to one subscriber, and the bus publishes from one
task in call order, so a circuit's RelayData arrive in order. Messages
cross between the reactor thread and the NATS loop in batches (one
wake-up per batch), which matters for a busy circuit.

A message NATS drops on its way to this node (the subscription a slow
consumer: L{cairn.cluster.nats_errors.Drops}) ends its circuit, named by
the dropped message's subject (not final: the peers re-establish it),
rather than letting it go on with a hole in its data; a dropped ping
costs nothing (the next one comes 5 s later).

What is sent is bytes made by L{cairn.relay.frame} (RelayData as a
versioned frame, the rest CBOR; docs/protocol.md §25.9); this bus neither
reads nor changes them.

Where a peer is comes from C{where_is}, a callable given by the node
(its presence directory), and which nodes are alive from C{nodes} (the
same presence's node liveness); the bus keeps neither of its own.
"""

import asyncio
import re
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster.common import subscribe_in_place
from cairn.relay.interfaces import IRelayBus

log = Logger()

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def node_token(node: str) -> str:
    """C{node} as one subject token: itself if safe, else C{x} and its UTF-8 in hex."""
    return node if _TOKEN.fullmatch(node) else "x" + node.encode().hex()


@implementer(IRelayBus)
class NatsRelayBus:
    """
    @param jet: the node's connected (or connecting) L{JetStream}.
    @param node: this node's name.
    @param where_is: C{peer_id -> node name or None}.
    @param nodes: C{() -> names of the live nodes} (a mapping or set:
        L{cairn.cluster.presence.IPresence.nodes}), or None: no view.
    """

    def __init__(self, jet, node, where_is, nodes=None):
        self.jet = jet
        self.node = node
        self._where_is = where_is
        self._nodes = nodes
        # Messages cross between the reactor and the NATS loop in batches:
        # one wake-up of the other thread for whatever piled up meanwhile
        # (a busy circuit's RelayData), not one per message.
        self._outbox = deque()  # (subject, bytes), appended on the reactor
        self._out_woken = False
        self._inbox = deque()  # bytes, appended on the NATS loop
        self._in_woken = False
        self._ready = None  # asyncio.Event: the publisher has work
        self._sender = None
        self._publishing = False
        self._subscription = None
        self._receive = None
        self._lost = self._broken = None
        self._holes = set()  # on the NATS loop: subjects of circuits a message of which was dropped
        self.dropped = 0  # messages not sent: no connection to NATS

    def where_is(self, peer_id):
        return self._where_is(peer_id)

    def alive(self, node):
        return None if self._nodes is None else node in self._nodes()

    def _subject(self, node, last):
        return self.jet.subject("relay", node_token(node), last)

    def send(self, node, circuit_id, message):
        subject = self._subject(node, "ping" if circuit_id is None else circuit_id.hex())
        self._outbox.append((node, circuit_id, subject, message))
        if not self._out_woken:
            self._out_woken = True
            self.jet.thread.call(self._wake)

    def _wake(self):
        # On the NATS loop. One task publishes, in call order.
        self._out_woken = False
        if self._sender is None:
            self._ready = asyncio.Event()
            self._sender = asyncio.get_running_loop().create_task(self._publish())
        self._ready.set()

    async def _publish(self):
        while True:
            await self._ready.wait()
            self._ready.clear()
            self._publishing = True
            while self._outbox:
                node, circuit_id, subject, message = self._outbox.popleft()
                nc = self.jet.nc
                if nc is None or not nc.is_connected:
                    self._dropped(node, circuit_id)
                    continue
                try:
                    await nc.publish(subject, message)
                except Exception as e:
                    self._dropped(node, circuit_id)
                    log.warn("relay: publishing to another node failed: {why}", why=type(e).__name__)
            self._publishing = False

    def _dropped(self, node, circuit_id):
        # On the NATS loop: a message could not be sent (no connection to NATS).
        self.dropped += 1
        self.jet.thread.to_reactor(self._report_lost, node, circuit_id)

    def _report_lost(self, node, circuit_id):
        if self._lost is not None:
            self._lost(node, circuit_id)

    def listen(self, receive, lost, broken=None):
        """Subscribe to this node's subjects once NATS is ready; fires once the server has the subscription."""
        subject = self._subject(self.node, "*")
        self._receive, self._lost, self._broken = receive, lost, broken

        async def on_message(msg):
            if self._holes and msg.subject in self._holes:
                return  # after a message of its circuit was dropped: the circuit is closing
            self._inbox.append(msg.data)
            if not self._in_woken:
                self._in_woken = True
                self.jet.thread.to_reactor(self._deliver)

        async def subscribe():
            self._subscription = await subscribe_in_place(self.jet.nc, subject, on_message)
            self.jet.drops.add(self._subscription, self._dropped_here)

        return self.jet.when_ready().addCallback(lambda _: self.jet.run(subscribe))

    def _dropped_here(self, error):
        # On the NATS loop: NATS dropped a message to this node; its subject names the circuit.
        # What comes after it on that circuit is not delivered either (the
        # circuit would go on with a hole) until the reactor has closed it.
        subject = str(error.subject)
        try:
            circuit_id = bytes.fromhex(subject.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return  # a ping (or no circuit named)
        if subject not in self._holes:
            self._holes.add(subject)
            self.jet.thread.to_reactor(self._report_broken, subject, circuit_id)

    def _report_broken(self, subject, circuit_id):
        if self._broken is not None:
            self._broken(circuit_id)
        self.jet.thread.call(self._holes.discard, subject)  # closed: its stragglers meet "no such circuit"

    def _deliver(self):
        self._in_woken = False
        while self._inbox:
            data = self._inbox.popleft()
            if self._receive is not None:
                self._receive(data)

    def stop(self):
        """Unsubscribe and send what is queued; fires once done."""

        async def stop():
            while (self._outbox or self._publishing) and self.jet.nc is not None and self.jet.nc.is_connected:
                await asyncio.sleep(0)  # the publisher sends what is queued
            if self._sender is not None:
                self._sender.cancel()
                self._sender = None
            if self._subscription is not None:
                self.jet.drops.discard(self._subscription)
                try:
                    await self._subscription.unsubscribe()
                except Exception:
                    pass  # closed with the connection
                self._subscription = None
            self._ready = None

        self._receive = self._lost = self._broken = None
        if not self.jet.thread.running:
            return defer.succeed(None)
        return self.jet.run(stop).addErrback(
            lambda f: log.warn("relay: stopping the bus: {why}", why=f.getErrorMessage())
        )
