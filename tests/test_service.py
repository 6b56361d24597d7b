"""
The node service: make_node, listeners, identity, resume across restarts.
"""

import gc
import os
import stat

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from cairn.config import Config
from cairn.node import GC_THRESHOLDS, Process, with_backlog
from cairn.pairing.client import request_approval
from cairn.service import LISTEN_BACKLOG, StartupError, make_node
from cairn.session import store
from cairn.wire.constants import CloseCode
from tests._harness import drop_all, eventually, track_connections

LOOPBACK = "tcp:0:interface=127.0.0.1"


def config_for(data_dir, **overrides):
    settings = dict(data_dir=data_dir, listen=LOOPBACK, ws_listen=LOOPBACK, mgmt_listen="none")
    settings.update(overrides)
    return Config.from_env({}, **settings)


class MakeNodeTests(unittest.TestCase):
    def test_identity_created_private_and_reused(self):
        """The identity key is created 0600 on first start and the same peer id comes back next time."""
        data_dir = self.mktemp()
        first = make_node(config_for(data_dir), reactor)
        mode = stat.S_IMODE(os.stat(os.path.join(data_dir, "identity.key")).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(data_dir).st_mode), 0o700)
        second = make_node(config_for(data_dir), reactor)
        self.assertEqual(first.peer.peer_id, second.peer.peer_id)

    def test_listeners_follow_config(self):
        """Only enabled listeners become child services, with the configured settings."""
        node = make_node(config_for(self.mktemp(), ws_listen="none", max_payload=65536), reactor)
        self.assertEqual(sorted(node.listeners), ["tcp"])
        self.assertEqual(node.peer.max_payload, 65536)

    @defer.inlineCallbacks
    def test_listen_backlog(self):
        """The cairn listeners queue LISTEN_BACKLOG connections unless their endpoint names a backlog (issue 20)."""
        node = make_node(config_for(self.mktemp(), ws_listen=LOOPBACK + ":backlog=77"), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        ports = yield node.ready
        self.assertEqual((ports["tcp"].backlog, ports["websocket"].backlog), (LISTEN_BACKLOG, 77))
        self.assertEqual(with_backlog("unix:/run/x.sock", 9), "unix:/run/x.sock")
        self.assertEqual(with_backlog("tcp6:7400", 9), "tcp6:7400:backlog=9")

    def test_peer_trusts_the_paired(self):
        """The node's peer judges sessions by the trust store from construction on (unpaired TTL, channels)."""
        node = make_node(config_for(self.mktemp()), reactor)
        self.assertEqual(node.peer.is_trusted, node.pairing.trust.is_paired)

    def test_management_listener_follows_config(self):
        """The management API listens only when enabled and given an endpoint."""
        on = make_node(config_for(self.mktemp(), mgmt_listen=LOOPBACK, mgmt_token="t0ken"), reactor)
        self.assertIn("management", on.listeners)
        off = make_node(config_for(self.mktemp(), mgmt_listen=LOOPBACK, mgmt_enabled=False), reactor)
        self.assertNotIn("management", off.listeners)

    def test_token_generated_at_first_start(self):
        """Without a configured token one is generated 0600 in the data dir and reused next time."""
        data_dir = self.mktemp()
        make_node(config_for(data_dir, mgmt_listen=LOOPBACK), reactor)
        path = os.path.join(data_dir, "mgmt.token")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            first = f.read()
        make_node(config_for(data_dir, mgmt_listen=LOOPBACK), reactor)
        with open(path) as f:
            self.assertEqual(f.read(), first)
        self.assertGreaterEqual(len(first.strip()), 32)

    def test_corrupt_database_stops_start(self):
        """A corrupt database file stops start-up with one line naming it."""
        data_dir = self.mktemp()
        node = make_node(config_for(data_dir), reactor)
        with open(os.path.join(data_dir, "cairn.sqlite"), "wb") as f:
            f.write(b"garbage" * 1000)
        error = self.assertRaises(SystemExit, node.startService)
        self.assertIn("cairn.sqlite", str(error))
        self.assertNotIn("\n", str(error))

    @defer.inlineCallbacks
    def test_busy_port_aborts_start(self):
        """A listener on a busy port stops start-up with one line naming its variable and the cause."""
        busy = yield serverFromString(reactor, LOOPBACK).listen(Factory())
        self.addCleanup(busy.stopListening)
        description = f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        node = make_node(config_for(self.mktemp(), ws_listen=description), reactor)
        error = self.assertRaises(StartupError, node.startService)
        self.assertEqual(
            str(error), f"cairn: CAIRN_WS_LISTEN: cannot listen on {description!r}: Address already in use"
        )
        # The listener bound before it is closed again (else the reactor is left dirty).
        yield node.listeners["tcp"]._waitingForPort


class RestartTests(unittest.TestCase):
    """Sessions survive a clean restart; a crash forgets them."""

    def setUp(self):
        from cairn.client import Client

        self.data_dir = self.mktemp()
        self.connections = []
        self.client = Client(reactor, clock=task.Clock(), keepalive_interval=0)
        track_connections(self.client.peer, self.connections)

    @defer.inlineCallbacks
    def start(self):
        node = make_node(config_for(self.data_dir, keepalive_interval=3600.0, keepalive_timeout=7200.0), reactor)
        track_connections(node.peer, self.connections)
        node.startService()
        ports = yield node.ready
        return node, f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"

    @defer.inlineCallbacks
    def connect(self, node, address):
        """Connect the client; fires once the node has the session too."""
        established = defer.Deferred()
        node.peer.on_session = established.callback
        session = yield eventually(self.client.connect(address))
        yield eventually(established)
        # Ask to pair, as a device would: only a PairRequest files a pending
        # request, which a test may then approve.
        filed = defer.Deferred()
        request_approval(session, on_pending=lambda: filed.callback(None))
        yield eventually(filed)
        return session

    @defer.inlineCallbacks
    def tearDown(self):
        yield drop_all(self.connections)

    @defer.inlineCallbacks
    def test_freeze_gc_once_serving(self):
        """A node with freeze_gc set (the twistd plugin's) calls gc.freeze once it serves; others do not."""
        frozen, thresholds = [], []
        self.patch(gc, "freeze", lambda: frozen.append(True))
        self.patch(gc, "set_threshold", lambda *t: thresholds.append(t))
        node, _ = yield self.start()
        yield node.stopService()
        self.assertEqual((frozen, thresholds), ([], []))
        node = make_node(config_for(self.data_dir), reactor, Process(freeze_gc=True))
        node.startService()
        yield node.ready
        self.assertEqual(frozen, [True])
        # And the collector's thresholds raised (issue 20: full collections in a storm).
        self.assertEqual(thresholds, [GC_THRESHOLDS])
        yield node.stopService()

    @defer.inlineCallbacks
    def test_clean_restart_resumes(self):
        """After a clean stop and a new start on the same data dir, the client resumes and messages flow both ways."""
        node, address = yield self.start()
        session = yield self.connect(node, address)
        # Only paired peers' sessions are saved at a stop (§16).
        yield eventually(node.pairing.approve(self.client.peer_id))
        client_lost = session.connection.lost
        yield node.stopService()
        yield eventually(client_lost)
        path = os.path.join(self.data_dir, store.FILE_NAME)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

        node, address = yield self.start()
        self.assertFalse(os.path.exists(path))
        received = defer.Deferred()
        node.peer.register_handler(0xF000, lambda s, body: received.callback(body))
        session.send(0xF000, b"after restart")  # buffered while detached, sent on resume
        yield eventually(self.client.resume(session, address))
        self.assertEqual((yield eventually(received)), b"after restart")
        reply = defer.Deferred()
        self.client.peer.register_handler(0xF001, lambda s, body: reply.callback(body))
        node.peer.sessions[session.session_id].send(0xF001, b"welcome back")
        self.assertEqual((yield eventually(reply)), b"welcome back")
        yield node.stopService()

    @defer.inlineCallbacks
    def test_session_with_channels_ends_at_a_clean_stop(self):
        """A session whose channels (and Double Ratchet) started is closed GOING_AWAY at a stop, never saved."""
        node, address = yield self.start()
        with_channel = yield self.connect(node, address)
        without = yield self.connect(node, address)
        # Channels are for paired peers (docs/protocol.md §10).
        yield eventually(node.pairing.approve(self.client.peer_id))
        opened = defer.Deferred()
        node.peer.on_channel = lambda s, ch: opened.callback(ch)
        with_channel.open_channel("notes")
        yield eventually(opened)
        ended = defer.Deferred()
        with_channel.on_close = ended.callback
        yield node.stopService()
        self.assertEqual((yield eventually(ended)).code, CloseCode.GOING_AWAY)
        self.assertEqual([s["session_id"] for s in store.load_once(self.data_dir)], [without.session_id])

    @defer.inlineCallbacks
    def test_crash_forgets_sessions(self):
        """Without a clean stop nothing is saved, so a resume after restart gets Close 9."""
        node, address = yield self.start()
        session = yield self.connect(node, address)
        client_lost = session.connection.lost
        # A crash: listeners and transports vanish, stopService never runs.
        for service in node.listeners.values():
            yield service._waitingForPort.addCallback(lambda port: port.stopListening())
        node.peer.sessions[session.session_id].connection.drop_transport()
        yield eventually(client_lost)
        node.peer.freeze()  # the crashed process's memory is gone with it
        self.addCleanup(node.db.stop)
        self.addCleanup(node.pairing.stop)
        self.addCleanup(node.mailbox.stop)  # its expiry timer, which a crash would take along
        self.addCleanup(node.sync.stop)  # its retention timer, likewise
        self.addCleanup(node.relay.stop)  # its purge sweep, likewise
        node, address = yield self.start()
        failure = yield self.assertFailure(eventually(self.client.resume(session, address)), Exception)
        self.assertEqual(failure.code, CloseCode.UNKNOWN_SESSION)
        yield node.stopService()

    def test_corrupt_snapshot_is_ignored(self):
        """An unreadable session file is removed and yields no sessions."""
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, store.FILE_NAME)
        with open(path, "wb") as f:
            f.write(b"\xff\xfe not cbor")
        self.assertEqual(store.load_once(self.data_dir), [])
        self.assertFalse(os.path.exists(path))
