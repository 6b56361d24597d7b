"""
Attached relay circuits (docs/protocol.md §25.8): the end-to-end session
on connections of its own, spliced by the node. Library clients over real
loopback sockets with a node peer; the relay's clock is a L{task.Clock}.
"""

from types import SimpleNamespace

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.relay import client as relay
from cairn.relay import messages, splice
from cairn.relay.attached import DRAIN_GRACE, AttachedCircuit, AttachProtocol
from cairn.relay.interfaces import RelayLimits
from cairn.relay.service import OFFER_TIMEOUT
from cairn.session.connection import HandshakeFailed
from cairn.transport.handoff import HandOffFactory
from cairn.transport.tcp import READ_SIZE
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from tests._harness import closed, collect, eventually, first_close, next_data
from tests.test_relay import MARKER, RelayHarness, RelayScenarioMixin


class AttachedHarness(RelayHarness):
    """The relay service takes attached circuits on the test's TCP listener."""

    splice_options = {}
    stream_factory = HandOffFactory

    def relay_options(self):
        return {"attached_circuits": True, "reactor": reactor, "splice_options": dict(self.splice_options)}

    def only_circuit(self):
        [circuit] = self.relay.circuits.values()
        return circuit

    def watch(self, circuit):
        """Re-check the test's conditions after every move of C{circuit}'s splice; returns the most it held."""
        observer = circuit.splice.observer
        most = [circuit.splice.held()]

        class Watching:
            def __getattr__(_, name):
                method = getattr(observer, name)

                def call(*args):
                    result = method(*args)
                    if circuit.splice is not None:
                        most[0] = max(most[0], circuit.splice.held())
                    self.conditions.changed()
                    return result

                return call

        circuit.splice.observer = Watching()
        return most


