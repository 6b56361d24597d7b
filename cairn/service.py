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

The parts with a life cycle are L{CairnNode.components}, started in
order and stopped in reverse: presence and the node bus (which node holds
each peer, wake-ups between nodes: L{cairn.cluster.presence},
L{cairn.cluster.bus}; a node alone has their single-node versions), pairing,
then the services holding per-session state (mailbox, sync, relay).
"""

import gc
import os
import socket

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults, succeed
from twisted.logger import Logger

from cairn import config_report, sighup
from cairn.cluster.bus import LocalBus
from cairn.cluster.presence import LocalPresence
from cairn.config import ConfigError
from cairn.db import DB_FILE_NAME, Database, DatabaseError, NoDatabase
from cairn.diskspace import FreeSpace
from cairn.mailbox.interfaces import MAILBOX_SCHEMA, Limits
from cairn.mailbox.service import MailboxService
from cairn.mailbox.store import SQLiteMailboxStore
from cairn.management.app import ManagementAPI, make_site, warn_if_exposed
from cairn.management.history import History
from cairn.management.metrics import Metrics
from cairn.management.reports import NodeReports
from cairn.management.status import NodeStatus, management_warnings
from cairn.management.token import resolve_token
from cairn.pairing.psk import PSK_FILE
from cairn.pairing.service import PairingService
from cairn.pairing.trust import TRUST_SCHEMA, SQLiteTrustStore
from cairn.permissions import PermissionProblem, check_data_dir
from cairn.relay.interfaces import RELAY_SCHEMA
from cairn.relay.service import RelayService
from cairn.relay.store import SQLiteRelayStore
from cairn.session import store, unpaired
from cairn.session.peer import Peer
from cairn.startup import (
    StartupError,
    bind_listeners,
    check_writable,
    data_dir_problem,
    endpoint_problem,
    from_any_thread,
    load_identity,
    tell_launcher,
    warn_about_disk,
)
from cairn.sync import access as sync_access
from cairn.sync.interfaces import SYNC_SCHEMA
from cairn.sync.service import SyncService
from cairn.sync.store import SQLiteSyncStore
from cairn.transport.fds import DescriptorGauge
from cairn.transport.handoff import HandOffFactory
from cairn.transport.limits import SourceLimiter
from cairn.transport.settings import TransportSettings
from cairn.transport.websocket import server_factory
from cairn.turn.service import make_turn_service
from cairn.wire.constants import CloseCode

log = Logger()

#: Schema chains of every component that keeps state in the database.
SCHEMAS = [TRUST_SCHEMA, MAILBOX_SCHEMA, SYNC_SCHEMA, RELAY_SCHEMA]


class CairnNode(MultiService):
    """
    The server node: a L{Peer}, its services and its listeners.

    On a clean stop every open session is saved (see
    L{cairn.session.store}) and its transport dropped without a Close, so
    that peers resume with Reconnect once the node is back. The stop order
    keeps every promise made to a resuming peer (docs/protocol.md §16.1):
    stop accepting connections, then envelopes (L{Peer.drain}); let each
    service commit and answer what it accepted (ForwardAcks, SyncAcks,
    PairConfirms; relay circuits are closed); only then snapshot the
    sessions, with their services' state -- their resend buffers now hold
    those answers -- and drop their transports.
    """

    #: Freeze the objects made at start-up once serving (C{gc.freeze}):
    #: set by the twistd plugin, whose process is the node's alone, not
    #: by default (an application embedding a node owns its process).
    freeze_gc = False
    #: Answer SIGHUP with L{cairn.sighup.reload} (set by the twistd plugin,
    #: for the same reason) instead of dying of it.
    handle_sighup = False
    #: twistd's options (set by the plugin): a daemonizing twistd waits on
    #: their status pipe for the outcome of the start (L{tell_launcher}).
    launcher = None
    #: Where each setting came from (L{cairn.config_report.sources}): set
    #: by the twistd plugin, which alone sees the flags and the environment.
    config_sources = None

    def __init__(
        self,
        config,
        reactor,
        peer,
        db,
        stores,
        pairing,
        metrics,
        *,
        mailbox=None,
        sync=None,
        relay=None,
        turn=None,
        gauge=None,
        unpaired=None,
        limiter=None,
        signaling=None,
        presence=None,
        bus=None,
    ):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.peer = peer
        self.db = db
        self.pairing = pairing
        self.metrics = metrics
        self.mailbox = mailbox
        self.sync = sync
        self.relay = relay
        self.turn = turn
        self.gauge = gauge
        self.unpaired = unpaired
        #: The per-source handshake limiter shared by both cairn listeners.
        self.limiter = limiter
        #: Where the state lives: "sqlite", or "jetstream" with its connection in C{cluster}.
        self.storage = stores.kind
        self.cluster = stores.cluster
        #: Which node each peer is on (L{cairn.cluster.presence.IPresence}).
        self.presence = presence or LocalPresence(peer, config.node_name)
        #: Wake-ups and requests between nodes (L{cairn.cluster.bus.INodeBus}).
        self.bus = bus or LocalBus(config.node_name)
        #: The components with a life cycle, in start order (stopped in
        #: reverse): presence and the bus, pairing (the trust store), then
        #: the services that hold per-session state.
        self.components = [self.presence, self.bus] + [c for c in (pairing, mailbox, sync, relay) if c is not None]
        #: The L{SignalAnnouncer}, if CAIRN_SIGNAL_SERVERS is set.
        self.signaling = signaling
        if signaling is not None:
            signaling.setServiceParent(self)
        #: {listener name: "host:port"} once serving (GET /config, cairn-server status).
        self.bound = {}
        self.listeners = {}
        self._descriptions = {}
        #: Fires once the trust store is loaded and the listeners accept.
        self.ready = None
        #: The management API's activity L{History}: counts from once the
        #: services have loaded their persisted counters (see L{_serve}).
        self.history = None
        #: The L{ManagementAPI}, if it is served (L{serve_management}).
        self.api = None
        self._restore_sighup = None

    def serve_management(self, description, api, history) -> None:
        """Serve C{api} on the management listener C{description}; C{history} runs while serving."""
        self.api, self.history = api, history
        self.add_listener("management", description, make_site(api, reactor=self.reactor))

    def add_listener(self, name: str, description: str, factory) -> None:
        try:
            service = strports.service(description, factory)
        except Exception as e:  # each endpoint parser raises its own kind
            raise endpoint_problem(name, description, e) from None
        service.setName(name)
        service.setServiceParent(self)
        self.listeners[name] = service
        self._descriptions[name] = description

    def privilegedStartService(self):
        # twistd binds the ports here (as root, before dropping privileges).
        with tell_launcher(self.launcher):
            bind_listeners(self.listeners, self._descriptions, super().privilegedStartService)

    def when_listening(self):
        """A Deferred firing with {name: IListeningPort} once all listen."""
        names = list(self.listeners)
        waiting = [self.listeners[n]._waitingForPort for n in names]
        return gatherResults(waiting).addCallback(lambda ports: dict(zip(names, ports)))

    def startService(self):
        with tell_launcher(self.launcher):
            self._start()

    def _start(self):
        try:
            self.db.open()
        except DatabaseError as e:
            raise StartupError(f"CAIRN_DATA_DIR: {e}") from None
        if self.cluster is None:
            warn_about_disk(self.db, self.config.forward_max_total, log)
        self._restore_sessions()
        log.info("cairn node {peer_id} starting (storage: {storage})", peer_id=self.peer.peer_id, storage=self.storage)
        if self.cluster is not None:
            # Retries with backoff until NATS answers; the stores wait for it.
            self.cluster.connect()
        try:
            # Binds every port now, unless twistd did (privilegedStartService).
            bind_listeners(self.listeners, self._descriptions, super().startService)
        except BaseException:
            self.db.close_now()
            raise
        if self.handle_sighup:
            self._restore_sighup = sighup.install(self.reactor, lambda: sighup.reload(self.api, self.config))
        ports = self.when_listening()
        ports.addCallback(self._pause)
        # Each component starts loading at once (in order); the node serves once all have.
        starting = [ports] + [component.start() for component in self.components]
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
            self.bound[name] = f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}"
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
        if self.history is not None:
            self.history.start()
        if self.freeze_gc:
            # Everything made so far (modules, configuration, trust records,
            # restored sessions) lives as long as the process: keep the
            # cyclic garbage collector from walking it again and again.
            gc.freeze()
        return ports

    def _failed(self, failure):
        log.failure("cairn node could not start", failure)
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    def stopService(self):
        if self.history is not None:
            self.history.stop()
        if self._restore_sighup is not None:
            self._restore_sighup()
            self._restore_sighup = None
        d = super().stopService()  # stop listening first
        # Then stop accepting envelopes, let every service answer what it
        # accepted, and only then snapshot the sessions (see the class).
        d.addCallback(lambda _: self.peer.drain())
        # The components stop in reverse order, one after the other: the
        # session services answer what they accepted, ...
        for service in reversed(self._session_services()):
            d.addCallback(lambda _, service=service: service.stop())
        # Whatever else was queued on the database thread before this point
        # (a pairing being recorded, whose PairConfirm follows the commit)
        # finishes, and is answered, before the snapshot.
        d.addCallback(lambda _: self.db.run(_barrier_txn).addErrback(_log_barrier))
        d.addCallback(lambda _: self._save_sessions())
        # ... then pairing, the bus and presence.
        for component in reversed(self.components[: self.components.index(self.pairing) + 1]):
            d.addCallback(lambda _, component=component: component.stop())
        if self.cluster is not None:
            d.addCallback(lambda _: self.cluster.close())
        d.addCallback(lambda _: self.db.stop())
        return d

    def _session_services(self):
        """The components holding per-session state (those after pairing), in start order."""
        return self.components[self.components.index(self.pairing) + 1 :]

    def _save_sessions(self):
        snapshots = []
        for state in self.peer.snapshot_sessions():
            if state["ratchet"] is not None or state["channels"]:
                # Never send from a restored ratchet chain (§16.4): a session
                # with channels ends here, and its peer opens a new one.
                session = self.peer.sessions[state["session_id"]]
                session.close(CloseCode.GOING_AWAY, "the node is restarting; channels do not survive it")
            else:
                snapshots.append(state)
        for state in snapshots:
            # Each service's per-session state (outboxes, subscriptions)
            # goes into the snapshot with the session (§16).
            session = self.peer.sessions[state["session_id"]]
            services = {}
            for service in self._session_services():
                get = getattr(service, "session_state", None)
                value = get(session) if get is not None else None
                if value is not None:
                    services[service.name] = value
            state["services"] = services
        if snapshots:
            store.save(self.config.data_dir, snapshots)
            log.info("saved {count} session(s) for resume", count=len(snapshots))
        self.peer.freeze()
        return succeed(None)

    def _restore_sessions(self):
        snapshots = store.load_once(self.config.data_dir)
        restored = self.peer.restore_sessions(snapshots)
        for state in snapshots:
            session = self.peer.sessions.get(state["session_id"])
            if session is None:
                continue
            services = state.get("services") or {}
            for service in self._session_services():
                restore = getattr(service, "restore_session", None)
                if restore is not None:
                    restore(session, services.get(service.name))
        if restored:
            log.info("restored {count} session(s) for resume", count=restored)


def _barrier_txn(cursor):
    """Nothing: run after everything queued before it (the database thread is FIFO)."""


def _log_barrier(failure):
    log.failure("waiting for the database before saving sessions failed", failure)


def add_pressure_metrics(metrics, gauge, bounds, pairing) -> None:
    """Export descriptor pressure and what the unpaired-peer bounds did (docs/reliability.md)."""
    metrics.add_gauge("cairn_fd_in_use", "File descriptors in use (estimated between counts).", gauge.in_use)
    metrics.add_gauge("cairn_fd_limit", "The soft RLIMIT_NOFILE.", lambda: gauge.limit)
    metrics.add_gauge(
        "cairn_fd_pressure",
        "Descriptor pressure: 0 ok, 1 high (unpaired peers turned away), 2 critical (cairn connections refused).",
        lambda: ("ok", "high", "critical").index(gauge.state()),
    )
    metrics.add_counter(
        "cairn_fd_refused", "Cairn connections refused for want of descriptors.", lambda: gauge.refused
    )
    metrics.add_gauge("cairn_unpaired_sessions", "Live sessions of unpaired peers.", lambda: len(bounds))
    metrics.add_counter(
        "cairn_unpaired_dropped",
        "Sessions of unpaired peers closed by the bounds, by reason.",
        lambda: {"limit": bounds.evicted, "descriptors": bounds.refused},
        labels=["reason"],
    )
    metrics.add_counter(
        "cairn_pending_evicted", "Pending pairing requests dropped to make room.", lambda: pairing.pending.evicted
    )


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
        # The protocol's address form (docs/protocol.md §20.3.2).
        shown = f"[{host}]" if ":" in host else host
        if name == "tcp":
            addresses.append(f"tcp://{shown}:{address.port}")
        else:
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

    @raise StartupError: the directory cannot be created or written, or
        it or a secret file is open to others.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise data_dir_problem(path, e) from None
    try:
        check_data_dir(path)
    except PermissionProblem as e:
        raise StartupError(str(e)) from None
    check_writable(path)


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

    def cluster_report(self, presence):
        """No deployment to report on (C{/health} has no C{cluster})."""
        return None

    def pairing_codes(self):
        """PINs and links stay in this node's memory."""
        return None

    def deployment(self, peer, node_name, clock):
        """This node alone: C{(presence, bus, recheck)} (no re-check: every wake-up is a direct call)."""
        return LocalPresence(peer, node_name), LocalBus(node_name), None


