"""
The client API: peer-to-peer sessions, automatic resume, failures.
"""

from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from cairn.client import Client
from cairn.dial import websocket_endpoint
from cairn.session.connection import HandshakeFailed
from cairn.wire.constants import CloseCode
from tests._harness import (
    SETTINGS,
    ScenarioMixin,
    channel_on_server,
    closed,
    eventually,
    next_data,
    track_connections,
)


class PeerToPeerMixin:
    """Two clients, one listening, run the same session code as the node."""

    websocket = False

    @defer.inlineCallbacks
    def test_client_to_client(self):
        """A client accepts a session from another client; channels and custom messages work both ways."""
        connections = []
        listener = Client(reactor, clock=task.Clock(), **SETTINGS)
        dialer = Client(reactor, clock=task.Clock(), **SETTINGS)
        track_connections(listener.peer, connections)
        track_connections(dialer.peer, connections)
        port = yield listener.listen("tcp:0:interface=127.0.0.1", websocket=self.websocket)
        self.addCleanup(port.stopListening)

        accepted = defer.Deferred()
        listener.peer.on_session = accepted.callback
        custom = defer.Deferred()
        listener.peer.register_handler(0xF00D, lambda s, body: custom.callback(body))
        number = port.getHost().port
        address = f"ws://127.0.0.1:{number}/" if self.websocket else f"tcp:host=127.0.0.1:port={number}"
        session = yield eventually(dialer.connect(address))
        other = yield eventually(accepted)
        self.assertEqual(session.remote_peer_id, listener.peer_id)
        self.assertEqual(other.remote_peer_id, dialer.peer_id)

        opened = defer.Deferred()
        listener.peer.on_channel = lambda s, ch: opened.callback(ch)
        mine = session.open_channel("p2p")
        theirs = yield eventually(opened)
        got = next_data(theirs)
        mine.send(b"ping")
        self.assertEqual((yield got), b"ping")
        got = next_data(mine)
        theirs.send(b"pong")
        self.assertEqual((yield got), b"pong")
        session.send(0xF00D, {"k": b"v"})
        self.assertEqual((yield eventually(custom)), {"k": b"v"})

        session.close()
        yield closed(other)
        yield eventually(defer.gatherResults([c.lost for c in connections]))


class TCPPeerToPeerTests(PeerToPeerMixin, unittest.TestCase):
    websocket = False


class WebSocketPeerToPeerTests(PeerToPeerMixin, unittest.TestCase):
    websocket = True


class AutoResumeMixin(ScenarioMixin):
    @defer.inlineCallbacks
    def test_auto_resume_after_drop(self):
        """With auto_resume the client resumes a dropped session after the first backoff delay."""
        client = self.make_client(auto_resume=True)
        session = yield self.connect(client)
        opened = channel_on_server(self.server, "c")
        channel = session.open_channel("c")
        server_channel = yield opened
        other = self.server_session(session)
        server_lost = other.connection.lost
        session.connection.drop_transport()
        yield eventually(server_lost)
        channel.send(b"queued while down")
        got = next_data(server_channel)
        resumed = defer.Deferred()
        session.on_resume = lambda: resumed.callback(None)
        client.clock.advance(0.5)
        self.assertFalse(session.attached)
        client.clock.advance(0.5)
        yield eventually(resumed)
        self.assertEqual((yield got), b"queued while down")

    @defer.inlineCallbacks
    def test_auto_resume_replaces_unknown_session(self):
        """
        When the node no longer knows the session, it refuses the Reconnect
        with Close 9 and automatic resume runs a new handshake there by
        itself (docs/client.md, "Several nodes"): the old session ends with
        Close 9 once the new one is established, C{current(old)} answers the
        new one and C{on_session_replaced(old, new)} is called.
        """
        client = self.make_client(auto_resume=True)
        replaced = defer.Deferred()
        client.on_session_replaced = lambda old, new: replaced.callback((old, new))
        session = yield self.connect(client)
        other = self.server_session(session)
        server_lost = other.connection.lost
        session.connection.drop_transport()
        yield eventually(server_lost)
        other.close()
        ended = closed(session)
        accepted = self.wait_for_session()
        client.clock.advance(1)
        result = yield ended
        self.assertEqual(result.code, CloseCode.UNKNOWN_SESSION)
        # Called just after the old session's end (its on_close came first).
        self.assertEqual((yield eventually(replaced)), (session, client.current(session)))
        new = client.current(session)
        self.assertIsNot(new, session)
        self.assertNotEqual(new.session_id, session.session_id)
        self.assertTrue(new.attached)
        self.assertIsNone(new.closed)
        self.assertEqual(new.remote_peer_id, session.remote_peer_id)
        self.assertEqual((yield accepted).session_id, new.session_id)  # a new handshake with the node

    @defer.inlineCallbacks
    def test_close_fires_when_transport_gone(self):
        """Client.close fires once the transport is closed, and the node saw the Close (not a drop)."""
        client = self.make_client()
        session = yield self.connect(client)
        other = self.server_session(session)
        ended = closed(other)
        connection = session.connection
        yield eventually(client.close(session, CloseCode.NORMAL, "bye"))
        self.assertTrue(connection._lost)
        result = yield ended
        self.assertEqual((result.code, result.reason), (CloseCode.NORMAL, "bye"))
        yield eventually(client.close(session))  # closing again: fires at once

    @defer.inlineCallbacks
    def test_close_without_session(self):
        """Client.close() with no argument closes every session of the client with a Close."""
        client = self.make_client()
        first = yield self.connect(client)
        second = yield self.connect(client)
        ended = [closed(self.server_session(s)) for s in (first, second)]
        yield eventually(client.close())
        for d in ended:
            result = yield d
            self.assertEqual(result.code, CloseCode.NORMAL)
        self.assertEqual([s for s in client.peer.sessions.values() if s.closed is None], [])
        yield eventually(client.close())  # nothing left: fires at once

    def make_client(self, auto_resume=False, **overrides):
        clock = task.Clock()
        client = Client(reactor, clock=clock, auto_resume=auto_resume, **dict(SETTINGS, **overrides))
        track_connections(client.peer, self.connections)
        return client


