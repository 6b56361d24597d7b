"""
Relay circuits between peers whose sessions are on different nodes of one
deployment (docs/scaling.md, "Relay across nodes").

A circuit always has one **owner**: the requester's node. The owner keeps
the L{cairn.relay.circuit.Circuit} exactly as for two local peers, with a
L{RemoteEnd} standing in for the target's node session: everything the
service sends to that end (the offer, RelayData, RelayAck, RelayClose)
goes over the L{IRelayBus} to the target's node, and what the target
sends comes back the same way and enters the service's own handlers. So
the window checks, the byte quota, the rate limit and the byte counts are
the owner's and are made once, as on one node.

The target's node keeps a L{cairn.relay.proxy.Proxy} per such circuit
(L{cairn.relay.proxy}): it hands the owner's messages to the target's
session and the target's to the owner, and enforces the target's window.
What either node holds for a circuit direction therefore stays within
the window, as on one node: the owner forwards the requester's RelayData
only within the requester's credit, and a stalled target grants none.

Attached circuits are spliced on the owner; both ends are told its
address (C{attach_at}, docs/protocol.md §25.8.8), so the target opens
its attach connection to the owner, not to its own node.

Either node going away closes the circuits through it: every message
between two nodes counts as a sign of life, each node sends the nodes it
shares circuits with a ping every L{PING_INTERVAL} seconds, and a node
silent for L{NODE_TIMEOUT} seconds (on the service's clock) is taken for
gone: its circuits close as if their far end's session had dropped (not
final: the peers re-establish them through whichever node they reach).
Sooner, where the bus knows the deployment's node liveness
(L{IRelayBus.alive}, the presence's heartbeats, 7 s): a node it no
longer hears is taken for gone at the next ping interval.
"""

import attr
from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer

from cairn.relay import frame
from cairn.relay.interfaces import IRelayBus
from cairn.relay.proxy import Proxying
from cairn.wire.constants import MessageType, RouteStatus
from cairn.wire.schema import BodyError

log = Logger()

#: Seconds between pings to each node this node shares circuits with.
PING_INTERVAL = 5.0
#: Seconds without a word from a node before its circuits are closed.
NODE_TIMEOUT = 15.0
#: The RelayClose reason of a circuit ended because another node sent a
#: RelayData frame of a version this node does not read (§25.9).
FRAME_VERSION_REASON = "relay frame version not understood between nodes"
#: The RelayClose reason of a circuit ended because a message about it between nodes was lost.
LOST_REASON = "relay data lost between nodes"


@attr.s(eq=False, repr=False)
class RemoteEnd:
    """The owner's stand-in for an end whose node session is on node C{node}."""

    remote = attr.ib()
    node = attr.ib()
    remote_peer_id = attr.ib()
    closed = None
    attached = True

    def __repr__(self):
        return f"<RemoteEnd {self.remote_peer_id} on {self.node}>"

    def send(self, type_code, body):
        self.remote.send_env(self.node, body["circuit"], type_code, body, self.remote_peer_id)