def make_stores(config, reactor, db):
    """
    The node's stores: SQLite, or on NATS JetStream when CAIRN_CLUSTER_NATS
    is set (only then is L{cairn.cluster.node}, and so nats-py, imported;
    the seams L{cairn.cluster.presence} and L{cairn.cluster.bus} import no nats).
    """
    if not config.cluster_nats:
        return _LocalStores(db)
    from cairn.cluster.node import MissingExtra, cluster_stores

    try:
        return cluster_stores(config, reactor, db)
    except (ConfigError, MissingExtra) as e:
        raise StartupError(str(e)) from None


def make_node(config, reactor) -> CairnNode:
    """
    Build the whole node for C{config}; nothing is opened or listens until started.

    @raise StartupError: one line naming what is wrong (see L{cairn.startup}).
    """
    try:
        return _make_node(config, reactor)
    except ConfigError as e:  # a secret file unreadable, a token empty, ...
        raise StartupError(str(e)) from None


def _make_node(config, reactor) -> CairnNode:
    prepare_data_dir(config.data_dir)
    ident = load_identity(config.data_dir, config.identity_file)
    peer = make_peer(config, ident, reactor)
    space = FreeSpace(config.data_dir, config.disk_reserve, report=from_any_thread(reactor, log))
    path = os.path.join(config.data_dir, DB_FILE_NAME)
    # On JetStream nothing needs SQLite: no file is created (docs/scaling.md).
    db = NoDatabase(path, space) if config.cluster_nats else Database(reactor, path, SCHEMAS, space=space)
    stores = make_stores(config, reactor, db)
    trust = stores.trust
    pairing = make_pairing(config, peer, trust, reactor, stores.pairing_codes())
    # Bounds on what unpaired peers hold: memory and descriptors.
    peer.is_trusted = trust.is_paired
    gauge = DescriptorGauge(reactor, config.fd_reserve)
    bounds = unpaired.UnpairedSessions(
        peer, trust.is_paired, config.max_unpaired_sessions, config.max_unpaired_per_source, gauge
    )
    presence, bus, recheck = stores.deployment(peer, config.node_name, reactor)
    relay_bus = None
    if stores.cluster is not None:
        from cairn.cluster.relay_bus import NatsRelayBus

        # Relay circuits between peers on different nodes (docs/scaling.md).
        relay_bus = NatsRelayBus(stores.cluster, config.node_name, presence.locate, presence.nodes)
    mailbox, sync, relay = make_services(config, peer, trust, stores, reactor, bus, recheck, relay_bus)
    for service in (mailbox, sync, relay):
        pairing.add_purge_hook(service.purge)
    # A node among several labels its samples with its name; one alone keeps today's series.
    metrics = Metrics(peer, reactor, reactor.seconds(), node=config.node_name if config.cluster_nats else None)
    for name, collect in (
        ("mailbox", mailbox.collect_metrics),
        ("sync", sync.collect_metrics),
        ("relay", relay.collect_metrics),
        ("disk", space.collect_metrics),
    ):
        metrics.add_collector(collect, name=name)
    add_pressure_metrics(metrics, gauge, bounds, pairing)
    signaling = signal_announcer(config, ident, pairing, trust, reactor) if config.signal_servers else None
    node = CairnNode(
        config,
        reactor,
        peer,
        db,
        stores,
        pairing,
        metrics,
        mailbox=mailbox,
        sync=sync,
        relay=relay,
        turn=make_turn_service(config, peer, trust, reactor),
        gauge=gauge,
        unpaired=bounds,
        # One per-source handshake limit across both cairn listeners.
        limiter=SourceLimiter(config.max_handshakes_per_source),
        signaling=signaling,
        presence=presence,
        bus=bus,
    )
    add_cairn_listeners(node, config)
    if config.mgmt_enabled and config.mgmt_listen:
        add_management(node, config, reactor, stores, space)
    return node


