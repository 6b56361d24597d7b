"""
Per-session memory of an idle session (issue 20): what a session holds
only while it is needed.
"""

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from cairn.client import Client
from cairn.crypto.identity import Identity
from cairn.mailbox import service as mailbox_service
from cairn.mailbox import window
from cairn.session.peer import Peer
from cairn.transport import websocket, websocket_messages
from cairn.transport.websocket import server_factory
from cairn.wire import cbor
from cairn.wire.constants import HEADER_SIZE, MessageType
from cairn.wire.envelope import decode
from tests._harness import SETTINGS, drop_all, eventually, track_connections
from tests.fuzz.targets import InMemoryNode


class ResendBufferTests(unittest.TestCase):
    def test_idle_session_has_no_resend_buffer(self):
        """An established session with nothing unacknowledged holds no deque (760 bytes empty)."""
        connection, _, _ = InMemoryNode().session()
        session = connection.session
        self.assertEqual(session.buffered(), (0, 0))
        self.assertEqual(session._unacked, ())

    def test_session_attributes_in_slots(self):
        """A session's attributes are all slots, its mixins' too: no instance dict (~1.5 KB once it held them all)."""
        connection, _, _ = InMemoryNode().session()
        self.assertFalse(hasattr(connection.session, "__dict__"))

    def test_connection_attributes_in_slots(self):
        """An attached session's Connection keeps its attributes in slots: no instance dict."""
        connection, _, _ = InMemoryNode().session()
        self.assertEqual(vars(connection), {})

    def test_buffer_made_on_send_and_freed_on_ack(self):
        """A buffered envelope makes the buffer; the ack that empties it frees it; resend still works."""
        connection, transport, cipher = InMemoryNode().session()
        session = connection.session
        seq = session.send(MessageType.CHANNEL_INIT, {"channel": 2, "name": "x"})
        self.assertEqual(session.buffered()[0], 1)
        self.assertEqual(len(session._unacked), 1)
        ack = cipher.seal(1, MessageType.KEEPALIVE, session.session_id, 2, cbor.dumps({"ack": seq})).to_bytes()
        connection.envelope_received(decode(ack, 2**20))
        self.assertEqual(session.buffered(), (0, 0))
        self.assertEqual(session._unacked, ())
        seq2 = session.send(MessageType.CHANNEL_INIT, {"channel": 4, "name": "y"})
        before = len(transport.written)
        session.resend_after(seq2 - 1)
        self.assertEqual(len(transport.written), before + 1)


class LazyContainersTests(unittest.TestCase):
    """An idle session and its connection make their handler table and waiter list only when used."""

    def test_idle_session_holds_no_handler_table_nor_waiter_list(self):
        """An established idle session has no handler dict of its own and its connection no waiter list."""
        connection, _, _ = InMemoryNode().session()
        self.assertIsNone(connection.session._handlers)
        self.assertIsNone(connection._lost_waiters)

    def test_session_handler_made_on_first_registration(self):
        """A session's first custom handler makes its table; it then takes that type, others go to the node's."""
        node = InMemoryNode()
        connection, _, cipher = node.session()
        session = connection.session
        node_got, session_got = [], []
        node.peer.register_handler(0xF001, lambda s, body: node_got.append(body))
        session.register_handler(0xF002, lambda s, body: session_got.append(body))
        for seq, type_code in ((2, 0xF001), (3, 0xF002)):
            sealed = cipher.seal(1, type_code, session.session_id, seq, cbor.dumps(type_code)).to_bytes()
            connection.envelope_received(decode(sealed, 2**20))
        self.assertEqual((node_got, session_got), ([0xF001], [0xF002]))

    def test_waiters_made_on_first_use_and_told(self):
        """when_lost before the loss makes the waiter list; each Deferred fires once lost, and later calls at once."""
        connection, _, _ = InMemoryNode().session()
        waiting = [connection.when_lost(), connection.when_lost()]
        fired = []
        for d in waiting:
            d.addCallback(fired.append)
        self.assertEqual(fired, [])
        connection.connection_lost(None)
        self.assertEqual(fired, [None, None])
        self.assertIsNone(connection._lost_waiters)
        later = []
        connection.when_lost().addCallback(later.append)
        self.assertEqual(later, [None])


