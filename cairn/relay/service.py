"""
The node's side of relay circuits: authorization, forwarding, flow control.

A paired peer asks for a circuit to another paired peer (RouteRequest);
the node checks both are paired, the target online and the capacity, then
offers the circuit to the target (RouteRequest with C{from} and
C{circuit}). The target's RouteResponse decides; the requester is told
the outcome with a status code. Once open, RelayData bodies are forwarded
verbatim to the other end: they hold whole envelopes of the two peers'
own end-to-end session, so the node sees only ciphertext.

The RouteRequest's checks, the offer and the RouteResponse are in
L{cairn.relay.routing}; flow control (RelayData, RelayAck, RelayClose) in
L{cairn.relay.forwarding}; closing circuits, and the peer observer hooks
that close them when an end goes, in L{cairn.relay.ending}; attached circuits (docs/protocol.md §25.8),
whose ends present tokens on connections of their own that the node
splices, in L{cairn.relay.splicing}; the circuit itself is a
L{cairn.relay.circuit.Circuit}.

A circuit never outlives a transport of either end's session with the
node: a detach or a resume (Reconnect) of that session closes its
circuits, and the other end is told at once; the peers re-establish
their end-to-end session over a new circuit (docs/protocol.md §25.5).
When that session ends (Close), its circuits close as final.

With a bus (L{cairn.relay.interfaces.IRelayBus}), a target whose session
is on another node of the deployment is reached through it: the circuit
stays here (this node owns it and makes every check and count), with a
L{cairn.relay.remote.RemoteEnd} in place of the target's session
(L{cairn.relay.remote}; docs/scaling.md, "Relay across nodes").
"""

from collections import Counter

from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer

from cairn.relay import messages, reports
from cairn.relay.accounts import Accounts
from cairn.relay.ending import Ending
from cairn.relay.forwarding import Forwarding
from cairn.relay.interfaces import IRelay, RelayLimits
from cairn.relay.messages import WINDOW
from cairn.relay.remote import Remote
from cairn.relay.routing import Routing
from cairn.relay.splicing import Splicing
from cairn.session.guards import register_service
from cairn.session.session import SessionClosed
from cairn.storeservice import RetriedPurges
from cairn.wire.constants import MessageType, RouteStatus

log = Logger()

#: Seconds the target has to answer a circuit offer.
OFFER_TIMEOUT = 30.0
#: Seconds between the relay's sweeps (purges a full store made fail, retried).
SWEEP_INTERVAL = 60.0


