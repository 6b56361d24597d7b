"""
Relay circuits end to end: library clients over real loopback sessions
with a node peer (TCP, WebSocket, and one peer on each), the node's
clock a L{task.Clock}.
"""

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from cairn.pairing.trust import MemoryTrustStore
from cairn.relay import client as relay
from cairn.relay.client import CircuitTransport, RouteRefused
from cairn.relay.messages import WINDOW
from cairn.relay.service import RelayService
from cairn.transport.websocket import server_factory
from cairn.wire.constants import MessageType, RouteStatus
from tests._harness import Conditions, ScenarioMixin, closed, collect, eventually, next_data

MARKER = b"MARKER-plaintext-the-node-must-never-see"
CUSTOM = 0xF0A1


class RecordingRelay(RelayService):
    """A relay service that keeps every RelayData it forwarded and reports each event."""

    def __init__(self, *args, changed, **kwargs):
        self.seen = []
        self.changed = changed
        super().__init__(*args, **kwargs)

    def _relay_data(self, session, body):
        self.seen.append(bytes(body.get("data", b"")))
        super()._relay_data(session, body)
        self.changed()

    def _relay_ack(self, session, body):
        super()._relay_ack(session, body)
        self.changed()

    def _route_request(self, session, body):
        super()._route_request(session, body)
        self.changed()

    def _route_response(self, session, body):
        super()._route_response(session, body)
        self.changed()

    def _attached(self, *args):
        super()._attached(*args)
        self.changed()

    def close(self, circuit, reason, culprit=None, final=False):
        super().close(circuit, reason, culprit, final)
        self.changed()


class RelayHarness(ScenarioMixin):
    """A node peer with a trust store and a relay service; C{self.clock} drives the relay."""

    capacity = 8

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = task.Clock()
        self.trust = yield self.make_trust()
        self.conditions = Conditions()
        self.pairings = []  # set_paired calls of peer(), awaited by connect()
        store = yield self.make_relay_store()
        options = self.relay_options()
        if store is not None:
            options["store"] = store
        self.relay = RecordingRelay(
            self.server,
            self.trust,
            self.clock,
            capacity=self.capacity,
            changed=self.conditions.changed,
            **options,
        )
        if store is not None:
            yield self.relay.start()
            self.addCleanup(self.relay.stop)

    def make_trust(self):
        """The node's trust store, started (a Deferred); memory here, JetStream in test_cluster_scenarios."""
        return defer.succeed(MemoryTrustStore())

    def make_relay_store(self):
        """The relay's L{IRelayStore} (a Deferred), or None for none."""
        return defer.succeed(None)

    def relay_options(self):
        """More keyword arguments for the relay service (attached circuits: see test_relay_attached)."""
        return {}

    def peer(self, paired=True):
        client = self.make_client()
        if paired:
            self.pairings.append(self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0))
        return client

    @defer.inlineCallbacks
    def connect(self, client=None):
        """Connect once every peer() so far is paired (at once with the memory store)."""
        yield defer.gatherResults(self.pairings)
        return (yield super().connect(client))

    def until(self, predicate):
        return self.conditions.until(predicate)

    @defer.inlineCallbacks
    def circuit(self, alice=None, bob=None, address_b=None):
        """Alice and Bob online and paired; fires with (alice session, bob session, ...) end to end."""
        alice = alice or self.peer()
        bob = bob or self.peer()
        node_a = yield self.connect(alice)
        if address_b is None:
            node_b = yield self.connect(bob)
        else:
            node_b = yield eventually(bob.connect(address_b))
        accepted = defer.Deferred()
        relay.relay_endpoint(bob).on_session = accepted.callback
        a = yield eventually(relay.relay_to(alice, node_a, bob.peer_id))
        b = yield eventually(accepted)
        return a, b, node_a, node_b

    @defer.inlineCallbacks
    def refused(self, d):
        try:
            yield eventually(d)
        except RouteRefused as e:
            return e.status, e.reason
        self.fail("the circuit opened")


