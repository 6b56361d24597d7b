"""
Relay circuits between peers on different nodes (docs/scaling.md, "Relay
across nodes"): two node peers in this process, sharing one identity and
one trust store, each with its own TCP listener, relay service and NATS
connection to one real nats-server; library clients on loopback. The
nodes' clocks are L{task.Clock}s.

Presence here is a dict the tests fill as peers connect (the deployment's
presence directory is the node's, not the relay's).
"""

import os
import re

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.logger import LogLevel
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.client import Client
from cairn.cluster.loop import AsyncioThread
from cairn.cluster.relay import KVRelayStore
from cairn.cluster.relay_bus import NatsRelayBus, node_token
from cairn.crypto.identity import Identity
from cairn.pairing.trust import MemoryTrustStore
from cairn.relay import client as relay
from cairn.relay import frame, messages
from cairn.relay.attached import AttachedCircuit
from cairn.relay.client import CircuitTransport, RouteRefused
from cairn.relay.interfaces import IRelayBus
from cairn.relay.messages import WINDOW
from cairn.relay.remote import NODE_TIMEOUT, PING_INTERVAL, MemoryRelayBus, RemoteEnd
from cairn.relay.service import OFFER_TIMEOUT, RelayService
from cairn.session.peer import Peer
from cairn.transport.handoff import HandOffFactory
from cairn.wire import cbor
from cairn.wire.constants import MessageType, RouteStatus
from tests import _jetstream
from tests._cluster_nodes import NodesMixin
from tests._harness import SETTINGS, Conditions, collect, drop_all, eventually, observe_logs, track_connections
from tests._nats import free_port, start_nats
from tests.test_relay import RecordingRelay, RelayScenarioMixin


class WatchedBus(NatsRelayBus):
    """A bus that re-checks the test's conditions after each message it delivers."""

    def __init__(self, *args, changed):
        super().__init__(*args)
        self.changed = changed

    def listen(self, receive, *callbacks):
        return super().listen(lambda data: self.changed(receive(data)), *callbacks)


class _Changes:
    """A client's peer observer re-checking the test's conditions on session events."""

    def __init__(self, conditions):
        self.conditions = conditions

    def session_detached(self, session):
        self.conditions.changed()

    def session_closed(self, session):
        self.conditions.changed()


class Node:
    """One node of the test's deployment."""

    def __init__(self, name, peer, clock, port, jet, relay):
        self.name = name
        self.peer = peer
        self.clock = clock
        self.port = port
        self.jet = jet
        self.relay = relay

    @property
    def address(self):
        return f"tcp:host=127.0.0.1:port={self.port.getHost().port}"


class CrossNodeHarness:
    """Two nodes on one NATS server; C{attach}: they take attached circuits."""

    attach = False

    @defer.inlineCallbacks
    def setUp(self):
        self.connections = []
        self.conditions = Conditions()
        self.nats = yield start_nats(self)
        self.trust = MemoryTrustStore()  # replicated by the trust bucket in a deployment
        self.presence = {}
        identity = Identity.generate()  # one identity for the deployment
        self.node1 = yield self.make_node("node-1", identity)
        self.node2 = yield self.make_node("node-2", identity)
        self.addCleanup(lambda: drop_all(self.connections))

    @defer.inlineCallbacks
    def make_node(self, name, identity):
        clock = task.Clock()
        peer = Peer(identity, clock, **SETTINGS)
        peer.on_session = lambda session: self.conditions.changed()
        track_connections(peer, self.connections)
        # A connection may start with a RelayAttach (attached circuits).
        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(HandOffFactory(peer))
        self.addCleanup(port.stopListening)
        jet = yield _jetstream.connect(self, [self.nats.url])
        bus = WatchedBus(jet, name, self.presence.get, changed=self.conditions.changed)
        options = {}
        if self.attach:
            options = {
                "attached_circuits": True,
                "reactor": reactor,
                "attach_address": f"tcp://127.0.0.1:{port.getHost().port}",
            }
        service = RecordingRelay(
            peer,
            self.trust,
            clock,
            capacity=8,
            changed=self.conditions.changed,
            store=KVRelayStore(jet),
            bus=bus,
            **options,
        )
        yield service.start()
        self.addCleanup(service.stop)
        return Node(name, peer, clock, port, jet, service)

    def until(self, predicate):
        return self.conditions.until(predicate)

    def peer(self):
        client = Client(reactor, Identity.generate(), clock=task.Clock(), **SETTINGS)
        track_connections(client.peer, self.connections)
        client.peer.add_observer(_Changes(self.conditions))
        relay.relay_endpoint(client).attach = self.attach
        self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0)
        return client

    @defer.inlineCallbacks
    def connect(self, client, node):
        session = yield eventually(client.connect(node.address))
        yield self.until(
            lambda: any(s.remote_peer_id == client.peer_id and s.attached for s in node.peer.sessions.values())
        )
        self.presence[client.peer_id] = node.name
        return session

    @defer.inlineCallbacks
    def circuit(self):
        """Alice on node 1 and Bob on node 2; fires with (alice, bob, inner a, inner b, node session a, b)."""
        alice, bob = self.peer(), self.peer()
        node_a = yield self.connect(alice, self.node1)
        node_b = yield self.connect(bob, self.node2)
        accepted = defer.Deferred()
        relay.relay_endpoint(bob).on_session = accepted.callback
        a = yield eventually(relay.relay_to(alice, node_a, bob.peer_id))
        b = yield eventually(accepted)
        return alice, bob, a, b, node_a, node_b

    @defer.inlineCallbacks
    def ended_not_final(self, send):
        """
        A circuit between node 1 and node 2; C{send(circuit_id)} makes it
        end: it ends on both nodes, not final (both peers detached,
        resumable). Fires with the RelayClose reasons node 1 gave.
        """
        _, _, a, b, _, _ = yield self.circuit()
        circuit_id = self.only_circuit().circuit_id
        reasons = []
        close = self.node1.relay.close
        self.node1.relay.close = lambda circuit, reason, *args, **kw: (
            close(circuit, reason, *args, **kw) or reasons.append(reason)
        )
        yield send(circuit_id)
        yield self.until(lambda: circuit_id not in self.node1.relay.circuits and not self.node2.relay.remote.proxies)
        yield self.until(lambda: not a.attached and not b.attached)
        self.assertIsNone(a.closed)  # detached, resumable: not final
        self.assertIsNone(b.closed)
        return reasons

    def only_circuit(self):
        [circuit] = self.node1.relay.circuits.values()
        return circuit

    exchange = RelayScenarioMixin.exchange


