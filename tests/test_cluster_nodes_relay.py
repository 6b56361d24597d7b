"""
Relay circuits between peers on different real nodes (issue 15), beyond
L{tests.test_cluster_nodes}' round trips: an attached circuit under a
stalled receiver (held back by TCP, both nodes' memory bounded, then
everything in order), and a RelayData circuit's bytes counted once in
the deployment (the owner counts; the target's node only shows what it
carried; the relay bucket holds each byte once).
"""

import signal
import socket

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest
from zope.interface import implementer

from cairn.relay import client as relay
from cairn.relay.attached import AttachedCircuit
from cairn.relay.splice import CHUNK
from tests import _jetstream
from tests._harness import eventually, next_data
from tests.test_cluster_nodes import DeploymentMixin

#: The receive buffer the stalled receiver's socket is held to (no autotuning).
RECEIVE_BUFFER = 64 * 1024


def tcp_max(name):
    """The largest buffer Linux's TCP autotuning gives a socket: C{tcp_rmem}'s or C{tcp_wmem}'s third field."""
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


@implementer(IPushProducer)
class Backlog:
    """
    Registered on the sender's transport: Twisted pauses it while the
    transport holds more than its C{bufferSize} unsent (TCP does not take
    it) and resumes it once it has all gone out.
    """

    def __init__(self, changed):
        self.paused = False
        self.changed = changed

    def pauseProducing(self):
        self.paused = True
        self.changed()

    def resumeProducing(self):
        self.paused = False
        self.changed()

    def stopProducing(self):
        pass