class RelayScenarioMixin(RelayHarness):
    """The scenarios, run over TCP and WebSocket."""

    @defer.inlineCallbacks
    def exchange(self, a, b):
        """Channel data both ways and a custom message between relayed sessions C{a} and C{b}."""
        got_channel = defer.Deferred()
        b.on_channel = got_channel.callback
        chat = a.open_channel("chat")
        chat.send(MARKER + b" from alice")
        b_chat = yield eventually(got_channel)
        self.assertEqual((yield next_data(b_chat)), MARKER + b" from alice")
        reply = next_data(chat)
        b_chat.send(MARKER + b" from bob")
        self.assertEqual((yield reply), MARKER + b" from bob")
        custom = defer.Deferred()
        a.register_handler(CUSTOM, lambda session, body: custom.callback(body))
        b.send(CUSTOM, {"text": MARKER.decode()})
        self.assertEqual((yield eventually(custom)), {"text": MARKER.decode()})

    @defer.inlineCallbacks
    def test_channel_data_both_ways(self):
        """A relayed session carries channel data and custom messages both ways, and the node sees no plaintext."""
        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        self.assertEqual(a.remote_peer_id, bob.peer_id)
        self.assertEqual(b.remote_peer_id, alice.peer_id)
        yield self.exchange(a, b)
        self.assertTrue(self.relay.seen)
        for data in self.relay.seen:
            self.assertNotIn(MARKER, data)
            self.assertNotIn(b"chat", data)
        stats = self.relay.stats()
        self.assertEqual(stats["circuits"], 1)
        by_peer = {p["peer_id"]: p for p in stats["peers"]}
        self.assertGreater(by_peer[alice.peer_id]["bytes_sent"], len(MARKER))
        self.assertEqual(by_peer[alice.peer_id]["bytes_sent"], by_peer[bob.peer_id]["bytes_received"])

    @defer.inlineCallbacks
    def test_unpaired_requester(self):
        """An unpaired requester gets RouteResponse not_paired and keeps its session."""
        alice, bob = self.peer(paired=False), self.peer()
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        status, reason = yield self.refused(relay.relay_to(alice, node_a, bob.peer_id))
        self.assertEqual(status, RouteStatus.NOT_PAIRED)
        self.assertIn("pair", reason)
        self.assertIsNone(node_a.closed)

    @defer.inlineCallbacks
    def test_unpaired_target(self):
        """A target that is not paired with the node gives not_paired."""
        alice, bob = self.peer(), self.peer(paired=False)
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        status, reason = yield self.refused(relay.relay_to(alice, node_a, bob.peer_id))
        self.assertEqual(status, RouteStatus.NOT_PAIRED)
        self.assertIn("target", reason)

    @defer.inlineCallbacks
    def test_unsure_target(self):
        """
        A target the trust store could not check (its shared data out of
        reach: catch_up names it) gives offline, which the requester tries
        again, not not_paired, which would end a re-established session.
        """
        alice, bob = self.peer(), self.peer(paired=False)
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        self.patch(self.trust, "catch_up", lambda peer_ids: defer.succeed(frozenset(peer_ids)))
        status, reason = yield self.refused(relay.relay_to(alice, node_a, bob.peer_id))
        self.assertEqual((status, reason), (RouteStatus.OFFLINE, "the node cannot check the target's pairing now"))

    @defer.inlineCallbacks
    def test_unsure_requester(self):
        """
        A requester the trust store could not check (paired through another
        node, whose shared store is out of reach here) gives offline, not
        not_paired; its session stays open.
        """
        alice, bob = self.peer(paired=False), self.peer()
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        asked = []

        def catch_up(peer_ids):
            asked.extend(peer_ids)
            return defer.succeed(frozenset(peer_ids))

        self.patch(self.trust, "catch_up", catch_up)
        status, reason = yield self.refused(relay.relay_to(alice, node_a, bob.peer_id))
        self.assertEqual((status, reason), (RouteStatus.OFFLINE, "the node cannot check this device's pairing now"))
        self.assertEqual(asked, [alice.peer_id])
        self.assertIsNone(node_a.closed)

    @defer.inlineCallbacks
    def test_offline_target(self):
        """A paired target without a session gives offline."""
        alice, bob = self.peer(), self.peer()
        node_a = yield self.connect(alice)
        status, _ = yield self.refused(relay.relay_to(alice, node_a, bob.peer_id))
        self.assertEqual(status, RouteStatus.OFFLINE)

    @defer.inlineCallbacks
    def test_target_refuses(self):
        """A target whose on_relay_request says no gives refused, and no circuit remains."""
        alice, bob = self.peer(), self.peer()
        asked = []
        bob.on_relay_request = lambda peer_id: asked.append(peer_id) and False
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        status, reason = yield self.refused(relay.relay_to(alice, node_a, bob.peer_id))
        self.assertEqual(status, RouteStatus.REFUSED)
        self.assertEqual(asked, [alice.peer_id])
        self.assertEqual(self.relay.circuits, {})

    @defer.inlineCallbacks
    def test_capacity(self):
        """Once the configured number of circuits is open, a new request gives capacity."""
        self.relay.capacity = 1
        alice, bob, carol = self.peer(), self.peer(), self.peer()
        _, _, node_a, _ = yield self.circuit(alice, bob)
        yield self.connect(carol)
        status, reason = yield self.refused(relay.relay_to(alice, node_a, carol.peer_id))
        self.assertEqual(status, RouteStatus.CAPACITY)
        self.assertIn("capacity", reason)

    @defer.inlineCallbacks
    def test_target_never_answers(self):
        """A target that does not answer the offer in time gives timeout."""
        alice, bob = self.peer(), self.peer()
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        # Bob's handler is gone: the offer is ignored as an unknown type.
        del bob.peer._handlers[MessageType.ROUTE_REQUEST]
        d = relay.relay_to(alice, node_a, bob.peer_id)
        yield self.until(lambda: self.relay.circuits)
        self.clock.advance(self.relay.offer_timeout)
        status, _ = yield self.refused(d)
        self.assertEqual(status, RouteStatus.TIMEOUT)

    @defer.inlineCallbacks
    def test_peer_drops_mid_circuit(self):
        """When one end's transport drops, the other end learns at once and its relayed session detaches."""
        a, b, node_a, _ = yield self.circuit()
        transport = b.connection.transport
        detached = defer.Deferred()
        self.addCleanup(b.close)
        b.local.add_observer(type("Observer", (), {"session_detached": lambda _, s: s is b and detached.callback(s)})())
        node_a.connection.transport.lose(abort=True)
        yield eventually(detached)
        self.assertEqual(transport.closed, "the other peer went away")
        self.assertIsNone(b.closed)
        yield self.until(lambda: not self.relay.circuits)

    @defer.inlineCallbacks
    def test_close_is_seen_by_the_other_end(self):
        """Closing a relayed session delivers its Close end to end and frees the circuit."""
        a, b, _, _ = yield self.circuit()
        ended = closed(b)
        a.close(0, "done")
        why = yield ended
        self.assertEqual((why.code, why.reason), (0, "done"))
        yield self.until(lambda: not self.relay.circuits)

    @defer.inlineCallbacks
    def test_flow_control(self):
        """A receiver that grants no credit stalls the sender, and the node holds at most one window for the circuit."""
        a, b, _, _ = yield self.circuit()
        sender = a.connection.transport
        receiver = b.connection.transport
        self.assertIsInstance(receiver, CircuitTransport)
        got_channel = defer.Deferred()
        b.on_channel = got_channel.callback
        chat = a.open_channel("bulk")
        chat.send(b"first")
        b_bulk = yield eventually(got_channel)
        received = collect(b_bulk)
        original = b_bulk.on_data
        b_bulk.on_data = lambda data: self.conditions.changed(original(data))
        receiver.pause_reading()
        events = []
        producer = type(
            "Producer",
            (),
            {
                "pauseProducing": lambda self: events.append("pause"),
                "resumeProducing": lambda self: events.append("resume"),
            },
        )()
        sender.registerProducer(producer, True)
        chunk = b"x" * 16384
        total = 64  # 1 MiB: four windows
        for i in range(total):
            chat.send(i.to_bytes(4, "big") + chunk)
        circuit = next(iter(self.relay.circuits.values()))
        node_a = circuit.a
        yield self.until(lambda: sender.pending and sender.credit < len(sender.pending[0]))
        self.assertLessEqual(circuit.in_flight(node_a), WINDOW)
        self.assertGreater(sender.pending_bytes, 2 * WINDOW)
        # The node forwarded no more than a window: the rest waits at the sender.
        self.assertLessEqual(circuit.forwarded[node_a], WINDOW)
        self.assertEqual(events, ["pause"])
        receiver.resume_reading()
        bulk = lambda: [m for m in received if m != b"first"]  # noqa: E731
        yield self.until(lambda: len(bulk()) >= total)
        self.assertEqual([int.from_bytes(m[:4], "big") for m in bulk()], list(range(total)))
        self.assertEqual(sender.pending, [])
        self.assertEqual(events, ["pause", "resume"])
        self.assertLessEqual(circuit.in_flight(node_a), WINDOW)


