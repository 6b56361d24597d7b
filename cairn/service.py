"""
The node's object graph, built by one function that tests call directly.

L{make_node} turns a L{Config} into a L{CairnNode}: the local L{Peer},
the database, the trust store and pairing service, the management API,
and one listening service per enabled endpoint (through
C{strports.service}, so a busy port aborts start-up).

Start-up order (L{CairnNode.startService}): the database is opened and
upgraded in the calling thread, before the reactor runs, so a corrupt or
unwritable database stops start-up with one line; the listeners bind
(a busy port aborts) but accept nothing until the trust store is loaded,
so no session is judged against an empty trust store.
"""

import gc
import os
import socket

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults, succeed
from twisted.logger import Logger

from cairn.crypto import identity as identity_mod
from cairn.db import DB_FILE_NAME, Database, DatabaseError
from cairn.mailbox.interfaces import MAILBOX_SCHEMA, Limits
from cairn.mailbox.service import MailboxService
from cairn.mailbox.store import SQLiteMailboxStore
from cairn.management.app import ManagementAPI, make_site, warn_if_exposed
from cairn.management.metrics import Metrics
from cairn.management.token import resolve_token
from cairn.pairing.service import PairingService
from cairn.pairing.trust import TRUST_SCHEMA, SQLiteTrustStore
from cairn.permissions import PermissionProblem, check_data_dir
from cairn.relay.interfaces import RELAY_SCHEMA
from cairn.relay.service import RelayService
from cairn.relay.store import SQLiteRelayStore
from cairn.session import store
from cairn.session.peer import Peer
from cairn.sync.interfaces import SYNC_SCHEMA
from cairn.sync.service import SyncService
from cairn.sync.store import SQLiteSyncStore
from cairn.transport.limits import SourceLimiter
from cairn.transport.tcp import StreamFactory
from cairn.transport.websocket import server_factory
from cairn.turn.service import make_turn_service

log = Logger()

#: Schema chains of every component that keeps state in the database.
SCHEMAS = [TRUST_SCHEMA, MAILBOX_SCHEMA, SYNC_SCHEMA, RELAY_SCHEMA]


class StartupError(SystemExit):
    """Start-up cannot go on; the message is one line for the operator."""


