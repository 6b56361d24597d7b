"""
The node's side of relay circuits: authorization, forwarding, flow control.

A paired peer asks for a circuit to another paired peer (RouteRequest);
the node checks both are paired, the target online and the capacity, then
offers the circuit to the target (RouteRequest with C{from} and
C{circuit}). The target's RouteResponse decides; the requester is told
the outcome with a status code. Once open, RelayData bodies are forwarded
verbatim to the other end: they hold whole envelopes of the two peers'
own end-to-end session, so the node sees only ciphertext.

Flow control is end to end and in bytes of RelayData C{data}: each end
may have at most L{WINDOW} bytes sent and not yet credited by the other
end (RelayAck). The node enforces the window (a sender that overruns it
loses the circuit), so what it holds for a circuit in each direction,
RelayData accepted and not yet credited, never exceeds L{WINDOW}.
"""

import os
from collections import Counter

import attr
from twisted.logger import Logger
from zope.interface import implementer

from cairn.relay import messages
from cairn.relay.interfaces import IRelay
from cairn.session.session import SessionClosed
from cairn.wire.constants import MessageType, RouteStatus

log = Logger()

#: Bytes of RelayData one end may send ahead of the other end's credit.
WINDOW = 256 * 1024
#: Seconds the target has to answer a circuit offer.
OFFER_TIMEOUT = 30.0


@attr.s(eq=False)
class Circuit:
    """One circuit: ends C{a} (requester) and C{b} (target), each a node-side session."""

    circuit_id = attr.ib()
    a = attr.ib()
    b = attr.ib()
    req = attr.ib()
    state = attr.ib(default="offered")
    timer = attr.ib(default=None)
    #: Bytes each end may still send (by session), at most WINDOW.
    allowance = attr.ib(factory=dict)
    #: Bytes forwarded from each end (by session).
    forwarded = attr.ib(factory=Counter)
    opened_at = attr.ib(default=None)

    def other(self, session):
        return self.b if session is self.a else self.a

    def in_flight(self, session) -> int:
        """Bytes sent by C{session}'s end and not yet credited by the other end."""
        return WINDOW - self.allowance.get(session, WINDOW)


