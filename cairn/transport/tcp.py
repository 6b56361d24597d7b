"""
cairn over a TCP stream: envelopes back to back, the header's length
field delimiting each one.
"""

from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from cairn.session.interfaces import IFrameTransport
from cairn.transport.limits import MAX_WRITE_BUFFER, OutputGuard, Refused, refusal_close
from cairn.wire.constants import HEADER_SIZE, CloseCode, MessageType
from cairn.wire.envelope import EnvelopeError, EnvelopeParser, decode, parse_header

#: Bytes read from the socket per wake-up (Twisted's default: 64 KiB).
READ_SIZE = 256 * 1024
#: Longest RelayAttach payload accepted (its body is about 70 bytes).
MAX_ATTACH_PAYLOAD = 1024


@implementer(IFrameTransport)
class StreamProtocol(Protocol):
    """
    Frames a byte stream into envelopes for one L{IConnectionSink}.

    @param sink: the L{cairn.session.connection.Connection} to drive.
    @param ticket: its place in the per-source handshake limit, if any
        (L{cairn.transport.limits.SourceLimiter}).
    @param write_limit: drop a peer that does not read once this many
        bytes wait for it (L{cairn.transport.limits.OutputGuard}); None: no guard.
    """

    def __init__(self, sink, max_payload: int, ticket=None, write_limit=None):
        self.sink = sink
        self._parser = EnvelopeParser(max_payload)
        self._closing = False
        self._ticket = ticket
        self._write_limit = write_limit
        self._guard = None
        # A listener whose peer takes relay attachments (§25.8) looks at
        # the first envelope alone: after a RelayAttach, the bytes are not
        # envelopes for this node any more.
        local = getattr(sink, "local", None)
        self._head = bytearray() if getattr(local, "attach_handler", None) is not None else None
        self._receiver = None

    @property
    def peer_address(self) -> str:
        return str(self.transport.getPeer())

    def connectionMade(self):
        # Envelopes are whole messages: waiting to coalesce them (Nagle)
        # only adds a round trip of delay to every request/response.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        # With 64 KiB reads a large envelope (a relay circuit's bulk ones are
        # about 124 KiB) takes several reads, reactor wake-ups and parser
        # copies; bench/relay measured 10-25% less node CPU per relayed byte
        # with 256 KiB. The same attribute is the write-buffer size past
        # which Twisted pauses a streaming producer (the OutputGuard's
        # "stalled" signal), which moves up with it.
        if getattr(self.transport, "bufferSize", None) is not None:
            self.transport.bufferSize = READ_SIZE
        if self._write_limit is not None:
            local = self.sink.local
            self._guard = OutputGuard(
                self.transport, local.clock, local.keepalive_timeout, self._write_limit, self._overflow
            )
        self.sink.connection_made(self)

    def dataReceived(self, data):
        if self._closing:
            return
        if self._head is not None:
            data = self._first_envelope(data)
            if not data:
                return
        try:
            envelopes, error = self._parser.feed(data), None
        except EnvelopeError as e:
            envelopes, error = e.envelopes, e
        for envelope in envelopes:
            if self._closing:
                return
            self.sink.envelope_received(envelope)
        if error is not None:
            if not self._closing:
                self.sink.framing_error(error.code, error.reason)
            return
        if self._ticket is not None and self.sink.session is not None:
            self._ticket.done()  # handshake or Reconnect completed

    def _first_envelope(self, data):
        """
        Hold the first bytes until the first envelope's type is known. A
        RelayAttach is handed to the sink alone; anything else goes on as
        usual. Returns the bytes for the parser (none while waiting).
        """
        head = self._head
        head += data
        if len(head) < HEADER_SIZE:
            return b""
        _, type_, _, _, length = parse_header(head)
        if type_ != MessageType.RELAY_ATTACH:
            self._head = None
            return bytes(head)
        if length > MAX_ATTACH_PAYLOAD:
            self._head = None
            self.sink.framing_error(CloseCode.PAYLOAD_TOO_LARGE, f"RelayAttach payload of {length} bytes")
            return b""
        end = HEADER_SIZE + length
        if len(head) < end:
            return b""
        self._head = None
        self.sink.envelope_received(decode(bytes(head[:end]), MAX_ATTACH_PAYLOAD))
        if self._receiver is not None:
            receiver, self._receiver = self._receiver, None
            self._closing = True
            if self._ticket is not None:
                self._ticket.done()
                self._ticket = None
            receiver(self.transport, bytes(head[end:]))
            return b""
        return bytes(head[end:])

    def hand_off(self, receiver):
        """
        Give this connection up after the RelayAttach being handled (§25.8):
        it stops reading, no more envelopes reach the sink, and
        C{receiver(transport, rest)} is called with the Twisted transport
        and the bytes that followed the RelayAttach.
        """
        self._receiver = receiver
        self.transport.pauseProducing()

    def connectionLost(self, reason=None):
        self._closing = True
        if self._ticket is not None:
            self._ticket.done()
        self.sink.connection_lost(reason)

    def _overflow(self, reason):
        # The Close is queued behind what the peer does not read: abort.
        self.sink.framing_error(CloseCode.LIMIT_REACHED, reason)
        self.transport.abortConnection()

    # IFrameTransport

    def write_envelope(self, data: bytes) -> None:
        self.transport.write(data)
        if self._guard is not None:
            self._guard.check()

    def lose(self, abort: bool = False) -> None:
        self._closing = True
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()


class StreamFactory(Factory):
    """
    Accepts TCP connections as responders of the local L{Peer}.

    @param limiter: a L{cairn.transport.limits.SourceLimiter}, or None.
    @param write_limit: see L{StreamProtocol}.
    """

    #: A L{cairn.transport.fds.DescriptorGauge}: refuse at once while
    #: descriptors are critical (set by the node).
    gauge = None

    def __init__(self, local, initiator: bool = False, limiter=None, write_limit=MAX_WRITE_BUFFER):
        self.local = local
        self.initiator = initiator
        self.limiter = limiter
        self.write_limit = write_limit

    def buildProtocol(self, addr):
        if self.gauge is not None and not self.gauge.admit():
            # Closed at once, without a Close: a Refused protocol would hold
            # the descriptor until its answer is written, and Twisted
            # accepts up to a hundred connections in one go.
            return None
        ticket = None
        if self.limiter is not None:
            ticket = self.limiter.admit(addr)
            if ticket is None:
                return Refused(refusal_close())
        sink = self.local.connection(initiator=self.initiator)
        protocol = StreamProtocol(sink, self.local.max_payload, ticket, self.write_limit)
        protocol.factory = self
        return protocol