class MailboxOutboxTests(unittest.TestCase):
    """A session's mailbox windows hold their containers only while something is in flight."""

    def test_idle_outbox_holds_no_containers(self):
        outbox = window.Outbox(session=None)
        self.assertFalse(hasattr(outbox, "__dict__"))
        for w in (outbox.deliveries, outbox.receipts):
            self.assertFalse(hasattr(w, "__dict__"))
            self.assertIs(w.inflight, window._NOTHING)
            self.assertEqual(len(w.inflight), 0)

    def test_made_when_used_and_freed_when_acknowledged(self):
        w = window.Window()
        w.sent(1, 10)
        w.sent(2, 20)
        self.assertEqual(list(w.inflight.items()), [(1, 10), (2, 20)])
        w.acknowledged([], 1)
        self.assertEqual((list(w.inflight), w.inflight_bytes, w.cursor), ([2], 20, 2))
        w.acknowledged([2], 0)
        self.assertIs(w.inflight, window._NOTHING)
        self.assertEqual(w.inflight_bytes, 0)
        w.acknowledged([3], 9)  # nothing in flight: nothing to do
        self.assertIs(w.inflight, window._NOTHING)
        w.restore(7, [(5, 1), (6, 2)])
        self.assertEqual((list(w.inflight.items()), w.cursor), ([(5, 1), (6, 2)], 7))


class KeepaliveTimerTests(unittest.TestCase):
    def test_no_delayed_call_per_session(self):
        """Attached sessions' keepalives share the peer's wheel: one DelayedCall for all, not one each."""
        node = InMemoryNode()
        opened = [node.session() for _ in range(5)]
        interval = node.peer.keepalive_interval
        wheel_calls = [c for c in node.clock.getDelayedCalls() if c.func == node.peer.keepalives._fire]
        self.assertEqual(len(wheel_calls), 1)
        self.assertEqual(len(node.peer.keepalives), 5)
        sent = []
        for _ in range(3):
            before = [len(transport.written) for _, transport, _ in opened]
            for connection, _, _ in opened:
                connection.session._last_rx = node.clock.seconds() + interval  # the peers keep talking
            node.clock.advance(interval)
            sent.append(
                [
                    [decode(d, 2**20).type for d in transport.written[b:]]
                    for (_, transport, _), b in zip(opened, before)
                ]
            )
        self.assertEqual(sent, [[[MessageType.KEEPALIVE]] * 5] * 3)
        connection = opened[0][0]
        connection.session.detach(connection)
        self.assertIsNone(connection.session._keepalive)
        self.assertEqual(len(node.peer.keepalives), 4)

    def test_timeout_drops_transport(self):
        """A silent peer's transport is dropped at the first tick past the keepalive timeout."""
        node = InMemoryNode()
        connection, transport, _ = node.session()
        node.clock.advance(node.peer.keepalive_timeout - 0.001)
        self.assertFalse(transport.lost)
        node.clock.advance(node.peer.keepalive_interval)
        self.assertTrue(transport.lost)


