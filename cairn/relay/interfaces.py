"""The seam between the node's relay and the management API."""

from zope.interface import Attribute, Interface


class IRelay(Interface):
    """Relay circuits between paired peers (docs/protocol.md §25)."""

    capacity = Attribute("Circuits (offered or open) allowed at once.")
    circuits = Attribute("Circuits by 16-byte id.")

    def stats():
        """C{GET /relay}: circuits, capacity and per-peer byte counts."""

    def set_quota(peer_id, max_bytes):
        """Limit the bytes C{peer_id} may send through relays (None: no limit)."""

    def close(circuit, reason, culprit=None):
        """Close C{circuit}, telling its ends (but C{culprit}) C{reason}."""

    def purge(peer_id):
        """The pairing purge hook: close that peer's circuits, forget its quota."""

    def collect_metrics():
        """Prometheus metric families."""
