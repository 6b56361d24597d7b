"""
cairn over a TCP stream: envelopes back to back, the header's length
field delimiting each one. This adapter only turns bytes into envelopes
and back; a listener whose connections may be handed over after a
RelayAttach uses L{cairn.transport.handoff}.
"""

from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from cairn.session.interfaces import IFrameTransport
from cairn.transport.held import HeldWrites
from cairn.transport.limits import MAX_WRITE_BUFFER, OutputGuard, Refused, refusal_close
from cairn.transport.settings import TransportSettings
from cairn.transport.shared_keys import share_transport_names
from cairn.wire.constants import CloseCode
from cairn.wire.envelope import EnvelopeError, EnvelopeParser

#: Bytes read from the socket per wake-up (Twisted's default: 64 KiB).
READ_SIZE = 256 * 1024


@implementer(IFrameTransport)
class StreamProtocol(HeldWrites, Protocol):
    """
    Frames a byte stream into envelopes for one L{IConnectionSink}.

    @param sink: the L{cairn.session.connection.Connection} to drive.
    @param settings: the listener's or dialer's L{TransportSettings}; with a
        C{write_limit}, an L{cairn.transport.limits.OutputGuard} drops a
        peer that does not read.
    @param ticket: its place in the per-source handshake limit, if any
        (L{cairn.transport.limits.SourceLimiter}).
    """

    def __init__(self, sink, settings: TransportSettings, ticket=None):
        self.sink = sink
        self.settings = settings
        self._parser = EnvelopeParser(settings.max_payload)
        self._closing = False
        self._ticket = ticket
        self._guard = None

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
        if self.settings.write_limit is not None:
            self._guard = OutputGuard(self.transport, self.settings, self)
        self.sink.connection_made(self)

    def dataReceived(self, data):
        if self._closing:
            return
        self.handling(self._envelopes, data)  # its writes sent together at its end (L{HeldWrites})

    def _envelopes(self, data):
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
            self._ticket = None  # not held by an idle session (issue 19)

    def connectionLost(self, reason=None):
        self._closing = True
        if self._ticket is not None:
            self._ticket.done()
        # The guard refers back to this protocol (its owner):
        # dropped, the two go by reference counting, not by the cyclic
        # garbage collector (issue 19).
        self._guard = None
        self.sink.connection_lost(reason)

    def output_overflow(self, reason):
        """The L{OutputGuard}'s call: the Close is queued behind what the peer does not read, so abort."""
        self.sink.framing_error(CloseCode.LIMIT_REACHED, reason)
        self.transport.abortConnection()

    # IFrameTransport

    def write_envelope(self, data: bytes) -> None:
        if self.hold(data):
            return
        self.transport.write(data)
        self.after_send()

    def after_send(self) -> None:
        if self._guard is not None:
            self._guard.check()

    def lose(self, abort: bool = False) -> None:
        self._closing = True
        if abort:
            self.drop_held()
            self.transport.abortConnection()
        else:
            self.send_held()  # before the end, in the order written
            self.transport.loseConnection()


class StreamFactory(Factory):
    """
    Accepts TCP connections as responders of the local L{Peer}.

    @param settings: the listener's L{TransportSettings} (default: the
        peer's limits and clock, with the default write limit).
    @param limiter: a L{cairn.transport.limits.SourceLimiter}, or None.
    @param gauge: a L{cairn.transport.fds.DescriptorGauge} (the node's), or
        None: refuse at once while descriptors are critical.
    """

    protocol = StreamProtocol

    def __init__(self, local, initiator: bool = False, limiter=None, *, settings: TransportSettings = None, gauge=None):
        self.local = local
        self.initiator = initiator
        self.limiter = limiter
        self.gauge = gauge
        if settings is None:
            settings = TransportSettings.for_peer(local, write_limit=MAX_WRITE_BUFFER)
        self.settings = settings

    def startFactory(self):
        # Before the first connection is accepted (issue 19: a dict fewer per transport).
        share_transport_names()

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
        protocol = self.protocol(sink, self.settings, ticket)
        protocol.factory = self
        return protocol
