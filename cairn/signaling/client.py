"""
A device's side of signaling: find the addresses of a paired node.
"""

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred

from cairn.crypto.identity import Identity
from cairn.signaling.announce import (
    MAX_ANNOUNCE_SIZE,
    AnnounceError,
    day_number,
    encode,
    parse,
    rendezvous_id,
    rendezvous_key,
)


class DiscoveryFailed(Exception):
    """The signaling connection closed before the node's announce arrived."""


class _DiscoverProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.addresses = None
        self.factory.protocol_instance = self
        self.sendMessage(self.factory.announce, isBinary=True)

    def onMessage(self, payload, isBinary):
        if self.addresses is not None:
            return
        try:
            announce = parse(payload)
        except AnnounceError:
            return
        if announce.identity == self.factory.node_key and self.factory.rendezvous in announce.rendezvous:
            self.addresses = list(announce.addresses)
            self.sendClose(1000)

    def onClose(self, wasClean, code, reason):
        d, self.factory.result = self.factory.result, None
        if d is None:
            return
        if getattr(self, "addresses", None) is not None:
            d.callback(self.addresses)
        else:
            d.errback(DiscoveryFailed(f"signaling connection closed ({code}: {reason})"))


def discover(reactor, url: str, identity, node_identity_key: bytes, clock=None) -> Deferred:
    """
    Look for the node on the signaling server at C{url}, as the paired device C{identity}.

    The announce carries today's rendezvous id that C{identity} shares with
    the node whose Ed25519 key is C{node_identity_key}, no addresses, and
    is signed by a throwaway key made for this call, not by C{identity};
    the server forwards it to the node and sends back the node's latest
    announce.

    @return: a Deferred firing with the node's announced addresses (a
        list of text), once the connection is closed; it fails with
        L{DiscoveryFailed} if the server closes first.  Cancelling it drops
        the connection.
    """
    from cairn.dial import websocket_endpoint

    clock = clock or reactor
    now = clock.seconds()
    rid = rendezvous_id(rendezvous_key(identity, node_identity_key), day_number(now))
    factory = WebSocketClientFactory(url)
    factory.protocol = _DiscoverProtocol
    factory.setProtocolOptions(maxMessagePayloadSize=MAX_ANNOUNCE_SIZE + 1)
    factory.node_key = bytes(node_identity_key)
    factory.rendezvous = rid
    # Signed with a throwaway key, new for every discovery: the server (and
    # anyone it forwards to) never sees the device's identity, and two
    # discoveries of one device carry unrelated keys (docs/protocol.md §23).
    factory.announce = encode(Identity.generate(), [], [rid], int(now), 0)
    factory.protocol_instance = None

    def cancel(d):
        factory.result = None
        if factory.protocol_instance is not None:
            factory.protocol_instance.dropConnection(abort=True)
        connecting.cancel()

    factory.result = Deferred(cancel)
    result = factory.result
    connecting = websocket_endpoint(reactor, url).connect(factory)

    def failed(failure):
        if factory.result is not None:
            d, factory.result = factory.result, None
            d.errback(failure)

    connecting.addErrback(failed)
    return result

