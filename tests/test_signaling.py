"""
Signaling: PeerAnnounce codec, the cairn-signal server, the node's announcer, discover().
"""

import os
import sys

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial import unittest

from cairn import signal_tap
from cairn.client import Client
from cairn.config import Config
from cairn.crypto.identity import Identity
from cairn.service import make_node
from cairn.signal_tap import listen_endpoint
from cairn.signaling import announce as codec
from cairn.signaling.announcer import SignalAnnouncer
from cairn.signaling.client import DiscoveryFailed, discover
from cairn.signaling.server import SignalingFactory, SignalingProtocol
from cairn.wire import cbor
from cairn.wire.envelope import Envelope, decode
from tests._harness import drop_all, eventually, track_connections
from tests.test_twistd import REPO, TwistdProcess

NOW = 1_700_000_000
LOOPBACK = "tcp:0:interface=127.0.0.1"


def rid_between(a, b, now=NOW):
    return codec.rendezvous_id(codec.rendezvous_key(a, b.public_key), codec.day_number(now))


class CodecTests(unittest.TestCase):
    def setUp(self):
        self.identity = Identity.generate()
        self.rid = os.urandom(32)

    def test_round_trip(self):
        """An announce parses back to its peer id, key, addresses, rendezvous ids and timestamp."""
        data = codec.encode(self.identity, ["tcp:host=a:port=1"], [self.rid], NOW, 3)
        envelope = decode(data, 10_000)
        self.assertEqual((envelope.type, envelope.seq, envelope.session_id), (0x0400, 3, bytes(16)))
        parsed = codec.parse(data, NOW + 10)
        self.assertEqual(
            parsed,
            codec.Announce(self.identity.peer_id, self.identity.public_key, ("tcp:host=a:port=1",), (self.rid,), NOW),
        )

    def _resigned(self, data, change, signer=None):
        envelope = decode(data, 10_000)
        fields = cbor.loads(envelope.payload)
        change(fields)
        if signer is not None:
            fields["sig"] = signer.sign(codec.signed_bytes(fields))
        payload = cbor.dumps(fields)
        return Envelope(1, 0x0400, bytes(16), 0, payload).to_bytes()

    def test_forged_address_rejected(self):
        """An announce whose addresses were changed after signing is refused."""
        data = codec.encode(self.identity, ["tcp:host=a:port=1"], [self.rid], NOW, 0)
        forged = self._resigned(data, lambda f: f.update(addresses=["tcp:host=evil:port=1"]))
        self.assertRaises(codec.AnnounceError, codec.parse, forged, NOW)

    def test_other_signer_rejected(self):
        """An announce naming one key but signed by another is refused."""
        data = codec.encode(self.identity, [], [self.rid], NOW, 0)
        forged = self._resigned(data, lambda f: None, signer=Identity.generate())
        self.assertRaises(codec.AnnounceError, codec.parse, forged, NOW)

    def test_peer_id_must_match_key(self):
        """An announce whose peer id is not derived from its key is refused."""
        other = Identity.generate()
        data = codec.encode(self.identity, [], [], NOW, 0)
        forged = self._resigned(data, lambda f: f.update(peer_id=other.peer_id), signer=self.identity)
        self.assertRaises(codec.AnnounceError, codec.parse, forged, NOW)

    def test_stale_and_future_rejected(self):
        """A timestamp more than five minutes from the verifier's clock is refused either way."""
        data = codec.encode(self.identity, [], [self.rid], NOW, 0)
        codec.parse(data, NOW + 300)
        self.assertRaises(codec.AnnounceError, codec.parse, data, NOW + 301)
        self.assertRaises(codec.AnnounceError, codec.parse, data, NOW - 301)

    def test_too_many_rendezvous_rejected(self):
        """An announce with more than 64 rendezvous ids is refused."""
        data = codec.encode(self.identity, [], [os.urandom(32) for _ in range(65)], NOW, 0)
        self.assertRaises(codec.AnnounceError, codec.parse, data, NOW)

    def test_rendezvous_shared_by_pair_only(self):
        """Both peers of a pair derive the same rendezvous id, a third party another, and it changes daily."""
        a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
        self.assertEqual(rid_between(a, b), rid_between(b, a))
        self.assertNotEqual(rid_between(a, b), rid_between(a, c))
        self.assertNotEqual(rid_between(a, b), rid_between(a, b, NOW + codec.DAY))

    def test_listen_addr_forms(self):
        """CAIRN_SIGNAL_LISTEN_ADDR takes host:port or an endpoint string, and refuses anything else."""
        self.assertEqual(listen_endpoint("0.0.0.0:8443"), "tcp:8443:interface=0.0.0.0")
        self.assertEqual(listen_endpoint("[::1]:8443"), "tcp:8443:interface=\\:\\:1")
        self.assertEqual(listen_endpoint(":8443"), "tcp:8443")
        self.assertEqual(listen_endpoint("ssl:8443:privateKey=k.pem"), "ssl:8443:privateKey=k.pem")
        self.assertRaises(ValueError, listen_endpoint, "signal.example")
        self.assertRaises(ValueError, listen_endpoint, "0.0.0.0:99999")


