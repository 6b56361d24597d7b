"""
The node's side of signaling: announce itself to every C{CAIRN_SIGNAL_SERVERS} URL.

One C{ClientService} per URL (default backoff) keeps a WebSocket open in
the background, so a dead signaling server never blocks start-up.  Once
the node serves (L{SignalAnnouncer.node_ready}), every open connection
gets PeerAnnounces -- on connect, and again every announce interval --
carrying the node's addresses and one rendezvous id per paired peer
(split over several announces above L{MAX_RENDEZVOUS}).
"""

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cairn.signaling.announce import (
    MAX_ANNOUNCE_SIZE,
    MAX_RENDEZVOUS,
    AnnounceError,
    day_number,
    encode,
    parse,
    rendezvous_id,
    rendezvous_key,
)

log = Logger()


class _AnnounceProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.seq = 0
        self.factory.announcer.opened(self)

    def onClose(self, wasClean, code, reason):
        self.factory.announcer.closed(self)

    def onMessage(self, payload, isBinary):
        # Announces of paired devices: nothing to do with them yet (a device
        # dials the node, not the other way round), but check them anyway.
        try:
            announce = parse(payload)
        except AnnounceError as e:
            log.debug("signaling: ignored a forwarded message ({why})", why=str(e))
            return
        log.debug("signaling: {peer_id} announced", peer_id=announce.peer_id)

    def send_announce(self, data: bytes) -> None:
        self.seq += 1
        self.sendMessage(data, isBinary=True)


class SignalAnnouncer(MultiService):
    """
    Keeps the node announced on every signaling server.

    @param identity: the node's L{Identity}.
    @param reactor: connects the sockets.
    @param urls: C{ws://} / C{wss://} URLs (a C{?token=} query is sent as is).
    @param addresses: returns the node's dialable addresses.
    @param peer_keys: returns (or fires with) the identity keys of the paired peers.
    @param interval: seconds between announces.
    @param clock: timestamps, the interval and the reconnection backoff.
    """

    def __init__(self, identity, reactor, urls, addresses, peer_keys, interval, clock=None):
        super().__init__()
        from cairn.dial import websocket_endpoint

        self.identity = identity
        self.clock = clock or reactor
        self.addresses = addresses
        self.peer_keys = peer_keys
        self.interval = interval
        self.ready = False
        self.connections = set()
        self._keys = {}
        self._loop = LoopingCall(self.announce_all)
        self._loop.clock = self.clock
        for url in urls:
            factory = WebSocketClientFactory(url)
            factory.protocol = _AnnounceProtocol
            factory.announcer = self
            factory.setProtocolOptions(maxMessagePayloadSize=MAX_ANNOUNCE_SIZE + 1)
            service = ClientService(websocket_endpoint(reactor, url), factory, clock=self.clock)
            service.setName(url)
            service.setServiceParent(self)

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        return super().stopService()

    def node_ready(self) -> None:
        """The node serves: announce on every open connection from now on."""
        self.ready = True
        self.announce_all()

    def opened(self, protocol) -> None:
        self.connections.add(protocol)
        if self.ready:
            self._announce([protocol])

    def closed(self, protocol) -> None:
        self.connections.discard(protocol)

    def announce_all(self):
        """Announce on every open connection; errors are logged, never raised."""
        if not self.ready or not self.connections:
            return None
        return self._announce(list(self.connections))

    def rendezvous(self, keys, now: float) -> list:
        """Today's rendezvous id shared with each peer of C{keys}."""
        day = day_number(now)
        ids = []
        for key in keys:
            key = bytes(key)
            if key not in self._keys:
                try:
                    self._keys[key] = rendezvous_key(self.identity, key)
                except Exception:  # not a usable Ed25519 point: skip that peer only
                    log.warn("signaling: a paired peer's key has no X25519 form; not announced for it")
                    self._keys[key] = None
            if self._keys[key] is not None:
                ids.append(rendezvous_id(self._keys[key], day))
        return ids

    def _announce(self, protocols):
        def send(keys):
            now = self.clock.seconds()
            ids = self.rendezvous(keys, now)
            addresses = list(self.addresses())
            chunks = [ids[i : i + MAX_RENDEZVOUS] for i in range(0, len(ids), MAX_RENDEZVOUS)]
            for protocol in protocols:
                if protocol not in self.connections:
                    continue
                for chunk in chunks or [[]]:
                    protocol.send_announce(encode(self.identity, addresses, chunk, int(now), protocol.seq))

        d = maybeDeferred(self.peer_keys)
        d.addCallback(send)
        d.addErrback(lambda f: log.failure("signaling: announce failed", f))
        return d
