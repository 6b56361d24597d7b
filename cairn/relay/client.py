"""
The peer's side of relay circuits: an end-to-end session through a node.

    session = yield relay_to(client, node_session, peer_id)
    session.open_channel("chat").send(b"hi")     # exactly as a direct session

The end-to-end session is the ordinary L{Connection}/L{Session} machinery
(Noise XX, ratchet, channels, custom types) run over a
L{CircuitTransport}: an L{IFrameTransport} whose envelopes travel as
RelayData over the session with the node, so the node only ever sees
their ciphertext. The target side accepts offers according to
C{client.on_relay_request(peer_id) -> bool} (default: accept) and hands
each new end-to-end session to C{relay_endpoint(client).on_session}
(and to the peer's usual C{on_session}).

Flow control: a circuit end may send L{WINDOW} bytes ahead of the other
end's credit (RelayAck). Envelopes written beyond the credit wait in the
transport, and a registered producer is paused until credit comes back.
"""

import itertools

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from cairn.relay import messages
from cairn.relay.service import WINDOW
from cairn.session.interfaces import IFrameTransport
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode, MessageType, RouteStatus
from cairn.wire.envelope import EnvelopeError, decode

log = Logger()


class RouteRefused(Exception):
    """The node (or the target) did not open the circuit; C{status} says why."""

    def __init__(self, status, reason):
        super().__init__(f"{RouteStatus(status).name.lower()}: {reason}")
        self.status = RouteStatus(status)
        self.reason = reason


@implementer(IFrameTransport)
class CircuitTransport:
    """
    One end of a circuit, as the frame transport of an end-to-end L{Connection}.

    @ivar credit: bytes this end may still send.
    @ivar pending: envelopes waiting for credit.
    """

    closing_handshake = False

    def __init__(self, endpoint, node_session, circuit_id, remote_peer_id, window=WINDOW):
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
        self.limit = node_session.local.max_payload - messages.RELAY_OVERHEAD

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
            envelope = decode(data, self.endpoint.peer.max_payload)
        except EnvelopeError as e:
            self.connection.framing_error(e.code, e.reason)
        else:
            self.connection.envelope_received(envelope)
        self._maybe_ack()

    def remote_closed(self, reason: str) -> None:
        """The node closed the circuit: the end-to-end session ends with C{reason}."""
        if self.closed is not None:
            return
        self._finish(reason)
        session = self.connection.session if self.connection is not None else None
        if session is not None and session.closed is None:
            session._end(SessionClosed(CloseCode.GOING_AWAY, f"relay circuit closed: {reason}"))

    # Ending

    def _send(self, type_code, body):
        try:
            self.node_session.send(type_code, body)
        except SessionClosed:
            self.remote_closed("the session with the node ended")

    def _close(self, reason):
        if self.closed is not None:
            return
        self._send(MessageType.RELAY_CLOSE, {"circuit": self.circuit_id, "reason": reason})
        self._finish(reason)

    def _finish(self, reason):
        self.closed = reason
        self.pending.clear()
        self.pending_bytes = 0
        self.endpoint.circuits.pop(self.circuit_id, None)
        if self.connection is not None:
            # As a socket transport would: connection_lost comes after lose() returned.
            self.endpoint.reactor.callLater(0, self.connection.connection_lost, None)


