"""
Relay circuits across a Reconnect: an end whose session with the node
drops (and is resumed by C{auto_resume}) gets its end-to-end session
back over a new circuit, with every message exactly once and in order.
Over TCP and WebSocket; the clients' clocks are L{task.Clock}s.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.relay import client as relay
from cairn.relay.client import RouteRefused
from cairn.wire.constants import MessageType, RouteStatus
from tests._harness import closed, eventually
from tests.test_relay import RelayHarness

RELAY_TYPES = (
    MessageType.ROUTE_REQUEST,
    MessageType.ROUTE_RESPONSE,
    MessageType.RELAY_DATA,
    MessageType.RELAY_ACK,
    MessageType.RELAY_CLOSE,
)


class _Watcher:
    """A Peer observer that re-checks the test's conditions on every session event."""

    def __init__(self, changed):
        self.changed = changed

    def __getattr__(self, name):
        if name.startswith("session_"):
            return lambda session: self.changed()
        raise AttributeError(name)


class ResumeHarness(RelayHarness):
    def watched(self, **overrides):
        """A paired client whose session events and relay messages re-check the conditions."""
        client = self.make_client(**overrides)
        self.successResultOf(self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0))
        client.peer.add_observer(_Watcher(self.conditions.changed))
        for type_code in RELAY_TYPES:
            handler = client.peer.handler_for(type_code)
            client.peer._handlers[type_code] = lambda s, b, h=handler: self.conditions.changed(h(s, b))
        return client

    @defer.inlineCallbacks
    def chat(self, a, b):
        """A channel from C{a} to C{b}; fires with (a's channel, what b received, what a received)."""
        to_b, to_a = [], []
        opened = defer.Deferred()

        def on_channel(channel):
            channel.on_data = lambda data: self.conditions.changed(to_b.append(data))
            opened.callback(channel)

        b.on_channel = on_channel
        chat = a.open_channel("chat")
        chat.on_data = lambda data: self.conditions.changed(to_a.append(data))
        chat.send(b"a0")
        b_chat = yield eventually(opened)
        return chat, b_chat, to_b, to_a

    def relayed(self, client, session):
        return relay.relay_endpoint(client).relayed[session.session_id]


