"""
Session scenarios, each written once and run over TCP and over WebSocket.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from tests._harness import (
    ScenarioMixin,
    channel_on_server,
    closed,
    eventually,
    next_data,
    observe_logs,
)


class EstablishMixin(ScenarioMixin):
    """Handshake, channels, Data and custom messages."""

    @defer.inlineCallbacks
    def test_handshake_learns_identities(self):
        """Both sides learn each other's peer id from the handshake."""
        client = self.make_client()
        server_side = self.wait_for_session()
        session = yield self.connect(client)
        other = yield server_side
        self.assertEqual(session.remote_peer_id, self.server.peer_id)
        self.assertEqual(other.remote_peer_id, client.peer_id)
        self.assertEqual(other.session_id, session.session_id)
        # Neither connection keeps its finished Noise state (memory per session).
        self.assertIsNone(session.connection._handshake)
        self.assertIsNone(other.connection._handshake)

    @defer.inlineCallbacks
    def test_log_events_of_one_session(self):
        """
        A session that opens and closes normally costs each side one event
        at its start and one at its end (the closed connection is not a
        third: the session's line already says it ended).
        """
        events = []

        def observer(event):
            if event.get("log_namespace", "").startswith("cairn."):
                events.append(event["log_format"])

        session = yield self.connect()
        other = self.server_session(session)
        observe_logs(self, observer)
        session.close()
        yield defer.gatherResults([eventually(c.lost) for c in self.connections])
        self.assertIsNotNone(other.closed)
        self.assertEqual(events, ["session {sid} closed: {code} {reason}"] * 2)

    @defer.inlineCallbacks
    def test_channel_data_both_ways(self):
        """Data sent on a named channel arrives on the peer's channel of that name, both ways."""
        session = yield self.connect()
        opened = channel_on_server(self.server, "chat")
        chat = session.open_channel("chat")
        server_chat = yield opened
        got = next_data(server_chat)
        chat.send(b"hello")
        self.assertEqual((yield got), b"hello")
        got = next_data(chat)
        server_chat.send(b"hi back")
        self.assertEqual((yield got), b"hi back")
        self.assertEqual(server_chat.name, "chat")
        self.assertEqual(server_chat.id, chat.id)

    @defer.inlineCallbacks
    def test_many_messages_in_order(self):
        """Two hundred messages on two channels arrive complete and in order."""
        session = yield self.connect()
        received = {"a": [], "b": []}
        finished = defer.Deferred()

        def on_data(s, channel, data):
            received[channel.name].append(data)
            if data == b"end":
                finished.callback(None)

        self.server.on_data = on_data
        a, b = session.open_channel("a"), session.open_channel("b")
        for i in range(100):
            a.send(b"a%d" % i)
            b.send(b"b%d" % i)
        a.send(b"end")
        yield eventually(finished)
        self.assertEqual(received["a"], [b"a%d" % i for i in range(100)] + [b"end"])
        self.assertEqual(received["b"], [b"b%d" % i for i in range(100)])

    @defer.inlineCallbacks
    def test_server_can_send_first(self):
        """The responder may open a channel and send before the initiator sends any Data."""
        client = self.make_client()
        server_side = self.wait_for_session()
        got_channel = defer.Deferred()
        client.peer.on_channel = lambda s, ch: got_channel.callback(ch)
        yield self.connect(client)
        other = yield server_side
        news = other.open_channel("news")
        news.send(b"first")
        channel = yield eventually(got_channel)
        self.assertEqual(channel.name, "news")
        self.assertEqual((yield next_data(channel)), b"first")
        got = next_data(news)
        channel.send(b"reply")
        self.assertEqual((yield got), b"reply")

    @defer.inlineCallbacks
    def test_no_ratchet_before_first_channel(self):
        """
        A session that opens no channel starts no ratchet on either side
        (docs/protocol.md §9.5); the first channel starts it, the
        initiator's start going before its ChannelInit.
        """
        client = self.make_client()
        server_side = self.wait_for_session()
        session = yield self.connect(client)
        other = yield server_side
        got = defer.Deferred()
        self.server.register_handler(0xF00A, lambda s, body: got.callback(body))
        session.send(0xF00A, "ping")
        self.assertEqual((yield eventually(got)), "ping")
        self.assertIsNone(session._channel_state)
        self.assertIsNone(other._channel_state)
        self.assertEqual(session.send_seq, 3)  # the custom message was the first sealed envelope
        opened = channel_on_server(self.server, "chat")
        chat = session.open_channel("chat")
        server_chat = yield opened
        got = next_data(server_chat)
        chat.send(b"hello")
        self.assertEqual((yield got), b"hello")
        self.assertIsNotNone(other._channel_state._ratchet)

    @defer.inlineCallbacks
    def test_custom_node_handler(self):
        """A custom type handled at node level reaches the handler with its CBOR body."""
        got = defer.Deferred()
        self.server.register_handler(0xF001, lambda s, body: got.callback(body))
        session = yield self.connect()
        session.send(0xF001, {"hello": [1, 2, 3]})
        self.assertEqual((yield eventually(got)), {"hello": [1, 2, 3]})

    @defer.inlineCallbacks
    def test_custom_session_handler_overrides_node(self):
        """A session-level handler takes precedence over the node-level one for its session."""
        node_got, session_got = [], defer.Deferred()
        self.server.register_handler(0xF002, lambda s, body: node_got.append(body))
        server_side = self.wait_for_session()
        session = yield self.connect()
        other = yield server_side
        other.register_handler(0xF002, lambda s, body: session_got.callback(body))
        session.send(0xF002, "x")
        self.assertEqual((yield eventually(session_got)), "x")
        self.assertEqual(node_got, [])

    @defer.inlineCallbacks
    def test_unknown_type_ignored_and_counted(self):
        """An unknown type is ignored silently and counted; the session keeps working."""
        got = defer.Deferred()
        self.server.register_handler(0xF003, lambda s, body: got.callback(body))
        session = yield self.connect()
        session.send(0xF0FF, {"nobody": "listens"})
        session.send(0x0999, {})
        session.send(0xF003, 1)
        self.assertEqual((yield eventually(got)), 1)
        self.assertEqual(self.server.unknown_types[0xF0FF], 1)
        self.assertEqual(self.server.unknown_types[0x0999], 1)
        self.assertIsNone(self.server_session(session).closed)

    def test_register_handler_refuses_session_types(self):
        """Registering a handler for a session-layer type or outside u16 raises ValueError."""
        self.assertRaises(ValueError, self.server.register_handler, MessageType.DATA, print)
        self.assertRaises(ValueError, self.server.register_handler, 0x10000, print)

    @defer.inlineCallbacks
    def test_graceful_close(self):
        """A Close from the client ends the server's session with the same code and reason."""
        server_side = self.wait_for_session()
        session = yield self.connect()
        other = yield server_side
        ended = closed(other)
        session.close(CloseCode.NORMAL, "bye")
        result = yield ended
        self.assertEqual((result.code, result.reason), (0, "bye"))
        self.assertNotIn(session.session_id, self.server.sessions)


