"""
cairn over a TCP stream: envelopes back to back, the header's length
field delimiting each one.
"""

from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from cairn.session.interfaces import IFrameTransport
from cairn.wire.envelope import EnvelopeError, EnvelopeParser


@implementer(IFrameTransport)
class StreamProtocol(Protocol):
    """
    Frames a byte stream into envelopes for one L{IConnectionSink}.

    @param sink: the L{cairn.session.connection.Connection} to drive.
    """

    def __init__(self, sink, max_payload: int):
        self.sink = sink
        self._parser = EnvelopeParser(max_payload)
        self._closing = False

    @property
    def peer_address(self) -> str:
        return str(self.transport.getPeer())

    def connectionMade(self):
        # Envelopes are whole messages: waiting to coalesce them (Nagle)
        # only adds a round trip of delay to every request/response.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.sink.connection_made(self)

    def dataReceived(self, data):
        if self._closing:
            return
        try:
            envelopes = self._parser.feed(data)
        except EnvelopeError as e:
            self.sink.framing_error(e.code, e.reason)
            return
        for envelope in envelopes:
            if self._closing:
                return
            self.sink.envelope_received(envelope)

    def connectionLost(self, reason=None):
        self._closing = True
        self.sink.connection_lost(reason)

    # IFrameTransport

    def write_envelope(self, data: bytes) -> None:
        self.transport.write(data)

    def lose(self, abort: bool = False) -> None:
        self._closing = True
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()


class StreamFactory(Factory):
    """Accepts TCP connections as responders of the local L{Peer}."""

    def __init__(self, local, initiator: bool = False):
        self.local = local
        self.initiator = initiator

    def buildProtocol(self, addr):
        sink = self.local.connection(initiator=self.initiator)
        protocol = StreamProtocol(sink, self.local.max_payload)
        protocol.factory = self
        return protocol