class ResumeScenarioMixin(ResumeHarness):
    @defer.inlineCallbacks
    def test_requester_drops_and_resumes(self):
        """A requester's dropped node transport: the session resumes on a new circuit, each message once, in order."""
        alice, bob = self.watched(auto_resume=True), self.watched()
        a, b, node_a, _ = yield self.circuit(alice, bob)
        chat, b_chat, to_b, to_a = yield self.chat(a, b)
        for i in range(1, 20):
            chat.send(b"a%d" % i)
            b_chat.send(b"b%d" % i)
        old = dict(self.relay.circuits)
        node_a.connection.transport.lose(abort=True)  # mid-stream: some of it is still on the way
        yield self.until(lambda: not node_a.attached and not a.attached)
        for i in range(20, 40):
            chat.send(b"a%d" % i)  # buffered by the detached end-to-end session
        # The other end learns at once, and its session waits (detached, not closed).
        yield self.until(lambda: not b.attached and not set(old) & set(self.relay.circuits))
        self.assertIsNone(b.closed)
        for i in range(20, 40):
            b_chat.send(b"b%d" % i)
        alice.clock.advance(1.0)  # auto_resume of the node session
        yield self.until(lambda: a.attached and b.attached and self.relayed(alice, a).reestablished)
        self.assertEqual(self.relayed(alice, a).reestablished, 1)
        self.assertEqual(len(self.relay.circuits), 1)
        self.assertFalse(set(old) & set(self.relay.circuits))
        for i in range(40, 60):
            chat.send(b"a%d" % i)
            b_chat.send(b"b%d" % i)
        yield self.until(lambda: len(to_b) >= 60 and len(to_a) >= 59)
        self.assertEqual(to_b, [b"a%d" % i for i in range(60)])
        self.assertEqual(to_a, [b"b%d" % i for i in range(1, 60)])
        self.assertIsNone(a.closed)
        self.assertIsNone(b.closed)

    @defer.inlineCallbacks
    def test_target_drops_and_resumes(self):
        """A target's dropped node transport: the requester retries until the target is back, then resumes."""
        alice, bob = self.watched(), self.watched(auto_resume=True)
        a, b, _, node_b = yield self.circuit(alice, bob)
        chat, b_chat, to_b, to_a = yield self.chat(a, b)
        for i in range(1, 20):
            chat.send(b"a%d" % i)
            b_chat.send(b"b%d" % i)
        node_b.connection.transport.lose(abort=True)
        relayed = self.relayed(alice, a)
        # The node closes the circuit; Alice's session detaches and her
        # first attempt finds Bob offline: she retries on her clock.
        yield self.until(lambda: not a.attached and not b.attached and relayed.timer is not None)
        self.assertEqual(self.relay.statuses["offline"], 1)
        for i in range(20, 40):
            chat.send(b"a%d" % i)
            b_chat.send(b"b%d" % i)
        bob.clock.advance(1.0)  # Bob's node session resumes
        yield self.until(lambda: node_b.attached and self.server_session(node_b).attached)
        self.assertFalse(b.attached)
        alice.clock.advance(relayed.delay)  # (at most) the backoff
        yield self.until(lambda: a.attached and b.attached and relayed.reestablished)
        self.assertEqual(relayed.reestablished, 1)
        for i in range(40, 60):
            chat.send(b"a%d" % i)
            b_chat.send(b"b%d" % i)
        yield self.until(lambda: len(to_b) >= 60 and len(to_a) >= 59)
        self.assertEqual(to_b, [b"a%d" % i for i in range(60)])
        self.assertEqual(to_a, [b"b%d" % i for i in range(1, 60)])

    @defer.inlineCallbacks
    def test_unpaired_target_ends_session(self):
        """A lost circuit whose peer was unpaired meanwhile is not re-established: the session ends with the refusal."""
        alice, bob = self.watched(), self.watched(auto_resume=True)
        a, b, _, node_b = yield self.circuit(alice, bob)
        ended = closed(a)
        self.successResultOf(self.trust.revoke(bob.peer_id, 1.0))
        node_b.connection.transport.lose(abort=True)
        why = yield ended
        self.assertIn("not re-established", why.reason)
        self.assertIn("not_paired", why.reason)
        self.assertNotIn(a.session_id, relay.relay_endpoint(alice).relayed)

    @defer.inlineCallbacks
    def test_final_close_ends_both_sessions(self):
        """A RelayClose marked final (the peer was unpaired) ends both sessions at once instead of detaching them."""
        alice, bob = self.watched(), self.watched()
        a, b, _, _ = yield self.circuit(alice, bob)
        ended_a, ended_b = closed(a), closed(b)
        self.relay.purge(alice.peer_id)
        why_a, why_b = yield defer.gatherResults([ended_a, ended_b])
        self.assertIn("unpaired", why_a.reason)
        self.assertIn("unpaired", why_b.reason)

    @defer.inlineCallbacks
    def test_node_session_close_ends_sessions(self):
        """A node session that ends with a Close ends the relayed sessions on both sides: nothing will resume them."""
        alice, bob = self.watched(auto_resume=True), self.watched()
        a, b, node_a, _ = yield self.circuit(alice, bob)
        ended_a, ended_b = closed(a), closed(b)
        node_a.close()
        why_a, why_b = yield defer.gatherResults([ended_a, ended_b])
        self.assertIn("the session with the node ended", why_a.reason)
        self.assertIn("went away", why_b.reason)
        self.assertEqual(relay.relay_endpoint(alice).relayed, {})

    @defer.inlineCallbacks
    def test_no_resume_when_disabled(self):
        """With resume_circuits off, a lost circuit ends the session at once with the reason."""
        alice, bob = self.watched(), self.watched()
        relay.relay_endpoint(bob).resume_circuits = False
        a, b, node_a, _ = yield self.circuit(alice, bob)
        ended = closed(b)
        node_a.connection.transport.lose(abort=True)
        why = yield ended
        self.assertIn("relay circuit closed", why.reason)
        self.assertIn("went away", why.reason)

    @defer.inlineCallbacks
    def test_route_request_after_resume(self):
        """A node session resumed after a drop can open new circuits, and the node keeps none of the old ones."""
        alice, bob = self.watched(auto_resume=True), self.watched()
        a, b, node_a, _ = yield self.circuit(alice, bob)
        a.close()
        node_a.connection.transport.lose(abort=True)
        yield self.until(lambda: not node_a.attached)
        alice.clock.advance(1.0)
        yield self.until(lambda: node_a.attached and not self.relay.circuits)
        accepted = defer.Deferred()
        relay.relay_endpoint(bob).on_session = accepted.callback
        a2 = yield eventually(relay.relay_to(alice, node_a, bob.peer_id))
        b2 = yield eventually(accepted)
        self.assertEqual((a2.remote_peer_id, b2.remote_peer_id), (bob.peer_id, alice.peer_id))
        self.assertNotEqual(a2.session_id, a.session_id)

    @defer.inlineCallbacks
    def test_pending_request_fails_when_node_session_drops(self):
        """A RouteRequest still unanswered when the node session drops fails with offline."""
        alice, bob = self.watched(), self.watched()
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        del bob.peer._handlers[MessageType.ROUTE_REQUEST]  # Bob never answers
        d = relay.relay_to(alice, node_a, bob.peer_id)
        yield self.until(lambda: self.relay.circuits)
        node_a.connection.transport.lose(abort=True)
        try:
            yield eventually(d)
        except RouteRefused as e:
            self.assertEqual(e.status, RouteStatus.OFFLINE)
        else:
            self.fail("the request succeeded")
        yield self.until(lambda: not self.relay.circuits)


class TCPResumeTests(ResumeScenarioMixin, unittest.TestCase):
    pass


class WebSocketResumeTests(ResumeScenarioMixin, unittest.TestCase):
    websocket = True
