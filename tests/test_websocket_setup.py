"""
A cairn WebSocket's per-connection set-up (L{cairn.transport.websocket_setup},
issue 19) leaves each protocol as autobahn's C{connectionMade} would.
"""

from autobahn.twisted.websocket import WebSocketAdapterProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport import websocket_setup
from cairn.transport.settings import TransportSettings
from cairn.transport.websocket import client_factory, server_factory
from tests.test_websocket_lean import ADDRESS, UPGRADE, _Sink, _Transport, frame

_SIMPLE = (bool, int, float, str, bytes, type(None))


class SetUpTests(unittest.TestCase):
    def setUp(self):
        clock = task.Clock()
        self.server_factory = server_factory(Peer(Identity.generate(), clock))
        self.settings = TransportSettings(max_payload=64 * 1024, clock=clock)

    def connect(self, factory, autobahns=False):
        """A protocol of C{factory} connected to a string transport, with cairn's set-up or autobahn's."""
        protocol = factory.buildProtocol(ADDRESS)
        lean = websocket_setup._LeanSetUp.connectionMade
        if autobahns:
            websocket_setup._LeanSetUp.connectionMade = WebSocketAdapterProtocol.connectionMade
        try:
            protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        finally:
            websocket_setup._LeanSetUp.connectionMade = lean
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol

    def assertSameState(self, ours, theirs):
        for name, value in vars(theirs).items():
            if name in ("_transport_details", "is_open", "is_closed", "sink", "websocket_key", "http_request_data"):
                continue
            mine = getattr(ours, name)
            if isinstance(value, _SIMPLE):
                self.assertEqual(mine, value, name)
            else:
                self.assertIs(type(mine), type(value), name)
        self.assertEqual(ours.transport_details, theirs.transport_details)
        self.assertEqual(ours.transport_details.peer, "tcp4:127.0.0.1:4321")

    def test_server_same_state(self):
        """A node's WebSocket is set up with autobahn's state, and counted as autobahn counts it."""
        ours = self.connect(self.server_factory)
        self.assertEqual(self.server_factory.countConnections, 1)
        theirs = self.connect(self.server_factory, autobahns=True)
        self.assertEqual(self.server_factory.countConnections, 2)
        self.assertNotIn("utf8validator", vars(ours))
        self.assertSameState(ours, theirs)
        for protocol in (ours, theirs):
            protocol.dataReceived(UPGRADE)
        self.assertEqual(ours.transport.value(), theirs.transport.value())
        self.assertSameState(ours, theirs)

    def test_client_same_state(self):
        """A client's WebSocket is set up with autobahn's state and sends the same request but for its key."""
        factory = client_factory(self.settings, "ws://127.0.0.1:12/", _Sink)
        ours = self.connect(factory)
        theirs = self.connect(factory, autobahns=True)
        self.assertSameState(ours, theirs)
        self.assertEqual(
            ours.transport.value().replace(ours.websocket_key, theirs.websocket_key), theirs.transport.value()
        )

    def test_text_frames_validated(self):
        """The UTF-8 validator, made when a text frame first needs it, fails bad text as autobahn's set-up does."""
        outcomes = []
        for autobahns in (False, True):
            protocol = self.connect(self.server_factory, autobahns)
            protocol.dataReceived(UPGRADE)
            protocol.transport.clear()
            protocol.dataReceived(frame(b"ok\xff\xfe", opcode=1))
            self.assertIsInstance(protocol.utf8validator, Utf8Validator)
            outcomes.append((protocol.state, protocol.localCloseCode, protocol.transport.value()))
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertEqual(outcomes[0][1], 1007)

    def test_other_cases_autobahns(self):
        """Options not baked into the protocol class: autobahn's set-up, transport details made at once."""
        self.server_factory.protocol = self.server_factory.protocol._unbaked
        protocol = self.connect(self.server_factory)
        self.assertEqual(protocol._transport_details.peer, "tcp4:127.0.0.1:4321")
        self.assertIn("utf8validator", vars(protocol))
