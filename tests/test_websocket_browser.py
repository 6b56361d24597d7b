"""
A browser (headless Chromium, L{tests._browser}) opens a cairn WebSocket:
its upgrade (with C{Origin} and a permessage-deflate offer) goes through
autobahn (L{cairn.transport.websocket_upgrade} reads only cairn's own
client's), its masked binary frames (1,100 bytes: a 16-bit length) are
delivered whole (L{cairn.transport.websocket_messages}, issue 19), and a
binary message from the node reaches it.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server, static

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.websocket import server_factory
from tests import _browser
from tests._browser import Browser

#: Run in the page: open the WebSocket, send two binary messages, wait for one back.
_SCRIPT = """
const done = arguments[arguments.length - 1];
const ws = new WebSocket(arguments[0], ["cairn.v1"]);
ws.binaryType = "arraybuffer";
ws.onopen = () => {
    ws.send(new Uint8Array(1100).fill(7));
    ws.send(new Uint8Array([1, 2, 3]));
};
ws.onmessage = (event) => {
    done({protocol: ws.protocol, extensions: ws.extensions, got: Array.from(new Uint8Array(event.data))});
    ws.close();
};
ws.onerror = () => done({error: "error"});
"""


class _EchoSink:
    """Records what the WebSocket delivers (not envelopes: framing errors); answers the second message."""

    session = None

    def __init__(self, received):
        self.received = received
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def envelope_received(self, envelope):
        pass

    def framing_error(self, code, reason):
        self.received.append(reason)
        if len(self.received) == 2:
            self.transport.write_envelope(b"\x09\x08\x07")

    def connection_lost(self, reason):
        pass


class BrowserWebSocketTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        _browser.require(self)
        root = resource.Resource()
        root.putChild(b"", static.Data(b"<html><body>cairn</body></html>", "text/html"))
        page = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
        self.addCleanup(page.stopListening)
        self.origin = f"http://127.0.0.1:{page.getHost().port}"
        self.received = []
        peer = Peer(Identity.generate(), reactor)
        peer.connection = lambda initiator: _EchoSink(self.received)
        self.port = reactor.listenTCP(0, server_factory(peer, allowed_origins=(self.origin,)), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.browser = Browser(os.path.abspath(self.mktemp()))
        self.addCleanup(self.browser.quit)
        yield self.browser.start()

    @defer.inlineCallbacks
    def test_browser_connects(self):
        """The browser's WebSocket opens with cairn.v1, no extension, and carries binary messages both ways."""
        url = f"ws://127.0.0.1:{self.port.getHost().port}/"
        yield self.browser.run(lambda driver: driver.get(self.origin + "/"))
        result = yield self.browser.run(lambda driver: driver.execute_async_script(_SCRIPT, url))
        self.assertEqual(result, {"protocol": "cairn.v1", "extensions": "", "got": [9, 8, 7]})
        self.assertEqual(len(self.received), 2)
