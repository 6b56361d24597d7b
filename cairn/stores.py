"""
Where the node's state lives: its SQLite database and the stores in it,
or NATS JetStream when C{CAIRN_CLUSTER_NATS} is set (L{cairn.cluster.node}).
"""

import os

from cairn.cluster.bus import LocalBus
from cairn.cluster.presence import LocalPresence
from cairn.config import ConfigError
from cairn.db import DB_FILE_NAME, Database, NoDatabase
from cairn.mailbox.interfaces import MAILBOX_SCHEMA
from cairn.mailbox.store import SQLiteMailboxStore
from cairn.pairing.trust import TRUST_SCHEMA, SQLiteTrustStore
from cairn.relay.interfaces import RELAY_SCHEMA
from cairn.relay.store import SQLiteRelayStore
from cairn.startup import StartupError
from cairn.sync.interfaces import SYNC_SCHEMA
from cairn.sync.store import SQLiteSyncStore

#: Schema chains of every component that keeps state in the database.
SCHEMAS = [TRUST_SCHEMA, MAILBOX_SCHEMA, SYNC_SCHEMA, RELAY_SCHEMA]


def make_database(config, reactor, space):
    """
    The node's database in C{CAIRN_DATA_DIR} (opened when the node starts);
    on JetStream nothing needs SQLite: no file is created (docs/scaling.md).
    """
    path = os.path.join(config.data_dir, DB_FILE_NAME)
    if config.cluster_nats:
        return NoDatabase(path, space)
    return Database(reactor, path, SCHEMAS, space=space, secure_delete=config.secure_delete)


class LocalStores:
    """The stores in the node's own SQLite database (CAIRN_CLUSTER_NATS unset)."""

    kind = "sqlite"
    cluster = None

    def __init__(self, db):
        self.mailbox = SQLiteMailboxStore(db)
        self.sync = SQLiteSyncStore(db)
        self.trust = SQLiteTrustStore(db)
        self.relay = SQLiteRelayStore(db)

    def health(self):
        return self.kind, None

    def cluster_report(self, presence):
        """No deployment to report on (C{/health} has no C{cluster})."""
        return None

    def pairing_codes(self):
        """PINs and links stay in this node's memory."""
        return None

    def deployment(self, peer, node_name, clock):
        """This node alone: C{(presence, bus, recheck)} (no re-check: every wake-up is a direct call)."""
        return LocalPresence(peer, node_name), LocalBus(node_name), None

    def relay_bus(self, presence, node_name):
        """No other node to reach: every relay circuit stays here."""
        return None


def make_stores(config, reactor, db):
    """
    The node's stores: SQLite, or on NATS JetStream when CAIRN_CLUSTER_NATS
    is set (only then is L{cairn.cluster.node}, and so nats-py, imported;
    the seams L{cairn.cluster.presence} and L{cairn.cluster.bus} import no nats).
    """
    if not config.cluster_nats:
        return LocalStores(db)
    from cairn.cluster.node import MissingExtra, cluster_stores

    try:
        return cluster_stores(config, reactor, db)
    except (ConfigError, MissingExtra) as e:
        raise StartupError(str(e)) from None