class RelayDataAcrossNodesTests(CrossNodeHarness, unittest.TestCase):
    """RelayData circuits between peers on different nodes, forwarded over NATS."""

    @defer.inlineCallbacks
    def test_round_trip(self):
        """Channel data and a custom message both ways; the owner (node 1) counts the bytes, once."""
        alice, bob, a, b, _, _ = yield self.circuit()
        self.assertEqual(a.remote_peer_id, bob.peer_id)
        self.assertEqual(b.remote_peer_id, alice.peer_id)
        self.assertIsInstance(a.connection.transport, CircuitTransport)
        yield self.exchange(a, b)
        circuit = self.only_circuit()
        self.assertIsInstance(circuit.b, RemoteEnd)
        self.assertEqual(circuit.b.node, "node-2")
        self.assertEqual(list(self.node2.relay.remote.proxies), [circuit.circuit_id])
        self.assertEqual(self.node2.relay.circuits, {})
        one, two = self.node1.relay, self.node2.relay
        self.assertGreater(one.bytes_sent[alice.peer_id], 0)
        self.assertGreater(one.bytes_sent[bob.peer_id], 0)
        self.assertEqual(one.bytes_sent[alice.peer_id], one.bytes_received[bob.peer_id])
        self.assertEqual(one.bytes_sent[bob.peer_id], one.bytes_received[alice.peer_id])
        self.assertEqual((sum(two.bytes_sent.values()), sum(two.bytes_received.values())), (0, 0))
        # Cluster-wide (the KV bucket both nodes flush to): each byte once.
        yield one.accounts.flush()
        yield two.accounts.flush()
        _, usage = yield KVRelayStore(self.node1.jet).load()
        self.assertEqual(usage[alice.peer_id], (one.bytes_sent[alice.peer_id], one.bytes_received[alice.peer_id]))
        self.assertEqual(usage[bob.peer_id], (one.bytes_sent[bob.peer_id], one.bytes_received[bob.peer_id]))
        stats = one.stats()
        self.assertEqual([(c["requester"], c["target"]) for c in stats["open"]], [(alice.peer_id, bob.peer_id)])

    @defer.inlineCallbacks
    def test_stalled_receiver(self):
        """A receiver that grants no credit stalls the sender; neither node forwards more than a window."""
        _, _, a, b, _, _ = yield self.circuit()
        sender, receiver = a.connection.transport, b.connection.transport
        delivered = []  # RelayData bytes node 2 handed Bob
        remote2 = self.node2.relay.remote
        original_to_target = remote2._to_target

        def to_target(proxy, type_code, body):
            if type_code == MessageType.RELAY_DATA:
                delivered.append(len(body["data"]))
            original_to_target(proxy, type_code, body)

        remote2._to_target = to_target
        circuit = self.only_circuit()
        before = circuit.forwarded[circuit.a]  # the inner handshake's
        got_channel = defer.Deferred()
        b.on_channel = got_channel.callback
        bulk = a.open_channel("bulk")
        bulk.send(b"first")
        b_bulk = yield eventually(got_channel)
        received = collect(b_bulk)
        original = b_bulk.on_data
        b_bulk.on_data = lambda data: self.conditions.changed(original(data))
        receiver.pause_reading()
        total = 64  # 1 MiB: four windows
        for i in range(total):
            bulk.send(i.to_bytes(4, "big") + b"x" * 16384)
        yield self.until(lambda: sender.pending and sender.credit < len(sender.pending[0]))
        yield self.until(lambda: before + sum(delivered) == circuit.forwarded[circuit.a])
        self.assertLessEqual(circuit.in_flight(circuit.a), WINDOW)
        self.assertLessEqual(circuit.forwarded[circuit.a], WINDOW)
        self.assertLessEqual(sum(delivered), WINDOW)
        self.assertGreater(sender.pending_bytes, 2 * WINDOW)
        receiver.resume_reading()
        yield self.until(lambda: len([m for m in received if m != b"first"]) >= total)
        self.assertEqual([int.from_bytes(m[:4], "big") for m in received if m != b"first"], list(range(total)))
        self.assertEqual(sender.pending, [])
        self.assertLessEqual(circuit.in_flight(circuit.a), WINDOW)

    @defer.inlineCallbacks
    def test_target_drops(self):
        """Bob's node session drops on node 2: node 1 closes the circuit and tells Alice (not final)."""
        _, bob, a, _, _, node_b = yield self.circuit()
        circuit_id = self.only_circuit().circuit_id
        node_b.connection.transport.lose(abort=True)
        yield self.until(lambda: circuit_id not in self.node1.relay.circuits)
        self.assertEqual(self.node2.relay.remote.proxies, {})
        yield self.until(lambda: not a.attached)
        self.assertIsNone(a.closed)  # detached, resumable: not final

    @defer.inlineCallbacks
    def test_requester_closes(self):
        """Alice's node session ends: node 2 tells Bob and forgets the circuit."""
        _, _, _, b, node_a, _ = yield self.circuit()
        node_a.close()
        yield self.until(lambda: self.node2.relay.remote.proxies == {} and self.node1.relay.circuits == {})
        yield self.until(lambda: b.closed is not None)  # final: the inner session ends

    @defer.inlineCallbacks
    def test_target_node_goes_away(self):
        """Node 2 stops answering: after NODE_TIMEOUT on node 1's clock the circuit closes there."""
        _, _, a, _, _, _ = yield self.circuit()
        circuit_id = self.only_circuit().circuit_id
        # Node 2 falls silent: it hears nothing more and sends nothing more.
        bus2 = self.node2.relay.remote.bus
        yield bus2.stop()
        bus2.send = lambda *args: None
        clock = self.node1.clock
        clock.advance(PING_INTERVAL)
        self.assertIn(circuit_id, self.node1.relay.circuits)  # a ping interval is not a death
        for _ in range(int(NODE_TIMEOUT / PING_INTERVAL)):
            clock.advance(PING_INTERVAL)
        self.assertNotIn(circuit_id, self.node1.relay.circuits)
        yield self.until(lambda: not a.attached)
        self.assertIsNone(a.closed)

    @defer.inlineCallbacks
    def test_target_not_on_its_node(self):
        """Presence names node 2 but Bob has no session there: offline."""
        alice, bob = self.peer(), self.peer()
        node_a = yield self.connect(alice, self.node1)
        self.presence[bob.peer_id] = "node-2"
        try:
            yield eventually(relay.relay_to(alice, node_a, bob.peer_id))
        except RouteRefused as e:
            self.assertEqual(e.status, RouteStatus.OFFLINE)
        else:
            self.fail("the circuit opened")
        self.assertEqual(self.node1.relay.circuits, {})

    @defer.inlineCallbacks
    def test_target_overruns_window(self):
        """RelayData from the target beyond its window stops at its node; the owner closes the circuit, final."""
        _, _, a, _, _, node_b = yield self.circuit()
        circuit = self.only_circuit()
        proxy = self.node2.relay.remote.proxies[circuit.circuit_id]
        session = proxy.session
        proxy.allowance = 10
        self.node2.relay._relay_data(session, {"circuit": circuit.circuit_id, "data": b"y" * 11})
        self.assertEqual(proxy.state, "closing")
        yield self.until(lambda: circuit.circuit_id not in self.node1.relay.circuits)
        yield self.until(lambda: a.closed is not None)
        self.assertIn("flow control window exceeded", a.closed.reason)

    @defer.inlineCallbacks
    def test_unknown_frame_version(self):
        """
        A RelayData frame of a version node 2 does not read (a newer node's)
        ends the circuit, not final, with the documented reason and one
        error logged, instead of the data being dropped and the circuit
        stalling.
        """
        logged = []

        def observer(event):
            if event.get("log_level") == LogLevel.error and "RelayData frame of version" in event.get("log_format", ""):
                logged.append(event)

        observe_logs(self, observer)

        def send(circuit_id):
            # Version 9 of the frame: the 18 bytes every version begins with, then whatever it holds.
            self.node1.relay.remote.bus.send("node-2", circuit_id, b"\xfe\x09" + circuit_id + b"tomorrow's layout")

        reasons = yield self.ended_not_final(send)
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["version"], 9)
        self.assertEqual(reasons, ["relay frame version not understood between nodes"])

    @defer.inlineCallbacks
    def test_message_dropped_on_arrival(self):
        """
        A message about a circuit that NATS dropped on its way to node 2 (a
        slow consumer) ends the circuit, not final, on both nodes, instead
        of the circuit going on with a hole in its data.
        """
        bus = self.node2.relay.remote.bus

        async def choke():
            bus._subscription._pending_bytes_limit = bus._subscription._pending_size = 1

        @defer.inlineCallbacks
        def send(circuit_id):
            yield self.node2.jet.run(choke)
            self.node1.relay.remote.bus.send("node-2", None, frame.encode({"op": "ping", "from": "node-1"}))
            self.node1.relay.remote.send_env("node-2", circuit_id, 0x0503, {"circuit": circuit_id, "credit": 1})

        reasons = yield self.ended_not_final(send)
        self.assertEqual(reasons, ["relay data lost between nodes"])

    @defer.inlineCallbacks
    def test_node_of_the_previous_release(self):
        """
        A rolling upgrade across the frame's version: node 2 behaves as the
        release before it (its messages say no version, it writes frames
        C{0xff} and drops any other frame); node 1 sends it the frames it
        reads, and a round trip works both ways.
        """
        remote2 = self.node2.relay.remote
        bus2 = remote2.bus
        remote2._send = lambda node, circuit_id, message: bus2.send(node, circuit_id, previous_release_encode(message))
        reads = bus2._receive
        dropped = []
        bus2._receive = lambda data: dropped.append(data) if data[:1] == b"\xfe" else reads(data)
        _, _, a, b, _, _ = yield self.circuit()
        yield self.exchange(a, b)
        self.assertEqual(dropped, [])
        self.assertEqual(self.node1.relay.remote.frame_versions, {"node-2": 0})


