"""
The node's object graph, built by one function that tests call directly.

L{make_node} turns a L{Config} into a L{CairnNode} (its life cycle:
L{cairn.node}): the local L{Peer}, the stores (L{cairn.stores}: SQLite,
or NATS JetStream), the trust store and pairing service, the services
holding per-session state, the management API, and one listening
service per enabled endpoint (through C{strports.service}, so a busy port
aborts start-up). The helpers below each build one part of it.
"""

import os

from twisted.logger import Logger

from cairn import config_report
from cairn.addresses import LinkAddresses
from cairn.config import ConfigError
from cairn.diskspace import FreeSpace
from cairn.mailbox.interfaces import Limits
from cairn.mailbox.service import MailboxService
from cairn.management.metrics import Metrics
from cairn.node import CairnNode
from cairn.pairing.psk import PSK_FILE
from cairn.pairing.service import PairingService
from cairn.permissions import PermissionProblem, check_data_dir
from cairn.relay.service import RelayService
from cairn.session import unpaired
from cairn.session.peer import Peer
from cairn.startup import StartupError, check_writable, data_dir_problem, from_any_thread, load_identity
from cairn.stores import make_database, make_stores
from cairn.sync import access as sync_access
from cairn.sync.service import SyncService
from cairn.transport.fds import DescriptorGauge
from cairn.transport.handoff import HandOffFactory
from cairn.transport.limits import SourceLimiter
from cairn.transport.settings import TransportSettings
from cairn.transport.websocket import server_factory
from cairn.turn.service import make_turn_service

log = Logger()


def make_node(config, reactor, process=None) -> CairnNode:
    """
    Build the whole node for C{config}; nothing is opened or listens until started.

    @param process: how the process is run (L{cairn.node.Process}; default:
        embedded in an application that owns its process).

    @raise StartupError: one line naming what is wrong (see L{cairn.startup}).
    """
    try:
        return _make_node(config, reactor, process)
    except ConfigError as e:  # a secret file unreadable, a token empty, ...
        raise StartupError(str(e)) from None


def _make_node(config, reactor, process) -> CairnNode:
    prepare_data_dir(config.data_dir)
    ident = load_identity(config.data_dir, config.identity_file)
    space = FreeSpace(config.data_dir, config.disk_reserve, report=from_any_thread(reactor, log))
    db = make_database(config, reactor, space)
    stores = make_stores(config, reactor, db)
    trust = stores.trust
    peer = make_peer(config, ident, reactor, is_trusted=trust.is_paired)
    addresses = LinkAddresses(config.public_addresses)
    pairing = make_pairing(config, peer, trust, reactor, stores.pairing_codes(), addresses)
    # Bounds on what unpaired peers hold: memory and descriptors.
    gauge = DescriptorGauge(reactor, config.fd_reserve)
    bounds = unpaired.UnpairedSessions(
        peer, trust.is_paired, config.max_unpaired_sessions, config.max_unpaired_per_source, gauge
    )
    presence, bus, recheck = stores.deployment(peer, config.node_name, reactor)
    relay_bus = stores.relay_bus(presence, config.node_name)
    mailbox, sync, relay = make_services(config, peer, pairing, stores, reactor, bus, recheck, relay_bus)
    metrics = make_metrics(config, peer, reactor, mailbox=mailbox, sync=sync, relay=relay, disk=space)
    if stores.cluster is not None:  # JetStream's storage reserve (docs/scaling.md)
        metrics.add_collector(stores.cluster.reserve.collect_metrics, name="reserve")
    add_pressure_metrics(metrics, gauge, bounds, pairing)
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
        signaling=signal_announcer(config, ident, pairing, trust, reactor) if config.signal_servers else None,
        presence=presence,
        bus=bus,
        addresses=addresses,
        process=process,
    )
    add_cairn_listeners(node, config)
    if config.mgmt_enabled and config.mgmt_listen:
        add_management(node, config, reactor, stores, space)
    return node


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


def make_peer(config, ident, reactor, is_trusted=None) -> Peer:
    """The node's local L{Peer}, with the session settings of C{config}; C{is_trusted}: see L{Peer}."""
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
        is_trusted=is_trusted,
    )


