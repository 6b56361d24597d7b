"""
cairn over WebSocket (autobahn): exactly one envelope per binary message.

A text message is a protocol error. The server serves the path C{/}; it
accepts the subprotocol C{cairn.v1} when offered and also clients that
offer none. A message above the maximum payload is answered with a
cairn Close (payload too large) before autobahn fails the WebSocket.
"""

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from txaio._common import _BatchedTimer
from zope.interface import implementer

from cairn.session.interfaces import IFrameTransport
from cairn.wire.constants import HEADER_SIZE, CloseCode
from cairn.wire.envelope import EnvelopeError, decode

SUBPROTOCOL = "cairn.v1"


class _EnvelopeMessages:
    """What the server and client WebSocket protocols share."""

    sink = None

    @property
    def peer_address(self) -> str:
        return str(self.peer)

    def onOpen(self):
        self.sink.connection_made(self)

    def onMessage(self, payload, isBinary):
        if not isBinary:
            self.sink.framing_error(CloseCode.MALFORMED_ENVELOPE, "text WebSocket message")
            return
        try:
            envelope = decode(payload, self.factory.local.max_payload)
        except EnvelopeError as e:
            self.sink.framing_error(e.code, e.reason)
            return
        self.sink.envelope_received(envelope)

    def onClose(self, wasClean, code, reason):
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.connection_lost(reason)

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason):
        # autobahn's hook for an over-long message: say why in cairn terms
        # first, then let autobahn fail the WebSocket (close code 1009).
        if self.sink is not None:
            self.sink.framing_error(
                CloseCode.PAYLOAD_TOO_LARGE,
                f"message of {msg_size} bytes above maximum {max_msg_size}",
            )
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    # IFrameTransport

    def write_envelope(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=True)

    def lose(self, abort: bool = False) -> None:
        if abort:
            self.dropConnection(abort=True)
        else:
            self.sendClose(code=1000)


@implementer(IFrameTransport)
class ServerProtocol(_EnvelopeMessages, WebSocketServerProtocol):
    """Responder side of a cairn WebSocket."""

    def onConnect(self, request):
        if request.path != "/":
            raise ConnectionDeny(404, "cairn serves /")
        self.sink = self.factory.local.connection(initiator=False)
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None


@implementer(IFrameTransport)
class ClientProtocol(_EnvelopeMessages, WebSocketClientProtocol):
    """Initiator side of a cairn WebSocket; the factory supplies the sink."""

    def onConnect(self, response):
        self.sink = self.factory.make_sink()


def _limit_options(factory, local):
    # autobahn's handshake and close timers go through the peer's injected
    # clock like every other timer (txaio would use the global reactor).
    factory._batched_timer = _BatchedTimer(
        200.0, 1000, seconds_provider=local.clock.seconds, delayed_call_creator=local.clock.callLater
    )
    limit = local.max_payload + HEADER_SIZE
    factory.setProtocolOptions(
        maxMessagePayloadSize=limit,
        maxFramePayloadSize=limit,
        openHandshakeTimeout=local.handshake_timeout,
        closeHandshakeTimeout=5,
        # Fail with a closing handshake, not a bare drop, so that the cairn
        # Close written just before is flushed to the peer.
        failByDrop=False,
        autoFragmentSize=0,
    )


def server_factory(local) -> WebSocketServerFactory:
    """A factory serving cairn on C{/} for the local L{Peer}."""
    factory = WebSocketServerFactory()
    factory.protocol = ServerProtocol
    factory.local = local
    _limit_options(factory, local)
    return factory


def client_factory(local, url: str, make_sink) -> WebSocketClientFactory:
    """A factory connecting to C{url}; C{make_sink()} builds the Connection."""
    factory = WebSocketClientFactory(url, protocols=[SUBPROTOCOL])
    factory.protocol = ClientProtocol
    factory.local = local
    factory.make_sink = make_sink
    _limit_options(factory, local)
    return factory