class RelayEndpoint:
    """
    The relay handlers of one client L{Peer}: circuit offers, responses,
    data, credit and closes on its sessions with nodes.

    @ivar on_session: called with each end-to-end session a peer opened to us.
    @ivar policy: C{(peer_id) -> bool}, whether to accept a circuit offer;
        C{client.on_relay_request} takes precedence when set.
    """

    def __init__(self, client):
        self.client = client
        self.peer = client.peer
        self.reactor = client.reactor
        self.circuits = {}
        self.on_session = None
        self.policy = None
        self._requests = {}
        self._req_ids = itertools.count(1)
        handlers = {
            MessageType.ROUTE_REQUEST: self._offer,
            MessageType.ROUTE_RESPONSE: self._route_response,
            MessageType.RELAY_DATA: self._relay_data,
            MessageType.RELAY_ACK: self._relay_ack,
            MessageType.RELAY_CLOSE: self._relay_close,
        }
        for type_code, handler in handlers.items():
            self.peer.register_handler(type_code, handler)
        self.peer.add_observer(self)

    def _circuit(self, session, circuit_id):
        transport = self.circuits.get(circuit_id)
        if transport is None or transport.node_session is not session:
            return None
        return transport

    def _accepts(self, peer_id):
        policy = getattr(self.client, "on_relay_request", None) or self.policy
        if policy is None:
            return True
        try:
            return bool(policy(peer_id))
        except Exception:
            log.failure("on_relay_request failed; refusing")
            return False

    # Requester

    def request(self, node_session, peer_id):
        """RouteRequest to C{peer_id}; fires with the end-to-end session."""
        if node_session.closed is not None:
            return fail(node_session.closed)
        req = next(self._req_ids)
        d = Deferred()
        self._requests[req] = (node_session, peer_id, d)
        node_session.send(MessageType.ROUTE_REQUEST, {"target": peer_id, "req": req})
        return d

    def _route_response(self, session, body):
        status, circuit_id, req, reason = messages.parse_route_response(body)
        entry = self._requests.get(req)
        if entry is None or entry[0] is not session:
            return
        del self._requests[req]
        _, peer_id, d = entry
        if status != RouteStatus.OK or circuit_id is None:
            try:
                status = RouteStatus(status)
            except ValueError:
                status = RouteStatus.REFUSED
            d.errback(RouteRefused(status, reason))
            return
        transport = CircuitTransport(self, session, circuit_id, peer_id)
        self.circuits[circuit_id] = transport
        connection = self.peer.connection(initiator=True)
        connection.ready.addCallback(self._check_identity, transport)
        connection.ready.chainDeferred(d)
        transport.start(connection)

    @staticmethod
    def _check_identity(session, transport):
        if session.remote_peer_id != transport.remote_peer_id:
            # The node cannot forge the inner handshake, but it can route
            # to someone else: refuse to talk to the wrong peer.
            session.close(CloseCode.HANDSHAKE_FAILED, "not the peer the circuit was for")
            raise RouteRefused(RouteStatus.INVALID, "the circuit reached another peer")
        return session

    # Target

    def _offer(self, session, body):
        requester, circuit_id = messages.parse_route_offer(body)
        if circuit_id in self.circuits:
            return
        if not self._accepts(requester):
            session.send(
                MessageType.ROUTE_RESPONSE,
                {"circuit": circuit_id, "status": int(RouteStatus.REFUSED), "reason": "refused by the peer"},
            )
            return
        transport = CircuitTransport(self, session, circuit_id, requester)
        self.circuits[circuit_id] = transport
        session.send(MessageType.ROUTE_RESPONSE, {"circuit": circuit_id, "status": int(RouteStatus.OK)})
        transport.start(self.peer.connection(initiator=False))

    # Circuit traffic

    def _relay_data(self, session, body):
        circuit_id, data = messages.parse_relay_data(body)
        transport = self._circuit(session, circuit_id)
        if transport is not None:
            transport.data_received(data)

    def _relay_ack(self, session, body):
        circuit_id, credit = messages.parse_relay_ack(body)
        transport = self._circuit(session, circuit_id)
        if transport is not None:
            transport.credit_granted(credit)

    def _relay_close(self, session, body):
        circuit_id, reason = messages.parse_relay_close(body)
        transport = self._circuit(session, circuit_id)
        if transport is not None:
            transport.remote_closed(reason or "closed")

    # Peer observer hooks

    def session_established(self, session):
        transport = getattr(session.connection, "transport", None)
        if not isinstance(transport, CircuitTransport) or transport.endpoint is not self:
            return
        if transport.connection.initiator:
            return
        if session.remote_peer_id != transport.remote_peer_id:
            session.close(CloseCode.HANDSHAKE_FAILED, "not the peer the circuit was offered for")
            return
        if self.on_session is not None:
            self.on_session(session)

    def _node_gone(self, session):
        for transport in list(self.circuits.values()):
            if transport.node_session is session:
                transport.remote_closed("the session with the node ended")
        for req, (node_session, _, d) in list(self._requests.items()):
            if node_session is session:
                del self._requests[req]
                d.errback(RouteRefused(RouteStatus.OFFLINE, "the session with the node ended"))

    def session_detached(self, session):
        self._node_gone(session)

    def session_closed(self, session):
        self._node_gone(session)


def relay_endpoint(client) -> RelayEndpoint:
    """The relay endpoint of C{client}, installed on first use."""
    endpoint = getattr(client, "_relay_endpoint", None)
    if endpoint is None:
        endpoint = client._relay_endpoint = RelayEndpoint(client)
    return endpoint


def relay_to(client, node_session, peer_id):
    """
    Open a circuit through the node of C{node_session} to C{peer_id} and
    run an end-to-end session over it.

    @return: a Deferred firing with the L{Session} (as a direct one), or
        failing with L{RouteRefused} (status and reason) or
        L{cairn.session.connection.HandshakeFailed}.
    """
    return relay_endpoint(client).request(node_session, peer_id)
