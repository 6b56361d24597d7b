"""
A TCP listener's connections that may be handed over after their first
envelope: attached relay circuits (docs/protocol.md §25.8).

An end of an attached circuit opens a connection of its own to the node's
TCP listener and sends a RelayAttach first; once the relay service has
checked it, the bytes that follow are not envelopes for this node any
more but the end-to-end session's, which the relay splices to the other
end. A L{HandOffProtocol} is the plain L{StreamProtocol} with that one
difference: it reads the first envelope alone (a RelayAttach at most
L{MAX_ATTACH_PAYLOAD} bytes long) and lets the sink take the connection
over (L{HandOffProtocol.hand_off}). The node uses a L{HandOffFactory} on
its TCP listener when the relay takes attached circuits.
"""

from cairn.transport.tcp import StreamFactory, StreamProtocol
from cairn.wire.constants import HEADER_SIZE, CloseCode, MessageType
from cairn.wire.envelope import decode, parse_header

#: Longest RelayAttach payload accepted (its body is about 70 bytes).
MAX_ATTACH_PAYLOAD = 1024


class HandOffProtocol(StreamProtocol):
    """
    A L{StreamProtocol} whose first envelope may be a RelayAttach, after
    which its sink may take the connection over.
    """

    def __init__(self, sink, settings, ticket=None):
        super().__init__(sink, settings, ticket)
        # The first envelope is looked at alone: after a RelayAttach, the
        # bytes are not envelopes for this node any more.
        self._head = bytearray()
        self._receiver = None

    def dataReceived(self, data):
        if self._closing:
            return
        if self._head is not None:
            data = self._first_envelope(data)
            if not data:
                return
        super().dataReceived(data)

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


class HandOffFactory(StreamFactory):
    """A L{StreamFactory} whose connections are L{HandOffProtocol}s."""

    protocol = HandOffProtocol