class SignalOptionsTests(unittest.TestCase):
    def _options(self, environ, argv=()):
        self.patch(os, "environ", dict(environ))
        options = signal_tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self):
        """With no settings, cairn-signal listens on 0.0.0.0:8443 without a token."""
        options = self._options({})
        self.assertEqual((options.endpoint, options.token), ("tcp:8443:interface=0.0.0.0", None))

    def test_token_file(self):
        """CAIRN_SIGNAL_TOKEN_FILE supplies the token, stripped."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(" tok3n\n")
        options = self._options({"CAIRN_SIGNAL_TOKEN_FILE": path, "CAIRN_SIGNAL_LISTEN_ADDR": "127.0.0.1:0"})
        self.assertEqual((options.endpoint, options.token), ("tcp:0:interface=127.0.0.1", "tok3n"))

    def test_bad_listen_addr_names_variable(self):
        """A bad CAIRN_SIGNAL_LISTEN_ADDR is a usage error naming the variable."""
        error = self.assertRaises(UsageError, self._options, {"CAIRN_SIGNAL_LISTEN_ADDR": "nowhere"})
        self.assertIn("CAIRN_SIGNAL_LISTEN_ADDR", str(error))

    def test_plugin_listed(self):
        """twistd lists the cairn-signal plugin, which names cairn.signal_tap."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertEqual(makers["cairn-signal"].module, "cairn.signal_tap")


# -- a signaling server on 127.0.0.1 ----------------------------------------


class _TrackedProtocol(SignalingProtocol):
    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.lost.append(self)
        if not self.gone.called:
            self.gone.callback(None)

    def connectionMade(self):
        self.gone = defer.Deferred()
        self.factory.made.append(self)
        super().connectionMade()


class _TrackedFactory(SignalingFactory):
    protocol = _TrackedProtocol

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made, self.lost = [], []
        self.routed = defer.Deferred()

    def route(self, sender, announce, payload):
        super().route(sender, announce, payload)
        d, self.routed = self.routed, defer.Deferred()
        d.callback(announce)


class _TestClient(WebSocketClientProtocol):
    """Records messages; C{opened}, C{closed} and L{next_message} are Deferreds."""

    def connectionMade(self):
        super().connectionMade()
        self.messages, self._waiting = [], []
        self.opened = self.factory.opened
        self.closed = defer.Deferred()
        self.close_code = None

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.messages.append(payload)
        if self._waiting:
            self._waiting.pop(0).callback(payload)

    def next_message(self):
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def onClose(self, wasClean, code, reason):
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"refused: {code} {reason}"))
        self.closed.callback(code)