class TCPRelayTests(RelayScenarioMixin, unittest.TestCase):
    pass


class WebSocketRelayTests(RelayScenarioMixin, unittest.TestCase):
    websocket = True


class MixedTransportRelayTests(RelayHarness, unittest.TestCase):
    """Alice on TCP, Bob on WebSocket, through the same node."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.ws_port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(server_factory(self.server))
        self.addCleanup(self.ws_port.stopListening)

    @defer.inlineCallbacks
    def test_tcp_peer_to_websocket_peer(self):
        """A TCP peer and a WebSocket peer exchange channel data through a circuit."""
        alice, bob = self.peer(), self.peer()
        ws = f"ws://127.0.0.1:{self.ws_port.getHost().port}/"
        a, b, _, _ = yield self.circuit(alice, bob, address_b=ws)
        got_channel = defer.Deferred()
        b.on_channel = got_channel.callback
        chat = a.open_channel("chat")
        chat.send(b"over tcp")
        b_chat = yield eventually(got_channel)
        self.assertEqual((yield next_data(b_chat)), b"over tcp")
        reply = next_data(chat)
        b_chat.send(b"over websocket")
        self.assertEqual((yield reply), b"over websocket")


class WindowEnforcementTests(RelayHarness, unittest.TestCase):
    """The node's side of flow control against a peer that ignores it."""

    @defer.inlineCallbacks
    def test_overrun_closes_circuit(self):
        """A sender that overruns its window loses the circuit, and the other end is told why."""
        a, b, node_a, _ = yield self.circuit()
        ended = closed(b)
        circuit_id = a.connection.transport.circuit_id
        b.connection.transport.data_received = lambda data: None  # the junk never reaches Bob's session
        for _ in range(WINDOW // 32768 + 1):
            node_a.send(MessageType.RELAY_DATA, {"circuit": circuit_id, "data": b"\0" * 32768})
        why = yield ended
        self.assertIn("window exceeded", why.reason)
        self.assertEqual(self.relay.circuits, {})

    @defer.inlineCallbacks
    def test_unknown_circuit(self):
        """RelayData for a circuit the sender is not on is answered with RelayClose and not forwarded."""
        alice = self.peer()
        node_a = yield self.connect(alice)
        before = len(self.relay.seen)
        node_a.send(MessageType.RELAY_DATA, {"circuit": b"\1" * 16, "data": b"nope"})
        yield self.until(lambda: len(self.relay.seen) > before)
        self.assertEqual(self.relay.stats()["peers"], [])

    def test_malformed_bodies(self):
        """Malformed relay bodies are refused with BodyError, like every family's (the guard sends BAD_CBOR)."""
        from cairn.relay import messages
        from cairn.wire.schema import BodyError

        for parse, body in [
            (messages.parse_route_request, {"target": 1, "req": 1}),
            (messages.parse_route_request, {"target": "x", "req": -1}),
            (messages.parse_relay_data, {"circuit": b"short", "data": b""}),
            (messages.parse_relay_data, {"circuit": b"\0" * 16, "data": "text"}),
            (messages.parse_relay_ack, {"circuit": b"\0" * 16, "credit": True}),
            (messages.parse_relay_close, []),
        ]:
            self.assertRaises(BodyError, parse, body)


class NodeWiringTests(unittest.TestCase):
    """make_node serves the relay with the configured capacity."""

    def test_make_node_relay(self):
        """make_node builds a relay service with CAIRN_RELAY_CAPACITY, whose figures reach /metrics."""
        from zope.interface.verify import verifyObject

        from cairn.relay.interfaces import IRelay
        from cairn.service import make_node
        from tests.test_service import config_for

        node = make_node(config_for(self.mktemp(), relay_capacity=3), reactor)
        verifyObject(IRelay, node.relay)
        self.assertEqual(node.relay.capacity, 3)
        self.assertEqual(node.relay.stats()["capacity"], 3)
        node.relay.bytes_sent["peer-x"] = 42
        text = node.metrics.exposition().decode()
        self.assertIn("cairn_relay_capacity 3.0", text)
        self.assertIn('cairn_relay_bytes_sent_total{peer="peer-x"} 42.0', text)


class QuotaTests(RelayHarness, unittest.TestCase):
    """Per-peer byte quotas: off by default, set at runtime through the management API."""

    @defer.inlineCallbacks
    def test_quota_through_api_closes_circuit(self):
        """A quota set with PUT /relay/{peer_id}/quota closes the circuit of a peer that sends past it."""
        from tests.test_management import Node

        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        api = Node(self, relay=self.relay)
        used = self.relay.bytes_sent[alice.peer_id]
        body = api.json("PUT", f"/relay/{alice.peer_id}/quota", json={"max_bytes": used + 1000})
        self.assertEqual(body["quota"], used + 1000)
        peers = {p["peer_id"]: p for p in api.json("GET", "/relay")["peers"]}
        self.assertEqual(peers[alice.peer_id]["quota"], used + 1000)
        ended = closed(b)
        a.open_channel("chat").send(b"y" * 2000)
        why = yield ended
        self.assertIn("quota exceeded", why.reason)
        api.json("PUT", f"/relay/{alice.peer_id}/quota", json={"max_bytes": None})
        self.assertEqual(self.relay.quotas, {})

    def test_quota_rejects_bad_bodies(self):
        """A bad quota body gives 400 and an unpaired peer 404."""
        from tests.test_management import Node, new_peer_id

        alice = self.peer()
        api = Node(self, relay=self.relay)
        for body in [{"max_bytes": -1}, {"max_bytes": "1"}, {"max_bytes": True}, {"other": 1}]:
            api.json("PUT", f"/relay/{alice.peer_id}/quota", expected_code=400, json=body)
        stranger, _ = new_peer_id()
        api.json("PUT", f"/relay/{stranger}/quota", expected_code=404, json={"max_bytes": 5})


class PurgeTests(RelayHarness, unittest.TestCase):
    @defer.inlineCallbacks
    def test_unpairing_closes_circuits(self):
        """Unpairing a peer (the pairing purge hook) closes its circuits, telling the other end."""
        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        ended = closed(b)
        self.relay.set_quota(alice.peer_id, 10**6)
        self.relay.purge(alice.peer_id)
        why = yield ended
        self.assertIn("unpaired", why.reason)
        self.assertEqual((self.relay.circuits, self.relay.quotas), ({}, {}))