class WebSocketShedTests(unittest.TestCase):
    """Once open, a WebSocket keeps neither the upgrade request nor autobahn's send queue."""

    @defer.inlineCallbacks
    def setUp(self):
        self.connections = []
        self.server = Peer(Identity.generate(), task.Clock(), **SETTINGS)
        track_connections(self.server, self.connections)
        self.port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(server_factory(self.server))

    @defer.inlineCallbacks
    def tearDown(self):
        yield drop_all(self.connections)
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def test_open_websocket_sheds_upgrade_state(self):
        client = Client(reactor, Identity.generate(), clock=task.Clock(), **SETTINGS)
        track_connections(client.peer, self.connections)
        session = yield eventually(client.connect(f"ws://127.0.0.1:{self.port.getHost().port}/"))
        # A message the node handles: by then its side is established too.
        got = defer.Deferred()
        self.server.register_handler(0xF001, lambda server_session, body: got.callback((server_session, body)))
        session.send(0xF001, {"x": 1})
        server_session, body = yield eventually(got)
        self.assertEqual(body, {"x": 1})
        for transport in (server_session.connection.transport, session.connection.transport):
            self.assertEqual(transport.send_queue, ())
            self.assertEqual(transport.http_headers, {})
            self.assertEqual(transport.http_request_data, b"")
        # Messages still flow both ways after the shedding.
        back = defer.Deferred()
        session.register_handler(0xF002, lambda _, body: back.callback(body))
        server_session.send(0xF002, {"y": 2})
        self.assertEqual((yield eventually(back)), {"y": 2})

    @defer.inlineCallbacks
    def test_protocol_options_not_copied_per_connection(self):
        """The node's WebSocket protocol reads autobahn's options from its class, not from ~30 per-instance copies."""
        client = Client(reactor, Identity.generate(), clock=task.Clock(), **SETTINGS)
        track_connections(client.peer, self.connections)
        session = yield eventually(client.connect(f"ws://127.0.0.1:{self.port.getHost().port}/"))
        got = defer.Deferred()
        self.server.register_handler(0xF001, lambda server_session, body: got.callback(server_session))
        session.send(0xF001, {"x": 1})
        transport = (yield eventually(got)).connection.transport
        self.assertEqual(set(vars(transport)) & set(transport._unbaked.CONFIG_ATTRS), set())
        # Neither state at rest nor the opening handshake's leftovers: a
        # dict of the next size down (0.8 KB, not 1.6 KB).
        shed = set(websocket_messages._AT_REST) | set(websocket_messages._HANDSHAKE_ONLY)
        self.assertEqual(set(vars(transport)) & shed, set())
        self.assertFalse(transport.wasClean)
        self.assertIsNone(transport.autoPingPendingCall)
        self.assertEqual(transport.maxMessagePayloadSize, self.server.max_payload + HEADER_SIZE)
        self.assertTrue(transport.allowNullOrigin)

    @defer.inlineCallbacks
    def test_client_factory_set_up_once_per_address(self):
        """
        A client's WebSocket factories for one address are copies of one set
        up once (the URL parsed, the options set, one handshake timer), each
        with its own sink; its protocols read the options from their class.
        """
        settings = websocket.TransportSettings.for_peer(self.server)
        url = f"ws://127.0.0.1:{self.port.getHost().port}/"
        first, second = (websocket.client_factory(settings, url, sink) for sink in ("a", "b"))
        self.assertIsNot(first, second)
        self.assertEqual((first.make_sink, second.make_sink), ("a", "b"))
        self.assertIs(first._batched_timer, second._batched_timer)
        self.assertIs(first.protocol, second.protocol)
        self.assertEqual(first.protocol.maxMessagePayloadSize, self.server.max_payload + HEADER_SIZE)
        client = Client(reactor, Identity.generate(), clock=task.Clock(), **SETTINGS)
        track_connections(client.peer, self.connections)
        session = yield eventually(client.connect(url))
        transport = session.connection.transport
        self.assertEqual(set(vars(transport)) & set(transport._unbaked.CONFIG_ATTRS), set())

    def test_later_options_reach_new_connections(self):
        """An option set on the factory after it was made applies to the protocols it builds next."""
        factory = server_factory(self.server)
        factory.setProtocolOptions(autoPingInterval=7)
        self.assertEqual(factory.protocol.autoPingInterval, 7)
        self.assertEqual(factory.protocol._unbaked.__name__, "ServerProtocol")


class MailboxPeerIndexTests(unittest.TestCase):
    """The mailbox finds a peer's sessions through an index, not a scan of every session (issue 20)."""

    def test_outboxes_of_a_peer(self):
        from types import SimpleNamespace

        from cairn.mailbox.store import MemoryMailboxStore

        clock = task.Clock()
        trust = SimpleNamespace(is_paired=lambda peer_id: True)
        service = mailbox_service.MailboxService(Peer(Identity.generate(), clock), trust, MemoryMailboxStore(), clock)
        sessions = [
            SimpleNamespace(session_id=bytes([i]), remote_peer_id=peer, closed=None, attached=False)
            for i, peer in enumerate(["a", "a", "b"])
        ]
        for session in sessions:
            service.session_established(session)
        service.session_established(sessions[0])  # again: still one outbox for it
        self.assertEqual(sorted(o.session.session_id for o in service._outboxes_of("a")), [b"\0", b"\1"])
        self.assertEqual([o.session for o in service._outboxes_of("b")], sessions[2:])
        self.assertEqual(service._outboxes_of("c"), ())
        service.session_closed(sessions[0])
        self.assertEqual([o.session for o in service._outboxes_of("a")], sessions[1:2])
        service.session_closed(sessions[1])
        service.session_closed(sessions[1])
        self.assertEqual(service._outboxes_of("a"), ())
        self.assertEqual(service._by_peer.keys(), {"b"})