@implementer(IRelay)
class RelayService(Routing, Ending, Forwarding, Splicing, RetriedPurges):
    """
    Relay circuits on a node L{Peer}.

    @param capacity: concurrent circuits (offered or open) at most.
    @param store: an L{IRelayStore} for per-peer limits and byte counts
        (default: in memory).
    @param attached_circuits: offer attached circuits (§25.8): the node's
        TCP listener hands a connection that starts with a RelayAttach to
        L{attach} (registered as the peer's preface handler); false:
        RelayData only.
    @param reactor: the reactor whose connections attached circuits
        splice (needed with C{attached_circuits}).
    @param splice_options: keyword arguments for each L{Splice}.
    @param bus: an L{IRelayBus} to reach peers whose sessions are on other
        nodes of the deployment (L{cairn.relay.remote}); None: one node.
    @param attach_address: this node's own TCP address (C{tcp://host:port})
        told to both ends of an attached circuit (C{attach_at}, §25.8.8);
        needed for attached circuits with a target on another node (without
        it they are RelayData circuits).
    """

    name = "relay"

    def __init__(
        self,
        peer,
        trust,
        clock,
        *,
        capacity=64,
        window=WINDOW,
        offer_timeout=OFFER_TIMEOUT,
        store=None,
        attached_circuits=False,
        reactor=None,
        splice_options=None,
        bus=None,
        attach_address=None,
        **accounts,
    ):
        self.peer = peer
        self.trust = trust
        self.clock = clock
        if attached_circuits and reactor is None:
            raise ValueError("attached circuits need the reactor of their connections")
        self.attached_circuits = attached_circuits
        self.reactor = reactor
        self.splice_options = splice_options or {}
        if attached_circuits:
            peer.register_preface(MessageType.RELAY_ATTACH, self.attach)
        self.capacity = capacity
        self.window = window
        self.offer_timeout = offer_timeout
        self.accounts = Accounts(clock, store, **accounts)
        self.attach_address = attach_address
        self.remote = None if bus is None else Remote(self, bus, clock)
        self.circuits = {}
        self.purges_pending = set()  # L{RetriedPurges}
        self._sweeper = None
        self._stopped = False
        #: RouteResponse statuses given to requesters, by name.
        self.statuses = Counter()
        handlers = {
            MessageType.ROUTE_REQUEST: self._route_request,
            MessageType.ROUTE_RESPONSE: self._route_response,
            MessageType.RELAY_DATA: self._relay_data,
            MessageType.RELAY_ACK: self._relay_ack,
            MessageType.RELAY_CLOSE: self._relay_close,
        }
        # Not paired_only: an unpaired requester is answered with a
        # RouteResponse NOT_PAIRED (§25.2), not a Close.
        register_service(peer, handlers, "relay")
        peer.add_observer(self)

    # Reports for the operator (cairn.relay.reports; IRelayReports)

    def stats(self):
        """C{GET /relay}: see L{reports.stats}."""
        return reports.stats(self)

    def peer_stats(self, peer_id):
        """One peer's relay figures and limits."""
        return reports.peer_stats(self, peer_id)

    def put_quota(self, peer_id, body):
        """C{PUT /relay/{peer_id}/quota}: see L{reports.put_quota}."""
        return reports.put_quota(self, peer_id, body)

    def collect_metrics(self):
        """Prometheus families for L{cairn.management.metrics.Metrics.add_collector}."""
        return reports.collect_metrics(self)

    @property
    def bytes_sent(self) -> Counter:
        """RelayData bytes each peer sent through circuits (persisted)."""
        return self.accounts.bytes_sent

    @property
    def bytes_received(self) -> Counter:
        """RelayData bytes forwarded to each peer (persisted)."""
        return self.accounts.bytes_received

    @property
    def quotas(self) -> dict:
        """Byte quotas by peer id (only peers with one)."""
        return {p: lim.max_bytes for p, lim in self.accounts.limits.items() if lim.max_bytes is not None}

    def start(self):
        """
        Load the persisted limits and byte counts (and listen to the other
        nodes), then sweep every C{SWEEP_INTERVAL} seconds; fires once loaded.
        """
        d = self.accounts.start()
        if self.remote is not None:
            d.addCallback(lambda _: self.remote.start())

        def sweep(result):
            self._sweeper = task.LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(SWEEP_INTERVAL, now=False)
            return result

        return d.addCallback(sweep)

    def sweep(self):
        """
        Purge again what a full store kept of unpaired peers
        (L{RetriedPurges}): their limits and byte counts. Fires once done;
        never fails (the loop goes on).
        """
        return self._retry_purges().addErrback(lambda f: log.failure("relay: retrying purges failed", f))

    def held_for(self):
        accounts = self.accounts
        return set(accounts.bytes_sent) | set(accounts.bytes_received) | set(accounts.limits)

    def stop(self):
        """
        Close every circuit (both ends are told, on resume if not before:
        circuits do not survive a restart, §16); write the byte counts;
        fires once written.
        """
        self._stopped = True
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for circuit in list(self.circuits.values()):
            if circuit.state == "offered":
                self._drop(circuit)
                self._answer(circuit.a, circuit.req, RouteStatus.OFFLINE, "the node is stopping")
                self._send(circuit.b, MessageType.RELAY_CLOSE, {"circuit": circuit.circuit_id, "reason": "cancelled"})
            else:
                self.close(circuit, "the node is stopping")
        d = self.accounts.stop()
        if self.remote is not None:
            remote = self.remote.stop()
            d.addBoth(lambda result: remote.addCallback(lambda _: result))
        return d

    # Helpers

    @staticmethod
    def _send(session, type_code, body):
        try:
            session.send(type_code, body)
        except SessionClosed:
            pass

    def _answer(self, session, req, status, reason="", circuit=None, token=None):
        self.statuses[RouteStatus(status).name.lower()] += 1
        body = {"req": req, "status": int(status), "reason": reason[: messages.MAX_REASON]}
        if circuit is not None:
            body["circuit"] = circuit
        if token is not None:
            body["token"] = token
            if self.attach_address is not None:
                body["attach_at"] = self.attach_address
        self._send(session, MessageType.ROUTE_RESPONSE, body)

    def online(self, peer_id):
        """The newest attached, open session of C{peer_id} on this node, or None."""
        found = None
        for session in self.peer.sessions.values():
            if session.remote_peer_id == peer_id and session.closed is None and session.attached:
                found = session
        return found

    def _proxied(self, session, circuit_id, type_code, body) -> bool:
        """Whether C{body} is for a circuit another node owns (L{cairn.relay.remote}); if so it goes there."""
        if self.remote is None or circuit_id is None:
            return False
        proxy = self.remote.proxy_of(session, circuit_id)
        if proxy is None:
            return False
        self.remote.from_target(proxy, type_code, body)
        return True

    def _end_of(self, session, circuit_id):
        circuit = self.circuits.get(circuit_id)
        if circuit is None or session not in (circuit.a, circuit.b):
            return None
        return circuit

    # Handlers

    def from_end(self, end, type_code, body):
        """
        A circuit message (RouteResponse, RelayData, RelayAck or
        RelayClose) from C{end} that did not come on a session of this
        node: the node carrying that L{RemoteEnd} passed it on. It is
        handled as if C{end} had sent it on a session; other types are
        ignored.
        """
        handler = {
            MessageType.ROUTE_RESPONSE: self._route_response,
            MessageType.RELAY_DATA: self._relay_data,
            MessageType.RELAY_ACK: self._relay_ack,
            MessageType.RELAY_CLOSE: self._relay_close,
        }.get(type_code)
        if handler is not None:
            handler(end, body)

    # Management

    def purge(self, peer_id):
        """
        The pairing purge hook: close C{peer_id}'s circuits and forget its
        limits and counts (if the store is full, the sweep tries again).
        """
        for circuit in list(self.circuits.values()):
            if peer_id in (circuit.a.remote_peer_id, circuit.b.remote_peer_id):
                self.close(circuit, "the other peer was unpaired", final=True)
        if self.remote is not None:
            self.remote.purge(peer_id)
        return self._purging(peer_id, self.accounts.purge(peer_id))

    def set_limits(self, peer_id, limits: RelayLimits):
        """Persist and apply C{peer_id}'s limits; fires once stored."""
        log.info("relay limits of {peer_id} set to {limits}", peer_id=peer_id, limits=limits.to_json())
        return self.accounts.set_limits(peer_id, limits)

    def set_quota(self, peer_id, max_bytes):
        """Limit the bytes C{peer_id} may send through relays (None: no limit), keeping its rate limit."""
        return self.set_limits(peer_id, RelayLimits(max_bytes, self.accounts.rate(peer_id)))
