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

Circuits do not survive a transport of either end's session with the
node, but the end-to-end session does (unless that node session ended
with a Close, which ends it too): losing its circuit detaches it
like a dropped transport (it keeps its resend buffer and is resumable
for the peer's C{session_ttl}). The requester then re-establishes it:
as soon as it has an attached session with the same node (at once, or
when its node session is resumed or a new one established) it requests
a new circuit to the same peer and resumes the session over it with an
ordinary Reconnect; while the target is offline (or the node full) it
retries with backoff on the client's clock. The target accepts the offer
as any other, and its L{Peer} resumes the session by id. A RelayClose
marked C{final} (quota used up, peer unpaired) or a refusal ends the
session instead. C{relay_endpoint(client).resume_circuits = False}
restores ending the session at once when its circuit is lost.

Attached circuits (§25.8): when this peer's session with the node runs
over TCP, it asks for (or, as a target, accepts) an attached circuit;
if the node hands out tokens, the end-to-end session runs over a TCP
connection of its own to the node (L{cairn.relay.attached}) instead of
RelayData. C{relay_endpoint(client).attach = False} keeps RelayData.

Re-establishing is in L{cairn.relay.reestablish} (a mixin of
L{RelayEndpoint}); L{RouteRefused} is defined in L{cairn.relay.interfaces}.
"""

import itertools

import attr
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from cairn.relay import messages
from cairn.relay.attached import AttachedCircuit, AttachProtocol
from cairn.relay.interfaces import RouteRefused
from cairn.relay.reestablish import Reestablishing
from cairn.relay.transport import CircuitTransport
from cairn.session.guards import register_service
from cairn.transport.tcp import StreamProtocol
from cairn.wire.constants import CloseCode, MessageType, RouteStatus

__all__ = ["CircuitTransport", "RelayEndpoint", "RouteRefused", "relay_endpoint", "relay_to"]

log = Logger()


@attr.s(eq=False)
class _Request:
    node_session = attr.ib()
    peer_id = attr.ib()
    deferred = attr.ib()
    #: The detached session to resume over the circuit (None: a new one).
    resume = attr.ib(default=None)


class RelayEndpoint(Reestablishing):
    """
    The relay handlers of one client L{Peer}: circuit offers, responses,
    data, credit and closes on its sessions with nodes, and the
    re-establishment of end-to-end sessions whose circuit was lost.

    @ivar on_session: called with each end-to-end session a peer opened to us.
    @ivar policy: C{(peer_id) -> bool}, whether to accept a circuit offer;
        C{client.on_relay_request} takes precedence when set.
    @ivar resume_circuits: re-establish sessions over new circuits (the
        default); if false, losing a circuit ends its session.
    @ivar relayed: the sessions this peer requested, by session id.
    @ivar attach: ask for (and accept) attached circuits when the node
        session runs over TCP (the default).
    @ivar settings: the client's L{TransportSettings} (its C{max_payload}
        bounds what a circuit carries), handed to each circuit.
    """

    def __init__(self, client):
        self.client = client
        self.peer = client.peer
        self.reactor = client.reactor
        self.clock = getattr(client, "clock", None) or client.reactor
        self.settings = client.transport_settings
        self.circuits = {}
        self.on_session = None
        self.policy = None
        self.resume_circuits = True
        self.attach = True
        self.relayed = {}
        self._requests = {}
        self._req_ids = itertools.count(1)
        handlers = {
            MessageType.ROUTE_REQUEST: self._offer,
            MessageType.ROUTE_RESPONSE: self._route_response,
            MessageType.RELAY_DATA: self._relay_data,
            MessageType.RELAY_ACK: self._relay_ack,
            MessageType.RELAY_CLOSE: self._relay_close,
        }
        register_service(self.peer, handlers, "relay client", where="")
        self.peer.add_observer(self)

    def _circuit(self, session, circuit_id):
        transport = self.circuits.get(circuit_id)
        if transport is None or transport.node_session is not session:
            return None
        return transport

    def _can_attach(self, node_session):
        """Whether this end can attach a connection for a circuit through C{node_session}'s node."""
        connection = node_session.connection
        return (
            self.attach
            and connection is not None
            and type(connection.transport) is StreamProtocol
            and self.client.dialled(node_session)
        )

    def _start(self, node_session, circuit_id, remote_peer_id, connection, token=None, attach_at=None):
        """
        Run C{connection} over the circuit: attached with C{token} (to the
        node at C{attach_at}, if the node named one, §25.8.8), else as RelayData.
        """
        if token is None:
            transport = CircuitTransport(self, node_session, circuit_id, remote_peer_id, self.settings)
            self.circuits[circuit_id] = transport
            transport.start(connection)
            return transport
        circuit = AttachedCircuit(self, node_session, circuit_id, remote_peer_id, connection, self.settings)
        self.circuits[circuit_id] = circuit
        address = attach_at or self.client.dialled_at(node_session)
        circuit.dial(self.client.endpoint(address), token)
        return circuit

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
        return self._request(node_session, peer_id)

    def _request(self, node_session, peer_id, resume=None):
        if node_session.closed is not None:
            return fail(node_session.closed)
        req = next(self._req_ids)
        d = Deferred()
        self._requests[req] = _Request(node_session, peer_id, d, resume)
        body = {"target": peer_id, "req": req}
        if self._can_attach(node_session):
            body["attach"] = True
        node_session.send(MessageType.ROUTE_REQUEST, body)
        return d

    def _route_response(self, session, body):
        status, circuit_id, req, reason = messages.parse_route_response(body)
        entry = self._requests.get(req)
        if entry is None or entry.node_session is not session:
            if status == RouteStatus.OK and circuit_id is not None and circuit_id not in self.circuits:
                # A request we gave up on (its node session dropped meanwhile):
                # free the circuit rather than leave the target waiting.
                session.send_if_open(MessageType.RELAY_CLOSE, {"circuit": circuit_id, "reason": "not wanted"})
            return
        del self._requests[req]
        if status != RouteStatus.OK or circuit_id is None:
            try:
                status = RouteStatus(status)
            except ValueError:
                status = RouteStatus.REFUSED
            entry.deferred.errback(RouteRefused(status, reason))
            return
        _, token = messages.route_response_attach(body)
        at = messages.attach_at(body, "RouteResponse")
        connection = self.peer.connection(initiator=True, resume=entry.resume)
        circuit = self._start(session, circuit_id, entry.peer_id, connection, token, at)
        if entry.resume is None:
            connection.ready.addCallback(self._check_identity, circuit)
            connection.ready.addCallback(self._track, session.remote_peer_id)
        connection.ready.chainDeferred(entry.deferred)

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
        requester, circuit_id, token = messages.parse_route_offer(body)
        at = messages.attach_at(body, "RouteRequest")
        if circuit_id in self.circuits:
            return
        if not self._accepts(requester):
            session.send(
                MessageType.ROUTE_RESPONSE,
                {"circuit": circuit_id, "status": int(RouteStatus.REFUSED), "reason": "refused by the peer"},
            )
            return
        answer = {"circuit": circuit_id, "status": int(RouteStatus.OK)}
        if token is None or not self._can_attach(session):
            token = None
        else:
            answer["attach"] = True
        session.send(MessageType.ROUTE_RESPONSE, answer)
        # A responder: it takes a HandshakeInit (a new session) or a
        # Reconnect (a session of ours re-established by the requester).
        self._start(session, circuit_id, requester, self.peer.connection(initiator=False), token, at)

    # Circuit traffic

    def _relay_data(self, session, body):
        circuit_id, data = messages.parse_relay_data(body)
        transport = self._circuit(session, circuit_id)
        if isinstance(transport, CircuitTransport):
            transport.data_received(data)

    def _relay_ack(self, session, body):
        circuit_id, credit = messages.parse_relay_ack(body)
        transport = self._circuit(session, circuit_id)
        if isinstance(transport, CircuitTransport):
            transport.credit_granted(credit)

    def _relay_close(self, session, body):
        circuit_id, reason, final = messages.parse_relay_close(body)
        transport = self._circuit(session, circuit_id)
        if transport is not None:
            transport.remote_closed(reason or "closed", final)

    # Peer observer hooks

    @staticmethod
    def _circuit_of(session):
        """The circuit (L{CircuitTransport} or L{AttachedCircuit}) C{session} runs over, or None."""
        transport = getattr(session.connection, "transport", None)
        if isinstance(transport, AttachProtocol):
            return transport.circuit
        return transport if isinstance(transport, CircuitTransport) else None

    def session_established(self, session):
        transport = self._circuit_of(session)
        if transport is None or transport.endpoint is not self:
            self._node_back(session)
            return
        if transport.connection.initiator:
            return
        if session.remote_peer_id != transport.remote_peer_id:
            session.close(CloseCode.HANDSHAKE_FAILED, "not the peer the circuit was offered for")
            return
        if self.on_session is not None:
            self.on_session(session)

    def session_resumed(self, session):
        transport = self._circuit_of(session)
        if transport is not None:
            if transport.endpoint is self and session.remote_peer_id != transport.remote_peer_id:
                # Only the session's own peer can prove its key; be strict all the same.
                session.connection.drop_transport()
            return
        self.node_resumed(session)

    def node_resumed(self, session):
        """
        C{session} (with a node) is attached to a new transport: its
        circuits died with the old one (the node closes them too), and the
        sessions they carried are re-established. Called from
        L{session_resumed} (both sides of a Reconnect notify the peer's
        observers).
        """
        self._node_gone(session)
        self._node_back(session)

    def _node_gone(self, session, final=False):
        for transport in list(self.circuits.values()):
            if transport.node_session is session:
                transport.remote_closed("the session with the node ended", final)
        for req, entry in list(self._requests.items()):
            if entry.node_session is session:
                del self._requests[req]
                entry.deferred.errback(RouteRefused(RouteStatus.OFFLINE, "the session with the node ended"))

    def session_detached(self, session):
        self._node_gone(session)
        relayed = self.relayed.get(session.session_id)
        if relayed is not None and relayed.session is session:
            self._reestablish(relayed)

    def session_closed(self, session):
        # A node session that ended (not merely lost its transport) ends
        # the sessions it carried, as the node does for the other ends.
        self._node_gone(session, final=True)
        relayed = self.relayed.pop(session.session_id, None)
        if relayed is not None:
            relayed.cancel_timer()


def relay_endpoint(client) -> RelayEndpoint:
    """The relay endpoint of C{client} (C{client.relay}, made with the client)."""
    return client.relay


def relay_to(client, node_session, peer_id):
    """
    Open a circuit through the node of C{node_session} to C{peer_id} and
    run an end-to-end session over it (re-established over new circuits
    after losses, see the module docstring).

    @return: a Deferred firing with the L{Session} (as a direct one), or
        failing with L{RouteRefused} (status and reason) or
        L{cairn.session.connection.HandshakeFailed}.
    """
    return relay_endpoint(client).request(node_session, peer_id)