class Remote(Proxying):
    """
    The cross-node half of a L{cairn.relay.service.RelayService}.

    @ivar proxies: L{cairn.relay.proxy.Proxy} by circuit id (circuits owned by other nodes
        whose target is on this node).
    """

    def __init__(self, service, bus, clock, ping_interval=PING_INTERVAL, node_timeout=NODE_TIMEOUT):
        self.service = service
        self.bus = bus
        self.clock = clock
        self.ping_interval = ping_interval
        self.node_timeout = node_timeout
        self.proxies = {}
        self.last_seen = {}
        #: The highest RelayData frame version each node said it reads (L{frame}).
        self.frame_versions = {}
        self._loop = None

    @property
    def node(self):
        return self.bus.node

    def start(self):
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.ping_interval, now=False)
        return self.bus.listen(self.receive, self.lost, self.broken)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for proxy in list(self.proxies.values()):
            self._drop(proxy)
            self._to_target(
                proxy, MessageType.RELAY_CLOSE, {"circuit": proxy.circuit_id, "reason": "the node is stopping"}
            )
            self._to_owner_close(proxy, "the other peer went away", culprit=True)
        return self.bus.stop()

    # The owner's side

    def end_for(self, peer_id):
        """A L{RemoteEnd} for C{peer_id} if its session is on another node, else None."""
        node = self.bus.where_is(peer_id)
        if node is None or node == self.node:
            return None
        return RemoteEnd(self, node, peer_id)

    def send_env(self, node, circuit_id, type_code, body, peer_id=None):
        message = {"op": "env", "from": self.node, "type": int(type_code), "body": body}
        if peer_id is not None:
            message["peer"] = peer_id
        self._send(node, circuit_id, message)

    def _send(self, node, circuit_id, message):
        self.last_seen.setdefault(node, self.clock.seconds())
        self.bus.send(node, circuit_id, frame.encode(message, self.frame_versions.get(node, 0)))

    # Messages from other nodes

    def receive(self, data):
        """One message from another node (the bus calls this on the reactor thread)."""
        try:
            message = frame.decode(data)
            node, op = message["from"], message["op"]
            circuit_id = message.get("circuit") or message.get("body", {}).get("circuit")
        except frame.UnknownVersion as e:
            self.refuse_frame(e)
            return
        except Exception:
            log.warn("relay: a malformed message from another node was dropped")
            return
        if node == self.node:
            return
        self.last_seen[node] = self.clock.seconds()
        if not frame.is_frame(data):
            said = message.get("frame")
            self.frame_versions[node] = said if isinstance(said, int) and said >= 0 else 0
        try:
            if op == "env":
                self._env(node, circuit_id, MessageType(message["type"]), message["body"], message.get("peer"))
            elif op == "close":
                self._closed_by_target_node(node, circuit_id, message)
        except (BodyError, KeyError, TypeError, ValueError) as e:
            log.warn("relay: a malformed message from node {node} was dropped: {why}", node=node, why=repr(e)[:200])
        except Exception:
            log.failure("relay: a message from node {node} failed", node=node)

    def _env(self, node, circuit_id, type_code, body, peer_id):
        proxy = self.proxies.get(circuit_id)
        if proxy is not None and proxy.owner == node:
            self._from_owner(proxy, type_code, body)
            return
        if type_code == MessageType.ROUTE_REQUEST and proxy is None:
            self._offered(node, circuit_id, body, peer_id)
            return
        circuit = self.service.circuits.get(circuit_id)
        end = None if circuit is None else circuit.b
        if not isinstance(end, RemoteEnd) or end.node != node:
            if type_code != MessageType.RELAY_CLOSE:
                # A stale proxy (this node closed the circuit): let it go.
                self.send_env(
                    node, circuit_id, MessageType.RELAY_CLOSE, {"circuit": circuit_id, "reason": "no such circuit"}
                )
            return
        self.service.from_end(end, type_code, body)

    def _closed_by_target_node(self, node, circuit_id, message):
        circuit = self.service.circuits.get(circuit_id)
        end = None if circuit is None else circuit.b
        if not isinstance(end, RemoteEnd) or end.node != node:
            return
        final = bool(message.get("final"))
        if circuit.state == "offered":
            if message.get("capacity"):
                self.service.refuse_offer(circuit, RouteStatus.CAPACITY, str(message.get("reason", ""))[:200])
                return
            self.service.end_gone(end, final=final)  # the requester is answered offline
            return
        culprit = end if message.get("culprit") else None
        self.service.close(circuit, message.get("reason", ""), culprit=culprit, final=final)

    def refuse_frame(self, error):
        """
        A RelayData frame of a version this node does not read
        (L{frame.UnknownVersion}): its data cannot be handed on, so the
        circuit ends (not final: the peers re-establish it, §25.5) rather
        than stalling, and the operator is told why.
        """
        circuit_id = error.circuit_id
        reason = FRAME_VERSION_REASON
        log.error(
            "relay circuit {cid}: another node sent a RelayData frame of version {version}, this node reads"
            " versions up to {known}: closing the circuit (upgrade every node to the same release)",
            cid=circuit_id.hex()[:8],
            version=error.version,
            known=frame.VERSION,
        )
        self._end(circuit_id, reason)

    def broken(self, circuit_id):
        """
        A message about C{circuit_id} from another node was lost on its way
        here (NATS dropped it: L{IRelayBus.listen}): the circuit cannot go
        on with a hole in its data, so it ends (not final: the peers
        re-establish it, §25.5), as when a message cannot be sent.
        """
        log.warn("relay circuit {cid}: a message from another node was lost: closing it", cid=circuit_id.hex()[:8])
        self._end(circuit_id, LOST_REASON)

    def _end(self, circuit_id, reason):
        """End C{circuit_id} (not final) on whichever side this node holds, both ends told C{reason}."""
        circuit = self.service.circuits.get(circuit_id)
        if circuit is not None and isinstance(circuit.b, RemoteEnd):
            self.service.close(circuit, reason)
        proxy = self.proxies.get(circuit_id)
        if proxy is not None:
            self._drop(proxy)
            self._to_target(proxy, MessageType.RELAY_CLOSE, {"circuit": circuit_id, "reason": reason})
            self._to_owner_close(proxy, reason, culprit=True)

    def lost(self, node, circuit_id):
        """A message about C{circuit_id} to C{node} did not go out: the circuit cannot go on."""
        circuit = self.service.circuits.get(circuit_id)
        if circuit is not None and isinstance(circuit.b, RemoteEnd) and circuit.b.node == node:
            log.info("relay circuit {cid}: node {node} unreachable", cid=circuit_id.hex()[:8], node=node)
            self.service.end_gone(circuit.b)
        proxy = self.proxies.get(circuit_id)
        if proxy is not None and proxy.owner == node:
            self._drop(proxy)
            body = {"circuit": proxy.circuit_id, "reason": "the other node went away"}
            self._to_target(proxy, MessageType.RELAY_CLOSE, body)

    # Liveness of the other nodes

    def _nodes_in_use(self):
        nodes = {p.owner for p in self.proxies.values()}
        for circuit in self.service.circuits.values():
            for end in (circuit.a, circuit.b):
                if isinstance(end, RemoteEnd):
                    nodes.add(end.node)
        return nodes

    def _tick(self):
        now = self.clock.seconds()
        in_use = self._nodes_in_use()
        for node in list(self.last_seen):
            if node not in in_use:
                del self.last_seen[node]
        for node in in_use:
            seen = self.last_seen.setdefault(node, now)
            if now - seen > self.node_timeout:
                self.node_lost(node)
            elif self.bus.alive(node) is False:
                self.node_lost(node, "the deployment's presence no longer hears it")
            else:
                self.bus.send(node, None, frame.encode({"op": "ping", "from": self.node}))

    def node_lost(self, node, why=None):
        """Close every circuit through node C{node}, which stopped answering."""
        if why is None:
            why = f"silent for {self.node_timeout:g}s"
        log.warn("relay: node {node} {why}; closing the circuits through it", node=node, why=why)
        self.last_seen.pop(node, None)
        for circuit in list(self.service.circuits.values()):
            for end in (circuit.a, circuit.b):
                if isinstance(end, RemoteEnd) and end.node == node:
                    self.service.end_gone(end)
        for proxy in list(self.proxies.values()):
            if proxy.owner == node:
                self._drop(proxy)
                self._to_target(
                    proxy, MessageType.RELAY_CLOSE, {"circuit": proxy.circuit_id, "reason": "the other node went away"}
                )


