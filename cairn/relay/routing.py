"""
Circuits asked for and offered (docs/protocol.md §25.2): a requester's
RouteRequest checked (both peers paired -- read first where the trust
store's mirror does not know one, L{ITrustStore.catch_up} -- not a
circuit to itself, within its quota, the target online, capacity), the
offer made to the target, and its RouteResponse deciding. A mixin of
L{cairn.relay.service.RelayService}, so that each module stays small.
"""

import os

from twisted.logger import Logger

from cairn.relay import messages
from cairn.relay.circuit import Circuit
from cairn.relay.remote import RemoteEnd
from cairn.wire.constants import MessageType, RouteStatus

log = Logger()


class Routing:
    """RouteRequest, the offer and RouteResponse (see the module docstring)."""

    def _route_request(self, session, body):
        self._route(session, body, None)

    def _route(self, session, body, unsure):
        target, req, attach = messages.parse_route_request(body)
        requester = session.remote_peer_id
        unknown = [p for p in (requester, target) if not self.trust.is_paired(p)]
        if unknown and unsure is None:  # paired through another node a moment ago? (catch_up)
            unsure = set()  # those the store could not check: not known unpaired
            caught_up = self.trust.catch_up(unknown).addCallback(lambda found: unsure.update(found or ()))
            if not caught_up.called:
                caught_up.addCallback(lambda _: self._stopped or session.closed or self._route(session, body, unsure))
                return
        if not self._paired(session, req, requester, unsure, "this device's", "pair with this node first"):
            return
        if target == requester:
            self._answer(session, req, RouteStatus.INVALID, "a circuit needs two peers")
            return
        if not self._paired(session, req, target, unsure, "the target's", "the target is not paired with this node"):
            return
        if self.accounts.over_quota(session.remote_peer_id, 1):
            self._answer(session, req, RouteStatus.REFUSED, "relay byte quota used up")
            return
        other = self.online(target)
        if other is None and self.remote is not None:
            other = self.remote.end_for(target)
        if other is None:
            self._answer(session, req, RouteStatus.OFFLINE, "the target has no session with this node")
            return
        if self.load() >= self.capacity:
            self._answer(session, req, RouteStatus.CAPACITY, f"relay capacity ({self.capacity}) reached")
            return
        circuit = Circuit(os.urandom(messages.CIRCUIT_ID_SIZE), session, other, req)
        circuit.allowance = {session: self.window, other: self.window}
        circuit.timer = self.clock.callLater(self.offer_timeout, self._offer_timed_out, circuit)
        self.circuits[circuit.circuit_id] = circuit
        offer = {"from": session.remote_peer_id, "circuit": circuit.circuit_id}
        if attach and self.attached_circuits and (self.attach_address is not None or not isinstance(other, RemoteEnd)):
            offer["token"] = circuit.tokens[other] = os.urandom(messages.TOKEN_SIZE)
            if self.attach_address is not None:
                offer["attach_at"] = self.attach_address
        self._send(other, MessageType.ROUTE_REQUEST, offer)

    def load(self) -> int:
        """
        Circuits counted against L{capacity}: those this node owns and
        those whose target's end it carries for another node's requester
        (L{cairn.relay.proxy.Proxy}), which hold a window and a session
        of this node's as much as its own do.
        """
        return len(self.circuits) + (0 if self.remote is None else len(self.remote.proxies))

    def refuse_offer(self, circuit, status, reason):
        """Withdraw an offered C{circuit}, answering its requester C{status} with C{reason}."""
        self._cancel(circuit)
        self._drop(circuit)
        self._answer(circuit.a, circuit.req, status, reason)

    def _offer_timed_out(self, circuit):
        circuit.timer = None
        if circuit.state == "offered":
            self._drop(circuit)
            self._answer(circuit.a, circuit.req, RouteStatus.TIMEOUT, "the target did not answer")

    def _route_response(self, session, body):
        status, circuit_id, _req, reason = messages.parse_route_response(body)
        attach, _ = messages.route_response_attach(body)
        if self._proxied(session, circuit_id, MessageType.ROUTE_RESPONSE, body):
            return
        circuit = self._end_of(session, circuit_id)
        if circuit is None or session is not circuit.b or circuit.state != "offered":
            return
        self._cancel(circuit)
        if status != RouteStatus.OK:
            self._drop(circuit)
            self._answer(circuit.a, circuit.req, RouteStatus.REFUSED, reason or "the target refused")
            return
        circuit.state = "open"
        circuit.opened_at = self.clock.seconds()
        token = None
        if attach and circuit.tokens:
            token = circuit.tokens[circuit.a] = os.urandom(messages.TOKEN_SIZE)
            circuit.timer = self.clock.callLater(self.offer_timeout, self._attach_timed_out, circuit)
        else:
            circuit.tokens.clear()
            for attached in circuit.attached.values():
                if attached is not None:
                    attached[0].abortConnection()  # attached, then accepted without attaching
            circuit.attached.clear()
        log.info("relay circuit {cid} open ({mode})", cid=circuit.circuit_id.hex()[:8], mode=circuit.mode)
        self._answer(circuit.a, circuit.req, RouteStatus.OK, circuit=circuit.circuit_id, token=token)

    def _paired(self, session, req, peer_id, unsure, whose, refusal):
        """
        Whether C{peer_id} is paired; if not, the request is answered:
        offline where the store could not check it, else not_paired.
        """
        if self.trust.is_paired(peer_id):
            return True
        if peer_id in (unsure or ()):  # not known unpaired: offline, which the requester tries again
            self._answer(session, req, RouteStatus.OFFLINE, f"the node cannot check {whose} pairing now")
        else:
            self._answer(session, req, RouteStatus.NOT_PAIRED, refusal)
        return False