def make_peer(config, ident, reactor) -> Peer:
    """The node's local L{Peer}, with the session settings of C{config}."""
    return Peer(
        ident,
        reactor,
        max_payload=config.max_payload,
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        handshake_timeout=config.handshake_timeout,
        session_ttl=config.session_ttl,
        unpaired_session_ttl=config.unpaired_session_ttl,
        log_addresses=config.log_addresses,
    )


def make_pairing(config, peer, trust, reactor, codes=None) -> PairingService:
    """Pairing of the node's peer; C{codes} shares its PINs and links (None: this node alone)."""
    return PairingService(
        peer,
        trust,
        reactor,
        psk=config.psk,
        link_addresses=config.public_addresses,
        psk_max_uses=config.psk_max_uses,
        psk_lifetime=config.psk_expires,
        psk_file=os.path.join(config.data_dir, PSK_FILE),
        max_pending_per_source=config.max_pending_per_source,
        codes=codes,
    )


def make_services(config, peer, trust, stores, reactor, bus=None, recheck=None, relay_bus=None):
    """
    The services holding per-session state: C{(mailbox, sync, relay)};
    C{bus} carries their wake-ups, C{recheck} bounds a missed one; C{relay_bus}
    (an L{cairn.relay.interfaces.IRelayBus}) reaches peers on other nodes.
    """
    mailbox = MailboxService(
        peer,
        trust,
        stores.mailbox,
        reactor,
        enabled=config.forward_enabled,
        limits=Limits(config.forward_max_per_peer, config.forward_max_total, config.forward_max_age),
        max_payload=config.max_payload,
        bus=bus,
        recheck=recheck,
    )
    sync = SyncService(
        peer,
        trust,
        stores.sync,
        reactor,
        limits=mailbox.limits,
        max_payload=config.max_payload,
        default_access=sync_access.DEFAULTS[config.sync_access],
        bus=bus,
        recheck=recheck,
    )
    relay = RelayService(
        peer,
        trust,
        reactor,
        capacity=config.relay_capacity,
        store=stores.relay,
        # Attached circuits come in on the TCP listener (§25.8).
        attached_circuits=bool(config.listen),
        reactor=reactor,
        bus=relay_bus,
        attach_address=config.relay_attach_address,
    )
    return mailbox, sync, relay


