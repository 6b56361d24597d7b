"""
Reconnect: sessions outlive transports, over TCP and WebSocket.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from cairn.transport.websocket import server_factory
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import Envelope
from tests._harness import (
    Conditions,
    ScenarioMixin,
    channel_on_server,
    closed,
    eventually,
    first_close,
)


class ResumeMixin(ScenarioMixin):
    @defer.inlineCallbacks
    def open_pair(self, client=None):
        """A session and its channel "c" on both sides, with receive lists."""
        client = client or self.make_client()
        session = yield self.connect(client)
        opened = channel_on_server(self.server, "c")
        channel = session.open_channel("c")
        server_channel = yield opened
        self.server_got, self.client_got = [], []
        self.conditions = Conditions()
        server_channel.on_data = lambda data: self.conditions.changed(self.server_got.append(data))
        channel.on_data = lambda data: self.conditions.changed(self.client_got.append(data))
        return client, session, channel, server_channel

    @defer.inlineCallbacks
    def drop(self, session):
        """Abort the client's transport and wait until the server noticed."""
        other = self.server_session(session)
        server_lost = other.connection.lost
        client_lost = session.connection.lost
        session.connection.drop_transport()
        yield eventually(defer.gatherResults([server_lost, client_lost]))
        self.assertFalse(other.attached)
        self.assertFalse(session.attached)

    def until(self, condition):
        """Fires once C{condition()} holds (re-checked whenever data arrives)."""
        return self.conditions.until(condition)

    @defer.inlineCallbacks
    def test_resume_delivers_both_directions(self):
        """Messages sent by either side while detached arrive once, in order, after resume."""
        client, session, channel, server_channel = yield self.open_pair()
        channel.send(b"before")
        yield self.until(lambda: self.server_got == [b"before"])
        yield self.drop(session)
        for i in range(5):
            channel.send(b"c%d" % i)
            server_channel.send(b"s%d" % i)
        again = yield eventually(client.resume(session))
        self.assertIs(again, session)
        yield self.until(lambda: len(self.server_got) == 6 and len(self.client_got) == 5)
        self.assertEqual(self.server_got, [b"before"] + [b"c%d" % i for i in range(5)])
        self.assertEqual(self.client_got, [b"s%d" % i for i in range(5)])

    @defer.inlineCallbacks
    def test_both_sides_notify_resumed(self):
        """Observers of both peers hear session_resumed: the dialer's as well as the listener's."""
        client, session, _, _ = yield self.open_pair()
        heard = []

        class Observer:
            def __init__(self, side):
                self.side = side

            def session_resumed(self, resumed):
                heard.append((self.side, resumed.session_id))

        client.peer.add_observer(Observer("dialer"))
        self.server.add_observer(Observer("listener"))
        yield self.drop(session)
        yield eventually(client.resume(session))
        # (The listener answers the Reconnect after notifying, so it was first.)
        self.assertIn(("dialer", session.session_id), heard)
        self.assertIn(("listener", session.session_id), heard)

    @defer.inlineCallbacks
    def test_dialer_gives_up_after_node_accepted(self):
        """
        A dialer whose Reconnect the node accepted, but whose answer it never
        saw, times out with a clear Close: the node drops that connection
        only, and the session resumes on the next attempt.
        """
        client, session, channel, server_channel = yield self.open_pair()
        yield self.drop(session)
        other = self.server_session(session)
        made = []
        real = client.peer.connection

        def connection(**kwargs):
            conn = real(**kwargs)
            made.append(conn)
            return conn

        client.peer.connection = connection
        attempt = client.resume(session)
        self.assertEqual(len(made), 1)
        made[0]._in_await_reconnect = lambda envelope: None  # the answer is lost
        node_side = Conditions()
        self.server.add_observer(type("O", (), {"session_resumed": lambda _, s: node_side.changed()})())
        yield node_side.until(lambda: other.attached)
        lost = other.connection.lost
        client.clock.advance(client.peer.handshake_timeout + 1)
        yield self.assertFailure(eventually(attempt), Exception)
        yield eventually(lost)
        self.assertIsNone(other.closed)  # detached, not ended
        self.assertFalse(other.attached)
        client.peer.connection = real
        yield eventually(client.resume(session))
        channel.send(b"after")
        yield self.until(lambda: self.server_got == [b"after"])

    @defer.inlineCallbacks
    def test_resume_resends_in_flight(self):
        """Envelopes written but lost with the old transport are resent after resume."""
        client, session, channel, _ = yield self.open_pair()
        session.connection.write = lambda data: None  # the wire eats them
        channel.send(b"lost 1")
        channel.send(b"lost 2")
        yield self.drop(session)
        yield eventually(client.resume(session))
        channel.send(b"after")
        yield self.until(lambda: len(self.server_got) == 3)
        self.assertEqual(self.server_got, [b"lost 1", b"lost 2", b"after"])

    @defer.inlineCallbacks
    def test_resume_while_old_transport_half_open(self):
        """A Reconnect while the server still holds the old transport replaces it."""
        client, session, channel, _ = yield self.open_pair()
        other = self.server_session(session)
        old_server_connection = other.connection
        session.connection.write = lambda data: None
        # The client believes the transport died; the server has not noticed.
        session.detach(session.connection)
        yield eventually(client.resume(session))
        yield eventually(old_server_connection.lost)
        channel.send(b"on the new one")
        yield self.until(lambda: self.server_got == [b"on the new one"])
        self.assertIsNot(other.connection, old_server_connection)

    @defer.inlineCallbacks
    def test_stolen_session_id_without_key(self):
        """A Reconnect for a live session id sealed with another key gets Close 4 and leaves the session untouched."""
        client, session, channel, _ = yield self.open_pair()
        other = self.server_session(session)
        recv_before = other.recv_seq
        raw = yield self.raw_connect()
        forged = Envelope(1, MessageType.RECONNECT, session.session_id, session.send_seq + 5, cbor.dumps(b"\x00" * 40))
        raw.send_raw(forged.to_bytes())
        yield eventually(raw.lost)
        self.assertEqual(first_close(raw)["code"], CloseCode.DECRYPT_FAILED)
        self.assertTrue(other.attached)
        self.assertEqual(other.recv_seq, recv_before)
        channel.send(b"unharmed")
        yield self.until(lambda: self.server_got == [b"unharmed"])

    @defer.inlineCallbacks
    def test_replayed_reconnect(self):
        """A captured Reconnect replayed later gets Close 5 and leaves the session untouched."""
        client, session, channel, _ = yield self.open_pair()
        yield self.drop(session)
        # The Reconnect the client is about to send, byte for byte.
        captured = session.cipher.seal(
            1, MessageType.RECONNECT, session.session_id, session.send_seq,
            cbor.dumps({"last_received": session.recv_seq}),
        )
        yield eventually(client.resume(session))
        raw = yield self.raw_connect()
        raw.send_raw(captured.to_bytes())
        yield eventually(raw.lost)
        self.assertEqual(first_close(raw)["code"], CloseCode.REPLAY)
        self.assertTrue(self.server_session(session).attached)
        channel.send(b"unharmed")
        yield self.until(lambda: self.server_got == [b"unharmed"])

    @defer.inlineCallbacks
    def test_unknown_session(self):
        """A Reconnect for a session id the server never saw gets Close 9."""
        raw = yield self.raw_connect()
        raw.send_raw(Envelope(1, MessageType.RECONNECT, b"\x07" * 16, 9, cbor.dumps(b"x" * 20)).to_bytes())
        yield eventually(raw.lost)
        self.assertEqual(first_close(raw)["code"], CloseCode.UNKNOWN_SESSION)

    @defer.inlineCallbacks
    def test_resume_of_closed_session_fails(self):
        """Resuming a session the server has closed fails with Close 9."""
        client, session, channel, _ = yield self.open_pair()
        yield self.drop(session)
        self.server_session(session).close()
        failure = yield self.assertFailure(eventually(client.resume(session)), Exception)
        self.assertEqual(failure.code, CloseCode.UNKNOWN_SESSION)

    @defer.inlineCallbacks
    def test_resume_failed_when_buffer_overflowed(self):
        """A resume needing envelopes the bounded buffer dropped ends the session with Close 14."""
        self.server.resend_limits = (3, 10**9)
        client, session, channel, server_channel = yield self.open_pair()
        yield self.drop(session)
        for i in range(10):
            server_channel.send(b"%d" % i)
        yield eventually(client.resume(session))
        result = yield closed(session)
        self.assertEqual(result.code, CloseCode.RESUME_FAILED)


class TCPResumeTests(ResumeMixin, unittest.TestCase):
    websocket = False


class WebSocketResumeTests(ResumeMixin, unittest.TestCase):
    websocket = True


class CrossTransportResumeTests(ScenarioMixin, unittest.TestCase):
    """A session begun over TCP resumes over WebSocket."""

    websocket = False

    @defer.inlineCallbacks
    def test_tcp_session_resumes_over_websocket(self):
        """A session established over TCP resumes on a WebSocket to the same node."""
        ws_port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(server_factory(self.server))
        self.addCleanup(ws_port.stopListening)
        client = self.make_client()
        session = yield self.connect(client)
        opened = channel_on_server(self.server, "c")
        channel = session.open_channel("c")
        server_channel = yield opened
        got = []
        server_channel.on_data = got.append
        other = self.server_session(session)
        server_lost = other.connection.lost
        session.connection.drop_transport()
        yield eventually(server_lost)
        channel.send(b"via websocket")
        arrived = defer.Deferred()
        server_channel.on_data = arrived.callback
        yield eventually(client.resume(session, f"ws://127.0.0.1:{ws_port.getHost().port}/"))
        self.assertEqual((yield eventually(arrived)), b"via websocket")