class AttachedAcrossNodesTests(CrossNodeHarness, unittest.TestCase):
    """Attached circuits between peers on different nodes: spliced on the owner, both ends told where."""

    attach = True

    @defer.inlineCallbacks
    def test_round_trip(self):
        """Bob attaches to node 1 (the offer's attach_at); the bytes are spliced and counted there."""
        alice, bob, a, b, _, _ = yield self.circuit()
        yield self.exchange(a, b)
        circuit = self.only_circuit()
        self.assertEqual(circuit.mode, "attached")
        self.assertIsNotNone(circuit.splice)
        self.assertIsInstance(circuit.b, RemoteEnd)
        [end] = relay.relay_endpoint(bob).circuits.values()
        self.assertIsInstance(end, AttachedCircuit)
        port1 = self.node1.port.getHost().port
        self.assertEqual(end.protocol.transport.getPeer().port, port1)
        one = self.node1.relay
        self.assertGreater(one.bytes_sent[alice.peer_id], 0)
        self.assertGreater(one.bytes_sent[bob.peer_id], 0)
        self.assertEqual(
            (sum(self.node2.relay.bytes_sent.values()), sum(self.node2.relay.bytes_received.values())), (0, 0)
        )

    @defer.inlineCallbacks
    def test_target_drops(self):
        """Bob's node session drops: node 1 closes the splice and tells Alice."""
        _, _, a, _, _, node_b = yield self.circuit()
        circuit_id = self.only_circuit().circuit_id
        node_b.connection.transport.lose(abort=True)
        yield self.until(lambda: circuit_id not in self.node1.relay.circuits)
        yield self.until(lambda: not a.attached)