@implementer(IRelay)
class RelayService:
    """
    Relay circuits on a node L{Peer}.

    @param capacity: concurrent circuits (offered or open) at most.
    @param quotas: per-peer byte quotas (peer id -> bytes sent through
        relays at most); none by default.
    """

    def __init__(self, peer, trust, clock, *, capacity=64, window=WINDOW, offer_timeout=OFFER_TIMEOUT):
        self.peer = peer
        self.trust = trust
        self.clock = clock
        self.capacity = capacity
        self.window = window
        self.offer_timeout = offer_timeout
        self.quotas = {}
        self.circuits = {}
        #: Bytes each peer sent through circuits, and received from them.
        self.bytes_sent = Counter()
        self.bytes_received = Counter()
        #: RouteResponse statuses given to requesters, by name.
        self.statuses = Counter()
        handlers = {
            MessageType.ROUTE_REQUEST: self._route_request,
            MessageType.ROUTE_RESPONSE: self._route_response,
            MessageType.RELAY_DATA: self._relay_data,
            MessageType.RELAY_ACK: self._relay_ack,
            MessageType.RELAY_CLOSE: self._relay_close,
        }
        for type_code, handler in handlers.items():
            peer.register_handler(type_code, handler)
        peer.add_observer(self)

    # Helpers

    @staticmethod
    def _send(session, type_code, body):
        try:
            session.send(type_code, body)
        except SessionClosed:
            pass

    def _answer(self, session, req, status, reason="", circuit=None):
        self.statuses[RouteStatus(status).name.lower()] += 1
        body = {"req": req, "status": int(status), "reason": reason[: messages.MAX_REASON]}
        if circuit is not None:
            body["circuit"] = circuit
        self._send(session, MessageType.ROUTE_RESPONSE, body)

    def _online(self, peer_id):
        """The newest attached, open session of C{peer_id}, or None."""
        found = None
        for session in self.peer.sessions.values():
            if session.remote_peer_id == peer_id and session.closed is None and session.attached:
                found = session
        return found

    def _end_of(self, session, circuit_id):
        circuit = self.circuits.get(circuit_id)
        if circuit is None or session not in (circuit.a, circuit.b):
            return None
        return circuit

    # Handlers

    def _route_request(self, session, body):
        target, req = messages.parse_route_request(body)
        if not self.trust.is_paired(session.remote_peer_id):
            self._answer(session, req, RouteStatus.NOT_PAIRED, "pair with this node first")
            return
        if target == session.remote_peer_id:
            self._answer(session, req, RouteStatus.INVALID, "a circuit needs two peers")
            return
        if not self.trust.is_paired(target):
            self._answer(session, req, RouteStatus.NOT_PAIRED, "the target is not paired with this node")
            return
        other = self._online(target)
        if other is None:
            self._answer(session, req, RouteStatus.OFFLINE, "the target has no session with this node")
            return
        if len(self.circuits) >= self.capacity:
            self._answer(session, req, RouteStatus.CAPACITY, f"relay capacity ({self.capacity}) reached")
            return
        circuit = Circuit(os.urandom(messages.CIRCUIT_ID_SIZE), session, other, req)
        circuit.allowance = {session: self.window, other: self.window}
        circuit.timer = self.clock.callLater(self.offer_timeout, self._offer_timed_out, circuit)
        self.circuits[circuit.circuit_id] = circuit
        self._send(other, MessageType.ROUTE_REQUEST, {"from": session.remote_peer_id, "circuit": circuit.circuit_id})

    def _offer_timed_out(self, circuit):
        circuit.timer = None
        if circuit.state == "offered":
            self._drop(circuit)
            self._answer(circuit.a, circuit.req, RouteStatus.TIMEOUT, "the target did not answer")

    def _route_response(self, session, body):
        status, circuit_id, _req, reason = messages.parse_route_response(body)
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
        log.info("relay circuit {cid} open", cid=circuit.circuit_id.hex()[:8])
        self._answer(circuit.a, circuit.req, RouteStatus.OK, circuit=circuit.circuit_id)

    def _relay_data(self, session, body):
        circuit_id, data = messages.parse_relay_data(body)
        circuit = self._end_of(session, circuit_id)
        if circuit is None or circuit.state != "open":
            self._send(session, MessageType.RELAY_CLOSE, {"circuit": circuit_id, "reason": "no such circuit"})
            return
        size = len(data)
        left = circuit.allowance[session] - size
        if left < 0:
            self.close(circuit, "flow control window exceeded", culprit=session)
            return
        sender = session.remote_peer_id
        quota = self.quotas.get(sender)
        if quota is not None and self.bytes_sent[sender] + size > quota:
            self.close(circuit, "relay byte quota exceeded", culprit=session)
            return
        circuit.allowance[session] = left
        circuit.forwarded[session] += size
        self.bytes_sent[sender] += size
        other = circuit.other(session)
        self.bytes_received[other.remote_peer_id] += size
        self._send(other, MessageType.RELAY_DATA, {"circuit": circuit_id, "data": data})

    def _relay_ack(self, session, body):
        circuit_id, credit = messages.parse_relay_ack(body)
        circuit = self._end_of(session, circuit_id)
        if circuit is None or circuit.state != "open":
            return
        other = circuit.other(session)
        circuit.allowance[other] = min(self.window, circuit.allowance[other] + credit)
        self._send(other, MessageType.RELAY_ACK, {"circuit": circuit_id, "credit": credit})

    def _relay_close(self, session, body):
        circuit_id, reason = messages.parse_relay_close(body)
        circuit = self._end_of(session, circuit_id)
        if circuit is None:
            return
        if circuit.state == "offered" and session is circuit.a:
            self._cancel(circuit)
            self._drop(circuit)
            self._send(circuit.b, MessageType.RELAY_CLOSE, {"circuit": circuit_id, "reason": "cancelled"})
            return
        self.close(circuit, reason or "closed by the other end", culprit=session)

    # Ending circuits

    def _cancel(self, circuit):
        if circuit.timer is not None and circuit.timer.active():
            circuit.timer.cancel()
        circuit.timer = None

    def _drop(self, circuit):
        self._cancel(circuit)
        self.circuits.pop(circuit.circuit_id, None)

    def close(self, circuit, reason, culprit=None):
        """
        Close C{circuit} with C{reason}: both ends are told with a
        RelayClose, but for C{culprit} (an end that closed it or is gone).
        """
        if self.circuits.get(circuit.circuit_id) is not circuit:
            return
        self._drop(circuit)
        log.info("relay circuit {cid} closed: {reason}", cid=circuit.circuit_id.hex()[:8], reason=reason)
        body = {"circuit": circuit.circuit_id, "reason": reason[: messages.MAX_REASON]}
        for end in (circuit.a, circuit.b):
            if end is not culprit:
                self._send(end, MessageType.RELAY_CLOSE, body)

    def _gone(self, session):
        for circuit in list(self.circuits.values()):
            if session not in (circuit.a, circuit.b):
                continue
            if circuit.state == "offered":
                self._drop(circuit)
                if session is circuit.b:
                    self._answer(circuit.a, circuit.req, RouteStatus.OFFLINE, "the target went away")
            else:
                self.close(circuit, "the other peer went away", culprit=session)

    # Peer observer hooks

    def session_detached(self, session):
        # Circuits do not survive a transport drop: the other end learns at once.
        self._gone(session)

    def session_closed(self, session):
        self._gone(session)

    # Management

    def purge(self, peer_id):
        """The pairing purge hook: close C{peer_id}'s circuits and forget its quota."""
        for circuit in list(self.circuits.values()):
            if peer_id in (circuit.a.remote_peer_id, circuit.b.remote_peer_id):
                self.close(circuit, "the other peer was unpaired")
        self.quotas.pop(peer_id, None)

    def set_quota(self, peer_id, max_bytes):
        """Limit the bytes C{peer_id} may send through relays (None: no limit)."""
        if max_bytes is None:
            self.quotas.pop(peer_id, None)
        else:
            self.quotas[peer_id] = int(max_bytes)

    def peer_stats(self, peer_id):
        """One peer's relay figures and byte quota."""
        return {
            "peer_id": peer_id,
            "circuits": sum(peer_id in (c.a.remote_peer_id, c.b.remote_peer_id) for c in self.circuits.values()),
            "bytes_sent": self.bytes_sent[peer_id],
            "bytes_received": self.bytes_received[peer_id],
            "quota": self.quotas.get(peer_id),
        }

    def put_quota(self, peer_id, body):
        """
        C{PUT /relay/{peer_id}/quota}: C{{"max_bytes": n|null}} for a paired
        peer (in memory, until the node restarts); returns its L{peer_stats}.

        @raise ValueError: a bad body. @raise UnknownPeer: not paired.
        """
        from cairn.pairing.interfaces import UnknownPeer

        if not isinstance(body, dict) or set(body) - {"max_bytes"}:
            raise ValueError("body must be an object with max_bytes")
        max_bytes = body.get("max_bytes")
        if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0):
            raise ValueError("max_bytes must be a whole number of bytes or null")
        if not self.trust.is_paired(peer_id):
            raise UnknownPeer(peer_id)
        self.set_quota(peer_id, max_bytes)
        return self.peer_stats(peer_id)

    def stats(self):
        """C{GET /relay}: circuits, capacity, and per-peer byte counts."""
        now = self.clock.seconds()
        per_peer = Counter()
        for circuit in self.circuits.values():
            for end in (circuit.a, circuit.b):
                per_peer[end.remote_peer_id] += 1
        peer_ids = sorted(set(self.bytes_sent) | set(self.bytes_received) | set(per_peer))
        peers = [
            {
                "peer_id": p,
                "circuits": per_peer[p],
                "bytes_sent": self.bytes_sent[p],
                "bytes_received": self.bytes_received[p],
                "quota": self.quotas.get(p),
            }
            for p in peer_ids
        ]
        circuits = [
            {
                "circuit": c.circuit_id.hex(),
                "state": c.state,
                "requester": c.a.remote_peer_id,
                "target": c.b.remote_peer_id,
                "bytes": sum(c.forwarded.values()),
                "age": None if c.opened_at is None else now - c.opened_at,
            }
            for c in self.circuits.values()
        ]
        return {
            "circuits": len(self.circuits),
            "capacity": self.capacity,
            "window": self.window,
            "peers": peers,
            "open": circuits,
            "statuses": dict(self.statuses),
        }

    def collect_metrics(self):
        """Prometheus families for L{cairn.management.metrics.Metrics.add_collector}."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        circuits = GaugeMetricFamily("cairn_relay_circuits", "Relay circuits offered or open.")
        circuits.add_metric([], len(self.circuits))
        capacity = GaugeMetricFamily("cairn_relay_capacity", "Relay circuits allowed at once.")
        capacity.add_metric([], self.capacity)
        sent = CounterMetricFamily(
            "cairn_relay_bytes_sent", "Bytes each peer sent through relay circuits.", labels=["peer"]
        )
        received = CounterMetricFamily(
            "cairn_relay_bytes_received", "Bytes relayed to each peer.", labels=["peer"]
        )
        for p, n in sorted(self.bytes_sent.items()):
            sent.add_metric([p], n)
        for p, n in sorted(self.bytes_received.items()):
            received.add_metric([p], n)
        statuses = CounterMetricFamily(
            "cairn_relay_route_responses", "RouteResponse statuses given to requesters.", labels=["status"]
        )
        for name, n in sorted(self.statuses.items()):
            statuses.add_metric([name], n)
        return [circuits, capacity, sent, received, statuses]
