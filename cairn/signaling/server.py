"""
The signaling server: routes PeerAnnounce between peers sharing a rendezvous id.

Each WebSocket binary message is one PeerAnnounce.  The server checks its
size, signature and timestamp (on its injected clock), then forwards it to
every other connection that announced a common rendezvous id, and sends
back to the announcer the announces those connections last made.  Nothing
is written to disk; each connection keeps at most L{RETAINED} announces of
at most L{MAX_ANNOUNCE_SIZE} bytes, and may announce L{RATE_LIMIT} times
per L{RATE_WINDOW} seconds.  A bad message closes that one connection.
"""

import hmac
from collections import deque

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from cairn.signaling.announce import MAX_ANNOUNCE_SIZE, AnnounceError, parse

log = Logger()

#: Announces kept per connection (a node with many paired peers splits
#: its rendezvous ids over several announces).
RETAINED = 4
RATE_LIMIT = 10
RATE_WINDOW = 60.0

#: WebSocket close codes (application range; autobahn itself closes a
#: message above the size limit with 1009).
CLOSE_TEXT = 4003
CLOSE_INVALID = 4008
CLOSE_TOO_BIG = 4009
CLOSE_RATE = 4029


class SignalingProtocol(WebSocketServerProtocol):
    """One peer's connection to the signaling server."""

    def onConnect(self, request):
        token = self.factory.token
        if token is None:
            return None
        given = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        else:
            values = request.params.get("token")
            if values:
                given = values[0]
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise ConnectionDeny(401, "a valid bearer token is required")
        return None

    def onOpen(self):
        self.announces = deque(maxlen=RETAINED)
        self.recent = deque(maxlen=RATE_LIMIT)
        self.factory.connections.add(self)

    def onClose(self, wasClean, code, reason):
        self.factory.connections.discard(self)

    def onMessage(self, payload, isBinary):
        if not isBinary:
            self.sendClose(CLOSE_TEXT, "binary PeerAnnounce messages only")
            return
        if len(payload) > MAX_ANNOUNCE_SIZE:
            self.sendClose(CLOSE_TOO_BIG, "announce too large")
            return
        now = self.factory.clock.seconds()
        if len(self.recent) == RATE_LIMIT and now - self.recent[0] < RATE_WINDOW:
            self.sendClose(CLOSE_RATE, "too many announces")
            return
        self.recent.append(now)
        try:
            announce = parse(payload, now)
        except AnnounceError as e:
            log.info("signaling: refused an announce ({why})", why=str(e))
            self.sendClose(CLOSE_INVALID, "invalid announce")
            return
        self.announces.append((announce, payload))
        self.factory.route(self, announce, payload)


class SignalingFactory(WebSocketServerFactory):
    """
    The signaling service's WebSocket factory.

    @param clock: the L{IReactorTime} timestamps are judged against.
    @param token: the bearer token clients must present, or C{None}.
    """

    protocol = SignalingProtocol

    def __init__(self, clock, token=None, url=None):
        super().__init__(url)
        self.clock = clock
        self.token = token
        self.connections = set()
        # failByDrop off: a peer over the size limit is told why (1009)
        # before the connection closes.
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_ANNOUNCE_SIZE + 1,
            maxFramePayloadSize=MAX_ANNOUNCE_SIZE + 1,
            failByDrop=False,
        )

    def route(self, sender, announce, payload) -> None:
        """Exchange announces between C{sender} and every connection it matches."""
        wanted = set(announce.rendezvous)
        if not wanted:
            return
        for other in list(self.connections):
            if other is sender:
                continue
            replies = [raw for theirs, raw in other.announces if wanted.intersection(theirs.rendezvous)]
            if replies:
                other.sendMessage(payload, isBinary=True)
                for raw in replies:
                    sender.sendMessage(raw, isBinary=True)
