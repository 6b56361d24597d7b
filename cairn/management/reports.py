"""
What the management API reads from the node's services: small read-only
report interfaces (and the two per-peer settings the operator may change),
typed, so that L{cairn.management.app.ManagementAPI} receives its
collaborators the way tahoe-lafs' C{HTTPServer} receives its storage server.

The services implement them directly (L{cairn.mailbox.service.MailboxService},
L{cairn.sync.service.SyncService}, L{cairn.relay.service.RelayService});
what is the node's rather than one service's (history, status, disk,
descriptors, configuration, storage health) is a L{NodeReports}. Every
method returns JSON-able data or a Deferred of it.
"""

import attr
from zope.interface import Attribute, Interface, implementer


class IMailboxReports(Interface):
    """The mailbox as the operator sees it (C{/mailbox...})."""

    def stats():
        """C{GET /mailbox}: totals and per-peer figures."""

    def peer_stats(peer_id):
        """C{GET /mailbox/{peer_id}}: one peer's figures, None for a peer it knows nothing of."""

    def set_peer_limits(peer_id, body):
        """C{PUT /mailbox/{peer_id}/limits}; raises C{ValueError} or L{UnknownPeer}."""


class ISyncReports(Interface):
    """The sync hub as the operator sees it (C{/sync...})."""

    def stats():
        """C{GET /sync}: topics and device cursors."""

    def access_report(peer_id):
        """C{GET /sync/{peer_id}/access}; raises L{UnknownPeer}."""

    def set_access(peer_id, body):
        """C{PUT} (C{body} a JSON object) or C{DELETE} (C{body} None) of a peer's access."""


class IRelayReports(Interface):
    """The relay as the operator sees it (C{/relay...})."""

    def stats():
        """C{GET /relay}: circuits, capacity, per-peer byte counts and limits."""

    def put_quota(peer_id, body):
        """C{PUT /relay/{peer_id}/quota}; raises C{ValueError} or L{UnknownPeer}."""


class INodeReports(Interface):
    """What belongs to the node rather than to one service."""

    storage = Attribute("() -> (kind, problem or None), for /health")
    presence = Attribute("the node's IPresence (which node each peer is on), or None")
    cluster = Attribute("() -> JSON (or a Deferred of it) about the deployment for /health, or None")
    disk = Attribute("() -> JSON for /health, or None")
    descriptors = Attribute("() -> JSON for /health, or None")
    history = Attribute("() -> JSON for /history, or None")
    status = Attribute("() -> JSON for /node, or None")
    config = Attribute("() -> JSON for /config, or None")


@implementer(INodeReports)
@attr.s(frozen=True)
class NodeReports:
    """
    The node's own reports, each a callable (None: not reported, the
    endpoint is a 404). C{storage} defaults to a healthy SQLite store.
    """

    storage = attr.ib(default=lambda: ("sqlite", None))
    presence = attr.ib(default=None)
    cluster = attr.ib(default=None)
    disk = attr.ib(default=None)
    descriptors = attr.ib(default=None)
    history = attr.ib(default=None)
    status = attr.ib(default=None)
    config = attr.ib(default=None)