class FakeSession:
    """A node session as the relay service sees it, recording what it is sent."""

    def __init__(self, peer_id):
        self.remote_peer_id = peer_id
        self.session_id = os.urandom(16)
        self.closed = None
        self.attached = True
        self.sent = []

    def send(self, type_code, body):
        self.sent.append((MessageType(type_code), body))

    def last(self, type_code):
        return [body for t, body in self.sent if t == type_code][-1]


class MemoryBusTests(unittest.TestCase):
    """The cross-node relay over the in-memory bus, on one clock: no sockets, every step explicit."""

    def setUp(self):
        self.clock = task.Clock()
        self.network, self.presence = {}, {}
        self.trust = MemoryTrustStore()
        self.services = {}
        for name in ("n1", "n2"):
            peer = Peer(Identity.generate(), self.clock, **SETTINGS)
            bus = MemoryRelayBus(name, self.network, self.presence, self.clock)
            self.services[name] = RelayService(peer, self.trust, self.clock, bus=bus)
            self.services[name].start()
        self.n1, self.n2 = self.services["n1"], self.services["n2"]

    def tearDown(self):
        for service in self.services.values():
            service.stop()
        self.clock.advance(0)

    def session(self, name):
        identity = Identity.generate()
        self.trust.set_paired(identity.peer_id, identity.public_key, "", "psk", 0.0)
        session = FakeSession(identity.peer_id)
        self.services[name].peer.sessions[session.session_id] = session
        self.presence[identity.peer_id] = name
        return session

    def open(self):
        alice, bob = self.session("n1"), self.session("n2")
        self.n1._route_request(alice, {"target": bob.remote_peer_id, "req": 1})
        self.clock.advance(0)
        offer = bob.last(MessageType.ROUTE_REQUEST)
        self.assertEqual(offer["from"], alice.remote_peer_id)
        self.n2._route_response(bob, {"circuit": offer["circuit"], "status": 0})
        self.clock.advance(0)
        self.assertEqual(alice.last(MessageType.ROUTE_RESPONSE)["status"], 0)
        return alice, bob, offer["circuit"]

    def test_data_and_credit(self):
        """RelayData and RelayAck cross both ways; the owner counts, the target's node does not."""
        alice, bob, circuit = self.open()
        self.n1._relay_data(alice, {"circuit": circuit, "data": b"a" * 100})
        self.n2._relay_data(bob, {"circuit": circuit, "data": b"b" * 70})
        self.clock.advance(0)
        self.assertEqual(bob.last(MessageType.RELAY_DATA)["data"], b"a" * 100)
        self.assertEqual(alice.last(MessageType.RELAY_DATA)["data"], b"b" * 70)
        self.n1._relay_ack(alice, {"circuit": circuit, "credit": 70})
        self.clock.advance(0)
        self.assertEqual(bob.last(MessageType.RELAY_ACK)["credit"], 70)
        self.assertEqual(self.n2.remote.proxies[circuit].allowance, WINDOW)
        self.assertEqual(self.n1.bytes_sent, {alice.remote_peer_id: 100, bob.remote_peer_id: 70})
        self.assertEqual(self.n2.bytes_sent, {})

    def test_unsent_message_closes_the_circuit(self):
        """A message to the target's node that cannot go out closes the circuit; the requester is told."""
        alice, _, circuit = self.open()
        self.services["n2"].remote.bus.stop()
        self.n1._relay_data(alice, {"circuit": circuit, "data": b"a" * 100})
        self.clock.advance(0)
        self.assertNotIn(circuit, self.n1.circuits)
        self.assertEqual(alice.last(MessageType.RELAY_CLOSE)["reason"], "the other peer went away")

    def test_late_acceptance(self):
        """The target accepts after the offer timed out: its node is told there is no such circuit, and so is it."""
        alice, bob = self.session("n1"), self.session("n2")
        self.n1._route_request(alice, {"target": bob.remote_peer_id, "req": 1})
        self.clock.advance(0)
        circuit = bob.last(MessageType.ROUTE_REQUEST)["circuit"]
        for _ in range(int(OFFER_TIMEOUT)):  # the nodes' pings keep each other alive meanwhile
            self.clock.advance(1)
        self.assertEqual(alice.last(MessageType.ROUTE_RESPONSE)["status"], RouteStatus.TIMEOUT)
        self.n2._route_response(bob, {"circuit": circuit, "status": 0})
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.n2.remote.proxies, {})
        self.assertEqual(bob.last(MessageType.RELAY_CLOSE)["reason"], "no such circuit")

    def test_requester_cancels_offer(self):
        """The requester goes away while the offer is out: the target is told "cancelled"."""
        alice, bob = self.session("n1"), self.session("n2")
        self.n1._route_request(alice, {"target": bob.remote_peer_id, "req": 1})
        self.clock.advance(0)
        self.n1.session_detached(alice)
        self.clock.advance(0)
        self.assertEqual(bob.last(MessageType.RELAY_CLOSE)["reason"], "cancelled")
        self.assertEqual(self.n2.remote.proxies, {})

    def test_malformed_messages_from_another_node(self):
        """Garbage from another node is dropped with a warning; the circuit goes on."""
        alice, bob, circuit = self.open()
        for junk in (
            b"not cbor \xff",
            cbor.dumps([1, 2]),
            cbor.dumps({"from": "n2", "op": "env", "type": 0x7777, "body": {"circuit": circuit}}),
            cbor.dumps({"from": "n2", "op": "env", "type": 0x0502, "body": {"circuit": circuit, "data": 5}}),
            cbor.dumps({"from": "n2", "op": "close", "circuit": "x"}),
            b"\xff",  # RelayData frames: truncated, a head that is no map, a head longer than the frame
            b"\xff\x00\x01\x05data",
            b"\xff\x01\x00" + cbor.dumps({"from": "n2", "op": "env", "type": 0x0502, "body": {"circuit": circuit}}),
        ):
            self.n1.remote.receive(junk)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.assertIn(circuit, self.n1.circuits)
        self.n1._relay_data(alice, {"circuit": circuit, "data": b"still"})
        self.clock.advance(0)
        self.assertEqual(bob.last(MessageType.RELAY_DATA)["data"], b"still")

    def test_purge_on_the_target_node(self):
        """Unpairing the requester on the target's node closes the circuit there and at its owner, final."""
        alice, bob, circuit = self.open()
        self.n2.purge(alice.remote_peer_id)
        self.clock.advance(0)
        self.assertEqual(self.n2.remote.proxies, {})
        self.assertNotIn(circuit, self.n1.circuits)
        for end in (alice, bob):
            close = end.last(MessageType.RELAY_CLOSE)
            self.assertEqual((close["reason"], close.get("final")), ("the other peer was unpaired", True))

    def test_listed_on_the_target_node(self):
        """C{GET /relay} on the target's node lists the circuit it carries, marked with its owner node."""
        alice, bob, circuit = self.open()
        self.n1._relay_data(alice, {"circuit": circuit, "data": b"a" * 100})
        self.clock.advance(0)
        stats = self.n2.stats()
        self.assertEqual((stats["circuits"], stats["carried"]), (1, 1))
        [entry] = stats["open"]
        self.assertEqual(
            (entry["circuit"], entry["owner"], entry["requester"], entry["target"], entry["state"], entry["bytes"]),
            (circuit.hex(), "n1", alice.remote_peer_id, bob.remote_peer_id, "open", 100),
        )
        self.assertEqual(entry["mode"], "session")
        # The owner lists it as its own (no owner key); the bytes count there, once.
        [owned] = self.n1.stats()["open"]
        self.assertNotIn("owner", owned)
        self.assertEqual(self.n1.stats()["carried"], 0)
        self.assertEqual(self.n2.bytes_sent, {})

    def test_carried_circuits_count_against_capacity(self):
        """The target's node refuses an offer beyond its capacity; the requester hears CAPACITY, not OFFLINE."""
        self.n2.capacity = 1
        self.open()
        alice, bob = self.session("n1"), self.session("n2")
        self.n1._route_request(alice, {"target": bob.remote_peer_id, "req": 7})
        self.clock.advance(0)
        self.clock.advance(0)
        answer = alice.last(MessageType.ROUTE_RESPONSE)
        self.assertEqual((answer["req"], answer["status"]), (7, RouteStatus.CAPACITY))
        self.assertIn("n2", answer["reason"])
        self.assertEqual(bob.sent, [])
        self.assertEqual(len(self.n1.circuits), 1)
        self.assertEqual(len(self.n2.remote.proxies), 1)

    def test_capacity_counts_carried_circuits_on_the_owner_too(self):
        """A node carrying a circuit for another node has that much less room for its own requesters."""
        self.n2.capacity = 1
        self.open()  # carried by n2
        carol, dave = self.session("n2"), self.session("n2")
        self.n2._route_request(carol, {"target": dave.remote_peer_id, "req": 3})
        self.assertEqual(carol.last(MessageType.ROUTE_RESPONSE)["status"], RouteStatus.CAPACITY)
        self.assertEqual(self.n2.circuits, {})

    def test_node_not_heard_by_presence(self):
        """A node the deployment's presence no longer hears is taken for gone at the next ping, not after 15 s."""
        live = {"n1", "n2"}
        self.n1.remote.bus.nodes = live
        alice, bob, circuit = self.open()
        self.clock.advance(PING_INTERVAL)
        self.assertIn(circuit, self.n1.circuits)
        live.discard("n2")  # n2 still answers pings here: only presence says it is gone
        self.clock.advance(PING_INTERVAL)
        self.assertNotIn(circuit, self.n1.circuits)
        self.assertLess(PING_INTERVAL * 2, NODE_TIMEOUT)
        self.assertEqual(alice.last(MessageType.RELAY_CLOSE)["reason"], "the other peer went away")