class ServerMixin:
    def start_server(self, token=None, port=0):
        if getattr(self, "clock", None) is None:
            self.clock = task.Clock()
            self.clock.advance(NOW)
        self.factory = _TrackedFactory(self.clock, token=token)
        self.port = reactor.listenTCP(port, self.factory, interface="127.0.0.1")
        self.addCleanup(self.stop_server)
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}/"

    @defer.inlineCallbacks
    def stop_server(self):
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        for protocol in self.factory.made:
            if protocol.transport is not None and not protocol.gone.called:
                protocol.transport.abortConnection()
        yield defer.gatherResults([eventually(p.gone) for p in self.factory.made])

    @defer.inlineCallbacks
    def connect(self, query="", headers=None):
        factory = WebSocketClientFactory(self.url + query, headers=headers or {})
        factory.protocol = _TestClient
        factory.opened = defer.Deferred()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        protocol = yield endpoint.connect(factory)
        self.addCleanup(self._drop, protocol)
        yield eventually(factory.opened)
        return protocol

    def _drop(self, protocol):
        if not protocol.closed.called:
            protocol.transport.abortConnection()
        return eventually(protocol.closed)

    def announce(self, identity, rids, addresses=(), ts=None):
        return codec.encode(identity, list(addresses), list(rids), NOW if ts is None else ts, 0)


class ServerTests(ServerMixin, unittest.TestCase):
    def setUp(self):
        self.start_server()

    @defer.inlineCallbacks
    def test_routes_between_matching_rendezvous_only(self):
        """An announce reaches only the connections that announced a common rendezvous id, both ways."""
        node, device, stranger, other = (Identity.generate() for _ in range(4))
        shared, unrelated = rid_between(node, device), os.urandom(32)
        a, b, c, d = yield defer.gatherResults([self.connect() for _ in range(4)])
        c.sendMessage(self.announce(stranger, [unrelated]), isBinary=True)
        yield eventually(self.factory.routed)
        node_announce = self.announce(node, [shared], ["tcp:host=n:port=1"])
        a.sendMessage(node_announce, isBinary=True)
        yield eventually(self.factory.routed)
        device_announce = self.announce(device, [shared])
        to_b, to_a = b.next_message(), a.next_message()
        b.sendMessage(device_announce, isBinary=True)
        self.assertEqual((yield eventually(to_b)), node_announce)
        self.assertEqual((yield eventually(to_a)), device_announce)
        # The stranger's next message is the one matching it: nothing else came before.
        to_c = c.next_message()
        later = self.announce(other, [unrelated])
        d.sendMessage(later, isBinary=True)
        self.assertEqual((yield eventually(to_c)), later)
        self.assertEqual(c.messages, [later])

    @defer.inlineCallbacks
    def test_forged_announce_closes(self):
        """A badly signed announce closes its connection with 4008 and is forwarded to nobody."""
        node, device = Identity.generate(), Identity.generate()
        shared = rid_between(node, device)
        a = yield self.connect()
        a.sendMessage(self.announce(node, [shared]), isBinary=True)
        yield eventually(self.factory.routed)
        b = yield self.connect()
        data = bytearray(self.announce(device, [shared]))
        data[-1] ^= 1
        b.sendMessage(bytes(data), isBinary=True)
        self.assertEqual((yield eventually(b.closed)), 4008)
        self.assertEqual(a.messages, [])

    @defer.inlineCallbacks
    def test_stale_announce_closes(self):
        """An announce stamped more than five minutes before the server's clock closes its connection."""
        a = yield self.connect()
        a.sendMessage(self.announce(Identity.generate(), [os.urandom(32)], ts=NOW - 301), isBinary=True)
        self.assertEqual((yield eventually(a.closed)), 4008)

    @defer.inlineCallbacks
    def test_oversized_announce_closes(self):
        """A message above the announce size limit closes its connection with 1009."""
        a = yield self.connect()
        a.sendMessage(b"\x01" * (codec.MAX_ANNOUNCE_SIZE + 100), isBinary=True)
        self.assertEqual((yield eventually(a.closed)), 1009)

    @defer.inlineCallbacks
    def test_text_message_closes(self):
        """A text message closes its connection with 4003."""
        a = yield self.connect()
        a.sendMessage(b"hello", isBinary=False)
        self.assertEqual((yield eventually(a.closed)), 4003)

    @defer.inlineCallbacks
    def test_rate_limit(self):
        """Ten announces a minute are accepted; the eleventh within the minute closes the connection."""
        identity, rid = Identity.generate(), os.urandom(32)
        a = yield self.connect()
        for _ in range(10):
            a.sendMessage(self.announce(identity, [rid]), isBinary=True)
            yield eventually(self.factory.routed)
        self.clock.advance(59)
        a.sendMessage(self.announce(identity, [rid]), isBinary=True)
        self.assertEqual((yield eventually(a.closed)), 4029)

    @defer.inlineCallbacks
    def test_rate_limit_window_slides(self):
        """After a minute, a connection may announce again."""
        identity, rid = Identity.generate(), os.urandom(32)
        a = yield self.connect()
        for _ in range(10):
            a.sendMessage(self.announce(identity, [rid]), isBinary=True)
            yield eventually(self.factory.routed)
        self.clock.advance(60)
        a.sendMessage(self.announce(identity, [rid], ts=NOW + 60), isBinary=True)
        yield eventually(self.factory.routed)
        self.assertFalse(a.closed.called)