class AttachedScenarioTests(AttachedHarness, RelayScenarioMixin, unittest.TestCase):
    """The relay scenarios over attached circuits (TCP on both ends)."""

    @defer.inlineCallbacks
    def test_channel_data_both_ways(self):
        """
        An attached circuit carries channel data and custom messages both
        ways; no RelayData crosses the node sessions; the bytes are counted.
        """
        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        circuit = self.only_circuit()
        self.assertEqual(circuit.mode, "attached")
        self.assertIsNotNone(circuit.splice)
        self.assertIsInstance(a.connection.transport, AttachProtocol)
        self.assertIsInstance(b.connection.transport, AttachProtocol)
        # The node's side of both connections: Nagle on; the ends': off.
        self.assertEqual([side.transport.getTcpNoDelay() for side in circuit.splice.sides], [False, False])
        self.assertTrue(a.connection.transport.transport.getTcpNoDelay())
        yield self.exchange(a, b)
        self.assertEqual(self.relay.seen, [])
        stats = self.relay.stats()
        [entry] = stats["open"]
        self.assertEqual(entry["mode"], "attached")
        by_peer = {p["peer_id"]: p for p in stats["peers"]}
        self.assertGreater(by_peer[alice.peer_id]["bytes_sent"], len(MARKER))
        self.assertEqual(by_peer[alice.peer_id]["bytes_sent"], by_peer[bob.peer_id]["bytes_received"])
        self.assertEqual(entry["bytes"], sum(p["bytes_sent"] for p in stats["peers"]))

    @defer.inlineCallbacks
    def test_close_read_after_the_relay_close(self):
        """
        The other end's Close arrives even when the node's RelayClose is
        read first: an end reads its attach connection to its end before
        dropping it (§25.8.4), instead of aborting it with the Close unread.
        """
        a, b, _, _ = yield self.circuit()
        attach = b.connection.transport
        circuit_b = attach.circuit
        remote_closed = circuit_b.remote_closed

        def seen(*args, **kwargs):
            remote_closed(*args, **kwargs)
            self.conditions.changed()

        circuit_b.remote_closed = seen
        ended = closed(b)
        attach.transport.pauseProducing()  # Bob reads the RelayClose first
        a.close(0, "done")
        yield self.until(lambda: circuit_b.closed is not None)
        self.assertIsNone(b.closed)
        attach.transport.resumeProducing()
        why = yield ended
        self.assertEqual((why.code, why.reason), (0, "done"))
        yield self.until(lambda: not self.relay.circuits)

    @defer.inlineCallbacks
    def test_peer_drops_mid_circuit(self):
        """
        When one end's attached connection drops, the node closes the other
        one with a RelayClose saying why; the requester re-establishes.
        """
        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        circuit_b = b.connection.transport.circuit
        detached, resumed_b = defer.Deferred(), defer.Deferred()

        class Observer:
            def session_detached(_, session):
                if session is b and not detached.called:
                    detached.callback(None)

            def session_resumed(_, session):
                if session is b and not resumed_b.called:
                    resumed_b.callback(None)

        b.local.add_observer(Observer())
        a.connection.transport.transport.abortConnection()
        yield eventually(detached)
        yield self.until(lambda: circuit_b.closed is not None)
        self.assertEqual(circuit_b.closed, "the other peer went away")
        self.assertIsNone(b.closed)
        # Alice (the requester) asks for a new circuit and resumes over it.
        yield eventually(resumed_b)
        self.assertEqual(self.only_circuit().mode, "attached")
        reply = defer.Deferred()
        b.on_channel = lambda channel: setattr(channel, "on_data", reply.callback)
        a.open_channel("after").send(b"again")
        self.assertEqual((yield eventually(reply)), b"again")
        self.assertEqual(relay.relay_endpoint(alice).relayed[a.session_id].reestablished, 1)

    @defer.inlineCallbacks
    def test_flow_control(self):
        """
        A receiver that stops reading stalls the sender through TCP; the
        node holds at most one chunk per direction, and everything arrives
        in order once the receiver reads again.
        """
        a, b, _, _ = yield self.circuit()
        circuit = self.only_circuit()
        most = self.watch(circuit)
        got_channel = defer.Deferred()
        b.on_channel = got_channel.callback
        chat = a.open_channel("bulk")
        chat.send(b"first")
        b_bulk = yield eventually(got_channel)
        received = collect(b_bulk)
        original = b_bulk.on_data
        b_bulk.on_data = lambda data: self.conditions.changed(original(data))
        b.connection.transport.transport.pauseProducing()
        events = []

        class Pusher:
            sent = 0

            def pauseProducing(pusher):
                events.append("pause")
                self.conditions.changed()

            def resumeProducing(pusher):
                events.append("resume")

            def stopProducing(pusher):
                pass

        a.connection.transport.transport.registerProducer(Pusher(), True)
        chunk = b"x" * 32768
        total = 1024  # 32 MiB, far beyond what the sockets and the node hold
        for i in range(total):
            chat.send(i.to_bytes(4, "big") + chunk)
        yield self.until(lambda: events and circuit.splice.sides[0].out.state == "write")
        accepted = self.relay.bytes_sent[a.local.peer_id]
        self.assertLess(accepted, total * len(chunk) // 2)
        b.connection.transport.transport.resumeProducing()
        bulk = lambda: [m for m in received if m != b"first"]  # noqa: E731
        yield self.conditions.until(lambda: len(bulk()) >= total, timeout=60)
        self.assertEqual([int.from_bytes(m[:4], "big") for m in bulk()], list(range(total)))
        self.assertLessEqual(most[0], 2 * splice.CHUNK + 2 * READ_SIZE)
        self.assertIn("pause", events)


class BufferedScenarioTests(AttachedScenarioTests):
    """The same, moving the bytes through the process (no splice(2): other systems)."""

    splice_options = {"use_splice": False}


class AttachRefusalTests(AttachedHarness, unittest.TestCase):
    """A RelayAttach the node cannot take is answered with a Close in clear."""

    @defer.inlineCallbacks
    def attach_raw(self, data):
        raw = yield self.raw_connect()
        raw.send_raw(data)
        yield eventually(raw.lost)
        return first_close(raw)

    @defer.inlineCallbacks
    def test_unknown_circuit(self):
        """A circuit the node does not have: Close 9, the same as a wrong token."""
        body = yield self.attach_raw(messages.relay_attach(b"\1" * 16, b"\2" * 32))
        self.assertEqual(body["code"], CloseCode.UNKNOWN_SESSION)

    @defer.inlineCallbacks
    def test_wrong_or_used_token(self):
        """A wrong token, or one already used, is refused (Close 9) and the circuit goes on."""
        a, b, _, _ = yield self.circuit()
        circuit = self.only_circuit()
        for token in [b"\2" * 32, circuit.tokens[circuit.a], circuit.tokens[circuit.b]]:
            body = yield self.attach_raw(messages.relay_attach(circuit.circuit_id, token))
            self.assertEqual(body["code"], CloseCode.UNKNOWN_SESSION)
        reply = next_data(a.open_channel("still"))
        b.on_channel = lambda channel: channel.send(b"alive")
        self.assertEqual((yield reply), b"alive")

    @defer.inlineCallbacks
    def test_malformed(self):
        """A RelayAttach body that is not {circuit, token}: Close 3; an oversized one: Close 2."""
        from cairn.wire.envelope import Envelope

        def envelope(payload, version=1):
            return Envelope(version, MessageType.RELAY_ATTACH, bytes(16), 0, payload).to_bytes()

        for payload, code in [
            (cbor.dumps({"circuit": b"\1" * 16}), CloseCode.BAD_CBOR),
            (cbor.dumps({"circuit": b"\1" * 16, "token": b"short"}), CloseCode.BAD_CBOR),
            (cbor.dumps(["not", "a", "map"]), CloseCode.BAD_CBOR),
            (b"\xff\xff", CloseCode.BAD_CBOR),
            (b"\0" * 2000, CloseCode.PAYLOAD_TOO_LARGE),
        ]:
            body = yield self.attach_raw(envelope(payload))
            self.assertEqual(body["code"], code, payload)
        body = yield self.attach_raw(envelope(cbor.dumps({"circuit": b"\1" * 16, "token": b"\2" * 32}), version=9))
        self.assertEqual(body["code"], CloseCode.VERSION_UNSUPPORTED)

    @defer.inlineCallbacks
    def test_target_never_attaches(self):
        """A circuit whose target does not attach in time is closed; the requester's session fails."""
        original = AttachedCircuit.dial

        def dial(circuit, endpoint, token):
            if circuit.connection.initiator:
                return original(circuit, endpoint, token)
            return defer.succeed(None)

        self.patch(AttachedCircuit, "dial", dial)
        alice, bob = self.peer(), self.peer()
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        d = relay.relay_to(alice, node_a, bob.peer_id)
        attached = lambda: self.relay.circuits and self.only_circuit().attached  # noqa: E731
        yield self.until(lambda: attached() and None not in attached().values())
        self.assertEqual(len(self.only_circuit().attached), 1)
        self.clock.advance(OFFER_TIMEOUT)
        self.assertEqual(self.relay.circuits, {})
        failure = yield self.assertFailure(eventually(d), HandshakeFailed)
        self.assertEqual(failure.code, CloseCode.GOING_AWAY)

    @defer.inlineCallbacks
    def test_relay_data_on_attached_circuit(self):
        """RelayData for an attached circuit closes it for good: the ends' sessions end."""
        a, b, node_a, _ = yield self.circuit()
        ended = closed(b)
        node_a.send(MessageType.RELAY_DATA, {"circuit": self.only_circuit().circuit_id, "data": b"x"})
        why = yield ended
        self.assertIn("RelayData on an attached circuit", why.reason)

    @defer.inlineCallbacks
    def test_node_stop_closes_attached_connections(self):
        """Stopping the relay service closes the attached connections (their sessions detach)."""
        a, b, _, _ = yield self.circuit()
        lost = [a.connection.when_lost(), b.connection.when_lost()]
        yield self.relay.stop()
        yield eventually(defer.gatherResults(lost))
        self.assertEqual(self.relay.circuits, {})


class ModeTests(AttachedHarness, unittest.TestCase):
    """Who gets an attached circuit: both ends must ask, and be able to."""

    @defer.inlineCallbacks
    def test_requester_without_attach(self):
        """A requester that does not ask (attach = False) gets a RelayData circuit."""
        alice = self.peer()
        relay.relay_endpoint(alice).attach = False
        yield self.circuit(alice)
        self.assertEqual(self.only_circuit().mode, "session")

    @defer.inlineCallbacks
    def test_target_without_attach(self):
        """A target that does not attach gets a RelayData circuit, and the requester no token."""
        bob = self.peer()
        relay.relay_endpoint(bob).attach = False
        a, b, _, _ = yield self.circuit(bob=bob)
        self.assertEqual(self.only_circuit().mode, "session")
        self.assertEqual(self.only_circuit().tokens, {})
        reply = next_data(a.open_channel("x"))
        b.on_channel = lambda channel: channel.send(b"over RelayData")
        self.assertEqual((yield reply), b"over RelayData")

    @defer.inlineCallbacks
    def test_node_without_attach(self):
        """A node that takes no attachments (attached_circuits false) offers no tokens."""
        self.relay.attached_circuits = False
        yield self.circuit()
        self.assertEqual(self.only_circuit().mode, "session")


class AttachedLimitTests(AttachedHarness, unittest.TestCase):
    """Byte quotas and rate limits on spliced bytes."""

    splice_options = {"chunk": 16384}

    @defer.inlineCallbacks
    def channel_pair(self, alice, bob):
        a, b, _, _ = yield self.circuit(alice, bob)
        got = defer.Deferred()
        b.on_channel = got.callback
        chat = a.open_channel("bulk")
        chat.send(b"first")
        b_chat = yield eventually(got)
        received = []
        b_chat.on_data = lambda data: self.conditions.changed(data != b"first" and received.append(data))
        return a, b, chat, received

    @defer.inlineCallbacks
    def test_quota(self):
        """The node forwards exactly up to the quota, then closes the circuit for good."""
        alice, bob = self.peer(), self.peer()
        a, b, chat, _ = yield self.channel_pair(alice, bob)
        quota = self.relay.bytes_sent[alice.peer_id] + 50_000
        yield self.relay.set_quota(alice.peer_id, quota)
        ended = closed(b)
        for _ in range(10):
            chat.send(b"y" * 20_000)
        why = yield ended
        self.assertIn("relay byte quota exceeded", why.reason)
        self.assertEqual(self.relay.bytes_sent[alice.peer_id], quota)
        self.assertEqual(self.relay.circuits, {})

    @defer.inlineCallbacks
    def test_rate_limit(self):
        """A rate-limited sender's bytes go out as its token bucket (on the node's clock) allows."""
        alice, bob = self.peer(), self.peer()
        a, b, chat, received = yield self.channel_pair(alice, bob)
        rate = 65536
        yield self.relay.set_limits(alice.peer_id, RelayLimits(None, rate))
        circuit = self.only_circuit()
        self.watch(circuit)
        start = self.relay.bytes_received[bob.peer_id]
        total = 16
        for i in range(total):
            chat.send(i.to_bytes(4, "big") + b"z" * 16384)  # about 4 s at the rate
        # The bucket (one second's worth) and one chunk of debt go at once; the rest waits.
        yield self.until(lambda: sum(circuit.queued.values()) > 0)
        self.assertLessEqual(self.relay.bytes_received[bob.peer_id] - start, rate + 16384)
        self.assertLess(len(received), total)
        seconds = 0
        while len(received) < total:
            seconds += 1
            self.clock.advance(1.0)
            yield self.until(lambda: len(received) >= total or sum(circuit.queued.values()) > 0)
            # At most the bucket, the refill and one chunk of debt so far.
            self.assertLessEqual(self.relay.bytes_received[bob.peer_id] - start, rate * (1 + seconds) + 16384)
        self.assertGreaterEqual(seconds, 3)
        self.assertEqual([int.from_bytes(m[:4], "big") for m in received], list(range(total)))


class _Transport:
    connected, disconnecting = 1, False

    def __init__(self):
        self.aborted = 0

    def abortConnection(self):
        self.aborted += 1
        self.connected = 0


class DrainTests(unittest.TestCase):
    """After a RelayClose that is not final an end reads its attach connection to its end, for a bounded time."""

    def setUp(self):
        self.clock = task.Clock()
        endpoint = SimpleNamespace(clock=self.clock, resume_circuits=True, circuits={})
        connection = SimpleNamespace(session=None)
        self.circuit = AttachedCircuit(endpoint, None, b"\x01" * 16, "peer", connection, None)
        self.transport = _Transport()
        self.circuit.protocol = SimpleNamespace(transport=self.transport)

    def test_dropped_after_the_grace(self):
        self.circuit.remote_closed("the other peer went away")
        self.assertEqual(self.transport.aborted, 0)
        self.clock.advance(DRAIN_GRACE - 0.1)
        self.assertEqual(self.transport.aborted, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.transport.aborted, 1)

    def test_connection_end_stops_the_drain(self):
        self.circuit.remote_closed("the other peer went away")
        self.circuit.connection_lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_final_drops_at_once(self):
        self.circuit.remote_closed("revoked", final=True)
        self.assertEqual(self.transport.aborted, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class VectorTests(unittest.TestCase):
    def test_relay_attach_vector(self):
        """The RelayAttach envelope of docs/protocol.md §25.8, byte for byte."""
        expected = (
            "01" "0505" + "00" * 16 + "00" * 8 + "00000042"  # version, type, session id, seq, length
            "a2" "65746f6b656e" "5820" + bytes(range(32)).hex()  # {"token": h'00..1f',
            + "67636972637569" "74" "50" + bytes(range(16)).hex()  # "circuit": h'00..0f'}
        )
        self.assertEqual(messages.relay_attach(bytes(range(16)), bytes(range(32))).hex(), expected)
        self.assertEqual(documented_attach_vector(), expected)
        body = cbor.loads(bytes.fromhex(expected)[31:])
        self.assertEqual(messages.parse_relay_attach(body), (bytes(range(16)), bytes(range(32))))


class EarlyAttachTests(AttachedHarness, unittest.TestCase):
    @defer.inlineCallbacks
    def test_target_attaches_before_accepting(self):
        """
        A target's RelayAttach may arrive before its RouteResponse (another
        connection): the node keeps it, and splices once the requester attaches.
        """
        alice, bob = self.peer(), self.peer()
        node_a = yield self.connect(alice)
        node_b = yield self.connect(bob)
        offered = defer.Deferred()
        bob.peer.register_handler(MessageType.ROUTE_REQUEST, lambda session, body: offered.callback(body))
        relay.relay_to(alice, node_a, bob.peer_id).addErrback(lambda _: None)
        offer = yield eventually(offered)
        circuit = self.only_circuit()
        raw = yield self.raw_connect()
        raw.send_raw(messages.relay_attach(circuit.circuit_id, offer["token"]))
        yield self.until(lambda: circuit.attached.get(circuit.b) is not None)
        self.assertEqual(circuit.state, "offered")
        node_b.send(MessageType.ROUTE_RESPONSE, {"circuit": circuit.circuit_id, "status": 0, "attach": True})
        yield self.until(lambda: circuit.splice is not None)
        # The requester's inner HandshakeInit comes through the splice.
        first = yield eventually(raw.arrived)
        self.assertEqual(first.type, MessageType.HANDSHAKE_INIT)



def documented_attach_vector() -> str:
    """The envelope hex of docs/protocol.md §25.8.7 (its "envelope" lines, concatenated)."""
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("#### 25.8.7 Test vector") :]
    block = section[section.index("envelope (97 bytes):") : section.index("```", section.index("envelope (97 bytes):"))]
    return "".join(re.findall(r"^\s+([0-9a-f]+)$", block, re.MULTILINE))
