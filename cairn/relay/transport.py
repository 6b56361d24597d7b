"""
One end of a relay circuit as the frame transport of an end-to-end session.

A L{CircuitTransport} is an L{IFrameTransport} whose envelopes travel as
RelayData over the session with the node, so the ordinary
L{cairn.session.connection.Connection} runs over it unchanged.

Flow control: a circuit end may send L{WINDOW} bytes ahead of the other
end's credit (RelayAck). Envelopes written beyond the credit wait in the
transport, and a registered producer is paused until credit comes back.

Losing the circuit is losing a transport: the end-to-end session detaches
(and is resumed over a new circuit, see L{cairn.relay.client}), unless
the node said the loss is final, which ends it.
"""

from twisted.logger import Logger
from zope.interface import implementer

from cairn.relay import messages
from cairn.relay.messages import WINDOW
from cairn.session.interfaces import IFrameTransport
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import EnvelopeError, decode

log = Logger()


@implementer(IFrameTransport)
class CircuitTransport:
    """
    One end of a circuit, as the frame transport of an end-to-end L{Connection}.

    @ivar credit: bytes this end may still send.
    @ivar pending: envelopes waiting for credit.
    @ivar max_payload: longest envelope payload read (from the
        L{TransportSettings} it was made with).
    """

    closing_handshake = False

    def __init__(self, endpoint, node_session, circuit_id, remote_peer_id, settings, window=WINDOW):
        self.endpoint = endpoint
        self.node_session = node_session
        self.circuit_id = circuit_id
        self.remote_peer_id = remote_peer_id
        self.peer_address = f"relay:{circuit_id.hex()[:8]}"
        self.window = window
        self.credit = window
        self.pending = []
        self.pending_bytes = 0
        self.connection = None
        self.closed = None  # the reason, once closed
        self._closing = False
        self._consumed = 0
        self._reading = True
        self._producer = None
        self._producer_paused = False
        self.max_payload = settings.max_payload
        self.limit = settings.max_payload - messages.RELAY_OVERHEAD

    @property
    def expected_peer_id(self) -> str:
        """The circuit's other end: a Reconnect on it resumes only that peer's session."""
        return self.remote_peer_id

    def __repr__(self):
        return f"<CircuitTransport {self.circuit_id.hex()[:8]} credit={self.credit}>"

    def start(self, connection):
        self.connection = connection
        connection.connection_made(self)

    # IFrameTransport

    def write_envelope(self, data: bytes) -> None:
        if self.closed is not None or self._closing:
            return
        if len(data) > self.limit:
            log.warn("envelope of {size} bytes too large to relay", size=len(data))
            self._close("envelope too large for the relay")
            return
        self.pending.append(bytes(data))
        self.pending_bytes += len(data)
        self._flush()

    def lose(self, abort=False) -> None:
        if self.closed is not None:
            return
        if self.pending and not abort:
            self._closing = True  # close once what is queued went out
            return
        self._close("closed")

    # Flow control

    def _flush(self):
        while self.pending and len(self.pending[0]) <= self.credit and self.closed is None:
            data = self.pending.pop(0)
            self.pending_bytes -= len(data)
            self.credit -= len(data)
            self._send(MessageType.RELAY_DATA, {"circuit": self.circuit_id, "data": data})
        if self.pending:
            if self._producer is not None and not self._producer_paused:
                self._producer_paused = True
                self._producer.pauseProducing()
        else:
            if self._closing and self.closed is None:
                self._close("closed")
                return
            if self._producer is not None and self._producer_paused:
                self._producer_paused = False
                self._producer.resumeProducing()

    def credit_granted(self, credit: int) -> None:
        self.credit = min(self.window, self.credit + credit)
        self._flush()

    def pause_reading(self) -> None:
        """Stop granting credit: the other end stalls once its window is used."""
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        self._maybe_ack(force=True)

    def _maybe_ack(self, force=False):
        if not self._reading or self.closed is not None or not self._consumed:
            return
        if force or self._consumed >= self.window // 4:
            credit, self._consumed = self._consumed, 0
            self._send(MessageType.RELAY_ACK, {"circuit": self.circuit_id, "credit": credit})

    def registerProducer(self, producer, streaming=True):
        """Pause C{producer} (an IPushProducer) while envelopes wait for credit."""
        self._producer = producer
        self._producer_paused = False
        if self.pending:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self):
        self._producer = None

    # Inbound

    def data_received(self, data: bytes) -> None:
        if self.closed is not None:
            return
        self._consumed += len(data)
        try:
            envelope = decode(data, self.max_payload)
        except EnvelopeError as e:
            self.connection.framing_error(e.code, e.reason)
        else:
            self.connection.envelope_received(envelope)
        self._maybe_ack()

    def remote_closed(self, reason: str, final: bool = False) -> None:
        """
        The circuit is gone (the node closed it, or the session with the
        node was lost): the end-to-end session detaches, as on a dropped
        transport, to be resumed over a new circuit. If C{final} (or the
        endpoint does not re-establish circuits) it ends with C{reason}.
        """
        if self.closed is not None:
            return
        self._finish(reason)
        session = self.connection.session if self.connection is not None else None
        if session is not None and session.closed is None and (final or not self.endpoint.resume_circuits):
            session.end_without_close(SessionClosed(CloseCode.GOING_AWAY, f"relay circuit closed: {reason}"))

    # Ending

    def _send(self, type_code, body):
        try:
            self.node_session.send(type_code, body)
        except SessionClosed:
            self.remote_closed("the session with the node ended", final=True)

    def _close(self, reason):
        if self.closed is not None:
            return
        self._send(MessageType.RELAY_CLOSE, {"circuit": self.circuit_id, "reason": reason})
        if self.closed is None:  # not already finished by a failed send
            self._finish(reason)

    def _finish(self, reason):
        self.closed = reason
        self.pending.clear()
        self.pending_bytes = 0
        self.endpoint.circuits.pop(self.circuit_id, None)
        if self.connection is not None:
            # As a socket transport would: connection_lost comes after lose() returned.
            self.endpoint.reactor.callLater(0, self.connection.connection_lost, None)