class TCPEstablishTests(EstablishMixin, unittest.TestCase):
    websocket = False


class WebSocketEstablishTests(EstablishMixin, unittest.TestCase):
    websocket = True


class KeepaliveMixin(ScenarioMixin):
    """Keepalive acks and timeouts on injected clocks."""

    @defer.inlineCallbacks
    def test_keepalive_acks_trim_resend_buffer(self):
        """A keepalive tick acknowledges what was received, emptying the peer's resend buffer."""
        client = self.make_client()
        session = yield self.connect(client)
        opened = channel_on_server(self.server, "c")
        channel = session.open_channel("c")
        server_channel = yield opened
        got = next_data(server_channel)
        channel.send(b"x")
        yield got
        self.assertGreater(session.buffered()[0], 0)
        other = self.server_session(session)
        acked = defer.Deferred()
        original = type(session)._acknowledged

        def acknowledged(self, upto):
            original(self, upto)
            if self is session and not acked.called:
                acked.callback(upto)

        self.patch(type(session), "_acknowledged", acknowledged)  # sessions have no instance dict
        self.server_clock.advance(30)
        upto = yield eventually(acked)
        self.assertEqual(upto, other.recv_seq)
        self.assertEqual(session.buffered(), (0, 0))

    @defer.inlineCallbacks
    def test_keepalive_timeout_detaches(self):
        """A peer silent past the keepalive timeout loses its transport but its session stays resumable."""
        client = self.make_client()
        session = yield self.connect(client)
        other = self.server_session(session)
        lost = self.connections[-1].lost  # the client's connection
        for _ in range(4):
            self.server_clock.advance(30)
        yield eventually(lost)
        self.assertFalse(other.attached)
        self.assertIsNone(other.closed)
        self.assertIn(session.session_id, self.server.sessions)

    @defer.inlineCallbacks
    def test_detached_session_expires_after_ttl(self):
        """A detached session is discarded once the session TTL passes."""
        session = yield self.connect()
        other = self.server_session(session)
        server_lost = other.connection.lost
        session.connection.drop_transport()
        yield eventually(server_lost)
        self.assertFalse(other.attached)
        self.server_clock.advance(3599)
        self.assertIsNone(other.closed)
        self.server_clock.advance(1)
        self.assertEqual(other.closed.code, CloseCode.TIMEOUT)
        self.assertNotIn(session.session_id, self.server.sessions)


class TCPKeepaliveTests(KeepaliveMixin, unittest.TestCase):
    websocket = False


class WebSocketKeepaliveTests(KeepaliveMixin, unittest.TestCase):
    websocket = True


__all__ = ["cbor"]


class AddressLoggingTests(unittest.TestCase):
    """CAIRN_LOG_ADDRESSES: session lines name the peer's address only when the operator opts in."""

    def established_line(self, log_addresses):
        from twisted.logger import formatEvent

        from cairn.crypto.identity import Identity
        from cairn.session.peer import Peer

        lines = []

        def observer(event):
            if event.get("log_namespace") == "cairn.session.peer":
                lines.append(formatEvent(event))

        observe_logs(self, observer)
        peer = Peer(Identity.generate(), task.Clock(), log_addresses=log_addresses)
        session = type("S", (), {})()
        session.session_id = bytes(16)
        session.remote_peer_id = "QmPeer"
        session.closed = None
        session.connection = type("C", (), {"transport": type("T", (), {"peer_address": "198.51.100.9:4000"})()})()
        peer.session_established(session)
        return lines[-1]

    def test_off_by_default(self):
        self.assertNotIn("198.51.100.9", self.established_line(False))

    def test_opt_in(self):
        self.assertIn("from 198.51.100.9:4000", self.established_line(True))