@implementer(IRelayBus)
class MemoryRelayBus:
    """
    L{IRelayBus} in memory: the nodes of one process (tests, library use).
    Nodes that share a C{network} dict reach each other; C{presence} maps
    peer ids to node names; C{nodes}, if given, is the set of live node
    names (L{IRelayBus.alive}). Messages are delivered in order on the
    next turn of C{clock}.
    """

    def __init__(self, node, network, presence, clock, nodes=None):
        self.node = node
        self.network = network
        self.presence = presence
        self.clock = clock
        self.nodes = nodes
        self.receive = self.lost = None

    def where_is(self, peer_id):
        return self.presence.get(peer_id)

    def alive(self, node):
        return None if self.nodes is None else node in self.nodes

    def send(self, node, circuit_id, message):
        bus = self.network.get(node)
        if bus is not None and bus.receive is not None:
            self.clock.callLater(0, lambda: bus.receive and bus.receive(message))
        elif self.lost is not None:
            self.clock.callLater(0, self.lost, node, circuit_id)

    def listen(self, receive, lost, broken=None):
        from twisted.internet import defer

        self.receive, self.lost = receive, lost
        self.network[self.node] = self
        return defer.succeed(None)

    def stop(self):
        from twisted.internet import defer

        self.receive = self.lost = None
        if self.network.get(self.node) is self:
            del self.network[self.node]
        return defer.succeed(None)
