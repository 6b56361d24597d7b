"""
The stores of a node whose state is on NATS JetStream (C{CAIRN_CLUSTER_NATS}).

L{cluster_stores} is what L{cairn.service.make_node} calls instead of
building the SQLite stores; it is the only way into this package from
the node, and the only place nats-py gets imported.
"""

import os

import attr

from cairn.config import ConfigError


@attr.s(auto_attribs=True)
class Stores:
    """The node's stores and, for a JetStream node, its connection."""

    kind: str
    mailbox: object
    sync: object
    trust: object
    relay: object
    cluster: object = None

    def deployment(self, peer, node_name, clock):
        """
        C{(presence, bus, recheck)} of this node among the others: the
        single-node versions until the NATS ones exist (see L{cluster_stores}).
        """
        from cairn.cluster.bus import LocalBus
        from cairn.cluster.presence import LocalPresence

        return LocalPresence(peer, node_name), LocalBus(node_name), None

    def health(self):
        """C{(storage kind, problem or None)} for C{GET /health}."""
        if self.cluster is None:
            return self.kind, None
        ok, reason = self.cluster.health()
        return self.kind, None if ok else reason


class MissingExtra(Exception):
    """nats-py is not installed; C{str()} is one line for the operator."""


def cluster_stores(config, reactor, db=None):
    """
    The JetStream L{Stores} for C{config} (not connected: the node
    connects in C{startService}, retrying until NATS answers).

    @raise ConfigError: C{CAIRN_CLUSTER_CREDS_FILE} cannot be read.
    @raise MissingExtra: the C{[cluster]} extra is not installed.
    """
    try:
        import nats  # noqa: F401
    except ImportError:
        raise MissingExtra(
            "CAIRN_CLUSTER_NATS is set but nats-py is not installed (pip install 'cairn-server[cluster]')"
        ) from None
    path = config.cluster_creds_file
    if path is not None and not os.access(path, os.R_OK):
        raise ConfigError("CAIRN_CLUSTER_CREDS_FILE", f"cannot read {path!r} (a NATS credentials file)")
    from cairn.cluster.connection import JetStream, Settings
    from cairn.cluster.mailbox import JetStreamMailboxStore
    from cairn.cluster.relay import KVRelayStore
    from cairn.cluster.sync import JetStreamSyncStore
    from cairn.cluster.trust import KVTrustStore

    jet = JetStream(
        reactor, Settings(config.cluster_nats, config.cluster_replicas, config.cluster_prefix, path)
    )
    return Stores(
        "jetstream",
        mailbox=JetStreamMailboxStore(jet),
        sync=JetStreamSyncStore(jet),
        trust=KVTrustStore(jet),
        relay=KVRelayStore(jet),
        cluster=jet,
    )
