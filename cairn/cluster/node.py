"""
The stores of a node whose state is on NATS JetStream (C{CAIRN_CLUSTER_NATS}).

L{cluster_stores} is what L{cairn.stores.make_stores} calls instead of
building the SQLite stores; it is the only way into this package from
the node, and the only place nats-py gets imported.
"""

import os
import ssl

import attr

from cairn.config import ConfigError


@attr.s(auto_attribs=True)
class Stores:
    """
    The stores of a JetStream node and its connection (a node alone:
    L{cairn.stores.LocalStores}, with the same methods).
    """

    kind: str
    mailbox: object
    sync: object
    trust: object
    relay: object
    cluster: object = None

    def deployment(self, peer, node_name, clock):
        """
        C{(presence, bus, recheck)} of this node among the others: presence
        in a KV bucket, the bus on core subjects of the same connection, and
        the services' re-check interval (what a lost wake-up may cost).
        """
        from cairn.cluster.kv_presence import KVPresence
        from cairn.cluster.nats_bus import NatsBus

        presence = KVPresence(self.cluster, peer, node_name, clock)
        # The mailbox watches its stream only once another node (a writer) may exist.
        presence.on_other_node(self.mailbox.follow_needed)
        # The bus tells the recipient's other nodes of each message as soon as it is stored.
        return presence, NatsBus(self.cluster, presence, node_name, mailbox=self.mailbox, clock=clock), RECHECK

    def relay_bus(self, presence, node_name):
        """Relay circuits between peers on different nodes (docs/scaling.md)."""
        from cairn.cluster.relay_bus import NatsRelayBus

        return NatsRelayBus(self.cluster, node_name, presence.locate, presence.nodes)

    def pairing_codes(self):
        """Where PINs and links are shared: a KV bucket."""
        from cairn.cluster.pairing_codes import KVCodes
        from cairn.pairing.service import LINK_TTL

        # A link is remembered one TTL past its expiry (to say why it fails).
        return KVCodes(self.cluster, ttl=3 * LINK_TTL)

    def cluster_report(self, presence):
        """The C{cluster} of C{GET /health}."""
        from cairn.cluster.health import cluster_report

        return cluster_report(self.cluster, presence)

    def health(self):
        """C{(storage kind, problem or None)} for C{GET /health}."""
        ok, reason = self.cluster.health()
        return self.kind, None if ok else reason


#: Seconds between the services' re-checks of every served session on a
#: node among several: the most a lost wake-up delays a delivery.
RECHECK = 10.0


class MissingExtra(Exception):
    """nats-py is not installed; C{str()} is one line for the operator."""


def cluster_stores(config, reactor, db=None):
    """
    The JetStream L{Stores} for C{config} (not connected: the node
    connects in C{startService}, retrying until NATS answers).

    @raise ConfigError: C{CAIRN_CLUSTER_CREDS_FILE} cannot be read, or
        C{CAIRN_CLUSTER_TLS_CA} is not a readable PEM certificate file.
    @raise MissingExtra: the C{[cluster]} extra is not installed (nats-py,
        or nkeys for a credentials file).
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
    if path is not None:
        # nats-py signs with a credentials file through nkeys, imported at
        # the first connection: without it the node would retry forever,
        # calling NATS unreachable.
        try:
            import nkeys  # noqa: F401
        except ImportError:
            raise MissingExtra(
                "CAIRN_CLUSTER_CREDS_FILE is set but nkeys is not installed (pip install 'cairn-server[cluster]')"
            ) from None
    from cairn.cluster.connection import JetStream, Settings
    from cairn.cluster.mailbox import JetStreamMailboxStore
    from cairn.cluster.relay import KVRelayStore
    from cairn.cluster.sync import JetStreamSyncStore
    from cairn.cluster.trust import KVTrustStore

    jet = JetStream(
        reactor,
        Settings(
            config.cluster_nats,
            config.cluster_replicas,
            config.cluster_prefix,
            path,
            config.max_payload,
            config.cluster_reserve,
            tls_context(config.cluster_tls_ca),
        ),
    )
    return Stores(
        "jetstream",
        mailbox=JetStreamMailboxStore(jet),
        sync=JetStreamSyncStore(jet),
        trust=KVTrustStore(jet),
        relay=KVRelayStore(jet),
        cluster=jet,
    )


def tls_context(ca_file):
    """
    The TLS context for C{tls://} NATS servers: their certificates checked
    against C{ca_file} (C{CAIRN_CLUSTER_TLS_CA}, e.g. a private authority
    for the NATS machines) instead of the system's, or None (nats-py's
    default: the system's authorities).

    @raise ConfigError: C{ca_file} cannot be read or holds no certificate.
    """
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        why = getattr(e, "reason", None) or e.strerror or type(e).__name__
        message = f"cannot use {ca_file!r} as certificate authorities ({why})"
        raise ConfigError("CAIRN_CLUSTER_TLS_CA", message) from None