def make_pairing(config, peer, trust, reactor, codes=None, addresses=None) -> PairingService:
    """
    Pairing of the node's peer; C{codes} shares its PINs and links (None:
    this node alone); C{addresses} gives the addresses its links carry
    (default: C{CAIRN_PUBLIC_ADDRESSES}).
    """
    return PairingService(
        peer,
        trust,
        reactor,
        psk=config.psk,
        link_addresses=config.public_addresses if addresses is None else addresses,
        psk_max_uses=config.psk_max_uses,
        psk_lifetime=config.psk_expires,
        psk_file=os.path.join(config.data_dir, PSK_FILE),
        max_pending_per_source=config.max_pending_per_source,
        codes=codes,
    )


def make_services(config, peer, pairing, stores, reactor, bus=None, recheck=None, relay_bus=None):
    """
    The services holding per-session state: C{(mailbox, sync, relay)}, each
    forgetting a peer C{pairing} unpairs; C{bus} carries their wake-ups,
    C{recheck} bounds a missed one; C{relay_bus} (an
    L{cairn.relay.interfaces.IRelayBus}) reaches peers on other nodes.
    """
    trust = pairing.trust
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
    for service in (mailbox, sync, relay):
        pairing.add_purge_hook(service.purge)
    return mailbox, sync, relay


def make_metrics(config, peer, reactor, **parts) -> Metrics:
    """The node's metrics, collecting from each of C{parts} ({name: its C{collect_metrics}}, in order)."""
    # A node among several labels its samples with its name; one alone keeps today's series.
    metrics = Metrics(peer, reactor, reactor.seconds(), node=config.node_name if config.cluster_nats else None)
    for name, part in parts.items():
        metrics.add_collector(part.collect_metrics, name=name)
    return metrics


def add_pressure_metrics(metrics, gauge, bounds, pairing) -> None:
    """Export descriptor pressure and what the unpaired-peer bounds did (docs/reliability.md)."""
    metrics.add_gauge("cairn_fd_in_use", "File descriptors in use (estimated between counts).", gauge.in_use)
    metrics.add_gauge("cairn_fd_limit", "The soft RLIMIT_NOFILE.", lambda: gauge.limit)
    metrics.add_gauge(
        "cairn_fd_pressure",
        "Descriptor pressure: 0 ok, 1 high (unpaired peers turned away), 2 critical (cairn connections refused).",
        lambda: ("ok", "high", "critical").index(gauge.state()),
    )
    metrics.add_counter("cairn_fd_refused", "Cairn connections refused for want of descriptors.", lambda: gauge.refused)
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


#: The accept queue of the cairn listeners unless their endpoint strings
#: set one (Twisted's default is 50): when a node restarts or a network
#: comes back, its devices all redial at once, and an overflowing queue
#: leaves them in SYN retransmission for seconds (docs/deployment.md,
#: "Limits"; bench/README.rst, the storm). The kernel caps it at
#: net.core.somaxconn.
LISTEN_BACKLOG = 4096


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
        factories["tcp"] = HandOffFactory(node.peer, limiter=node.limiter, settings=settings, gauge=node.gauge)
    if config.ws_listen:
        factories["websocket"] = server_factory(
            node.peer, node.limiter, config.ws_allowed_origins, settings=settings, gauge=node.gauge
        )
    descriptions = {"tcp": config.listen, "websocket": config.ws_listen}
    for name, factory in factories.items():
        node.add_listener(name, descriptions[name], factory, backlog=LISTEN_BACKLOG)


def add_management(node, config, reactor, stores, space) -> None:
    """The management API on C{CAIRN_MGMT_LISTEN}, reporting on C{node}."""
    # Imported here, not at the top: klein, werkzeug, segno and the API's
    # modules cost a node without the API about 7 MB of RSS (issue 19).
    from cairn.management.app import ManagementAPI, warn_if_exposed
    from cairn.management.history import History
    from cairn.management.reports import NodeReports
    from cairn.management.status import NodeStatus, management_warnings
    from cairn.management.token import resolve_token

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
