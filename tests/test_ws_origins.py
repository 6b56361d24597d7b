"""
CAIRN_WS_ALLOWED_ORIGINS: the WebSocket listener refuses an opening
handshake carrying a browser Origin it was not told to allow (HTTP 403,
before the upgrade), and accepts clients that send no Origin.
"""

import base64
import os

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.trial import unittest

from cairn.client import Client
from cairn.config import Config, ConfigError
from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.origins import OriginPolicy, normalize_origin
from cairn.transport.websocket import server_factory
from tests._harness import SETTINGS, drop_all, eventually, track_connections


class _Upgrade(protocol.Protocol):
    """Sends one opening handshake request; C{status} fires with the response's status code."""

    def __init__(self, origin):
        self.origin = origin
        self.status = defer.Deferred()
        self.data = b""

    def connectionMade(self):
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET / HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.origin is not None:
            lines.append(f"Origin: {self.origin}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data):
        self.data += data
        if b"\r\n" in self.data and not self.status.called:
            self.status.callback(int(self.data.split(b" ", 2)[1]))
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.status.called:
            self.status.errback(reason)


class OriginTests(unittest.TestCase):
    allowed = ("https://app.example", "http://localhost:8080", "null")

    @defer.inlineCallbacks
    def setUp(self):
        self.connections = []
        self.server = Peer(Identity.generate(), task.Clock(), **SETTINGS)
        track_connections(self.server, self.connections)
        factory = server_factory(self.server, allowed_origins=self.allowed)
        self.port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)

    @defer.inlineCallbacks
    def tearDown(self):
        yield drop_all(self.connections)
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def upgrade(self, origin):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        proto = yield endpoint.connect(protocol.Factory.forProtocol(lambda: _Upgrade(origin)))
        status = yield eventually(proto.status)
        return status

    @defer.inlineCallbacks
    def test_unlisted_origin_refused(self):
        """A browser Origin that is not listed gets HTTP 403 before the upgrade; no connection is made for it."""
        for origin in ("https://evil.example", "http://localhost:8081", "https://app.example.evil", "file://x"):
            status = yield self.upgrade(origin)
            self.assertEqual(status, 403, origin)
        self.assertEqual(self.server.sessions, {})

    @defer.inlineCallbacks
    def test_listed_origin_accepted(self):
        """A listed origin, in any spelling of it, is upgraded."""
        for origin in ("https://app.example", "HTTPS://App.Example:443", "http://localhost:8080", "null"):
            status = yield self.upgrade(origin)
            self.assertEqual(status, 101, origin)

    @defer.inlineCallbacks
    def test_no_origin_accepted(self):
        """A client sending no Origin (every cairn client) is upgraded and runs a session."""
        status = yield self.upgrade(None)
        self.assertEqual(status, 101)
        client = Client(reactor, Identity.generate(), clock=task.Clock(), **SETTINGS)
        track_connections(client.peer, self.connections)
        session = yield eventually(client.connect(f"ws://127.0.0.1:{self.port.getHost().port}/"))
        self.assertEqual(session.remote_peer_id, self.server.peer_id)


class DefaultTests(OriginTests):
    """With nothing configured every browser origin is refused, clients are not."""

    allowed = ()

    @defer.inlineCallbacks
    def test_listed_origin_accepted(self):
        """With no list, even those origins are refused."""
        for origin in ("https://app.example", "null"):
            status = yield self.upgrade(origin)
            self.assertEqual(status, 403, origin)


class PolicyTests(unittest.TestCase):
    def test_normalize(self):
        """Origins compare in serialized form: lower case, default ports dropped."""
        self.assertEqual(normalize_origin("HTTPS://App.Example:443"), "https://app.example")
        self.assertEqual(normalize_origin("http://[::1]:8080"), "http://[::1]:8080")
        self.assertEqual(normalize_origin("NULL"), "null")
        for bad in ("app.example", "https://app.example/x", "https://user@app.example", "https://a:99999", ""):
            self.assertRaises(ValueError, normalize_origin, bad)

    def test_star(self):
        """'*' allows every origin; an unreadable Origin is refused otherwise."""
        self.assertTrue(OriginPolicy(["*"]).allows("https://anything.example"))
        self.assertFalse(OriginPolicy(["https://a.example"]).allows("not an origin"))
        self.assertTrue(OriginPolicy().allows(None))
        self.assertTrue(OriginPolicy().allows(""))

    def test_config(self):
        """CAIRN_WS_ALLOWED_ORIGINS is a comma-separated list; a bad entry is one line naming the variable."""
        env = {"CAIRN_WS_ALLOWED_ORIGINS": "https://app.example, http://localhost:8080"}
        self.assertEqual(Config.from_env(env).ws_allowed_origins, ("https://app.example", "http://localhost:8080"))
        self.assertEqual(Config.from_env({}).ws_allowed_origins, ())
        error = self.assertRaises(ConfigError, Config.from_env, {"CAIRN_WS_ALLOWED_ORIGINS": "https://a.example/app"})
        self.assertEqual(error.variable, "CAIRN_WS_ALLOWED_ORIGINS")
        self.assertNotIn("\n", str(error))
