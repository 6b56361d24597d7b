"""
The WebSocket opening handshake's plain case is read by cairn
(L{cairn.transport.websocket_upgrade}, issue 19) with the same outcome and
bytes as autobahn's; every other case still goes to autobahn.
"""

import functools

import autobahn.websocket.protocol as autobahn_protocol
from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport import websocket_upgrade
from cairn.transport.settings import TransportSettings
from cairn.transport.websocket import client_factory, server_factory
from tests.test_websocket_lean import UPGRADE, _Sink, _Transport, frame

ADDRESS = IPv4Address("TCP", "127.0.0.1", 4321)
#: Requests autobahn reads (not the plain case), each with why.
NOT_PLAIN = {
    "origin": UPGRADE[:-2] + b"Origin: http://example.com\r\n\r\n",
    "null origin": UPGRADE[:-2] + b"Origin: null\r\n\r\n",
    "extensions": UPGRADE[:-2] + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    "repeated header": UPGRADE[:-2] + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "other path": UPGRADE.replace(b"GET / ", b"GET /x "),
    "query": UPGRADE.replace(b"GET / ", b"GET /?a=1 "),
    "version 8": UPGRADE.replace(b"Version: 13", b"Version: 8"),
    "bad key": UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZSBub25jZQ"),
    "POST": UPGRADE.replace(b"GET", b"POST"),
    "HTTP/1.0": UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "no upgrade": UPGRADE.replace(b"Upgrade: websocket\r\n", b""),
    "no host": UPGRADE.replace(b"Host: 127.0.0.1:9\r\n", b""),
    "bad port": UPGRADE.replace(b"127.0.0.1:9", b"127.0.0.1:x"),
    "connection keep-alive": UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
    "obs-fold": UPGRADE.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\n x\r\n"),
    "non-ASCII value": UPGRADE[:-2] + b"X-Name: caf\xe9\r\n\r\n",
    "bare LF": UPGRADE.replace(b"Connection: Upgrade\r\n", b"Connection: Upgrade\nX: y\r\n"),
    "duplicate subprotocol": UPGRADE.replace(b"cairn.v1", b"cairn.v1, cairn.v1"),
}


def _count_header_parses(test):
    """How many times autobahn's parseHttpHeader runs (a list holding the count)."""
    calls = [0]
    real = autobahn_protocol.parseHttpHeader

    def counted(data):
        calls[0] += 1
        return real(data)

    test.patch(autobahn_protocol, "parseHttpHeader", counted)
    return calls