class TokenTests(ServerMixin, unittest.TestCase):
    def setUp(self):
        self.start_server(token="s3cret-token")

    def test_no_token_refused(self):
        """Without the bearer token the WebSocket handshake is refused."""
        return self.assertFailure(self.connect(), ConnectionError)

    def test_wrong_token_refused(self):
        """A wrong bearer token is refused."""
        return self.assertFailure(self.connect(headers={"Authorization": "Bearer nope"}), ConnectionError)

    @defer.inlineCallbacks
    def test_header_and_query_token_accepted(self):
        """The token is accepted as an Authorization header and as a ?token= query."""
        by_header = yield self.connect(headers={"Authorization": "Bearer s3cret-token"})
        by_query = yield self.connect(query="?token=s3cret-token")
        self.assertTrue(by_header.opened.called and by_query.opened.called)


# -- the node's announcer ----------------------------------------------------


class AnnouncerTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_reconnects_after_server_restart(self):
        """The announcer reconnects with backoff after the signaling server restarts, and announces again."""
        self.start_server()
        number = self.port.getHost().port
        node, device = Identity.generate(), Identity.generate()
        announcer = SignalAnnouncer(
            node,
            reactor,
            [self.url],
            addresses=lambda: ["tcp:host=n:port=1"],
            peer_keys=lambda: [device.public_key],
            interval=300.0,
            clock=self.clock,
        )
        closed = []
        original = announcer.closed

        def on_close(protocol):
            original(protocol)
            if closed:
                closed.pop(0).callback(None)

        announcer.closed = on_close
        announcer.startService()
        self.addCleanup(announcer.stopService)
        announcer.node_ready()
        first = yield eventually(self.factory.routed)
        self.assertEqual((first.peer_id, first.rendezvous), (node.peer_id, (rid_between(node, device),)))

        noticed = defer.Deferred()
        closed.append(noticed)
        yield self.stop_server()
        yield eventually(noticed)
        # One reactor turn: ClientService learns of the loss after the protocol does.
        yield task.deferLater(reactor, 0, lambda: None)
        self.start_server(port=number)
        self.clock.advance(120)  # past the ClientService's first backoff delay
        again = yield eventually(self.factory.routed)
        self.assertEqual((again.peer_id, again.ts), (node.peer_id, NOW + 120))

    @defer.inlineCallbacks
    def test_reannounces_every_interval(self):
        """Once ready, the announcer announces on connect and again every interval."""
        self.start_server()
        node, device = Identity.generate(), Identity.generate()
        announcer = SignalAnnouncer(
            node, reactor, [self.url], lambda: [], lambda: [device.public_key], interval=300.0, clock=self.clock
        )
        announcer.startService()
        self.addCleanup(announcer.stopService)
        announcer.node_ready()
        first = yield eventually(self.factory.routed)
        self.clock.advance(300)
        second = yield eventually(self.factory.routed)
        self.assertEqual((first.ts, second.ts), (NOW, NOW + 300))

    def test_announcer_only_with_signal_servers(self):
        """make_node adds a signaling announcer only when CAIRN_SIGNAL_SERVERS is set."""
        without = make_node(_node_config(self.mktemp()), reactor)
        self.assertIsNone(without.signaling)
        with_servers = make_node(_node_config(self.mktemp(), signal_servers=("ws://127.0.0.1:1/",)), reactor)
        self.assertIn(with_servers.signaling, list(with_servers))

    @defer.inlineCallbacks
    def test_unreachable_server_does_not_block_startup(self):
        """A node whose only signaling server is unreachable still starts and serves."""
        self.start_server()
        url = self.url
        yield self.stop_server()  # nothing listens on that port any more
        node = make_node(_node_config(self.mktemp(), signal_servers=(url,)), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        ports = yield eventually(node.ready)
        self.assertIn("tcp", ports)
        self.assertEqual(node.signaling.connections, set())


def _node_config(data_dir, **overrides):
    settings = dict(data_dir=data_dir, listen=LOOPBACK, ws_listen=LOOPBACK, mgmt_listen="none")
    settings.update(overrides)
    return Config.from_env({}, **settings)


class EndToEndTests(ServerMixin, unittest.TestCase):
    def setUp(self):
        self.clock = reactor  # real time: the node stamps announces with it
        self.connections = []

    @defer.inlineCallbacks
    def start_node(self, data_dir, device):
        node = make_node(_node_config(data_dir, signal_servers=(self.url,)), reactor)
        track_connections(node.peer, self.connections)
        routed = self.factory.routed
        node.startService()
        yield eventually(node.ready)
        if device is not None and not node.pairing.trust.is_paired(device.peer_id):
            yield node.pairing.trust.set_paired(device.peer_id, device.public_key, "phone", "psk", reactor.seconds())
        return node, routed

    @defer.inlineCallbacks
    def test_device_discovers_and_connects(self):
        """A device discovers its paired node's addresses through the signaling server and connects to one."""
        self.start_server()
        device = Identity.generate()
        data_dir = self.mktemp()
        # Pair, then restart: the node announces a peer already in its trust store.
        node, _ = yield self.start_node(data_dir, device)
        yield node.stopService()
        node, routed = yield self.start_node(data_dir, None)
        self.addCleanup(node.stopService)
        announced = yield eventually(routed)
        self.assertEqual(announced.rendezvous, (rid_between(node.peer.identity, device, reactor.seconds()),))

        addresses = yield eventually(discover(reactor, self.url, device, node.peer.identity.public_key))
        self.assertEqual(list(addresses), list(node.pairing.link_addresses))
        client = Client(reactor, identity=device, clock=task.Clock())
        track_connections(client.peer, self.connections)
        tcp = [a for a in addresses if a.startswith("tcp:")][0]
        session = yield eventually(client.connect(tcp))
        self.assertEqual(session.remote_peer_id, node.peer.peer_id)
        yield drop_all(self.connections)

    @defer.inlineCallbacks
    def test_discover_fails_when_server_closes(self):
        """discover() fails with DiscoveryFailed when the server closes before the node is found."""
        self.start_server()
        self.factory.token = "required"
        node = Identity.generate()
        found = discover(reactor, self.url, Identity.generate(), node.public_key)
        yield self.assertFailure(eventually(found), DiscoveryFailed)


class TwistdSignalTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_twistd_cairn_signal(self):
        """`twistd -n cairn-signal` logs its port and routes announces between two peers."""
        env = dict(os.environ, PYTHONPATH=REPO, CAIRN_SIGNAL_LISTEN_ADDR="127.0.0.1:0")
        proc = TwistdProcess({"signaling"})
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=", "--logfile=-", "cairn-signal"]
        reactor.spawnProcess(proc, sys.executable, argv, env=env, path=REPO)
        self.addCleanup(self._stop, proc)
        ports = yield eventually(proc.listening, 60)
        node, device = Identity.generate(), Identity.generate()
        url = f"ws://127.0.0.1:{ports['signaling']}/"
        found = discover(reactor, url, device, node.public_key)
        factory = WebSocketClientFactory(url)
        factory.protocol = _TestClient
        factory.opened = defer.Deferred()
        protocol = yield TCP4ClientEndpoint(reactor, "127.0.0.1", ports["signaling"]).connect(factory)
        yield eventually(factory.opened)
        now = reactor.seconds()
        rid = rid_between(node, device, now)
        protocol.sendMessage(codec.encode(node, ["tcp:host=n:port=7400"], [rid], int(now), 0), isBinary=True)
        self.assertEqual((yield eventually(found)), ["tcp:host=n:port=7400"])
        protocol.transport.abortConnection()
        yield eventually(protocol.closed)

    def _stop(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("TERM")
        return eventually(proc.ended, 30)