class MadeNodesTests(NodesMixin, unittest.TestCase):
    """Two nodes as make_node builds them (KV presence, JetStream stores, the relay bus): circuits between them."""

    @defer.inlineCallbacks
    def two_nodes_and_circuit(self, attach):
        """n1 and n2 (with CAIRN_RELAY_ATTACH_ADDRESS if C{attach}); Alice on n1, Bob on n2, a circuit between them."""
        yield self.start_nodes(0)
        for name in ("n1", "n2"):
            settings = {}
            if attach:
                port = free_port()
                settings = {
                    "listen": f"tcp:{port}:interface=127.0.0.1",
                    "relay_attach_address": f"tcp://127.0.0.1:{port}",
                }
            yield self.start_node(name, **settings)
        self.conditions = conditions = Conditions()
        for node in self.nodes:
            applied = node.presence._apply
            node.presence._apply = lambda changes, applied=applied: conditions.changed(applied(changes))
        alice, bob = self.client(), self.client()
        for client in (alice, bob):
            relay.relay_endpoint(client).attach = attach
        node_a = yield self.paired(alice, 0)
        yield self.paired(bob, 1)
        n1 = self.nodes[0]
        yield conditions.until(
            lambda: n1.presence.locate(bob.peer_id) == "n2" and n1.relay.trust.is_paired(bob.peer_id), 30
        )
        accepted = defer.Deferred()
        relay.relay_endpoint(bob).on_session = accepted.callback
        a = yield eventually(relay.relay_to(alice, node_a, bob.peer_id))
        b = yield eventually(accepted)
        return alice, bob, a, b

    @defer.inlineCallbacks
    def test_relay_data_between_made_nodes(self):
        """Without an attach address: a RelayData circuit, data both ways."""
        _, _, a, b = yield self.two_nodes_and_circuit(attach=False)
        yield self.exchange(a, b)
        n1, n2 = self.nodes
        [circuit] = n1.relay.circuits.values()
        self.assertIsInstance(circuit.b, RemoteEnd)
        self.assertEqual(circuit.mode, "session")
        self.assertEqual(list(n2.relay.remote.proxies), [circuit.circuit_id])

    @defer.inlineCallbacks
    def test_attached_between_made_nodes(self):
        """With CAIRN_RELAY_ATTACH_ADDRESS: spliced on n1, Bob's attach connection goes to n1, data both ways."""
        _, bob, a, b = yield self.two_nodes_and_circuit(attach=True)
        yield self.exchange(a, b)
        n1, _ = self.nodes
        [circuit] = n1.relay.circuits.values()
        self.assertEqual(circuit.mode, "attached")
        self.assertIsNotNone(circuit.splice)
        [end] = relay.relay_endpoint(bob).circuits.values()
        self.assertIsInstance(end, AttachedCircuit)
        self.assertEqual(end.protocol.transport.getPeer().port, n1.ports["tcp"].getHost().port)

    exchange = RelayScenarioMixin.exchange


class SubjectTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_unsent_is_reported(self):
        """A message the NATS bus cannot send (no connection) is reported lost, with its node and circuit."""

        class NoConnection:
            nc = None

            def __init__(self):
                self.thread = AsyncioThread(reactor)

            def subject(self, *parts):
                return ".".join(("cairn", *parts))

        jet = NoConnection()
        jet.thread.start()
        self.addCleanup(jet.thread.stop)
        bus = NatsRelayBus(jet, "n1", lambda peer_id: None)
        lost = defer.Deferred()
        bus._lost = lambda node, circuit_id: lost.callback((node, circuit_id))
        bus.send("n2", b"c" * 16, b"message")
        self.assertEqual((yield eventually(lost)), ("n2", b"c" * 16))
        self.assertEqual(bus.dropped, 1)

    def test_interfaces(self):
        """Both buses provide IRelayBus."""
        self.assertTrue(verifyObject(IRelayBus, MemoryRelayBus("n1", {}, {}, task.Clock())))
        self.assertTrue(verifyObject(IRelayBus, NatsRelayBus(object(), "n1", lambda peer_id: None)))

    def test_alive_from_presence(self):
        """The NATS bus answers liveness from the presence's live nodes; without them it has no view."""
        nodes = {"n1": 0.0, "n2": 3.0}
        bus = NatsRelayBus(object(), "n1", lambda peer_id: None, lambda: nodes)
        self.assertEqual((bus.alive("n2"), bus.alive("n3")), (True, False))
        self.assertIsNone(NatsRelayBus(object(), "n1", lambda peer_id: None).alive("n2"))

    def test_node_token(self):
        """A node name is a subject token as it is when it can be, else hex."""
        self.assertEqual(node_token("node-1"), "node-1")
        self.assertEqual(node_token("a.b"), "x" + b"a.b".hex())
        self.assertEqual(node_token("*"), "x2a")


