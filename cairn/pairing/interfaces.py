"""
The seams of pairing: the trust store, and the pairing service the
management API and the CLI drive.
"""

import attr
from zope.interface import Attribute, Interface

PENDING = "pending"
PAIRED = "paired"
REVOKED = "revoked"
STATES = (PENDING, PAIRED, REVOKED)


@attr.s(frozen=True, auto_attribs=True, slots=True)
class PeerRecord:
    """What the node knows of one remote peer (slotted: one per known peer, issue 19)."""

    peer_id: str
    identity_key: bytes
    state: str
    name: str = ""
    method: str = ""  # "psk", "pin", "link", "approval" once paired
    requested_at: float = None
    paired_at: float = None
    last_seen: float = None

    def to_json(self) -> dict:
        """The record as the management API shows it (no key material)."""
        return {
            "peer_id": self.peer_id,
            "name": self.name,
            "state": self.state,
            "method": self.method or None,
            "requested_at": self.requested_at,
            "paired_at": self.paired_at,
            "last_seen": self.last_seen,
        }


class UnknownPeer(KeyError):
    """No record (in the required state) for that peer id."""


class ITrustStore(Interface):
    """
    Persistent trust: which peers are paired, pending or revoked.

    Mutations return Deferreds firing once durable; L{is_paired} answers
    synchronously from memory (sessions consult it on every request).
    """

    def start():
        """Load; fires when L{is_paired} is accurate."""

    def is_paired(peer_id) -> bool:
        """Whether C{peer_id} is currently paired."""

    def catch_up(peer_ids):
        """
        Deferred firing once L{is_paired} answers for C{peer_ids} with what
        the store can tell now; never fails. A store that is its data's
        only writer fires at once; one shared with other nodes reads those
        its mirror does not know (within bounds, L{cairn.cluster.trust}),
        so that a peer paired through another node a moment ago counts.
        Fires with the frozenset of those of C{peer_ids} still not known as
        paired that the store could not check (its shared data out of
        reach): for them "not paired" is not known, and a service answers
        "try again later" rather than refusing them as unpaired.
        """

    def get(peer_id):
        """Deferred: the L{PeerRecord} or None."""

    def list(state=None):
        """Deferred: records, optionally only those in C{state}, by peer id."""

    def add_pending(peer_id, identity_key, name, when):
        """Deferred: record a pending request (kept if already paired)."""

    def set_paired(peer_id, identity_key, name, method, when):
        """Deferred: mark paired (creating the record if needed)."""

    def reject(peer_id):
        """Deferred: drop a pending request; fails with L{UnknownPeer}."""

    def revoke(peer_id, when):
        """Deferred: mark revoked; fails with L{UnknownPeer} if not paired."""

    def touch(peer_id, when):
        """Deferred: update last_seen (ignored for unknown peers)."""


class IPairingService(Interface):
    """What the management API and the CLI ask of pairing."""

    trust = Attribute("The L{ITrustStore}.")

    def connected(peer_id) -> bool:
        """Whether C{peer_id} has an attached session now."""

    def create_pin():
        """A new single-use PIN: dict(pin="XXXX-XXXX", expires_at=unix seconds)."""

    def create_link():
        """A new single-use link: dict(link="cairn://pair?...", expires_at=...)."""

    def codes_shared():
        """
        Deferred firing once the PINs and links created so far can be used
        on every node of the deployment (at once for a node alone): the
        management API answers a new code only then.
        """

    def approve(peer_id):
        """Deferred L{PeerRecord}: approve a pending request (L{UnknownPeer} if none)."""

    def reject(peer_id):
        """Deferred: reject a pending request (L{UnknownPeer} if none)."""

    def unpair(peer_id):
        """Deferred: revoke, end the peer's sessions, purge what is held for it."""

    def add_purge_hook(hook):
        """Call C{hook(peer_id)} (may return a Deferred) when a peer is unpaired."""

    def pairing_status():
        """The state of PSK and PIN pairing (no secrets): a JSON-able dict."""

    def rotate_psk(psk=None):
        """Put a new PSK in force (C{psk}, or a generated one); returns a dict holding it once."""

    def disable_psk():
        """Turn PSK pairing off; returns the PSK status dict."""