class ServerUpgradeTests(unittest.TestCase):
    def setUp(self):
        self.peer = Peer(Identity.generate(), task.Clock())
        self.factory = server_factory(self.peer)

    def upgrade(self, request, autobahn_only=False):
        protocol = self.factory.buildProtocol(ADDRESS)
        if autobahn_only:
            protocol.processHandshake = functools.partial(WebSocketServerProtocol.processHandshake, protocol)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        protocol.dataReceived(request)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol

    def test_plain_request_not_parsed_by_autobahn(self):
        """cairn's client's request opens the WebSocket without autobahn's HTTP parse."""
        calls = _count_header_parses(self)
        protocol = self.upgrade(UPGRADE)
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        self.assertEqual(calls[0], 0)

    def test_plain_request_same_response(self):
        """The response is byte for byte autobahn's, with and without a subprotocol offered."""
        without = UPGRADE.replace(b"Sec-WebSocket-Protocol: cairn.v1\r\n", b"")
        others = UPGRADE.replace(b"cairn.v1", b"other, cairn.v1")
        for request in (UPGRADE, without, others):
            ours = self.upgrade(request)
            theirs = self.upgrade(request, autobahn_only=True)
            self.assertEqual(ours.transport.value(), theirs.transport.value())
            self.assertTrue(ours.transport.value().startswith(b"HTTP/1.1 101 "))
            for name in ("state", "websocket_version", "websocket_protocol_in_use", "websocket_extensions_in_use"):
                self.assertEqual(getattr(ours, name), getattr(theirs, name), name)

    def test_other_requests_autobahns(self):
        """Every other request is read by autobahn, with autobahn's answer."""
        for why, request in NOT_PLAIN.items():
            self.assertIsNone(websocket_upgrade.plain_request(request.split(b"\r\n\r\n")[0]), why)
            calls = _count_header_parses(self)
            ours = self.upgrade(request)
            self.assertEqual(calls[0], 1, why)
            theirs = self.upgrade(request, autobahn_only=True)
            self.assertEqual(ours.transport.value(), theirs.transport.value(), why)
            self.assertEqual(ours.state, theirs.state, why)

    def test_repeated_request_same_response(self):
        """A repeated request with another key opens the WebSocket with autobahn's response for that key."""
        self.upgrade(UPGRADE)
        calls = _count_blocks(self)
        request = UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"x3JJHMbDL1EzLkh9GBhXDw==")
        ours = self.upgrade(request)
        self.assertEqual(calls[0], 0)
        theirs = self.upgrade(request, autobahn_only=True)
        self.assertEqual(ours.transport.value(), theirs.transport.value())
        self.assertIn(b"Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n", ours.transport.value())
        self.assertEqual(ours.state, ours.STATE_OPEN)

    def test_response_from_the_last(self):
        """
        After the first response for a subprotocol (or none), a plain
        request's response is that one with its own accept value, not built
        by autobahn's succeedHandshake again: autobahn's bytes all the same.
        """
        without = UPGRADE.replace(b"Sec-WebSocket-Protocol: cairn.v1\r\n", b"")
        self.upgrade(UPGRADE)
        self.upgrade(without)
        calls = []
        real = WebSocketServerProtocol.succeedHandshake
        self.patch(WebSocketServerProtocol, "succeedHandshake", lambda p, res: (calls.append(res), real(p, res))[1])
        for request in (UPGRADE, without):
            request = request.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"x3JJHMbDL1EzLkh9GBhXDw==")
            ours = self.upgrade(request)
            self.assertEqual(calls, [])
            theirs = self.upgrade(request, autobahn_only=True)
            calls.clear()
            self.assertEqual(ours.transport.value(), theirs.transport.value())
            self.assertIn(b"Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n", ours.transport.value())
            for name in ("state", "websocket_protocol_in_use", "websocket_extensions_in_use", "current_frame"):
                self.assertEqual(getattr(ours, name), getattr(theirs, name), name)
            self.assertTrue(ours.is_open.called)
        self.factory.setSessionParameters(server="other")
        self.assertIn(b"Server: other\r\n", self.upgrade(UPGRADE).transport.value())
        self.assertEqual(calls, ["cairn.v1"])

    def test_data_after_request(self):
        """A frame arriving with the request is delivered once the WebSocket is open."""
        protocol = self.factory.buildProtocol(ADDRESS)
        protocol.makeConnection(_Transport(peerAddress=ADDRESS))
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        got = []
        protocol.onMessage = lambda payload, binary: got.append(payload)
        protocol.dataReceived(UPGRADE + frame(b"early"))
        self.assertEqual(got, [b"early"])