def add_cairn_listeners(node, config) -> None:
    """
    The TCP and WebSocket listeners of C{config}; both close new
    connections at once while descriptors are critical (the management
    listener never does).
    """
    settings = TransportSettings(
        max_payload=config.max_payload,
        clock=node.reactor,
        handshake_timeout=config.handshake_timeout,
        keepalive_timeout=config.keepalive_timeout,
        write_limit=config.max_write_buffer,
    )
    factories = {}
    if config.listen:
        # A connection may start with a RelayAttach (the relay's attached circuits).
        factories["tcp"] = HandOffFactory(node.peer, limiter=node.limiter, settings=settings)
    if config.ws_listen:
        factories["websocket"] = server_factory(node.peer, node.limiter, config.ws_allowed_origins, settings=settings)
    descriptions = {"tcp": config.listen, "websocket": config.ws_listen}
    for name, factory in factories.items():
        factory.gauge = node.gauge
        node.add_listener(name, descriptions[name], factory)


def add_management(node, config, reactor, stores, space) -> None:
    """The management API on C{CAIRN_MGMT_LISTEN}, reporting on C{node}."""
    mailbox, relay = node.mailbox, node.relay
    token = resolve_token(config, log)
    history = History(
        reactor,
        {
            "stored": lambda: mailbox.statuses["STORED"],
            "delivered": lambda: mailbox.delivered,
            "relay_bytes": lambda: relay.bytes_received,  # per peer (see History)
        },
    )
    exposed = warn_if_exposed(config.mgmt_listen, log, intended=config.mgmt_exposed)
    warnings = management_warnings(config.mgmt_listen, token, exposed)
    endpoints = {"tcp": config.listen, "websocket": config.ws_listen, "management": config.mgmt_listen}
    reports = NodeReports(
        storage=stores.health,
        presence=node.presence,
        cluster=stores.cluster_report(node.presence),
        disk=space.to_json,
        descriptors=node.gauge.report,
        history=history.to_json,
        status=NodeStatus(node, endpoints, warnings),
        config=lambda: {
            "settings": config_report.settings(config, node.config_sources),
            "listening": dict(node.bound),
        },
    )
    api = ManagementAPI(
        node.pairing,
        node.peer,
        token,
        node.metrics,
        reactor,
        node.metrics.started_at,
        mailbox=mailbox,
        sync=node.sync,
        relay=relay,
        reports=reports,
    )
    node.serve_management(config.mgmt_listen, api, history)