def documented_hex(heading, name) -> str:
    """The hex of the C{name} block under C{heading} of docs/protocol.md (its lines, concatenated)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading) :]
    start = section.index(f"{name}")
    block = section[start : section.index("```", start)]
    return "".join(re.findall(r"^\s+([0-9a-f]+)$", block, re.MULTILINE))


def documented_body(name) -> str:
    """The hex of the C{name} block of docs/protocol.md §25.8.8."""
    return documented_hex("#### 25.8.8 Attaching to another node", f"{name} body:")


def documented_frame(name) -> str:
    """The hex of the C{name} block of docs/protocol.md §25.9."""
    return documented_hex("### 25.9 RelayData between the nodes", f"{name}:")


def previous_release_encode(message):
    """A message to another node as the release before frame versions wrote it (no C{frame}, frames C{0xff})."""
    body = message.get("body")
    if message.get("type") == MessageType.RELAY_DATA and isinstance(body, dict):
        head = cbor.dumps(dict(message, body={k: v for k, v in body.items() if k != "data"}))
        return b"\xff" + len(head).to_bytes(2, "big") + head + body["data"]
    return cbor.dumps(message)


class FrameTests(unittest.TestCase):
    """The messages between nodes as bytes (L{frame.encode}, L{frame.decode}; docs/protocol.md §25.9)."""

    DATA = {"op": "env", "from": "node-1", "type": 0x0502, "body": {"circuit": bytes(range(16)), "data": b"envelope"}}

    def test_vector(self):
        """The version 1 frame of §25.9, byte for byte, and decoded back."""
        self.assertEqual(frame.encode(self.DATA, 1).hex(), documented_frame("relay-data frame"))
        self.assertEqual(frame.decode(bytes.fromhex(documented_frame("relay-data frame"))), self.DATA)

    def test_relay_data_is_framed(self):
        """RelayData goes as a frame: marker, version, circuit, a small CBOR head, then the data as it is."""
        data = os.urandom(1000)
        message = {"op": "env", "from": "n1", "type": 0x0502, "body": {"circuit": b"c" * 16, "data": data}}
        encoded = frame.encode(message, frame.VERSION)
        self.assertEqual(encoded[:18], b"\xfe\x01" + b"c" * 16)
        self.assertTrue(encoded.endswith(data))
        self.assertEqual(len(encoded), 20 + int.from_bytes(encoded[18:20], "big") + len(data))
        self.assertEqual(frame.decode(encoded), message)

    def test_previous_release(self):
        """To a node that has not said which versions it reads: the unversioned frame, which is still read."""
        encoded = frame.encode(self.DATA, 0)
        self.assertEqual(encoded, previous_release_encode(self.DATA))
        self.assertEqual(frame.decode(encoded), self.DATA)
        # Never a version above this node's own.
        self.assertEqual(frame.encode(self.DATA, 7), frame.encode(self.DATA, frame.VERSION))

    def test_other_messages_are_cbor(self):
        """Everything else (RelayAck, closes, pings, offers) stays one CBOR map, saying the version read."""
        for message in (
            {"op": "env", "from": "n1", "type": 0x0503, "body": {"circuit": b"c" * 16, "credit": 5}},
            {"op": "close", "from": "n1", "circuit": b"c" * 16, "reason": "x"},
            {"op": "ping", "from": "n1"},
        ):
            self.assertEqual(frame.encode(message), cbor.dumps(dict(message, frame=frame.VERSION)))
            self.assertEqual(frame.decode(frame.encode(message)), dict(message, frame=frame.VERSION))

    def test_repeated_messages(self):
        """
        A message made or read again gives the same bytes and map as the
        first time (they are remembered), and each map read is the caller's
        own to change.
        """
        ack = {"op": "env", "from": "n1", "type": 0x0503, "body": {"circuit": b"r" * 16, "credit": 5}}
        encoded = frame.encode(ack)
        for _ in range(3):
            self.assertEqual(frame.encode(ack), cbor.dumps(dict(ack, frame=frame.VERSION)))
            read = frame.decode(encoded)
            self.assertEqual(read, dict(ack, frame=frame.VERSION))
            read["body"]["credit"] = 6
            read["op"] = "changed"
        first, second = os.urandom(100), os.urandom(100)
        framed = [dict(self.DATA, body={"circuit": b"r" * 16, "data": data}) for data in (first, second)]
        read = [frame.decode(frame.encode(message, 1)) for message in framed]
        self.assertEqual(read, framed)
        self.assertEqual(frame.encode(framed[1], 1), frame.encode(framed[1], 1))
        self.assertEqual([r["body"]["data"] for r in read], [first, second])

    def test_equal_values_of_other_kinds(self):
        """Values Python finds equal but CBOR tells apart (True and 1, 1 and 1.0, 0.0 and -0.0) stay apart."""
        for a, b in ((True, 1), (1, True), (1, 1.0), (False, 0), (0.0, -0.0), (b"x", "x")):
            for where in ("top", "body"):
                made = []
                for value in (a, b):
                    if where == "top":
                        message = {"op": "close", "from": "n1", "circuit": b"k" * 16, "final": value}
                    else:
                        message = {"op": "env", "from": "n1", "type": 0x0503, "body": {"credit": value}}
                    encoded = frame.encode(message)
                    self.assertEqual(encoded, cbor.dumps(dict(message, frame=frame.VERSION)))
                    read = frame.decode(encoded)
                    got = read["final"] if where == "top" else read["body"]["credit"]
                    self.assertIs(type(got), type(value))
                    made.append(encoded)
                self.assertNotEqual(made[0], made[1])
        # Keys too: 1 and True are one key to Python, two to CBOR.
        for key in (1, True, 1, True):
            message = {"op": "ping", "from": "n1", key: {"a": 1}}
            self.assertEqual(frame.encode(message), cbor.dumps(dict(message, frame=frame.VERSION)))

    def test_remembered_is_bounded(self):
        """However many different messages go by, at most a bounded number are remembered."""
        for i in range(3000):
            message = {"op": "env", "from": "n1", "type": 0x0503, "body": {"circuit": b"b" * 16, "credit": i}}
            self.assertEqual(frame.decode(frame.encode(message))["body"]["credit"], i)
        self.assertLessEqual(len(frame._encoded.known), frame._encoded.limit)
        self.assertLessEqual(len(frame._decoded.known), frame._decoded.limit)

    def test_unknown_version(self):
        """A frame of another version is refused naming its version and circuit, whatever follows them."""
        for version in (0, 2, 255):
            with self.assertRaises(frame.UnknownVersion) as caught:
                frame.decode(b"\xfe" + bytes([version]) + b"c" * 16 + b"anything")
            self.assertEqual((caught.exception.version, caught.exception.circuit_id), (version, b"c" * 16))

    def test_truncated(self):
        """A frame shorter than its head says, or whose head is no message, is refused."""
        encoded = frame.encode(self.DATA, 1)
        legacy = frame.encode(self.DATA, 0)
        for bad in (encoded[:-9], encoded[:17], legacy[:-9], b"\xff", b"\xfe", b"\xff\x00\x01\x05data"):
            with self.assertRaises(ValueError):
                frame.decode(bad)


class AttachAtTests(unittest.TestCase):
    def test_vectors(self):
        """The RouteResponse and offer vectors of docs/protocol.md §25.8.8, byte for byte, and parsed back."""
        circuit, token, at = bytes(range(16)), bytes(range(32)), "tcp://10.0.0.2:7700"
        response = {"req": 7, "status": 0, "reason": "", "circuit": circuit, "token": token, "attach_at": at}
        offer = {"from": "alice", "circuit": circuit, "token": token, "attach_at": at}
        self.assertEqual(cbor.dumps(response).hex(), documented_body("route-response"))
        self.assertEqual(cbor.dumps(offer).hex(), documented_body("route-offer"))
        body = cbor.loads(bytes.fromhex(documented_body("route-response")))
        self.assertEqual(messages.parse_route_response(body), (0, circuit, 7, ""))
        self.assertEqual(messages.route_response_attach(body), (False, token))
        self.assertEqual(messages.attach_at(body, "RouteResponse"), at)
        body = cbor.loads(bytes.fromhex(documented_body("route-offer")))
        self.assertEqual(messages.parse_route_offer(body), ("alice", circuit, token))
        self.assertEqual(messages.attach_at(body, "RouteRequest"), at)

    def test_parse(self):
        """attach_at: absent is None; a tcp:// or tls:// address is kept; anything else is malformed."""
        self.assertIsNone(messages.attach_at({}, "RouteRequest"))
        self.assertEqual(messages.attach_at({"attach_at": "tcp://10.0.0.2:7700"}, "R"), "tcp://10.0.0.2:7700")
        for bad in (3, "ws://h/", "nonsense", "tcp:host=h:port=1"):
            with self.assertRaises(messages.BodyError):
                messages.attach_at({"attach_at": bad}, "R")