class CairnNode(MultiService):
    """
    The server node: a L{Peer}, its services and its listeners.

    On a clean stop every open session is saved (see
    L{cairn.session.store}) and its transport dropped without a Close, so
    that peers resume with Reconnect once the node is back.
    """

    #: Freeze the objects made at start-up once serving (C{gc.freeze}):
    #: set by the twistd plugin, whose process is the node's alone, not
    #: by default (an application embedding a node owns its process).
    freeze_gc = False

    def __init__(self, config, peer, db, pairing, metrics, mailbox=None):
        super().__init__()
        self.mailbox = mailbox
        #: The L{SyncService} (set by make_node).
        self.sync = None
        #: The L{RelayService} (set by make_node).
        self.relay = None
        self.config = config
        self.peer = peer
        self.db = db
        self.pairing = pairing
        self.metrics = metrics
        self.listeners = {}
        #: Fires once the trust store is loaded and the listeners accept.
        self.ready = None
        #: The L{SignalAnnouncer}, if CAIRN_SIGNAL_SERVERS is set.
        self.signaling = None
        #: Where the state lives: "sqlite", or "jetstream" with its connection in C{cluster}.
        self.storage = "sqlite"
        self.cluster = None

    def add_listener(self, name: str, description: str, factory) -> None:
        service = strports.service(description, factory)
        service.setName(name)
        service.setServiceParent(self)
        self.listeners[name] = service

    def when_listening(self):
        """A Deferred firing with {name: IListeningPort} once all listen."""
        names = list(self.listeners)
        waiting = [self.listeners[n]._waitingForPort for n in names]
        return gatherResults(waiting).addCallback(lambda ports: dict(zip(names, ports)))

    def startService(self):
        try:
            self.db.open()
        except DatabaseError as e:
            raise StartupError(f"cairn: {e}") from None
        restored = self.peer.restore_sessions(store.load_once(self.config.data_dir))
        if restored:
            log.info("restored {count} session(s) for resume", count=restored)
        log.info("cairn node {peer_id} starting (storage: {storage})", peer_id=self.peer.peer_id, storage=self.storage)
        if self.cluster is not None:
            # Retries with backoff until NATS answers; the stores wait for it.
            self.cluster.connect()
        try:
            super().startService()  # binds every port now (a busy one raises)
        except BaseException:
            self.db.close_now()
            raise
        ports = self.when_listening()
        ports.addCallback(self._pause)
        starting = [ports, self.pairing.start()]
        if self.mailbox is not None:
            starting.append(self.mailbox.start())
        if self.sync is not None:
            starting.append(self.sync.start())
        if self.relay is not None:
            starting.append(self.relay.start())
        self.ready = gatherResults(starting, consumeErrors=True)
        self.ready.addCallback(lambda results: self._serve(results[0]))
        self.ready.addErrback(self._failed)

    @staticmethod
    def _pause(ports):
        for name, port in ports.items():
            # The management API answers while the stores load (its /health
            # says why the node is not serving yet, e.g. NATS unreachable).
            if name != "management":
                port.stopReading()
        return ports

    def _serve(self, ports):
        for name, port in sorted(ports.items()):
            host = port.getHost()
            port.startReading()
            log.info(
                "listening: {name} on {host}:{port}",
                name=name,
                host=getattr(host, "host", host),
                port=getattr(host, "port", ""),
            )
        if not self.config.public_addresses:
            self.pairing.link_addresses = derived_addresses(ports)
        if self.signaling is not None:
            self.signaling.node_ready()
        if self.freeze_gc:
            # Everything made so far (modules, configuration, trust records,
            # restored sessions) lives as long as the process: keep the
            # cyclic garbage collector from walking it again and again.
            gc.freeze()
        return ports

    def _failed(self, failure):
        log.failure("cairn node could not start", failure)
        from twisted.internet import reactor

        if reactor.running:
            reactor.stop()

    def stopService(self):
        d = super().stopService()  # stop listening first
        d.addCallback(lambda _: self._save_sessions())
        if self.mailbox is not None:
            # Commit what is queued (its senders wait for acks on resume).
            d.addCallback(lambda _: self.mailbox.stop())
        if self.sync is not None:
            d.addCallback(lambda _: self.sync.stop())
        if self.relay is not None:
            d.addCallback(lambda _: self.relay.stop())
        d.addCallback(lambda _: self.pairing.stop())
        if self.cluster is not None:
            d.addCallback(lambda _: self.cluster.close())
        d.addCallback(lambda _: self.db.stop())
        return d

    def _save_sessions(self):
        snapshots = self.peer.snapshot_sessions()
        if snapshots:
            store.save(self.config.data_dir, snapshots)
            log.info("saved {count} session(s) for resume", count=len(snapshots))
        self.peer.freeze()
        return succeed(None)


def derived_addresses(ports) -> tuple:
    """
    Dialable addresses of the bound cairn listeners, for pairing links.

    A listener bound to one interface is advertised on it; a wildcard one
    on the machine's host name. C{CAIRN_PUBLIC_ADDRESSES} overrides this.
    """
    addresses = []
    for name in ("tcp", "websocket"):
        port = ports.get(name)
        if port is None:
            continue
        address = port.getHost()
        host = getattr(address, "host", None)
        if host is None:
            continue
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        if name == "tcp":
            addresses.append(f"tcp:host={host}:port={address.port}")
        else:
            shown = f"[{host}]" if ":" in host else host
            addresses.append(f"ws://{shown}:{address.port}/")
    return tuple(addresses)


def signal_announcer(config, ident, pairing, trust, reactor):
    """Announce the node's addresses and paired peers' rendezvous ids to CAIRN_SIGNAL_SERVERS."""
    from cairn.pairing.interfaces import PAIRED
    from cairn.signaling.announcer import SignalAnnouncer

    def peer_keys():
        return trust.list(PAIRED).addCallback(lambda records: [r.identity_key for r in records])

    return SignalAnnouncer(
        ident,
        reactor,
        config.signal_servers,
        addresses=lambda: pairing.link_addresses,
        peer_keys=peer_keys,
        interval=config.signal_announce_interval,
    )