class RelayAcrossNodesMixin(DeploymentMixin):
    @defer.inlineCallbacks
    def circuit(self, attach):
        """Alice on node 1, Bob on node 2, a circuit from Alice to Bob (owned by node 1)."""
        alice, bob, a, b, _, _ = yield self.deployment.circuit(self.node1, self.node2, attach)
        return alice, bob, a, b

    @defer.inlineCallbacks
    def channel(self, a, b, name):
        """A channel from C{a} to C{b}; fires with both ends once C{b} has it."""
        got = defer.Deferred()
        b.on_channel = got.callback
        mine = a.open_channel(name)
        mine.send(b"hello")
        theirs = yield eventually(got, 30)
        self.assertEqual((yield next_data(theirs)), b"hello")
        return mine, theirs

    @defer.inlineCallbacks
    def relay_figures(self, node):
        """C{GET /relay} of C{node}: (its JSON, {peer id: (bytes sent, bytes received)})."""
        code, body = yield node.api("GET", "/relay")
        self.assertEqual(code, 200)
        return body, {p["peer_id"]: (p["bytes_sent"], p["bytes_received"]) for p in body["peers"]}

    @defer.inlineCallbacks
    def rss(self, node):
        """The node's resident memory, from its C{/metrics}."""
        text = yield node.api_text("/metrics")
        for line in text.splitlines():
            if line.startswith("process_resident_memory_bytes"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{node.name}: no process_resident_memory_bytes in /metrics")


class AttachedStalledReceiverTests(RelayAcrossNodesMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_stalled_receiver_holds_the_sender_back(self):
        """
        Bob stops reading an attached circuit spliced on node 1: Alice is
        held back by TCP, node 1 holds at most one splice chunk, neither
        node grows; Bob reads again and every message arrives, in order.
        """
        alice, bob, a, b = yield self.circuit(attach=True)
        [end] = relay.relay_endpoint(bob).circuits.values()
        [start] = relay.relay_endpoint(alice).circuits.values()
        self.assertIsInstance(end, AttachedCircuit)
        receiver, sender = end.protocol.transport, start.protocol.transport
        mine, theirs = yield self.channel(a, b, "bulk")
        received = []
        theirs.on_data = lambda data: self.conditions.changed(received.append(data))
        alice_id, bob_id = alice.peer_id, bob.peer_id
        rss_before = {}
        for node in (self.node1, self.node2):
            rss_before[node.name] = yield self.rss(node)
        _, figures = yield self.relay_figures(self.node1)
        got_before = figures[bob_id][1]

        receiver.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        receiver.pauseProducing()  # Bob stops reading
        backlog = Backlog(self.conditions.changed)
        sender.registerProducer(backlog, True)
        size, count = 256 * 1024, 192  # 48 MiB
        for i in range(count):
            mine.send(i.to_bytes(4, "big") + b"x" * (size - 4))
        yield self.conditions.until(lambda: backlog.paused, 30)

        # Node 1 splices what it can until Bob's socket and its own are full:
        # at any moment it holds at most one chunk (read from Alice, not yet
        # written to Bob), and it has written no more than the kernel buffers
        # between it and Bob can take. Asked again after each answer: first
        # until the burst is moving, then 40 times more.
        for _ in range(2000):
            _, figures = yield self.relay_figures(self.node1)
            if figures[bob_id][1] - got_before >= 32 * 1024:
                break
        else:
            raise AssertionError("node 1 never spliced the burst towards Bob")
        into_bob = tcp_max("tcp_wmem") + 2 * RECEIVE_BUFFER + CHUNK
        for _ in range(40):
            body, figures = yield self.relay_figures(self.node1)
            sent, _ = figures.get(alice_id, (0, 0))
            _, got = figures.get(bob_id, (0, 0))
            self.assertLessEqual(sent - got, CHUNK + size, "node 1 holds more than a chunk of the circuit")
            self.assertLessEqual(got, into_bob, "node 1 wrote more than Bob's side can hold")
            self.assertEqual([c["queued"] for c in body["open"]], [0])
            self.assertTrue(backlog.paused, "Alice's backlog drained while Bob reads nothing")
        self.assertEqual(received, [])
        # What Alice could not send waits in her own process, not in the nodes.
        for node in (self.node1, self.node2):
            grown = (yield self.rss(node)) - rss_before[node.name]
            self.assertLess(grown, count * size / 4, f"{node.name} grew by {grown} bytes")
        body, figures = yield self.relay_figures(self.node2)
        self.assertEqual([(c["mode"], c["owner"]) for c in body["open"]], [("attached", self.node1.name)])
        self.assertEqual(figures.get(alice_id, (0, 0)), (0, 0))

        receiver.resumeProducing()
        yield self.conditions.until(lambda: len(received) >= count and not backlog.paused, 120)
        self.assertEqual([int.from_bytes(m[:4], "big") for m in received], list(range(count)))
        self.assertEqual({len(m) for m in received}, {size})
        _, figures = yield self.relay_figures(self.node1)
        self.assertEqual(figures[alice_id][0], figures[bob_id][1])


class RelayDataCountedOnceTests(RelayAcrossNodesMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_bytes_counted_once_cluster_wide(self):
        """
        A RelayData circuit across nodes: node 1 (the owner) counts the
        bytes, node 2 shows the same bytes as carried and counts none, and
        the deployment's relay bucket holds each byte once after both stop.
        """
        alice, bob, a, b = yield self.circuit(attach=False)
        mine, theirs = yield self.channel(a, b, "chat")
        received, replies = [], []
        theirs.on_data = lambda data: self.conditions.changed(received.append(data))
        mine.on_data = lambda data: self.conditions.changed(replies.append(data))
        for i in range(20):
            mine.send(b"a" * (1000 + i))
            theirs.send(b"b" * (500 + i))
        yield self.conditions.until(lambda: len(received) == len(replies) == 20, 30)

        body1, figures1 = yield self.relay_figures(self.node1)
        body2, figures2 = yield self.relay_figures(self.node2)
        [owned] = body1["open"]
        [carried] = body2["open"]
        self.assertEqual((owned["mode"], carried["mode"], carried["owner"]), ("session", "session", self.node1.name))
        self.assertEqual(carried["circuit"], owned["circuit"])
        self.assertEqual(carried["bytes"], owned["bytes"])
        sent_a, got_a = figures1[alice.peer_id]
        sent_b, got_b = figures1[bob.peer_id]
        self.assertEqual((got_b, got_a), (sent_a, sent_b))  # what one sent, the other got
        self.assertEqual(owned["bytes"], sent_a + sent_b)
        self.assertGreater(sent_a, 20 * 1000)
        self.assertGreater(sent_b, 20 * 500)
        for peer in (alice.peer_id, bob.peer_id):
            self.assertEqual(figures2.get(peer, (0, 0)), (0, 0), "node 2 counted a byte node 1 counts")

        # A clean stop writes each node's counts: the bucket has each byte once.
        for node in (self.node1, self.node2):
            yield node.kill(signal.SIGTERM)
        jet = yield _jetstream.connect(self, self.deployment.nats.urls, replicas=3)
        usage = {}
        for peer in (alice.peer_id, bob.peer_id):
            entry = yield jet.run(jet.kv["relay"].get, f"usage.{peer}")
            usage[peer] = tuple(int(n) for n in entry.value.decode().split(","))
        self.assertEqual(usage, {alice.peer_id: (sent_a, got_a), bob.peer_id: (sent_b, got_b)})