class ClientUpgradeTests(unittest.TestCase):
    def setUp(self):
        clock = task.Clock()
        self.peer = Peer(Identity.generate(), clock)
        self.peer.connection = lambda initiator: _Sink()
        self.server_factory = server_factory(self.peer)
        self.settings = TransportSettings(max_payload=64 * 1024, clock=clock)
        self.url = "ws://127.0.0.1:9/"

    def pair(self):
        """A cairn client and server WebSocket over in-memory transports, upgraded; (client, server, request)."""
        server = self.server_factory.buildProtocol(ADDRESS)
        client = client_factory(self.settings, self.url, _Sink).buildProtocol(ADDRESS)
        server_transport = iosim.FakeTransport(server, isServer=True, peerAddress=ADDRESS)
        client_transport = iosim.FakeTransport(client, isServer=False)
        requests = []
        real = server.dataReceived

        def received(data):
            requests.append(data)
            real(data)

        server.dataReceived = received
        pump = iosim.connect(server, server_transport, client, client_transport, greet=True)
        pump.flush()
        self.addCleanup(lambda: (client.dropConnection(abort=True), pump.flush()))
        return client, server, b"".join(requests)

    def test_request_same_bytes_fresh_key(self):
        """
        The first client of a template sends autobahn's request; the next
        ones the same bytes with their own key, without autobahn's
        onConnecting, and both open.
        """
        self.url = "ws://127.0.0.1:10/"  # a template of its own
        first, first_server, first_request = self.pair()
        connecting = []
        self.patch(WebSocketClientProtocol, "onConnecting", lambda self, details: connecting.append(details))
        second, second_server, second_request = self.pair()
        self.assertEqual(connecting, [])
        self.assertNotEqual(first.websocket_key, second.websocket_key)
        self.assertEqual(first_request.replace(first.websocket_key, second.websocket_key), second_request)
        for protocol in (first, first_server, second, second_server):
            self.assertEqual(protocol.state, protocol.STATE_OPEN)

    def test_request_not_made_by_autobahn_twice(self):
        """The second connection of a template does not go through autobahn's startHandshake."""
        self.pair()
        calls = []
        real = WebSocketClientProtocol.startHandshake
        self.patch(WebSocketClientProtocol, "startHandshake", lambda self: (calls.append(1), real(self))[1])
        client, _, _ = self.pair()
        self.assertEqual(calls, [])
        self.assertEqual(client.state, client.STATE_OPEN)

    def test_response_not_parsed_by_autobahn(self):
        """The node's response opens the client's WebSocket without autobahn's HTTP parse."""
        calls = _count_header_parses(self)
        client, server, _ = self.pair()
        self.assertEqual(calls[0], 0)
        self.assertEqual(client.state, client.STATE_OPEN)
        self.assertEqual(client.websocket_protocol_in_use, "cairn.v1")
        self.assertEqual(client.websocket_version, client.version)  # autobahn's draft number (18)

    def test_repeated_response_opens(self):
        """The second client of a template reads the node's response without the grammar and opens."""
        self.url = "ws://127.0.0.1:11/"  # a template of its own
        self.pair()
        calls = _count_blocks(self)
        client, server, _ = self.pair()
        self.assertEqual(calls[0], 0)  # nor the node's of the request: it repeats too
        self.assertEqual(client.state, client.STATE_OPEN)
        self.assertEqual(client.websocket_protocol_in_use, "cairn.v1")
        self.assertEqual(client.http_headers, {})  # dropped at open, as before

    def response_to(self, response):
        """A cairn client protocol given C{response} (C{KEY} in it replaced by its key)."""
        client = client_factory(self.settings, self.url, _Sink).buildProtocol(ADDRESS)
        client.makeConnection(_Transport(peerAddress=ADDRESS))
        self.addCleanup(client.connectionLost, Failure(ConnectionDone()))
        accept = websocket_upgrade.accept_value(client.websocket_key).encode()
        client.dataReceived(response.replace(b"KEY", accept))
        return client

    def test_other_responses_autobahns(self):
        """A response that is not the plain case goes to autobahn, which fails or accepts it as before."""
        plain = (
            b"HTTP/1.1 101 Switching Protocols\r\nServer: x\r\nUpgrade: WebSocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Protocol: cairn.v1\r\nSec-WebSocket-Accept: KEY\r\n\r\n"
        )
        calls = _count_header_parses(self)
        self.assertEqual(self.response_to(plain).state, WebSocketClientProtocol.STATE_OPEN)
        self.assertEqual(calls[0], 0)
        failing = {
            "wrong accept": plain.replace(b"KEY", b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            "refused": b"HTTP/1.1 403 origin not allowed\r\n\r\n",
            "other subprotocol": plain.replace(b"cairn.v1", b"other"),
            "extension": plain[:-2] + b"Sec-WebSocket-Extensions: x-other\r\n\r\n",
        }
        for why, response in failing.items():
            calls[0] = 0
            client = self.response_to(response)
            self.assertEqual(calls[0], 1, why)
            self.assertNotEqual(client.state, client.STATE_OPEN, why)
        calls[0] = 0
        folded_case = plain.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade\r\nconnection: x")
        self.assertEqual(self.response_to(folded_case).state, WebSocketClientProtocol.STATE_OPEN)
        self.assertEqual(calls[0], 1)


def _count_blocks(test):
    """How many times cairn's grammar reads a head (a list holding the count)."""
    calls = [0]
    real = websocket_upgrade._block

    def counted(pattern, head):
        calls[0] += 1
        return real(pattern, head)

    test.patch(websocket_upgrade, "_block", counted)
    return calls


def _fields(request):
    if request is None:
        return None
    return (request.status_line, request.headers, request.host, request.protocols, request.key)


class RepeatedHeadTests(unittest.TestCase):
    """A head equal to the last plain one but for its key or accept value (L{websocket_upgrade.LastPlain})."""

    def test_request_read_as_the_grammar_reads_it(self):
        """
        Every request gets what plain_request gives it; only one that is
        the last plain request with another valid key skips the grammar.
        """
        head = UPGRADE[:-4]
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        last = websocket_upgrade.LastPlain()
        calls = _count_blocks(self)
        self.assertEqual(
            _fields(websocket_upgrade.read_request(head, last)), _fields(websocket_upgrade.plain_request(head))
        )
        requests = {
            "another key": (head.replace(key, b"AAAAAAAAAAAAAAAAAAAAAA=="), 0),
            "a key with + and /": (head.replace(key, b"ab+/ab+/ab+/ab+/ab+/ab==", 1), 0),
            "a key not base64": (head.replace(key, b"AAAAAAAAAAAAAAAAAAAAA*=="), 1),
            "a key with a line break": (head.replace(key, b"AAAAAAAAAA\r\nAAAAAAAAAA=="), 1),
            "a key not ending ==": (head.replace(key, b"AAAAAAAAAAAAAAAAAAAAAAAA"), 1),
            "a longer key": (head.replace(key, b"AAAAAAAAAAAAAAAAAAAAAAAA=="), 1),
            "another host": (head.replace(b"127.0.0.1:9", b"127.0.0.1:8"), 1),
            "an origin": (head + b"\r\nOrigin: http://example.com", 1),
            "the same": (head, 0),
        }
        for why, (request, parses) in requests.items():
            calls[0] = 0
            theirs = _fields(websocket_upgrade.plain_request(request))
            calls[0] = 0
            last.remember(head, key, websocket_upgrade.plain_request(head))
            calls[0] = 0
            self.assertEqual(_fields(websocket_upgrade.read_request(request, last)), theirs, why)
            self.assertEqual(calls[0], parses, why)

    def test_response_read_as_the_grammar_reads_it(self):
        """
        Every response gets what plain_response gives it; only one that is
        the last plain response with the right accept value skips the grammar.
        """
        template = (
            b"HTTP/1.1 101 Switching Protocols\r\nServer: x\r\nUpgrade: WebSocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Protocol: cairn.v1\r\nSec-WebSocket-Accept: KEY"
        )
        offered = ["cairn.v1"]
        first, second = b"dGhlIHNhbXBsZSBub25jZQ==", b"x3JJHMbDL1EzLkh9GBhXDw=="
        last = websocket_upgrade.LastPlain()
        head = template.replace(b"KEY", websocket_upgrade.accept_value(first).encode())
        calls = _count_blocks(self)
        self.assertEqual(
            websocket_upgrade.read_response(head, first, offered, last),
            websocket_upgrade.plain_response(head, first, offered),
        )
        right = template.replace(b"KEY", websocket_upgrade.accept_value(second).encode())
        responses = {
            "the right accept value": (right, 0),
            "the last accept value": (head, 1),
            "another server": (right.replace(b"Server: x", b"Server: y"), 1),
            "another subprotocol": (right.replace(b"cairn.v1", b"cairn.v2"), 1),
        }
        for why, (response, parses) in responses.items():
            theirs = websocket_upgrade.plain_response(response, second, offered)
            calls[0] = 0
            self.assertEqual(websocket_upgrade.read_response(response, second, offered, last), theirs, why)
            self.assertEqual(calls[0], parses, why)
        self.assertIsNotNone(websocket_upgrade.read_response(right, second, offered, last))
