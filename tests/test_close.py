"""
The close path: who closes the transport after a cairn Close.
"""

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.trial import unittest

from cairn.session.connection import PEER_CLOSE_TIMEOUT
from cairn.transport.websocket_messages import _EnvelopeMessages
from cairn.wire import cbor
from cairn.wire.constants import PROTOCOL_VERSION, CloseCode, MessageType
from cairn.wire.envelope import Envelope
from tests._harness import ScenarioMixin, closed, eventually, observe_logs


def clear_close(session_id=b"\x00" * 16):
    body = cbor.dumps({"code": int(CloseCode.NORMAL), "reason": "bye"})
    return Envelope(PROTOCOL_VERSION, MessageType.CLOSE, session_id, 0, body).to_bytes()


def handled(connection):
    """A Deferred firing once C{connection} has handled its next envelope."""
    d = defer.Deferred()
    original = connection.envelope_received

    def envelope_received(envelope):
        connection.envelope_received = original
        original(envelope)
        d.callback(envelope)

    connection.envelope_received = envelope_received
    return eventually(d)


class WebSocketCloseTests(ScenarioMixin, unittest.TestCase):
    websocket = True

    def setUp(self):
        self.closes = []
        original = _EnvelopeMessages.onClose

        def onClose(proto, wasClean, code, reason):
            self.closes.append(("server" if proto.factory.isServer else "client", wasClean, proto.closedByMe))
            return original(proto, wasClean, code, reason)

        self.patch(_EnvelopeMessages, "onClose", onClose)
        return super().setUp()

    @defer.inlineCallbacks
    def _close_from(self, closer):
        session = yield self.connect()
        server_session = self.server_session(session)
        conns = list(self.connections)
        ends = [closed(session), closed(server_session)]
        (session if closer == "client" else server_session).close(CloseCode.NORMAL, "bye")
        yield defer.gatherResults(ends)
        yield defer.gatherResults([eventually(c.lost) for c in conns])
        return sorted(self.closes)

    @defer.inlineCallbacks
    def test_client_closes(self):
        """After the client's Close only the client starts the WebSocket close, and both ends close cleanly."""
        closes = yield self._close_from("client")
        self.assertEqual(closes, [("client", True, True), ("server", True, False)])

    @defer.inlineCallbacks
    def test_node_closes(self):
        """After the node's Close only the node starts the WebSocket close, and both ends close cleanly."""
        closes = yield self._close_from("server")
        self.assertEqual(closes, [("client", True, False), ("server", True, True)])

    @defer.inlineCallbacks
    def test_peer_never_closes(self):
        """A peer that sends a Close but keeps the WebSocket open is aborted after the timeout on the node's clock."""
        raw = yield self.raw_connect()
        server_connection = self.connections[-1]
        done = handled(server_connection)
        raw.send_raw(clear_close())
        yield done
        self.server_clock.advance(PEER_CLOSE_TIMEOUT - 0.1)
        self.assertFalse(server_connection.lost.called)
        self.server_clock.advance(0.1)
        yield eventually(raw.lost)
        self.assertEqual([c for c in raw.received if c.type == MessageType.CLOSE], [])

    @defer.inlineCallbacks
    def test_abort_adds_no_autobahn_warning(self):
        """An abort the session decided (e.g. a keepalive timeout) is not also an autobahn warning with no reason."""
        session = yield self.connect()
        server_connection = self.server_session(session).connection
        events = observe_logs(self)
        server_connection.transport.lose(abort=True)
        yield eventually(server_connection.lost)
        warnings = [
            e
            for e in events
            if e.get("log_namespace", "").startswith("autobahn") and e.get("log_level") >= LogLevel.warn
        ]
        self.assertEqual(warnings, [])

    @defer.inlineCallbacks
    def test_write_after_close_is_dropped(self):
        """Sending on a session whose WebSocket is already closing is a no-op, not an exception."""
        session = yield self.connect()
        transport = session.connection.transport
        transport.sendClose(code=1000)
        transport.write_envelope(b"\x01" * 40)
        yield eventually(session.connection.lost)


class TCPCloseTests(ScenarioMixin, unittest.TestCase):
    websocket = False

    @defer.inlineCallbacks
    def test_receiver_closes_at_once(self):
        """On TCP the receiver of a Close closes at once, with no timer left behind."""
        raw = yield self.raw_connect()
        raw.send_raw(clear_close())
        yield eventually(raw.lost)
        self.assertEqual(self.server_clock.getDelayedCalls(), [])
