"""
The seams of the node's relay: the management API, the limits store and
the bus between nodes; and L{RouteRefused}, what a peer's circuit request
fails with.
"""

import attr
from zope.interface import Attribute, Interface

from cairn.wire.constants import RouteStatus

#: (component, schema package) for L{cairn.db.Database}.
RELAY_SCHEMA = ("relay", "cairn.relay.schema")


@attr.s(frozen=True, auto_attribs=True)
class RelayLimits:
    """
    One peer's relay limits, each C{None} for none.

    @ivar max_bytes: RelayData bytes the peer may send through circuits,
        counted by its persisted C{bytes_sent}.
    @ivar max_rate: bytes per second the peer may send through circuits.
    """

    max_bytes: int = None
    max_rate: int = None

    def is_default(self) -> bool:
        return self.max_bytes is None and self.max_rate is None

    def to_json(self) -> dict:
        return {"max_bytes": self.max_bytes, "max_rate": self.max_rate}


class RouteRefused(Exception):
    """The node (or the target) did not open the circuit; C{status} says why."""

    def __init__(self, status, reason):
        super().__init__(f"{RouteStatus(status).name.lower()}: {reason}")
        self.status = RouteStatus(status)
        self.reason = reason


class IRelay(Interface):
    """Relay circuits between paired peers (docs/protocol.md §25)."""

    capacity = Attribute("Circuits (offered or open) allowed at once.")
    circuits = Attribute("Circuits by 16-byte id.")

    def start():
        """Load the persisted limits and byte counts; fires once loaded."""

    def stop():
        """Write the byte counts; fires once written."""

    def stats():
        """C{GET /relay}: circuits, capacity and per-peer byte counts."""

    def set_limits(peer_id, limits):
        """Persist and apply C{peer_id}'s L{RelayLimits}; fires once stored."""

    def set_quota(peer_id, max_bytes):
        """Limit the bytes C{peer_id} may send through relays (None: no limit); fires once stored."""

    def close(circuit, reason, culprit=None, final=False):
        """Close C{circuit}, telling its ends (but C{culprit}) C{reason}."""

    def purge(peer_id):
        """The pairing purge hook: close that peer's circuits, forget its limits and counts."""

    def collect_metrics():
        """Prometheus metric families."""


class IRelayStore(Interface):
    """Where the relay keeps per-peer limits and byte counts across restarts."""

    def load():
        """Fires with C{(limits, usage)}: C{{peer_id: RelayLimits}}, C{{peer_id: (sent, received)}}."""

    def set_limits(peer_id, limits):
        """Store C{peer_id}'s L{RelayLimits} (defaults remove the row); fires once durable."""

    def save_usage(usage):
        """Store C{{peer_id: (bytes_sent, bytes_received)}} (absolute figures); fires once durable."""

    def purge(peer_id):
        """Forget C{peer_id}'s limits and counts; fires once durable."""


class IRelayBus(Interface):
    """
    What relay circuits between peers on different nodes of one deployment
    need from the cluster (docs/scaling.md, "Relay across nodes"): where a
    peer's session is, and messages to another node about one circuit.

    The single-node version is no bus at all (C{RelayService(bus=None)}):
    a target without a session on this node is offline, as always.

    Why not the node bus (L{cairn.cluster.bus.INodeBus}): its notices are
    hints that may be lost and its requests wait for one answer; a
    circuit's messages are a stream, in order, whose loss must close the
    circuit (L{listen}'s C{lost}). Where a peer is comes from the
    deployment's presence all the same (C{where_is} is
    L{cairn.cluster.presence.IPresence.locate} in a node).
    """

    node = Attribute("This node's name (text).")

    def where_is(peer_id):
        """The name of the node holding C{peer_id}'s session, or None (synchronous, from memory)."""

    def alive(node):
        """
        Whether the deployment's presence hears node C{node} (its node
        liveness, L{cairn.cluster.presence.IPresence.nodes}): True or
        False; None if this bus has no such view (the relay's own pings
        then decide alone).
        """

    def send(node, circuit_id, message):
        """Send C{message} (bytes) to node C{node} about circuit C{circuit_id}, in order, fire and forget."""

    def listen(receive, lost, broken=None):
        """
        Call C{receive(message)} (bytes) on the reactor thread for every
        message to this node, C{lost(node, circuit_id)} for every
        message of L{send} known not to have gone out (no connection), and
        C{broken(circuit_id)} for every message to this node about a
        circuit known lost on its way (dropped on arrival).
        """

    def stop():
        """Stop listening; fires once stopped."""