class TCPAutoResumeTests(AutoResumeMixin, unittest.TestCase):
    websocket = False


class WebSocketAutoResumeTests(AutoResumeMixin, unittest.TestCase):
    websocket = True


class FailureTests(unittest.TestCase):
    def test_bad_websocket_url(self):
        """A URL that is not ws:// or wss:// is refused with ValueError naming it."""
        error = self.assertRaises(ValueError, websocket_endpoint, reactor, "http://example.invalid/")
        self.assertIn("http://example.invalid/", str(error))

    @defer.inlineCallbacks
    def test_connection_refused(self):
        """Connecting to a closed port fails the Deferred with ConnectionRefusedError."""
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory

        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
        number = port.getHost().port
        yield port.stopListening()
        client = Client(reactor, clock=task.Clock())
        yield self.assertFailure(client.connect(f"tcp:host=127.0.0.1:port={number}"), ConnectionRefusedError)

    @defer.inlineCallbacks
    def test_websocket_opening_timeout_fails_connect(self):
        """A server that never answers the WebSocket upgrade fails connect() at the handshake timeout."""
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory, Protocol

        accepted, asked = [], defer.Deferred()

        class Silent(Protocol):
            def connectionMade(self):
                accepted.append(self)

            def dataReceived(self, data):  # the upgrade request: the client's timer runs
                if not asked.called:
                    asked.callback(None)

        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in accepted])
        clock = task.Clock()
        client = Client(reactor, clock=clock, handshake_timeout=10.0)
        d = client.connect(f"ws://127.0.0.1:{port.getHost().port}/")
        outcome = []
        d.addBoth(lambda result: outcome.append(result) or result)
        yield eventually(asked)
        self.assertEqual(outcome, [])
        clock.advance(11)
        failure = yield self.assertFailure(eventually(d), HandshakeFailed)
        self.assertEqual(failure.code, CloseCode.GOING_AWAY)


class ResumeJitterTests(unittest.TestCase):
    """Automatic resume waits are the backoff less a random share (issue 20: no synchronized storms)."""

    def waits(self, draws, **kwargs):
        clock = task.Clock()
        client = Client(reactor, clock=clock, rng=iter(draws).__next__, **kwargs)
        session = type("Dropped", (), {"session_id": b"s" * 16})()
        waits = []
        for delay in (1.0, 2.0, 60.0):
            client._schedule_resume(session, delay)
            waits.append(client._retries[session.session_id].getTime() - clock.seconds())
            client._retries.pop(session.session_id).cancel()
        return waits

    def test_waits_shortened_by_up_to_half(self):
        self.assertEqual(self.waits([0.0, 0.5, 1.0]), [1.0, 1.5, 30.0])

    def test_no_jitter_is_the_exact_backoff(self):
        self.assertEqual(self.waits([0.9, 0.9, 0.9], resume_jitter=0), [1.0, 2.0, 60.0])

    def test_default_draws_spread(self):
        clock = task.Clock()
        client = Client(reactor, clock=clock)
        session = type("Dropped", (), {"session_id": b"s" * 16})()
        waits = set()
        for _ in range(50):
            client._schedule_resume(session, 1.0)
            waits.add(client._retries[session.session_id].getTime())
            client._retries.pop(session.session_id).cancel()
        self.assertGreater(len(waits), 1)
        self.assertTrue(all(0.5 <= w <= 1.0 for w in waits))
