"""
L{_LeanSetUp}: a cairn WebSocket's per-connection set-up, what autobahn's
C{connectionMade} does without what cairn never reads (issue 19).

Why not autobahn's alone: measured in memory (a cairn client and node
WebSocket over C{iosim}, upgrade and closing handshake, cProfile), its
Twisted adapter's C{connectionMade} and the C{_connectionMade} under it
were the largest single piece of a WebSocket's set-up on each side, a
fifth of the pair's profile: per connection it builds a
C{TransportDetails} (the peer, the process and thread ids -- two system
calls --, a TLS check) that only WAMP reads; an incremental UTF-8
validator, used only by text frames and close reasons, which cairn never
accepts in the common case; three debug log events with their arguments;
and it sets ~25 attributes to values that are already the class defaults
cairn keeps (L{cairn.transport.websocket_messages._AT_REST}).

What is kept, in autobahn's order: the peer string (autobahn's
C{peer2str}), C{TCP_NODELAY}, the traffic counters (every read adds to
them), the state and send state, the buffer and the send queue, the
opening handshake's timer, and then the server's connection count or the
client's upgrade request. The validator is made on first use
(L{_LazyValidator}); the transport details when read
(L{_LeanSetUp.transport_details}). Anything this set-up does not cover --
options not baked into the protocol class, timing tracking, a TLS
transport (its details carry the channel binding), a client going through
an HTTP proxy -- gets autobahn's C{connectionMade} unchanged.
"""

from collections import deque

import txaio
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import WebSocketAdapterProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.interfaces import ISSLTransport


class _LazyValidator:
    """
    C{utf8validator}, autobahn's incremental UTF-8 validator, made for a
    protocol the first time it is read and then kept in its instance dict
    (a non-data descriptor: the instance attribute wins from then on).
    """

    def __get__(self, protocol, owner=None):
        if protocol is None:
            return self
        validator = protocol.__dict__["utf8validator"] = Utf8Validator()
        return validator


class _LeanSetUp:
    """The set-up both cairn WebSocket protocols share (see the module docstring)."""

    utf8validator = _LazyValidator()

    def connectionMade(self):
        factory = self.factory
        if (
            self.CONFIG_ATTRS
            or self.trackTimings
            or ISSLTransport.providedBy(self.transport)
            or (not factory.isServer and factory.proxy is not None)
        ):
            return WebSocketAdapterProtocol.connectionMade(self)
        self.peer = peer2str(self.transport)
        try:
            self.transport.setTcpNoDelay(self.tcpNoDelay)
        except Exception:  # autobahn's: not every transport has it (AttributeError, OSError)
            pass
        self.trafficStats = TrafficStats()
        self.state = WebSocketProtocol.STATE_CONNECTING
        self.send_state = WebSocketProtocol.SEND_STATE_GROUND
        self.data = b""
        self.send_queue = deque()
        self.triggered = False
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout
            )
        if factory.isServer:
            factory.countConnections += 1
        else:
            self.startHandshake()

    def _open_state(self):
        """The state autobahn sets when the opening handshake succeeds, before its C{onOpen}."""
        self.state = WebSocketProtocol.STATE_OPEN
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None

    def _opened(self):
        """What autobahn does once open: C{onOpen}, C{is_open} fired, the bytes that came with the handshake read."""
        if self.trackedTimings:
            self.trackedTimings.track("onOpen")
        self._onOpen()
        txaio.resolve(self.is_open, None)
        if self.data:
            self.consumeData()

    @property
    def transport_details(self) -> TransportDetails:
        """autobahn's transport details, made when first read if the set-up above did not."""
        details = self._transport_details
        if details.peer is None and self.transport is not None:
            details = self._transport_details = create_transport_details(self.transport, self.is_server)
            details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        return details