def prepare_data_dir(path: str) -> None:
    """
    Create the data directory (0700) if needed, and check its permissions
    and those of its secret files (L{cairn.permissions}).

    @raise StartupError: the directory or a secret file is open to others.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        check_data_dir(path)
    except PermissionProblem as e:
        raise StartupError(f"cairn: {e}") from None


class _LocalStores:
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


def make_stores(config, reactor, db):
    """
    The node's stores: SQLite, or on NATS JetStream when CAIRN_CLUSTER_NATS
    is set (only then is L{cairn.cluster}, and so nats-py, imported).
    """
    if not config.cluster_nats:
        return _LocalStores(db)
    from cairn.cluster.node import MissingExtra, cluster_stores
    from cairn.config import ConfigError

    try:
        return cluster_stores(config, reactor, db)
    except (ConfigError, MissingExtra) as e:
        raise StartupError(f"cairn: {e}") from None


def make_node(config, reactor) -> CairnNode:
    """Build the whole node for C{config}; nothing is opened or listens until started."""
    prepare_data_dir(config.data_dir)
    ident = identity_mod.load_or_create(config.data_dir)
    peer = Peer(
        ident,
        reactor,
        max_payload=config.max_payload,
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        handshake_timeout=config.handshake_timeout,
        session_ttl=config.session_ttl,
        log_addresses=config.log_addresses,
    )
    db = Database(reactor, os.path.join(config.data_dir, DB_FILE_NAME), SCHEMAS)
    stores = make_stores(config, reactor, db)
    trust = stores.trust
    pairing = PairingService(peer, trust, reactor, psk=config.psk, link_addresses=config.public_addresses)
    mailbox = MailboxService(
        peer,
        trust,
        stores.mailbox,
        reactor,
        enabled=config.forward_enabled,
        limits=Limits(config.forward_max_per_peer, config.forward_max_total, config.forward_max_age),
        max_payload=config.max_payload,
    )
    pairing.add_purge_hook(mailbox.purge)
    sync = SyncService(peer, trust, stores.sync, reactor, limits=mailbox.limits, max_payload=config.max_payload)
    pairing.add_purge_hook(sync.purge)
    turn = make_turn_service(config, peer, trust, reactor)
    started_at = reactor.seconds()
    metrics = Metrics(peer, reactor, started_at)
    metrics.add_collector(mailbox.collect_metrics, name="mailbox")
    metrics.add_collector(sync.collect_metrics, name="sync")
    relay = RelayService(
        peer,
        trust,
        reactor,
        capacity=config.relay_capacity,
        store=stores.relay,
        # Attached circuits come in on the TCP listener (§25.8).
        reactor=reactor if config.listen else None,
    )
    pairing.add_purge_hook(relay.purge)
    metrics.add_collector(relay.collect_metrics, name="relay")
    node = CairnNode(config, peer, db, pairing, metrics, mailbox)
    node.storage, node.cluster = stores.kind, stores.cluster
    node.turn = turn
    node.sync = sync
    node.relay = relay
    if config.signal_servers:
        node.signaling = signal_announcer(config, ident, pairing, trust, reactor)
        node.signaling.setServiceParent(node)
    # One per-source handshake limit across both cairn listeners.
    limiter = node.limiter = SourceLimiter(config.max_handshakes_per_source)
    write_limit = config.max_write_buffer
    if config.listen:
        node.add_listener("tcp", config.listen, StreamFactory(peer, limiter=limiter, write_limit=write_limit))
    if config.ws_listen:
        node.add_listener("websocket", config.ws_listen, server_factory(peer, limiter, write_limit))
    if config.mgmt_enabled and config.mgmt_listen:
        token = resolve_token(config, log)
        stats = {
            "mailbox": mailbox.stats,
            "mailbox_peer": mailbox.peer_stats,
            "mailbox_limits": mailbox.set_peer_limits,
            "sync": sync.stats,
            "relay": relay.stats,
            "relay_quota": relay.put_quota,
            "storage": stores.health,
        }
        api = ManagementAPI(pairing, peer, token, metrics, reactor, started_at, stats=stats)
        warn_if_exposed(config.mgmt_listen, log)
        node.add_listener("management", config.mgmt_listen, make_site(api, reactor=reactor))
    return node
