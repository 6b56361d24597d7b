"""
The server node's life cycle: L{CairnNode}, a L{Peer} with its
components and listeners (built by L{cairn.service.make_node}).

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

import attr
from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults, succeed
from twisted.logger import Logger

from cairn import sdnotify, sighup
from cairn.cluster.bus import LocalBus
from cairn.cluster.presence import LocalPresence
from cairn.db import DatabaseError
from cairn.session import store
from cairn.startup import (
    StartupError,
    bind_listeners,
    endpoint_problem,
    exit_with_status,
    tell_launcher,
    warn_about_disk,
)
from cairn.wire.constants import CloseCode

#: The node's log lines keep the namespace they had before the life cycle
#: left cairn.service (operators filter on it).
log = Logger(namespace="cairn.service")


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Process:
    """
    How the node's process is run, given to L{CairnNode} (through
    L{cairn.service.make_node}). The default is an application embedding
    a node, which owns its process; the twistd plugin, whose process is
    the node's alone, sets the rest.
    """

    #: Freeze the objects made at start-up once serving (C{gc.freeze}),
    #: and collect less often (L{GC_THRESHOLDS}).
    freeze_gc: bool = False
    #: Answer SIGHUP with L{cairn.sighup.reload} instead of dying of it.
    handle_sighup: bool = False
    #: twistd's options: a daemonizing twistd waits on their status pipe
    #: for the outcome of the start (L{tell_launcher}).
    launcher: object = None
    #: A start that fails once the reactor runs ends the process with
    #: status 1 (L{cairn.startup.exit_with_status}), not twistd's 0.
    exit_status: bool = False
    #: Where each setting came from (L{cairn.config_report.sources}): only
    #: the plugin sees the flags and the environment.
    config_sources: object = None
    #: Tell systemd (C{NOTIFY_SOCKET}, C{Type=notify}) READY, STATUS, STOPPING (L{cairn.sdnotify}).
    tell_systemd: bool = False


#: The cyclic collector's thresholds once a node's own process serves
#: (CPython's default: 700, 10, 10). A full collection walks every live
#: session's objects (about a million at 19,000 sessions); a reconnect
#: storm of 18,500 sessions ran 59 of them in 400 s on the node, 178 s of
#: wall time on a loaded machine (bench/README.rst, issue 20), most of it
#: triggered by the young objects each resume makes. Collecting the
#: young generation every 20,000 allocations instead of 700 lets far more
#: of them die by reference counting first, so fewer reach the old
#: generation and a full collection is due far less often; each young
#: collection stays a few milliseconds.
GC_THRESHOLDS = (20_000, 10, 10)


def with_backlog(description: str, backlog: int = None) -> str:
    """
    C{description} with C{:backlog=N} added when it is a C{tcp} or C{tcp6}
    endpoint that names no backlog of its own (Twisted's default is 50).
    """
    if backlog is None or description.split(":", 1)[0] not in ("tcp", "tcp6") or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


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
        addresses,
        process=None,
    ):
        super().__init__()
        self.config = config
        #: How the process is run (L{Process}).
        self.process = process if process is not None else Process()
        #: The addresses of pairing links (L{cairn.addresses.LinkAddresses}), told when the listeners are bound.
        self.addresses = addresses
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

    @property
    def config_sources(self):
        """Where each setting came from (L{Process.config_sources}), or None."""
        return self.process.config_sources

    def serve_management(self, description, api, history) -> None:
        """Serve C{api} on the management listener C{description}; C{history} runs while serving."""
        from cairn.management.app import make_site  # klein: only a node that serves the API (issue 19)

        self.api, self.history = api, history
        self.add_listener("management", description, make_site(api, reactor=self.reactor))

    def add_listener(self, name: str, description: str, factory, backlog: int = None) -> None:
        """
        Listen on the endpoint C{description} (errors name C{name}'s
        variable); C{backlog}: the accept queue of a C{tcp}/C{tcp6}
        endpoint whose description sets none.
        """
        try:
            service = strports.service(with_backlog(description, backlog), factory)
        except Exception as e:  # each endpoint parser raises its own kind
            raise endpoint_problem(name, description, e) from None
        service.setName(name)
        service.setServiceParent(self)
        self.listeners[name] = service
        self._descriptions[name] = description

    def privilegedStartService(self):
        # twistd binds the ports here (as root, before dropping privileges).
        with tell_launcher(self.process.launcher):
            bind_listeners(self.listeners, self._descriptions, super().privilegedStartService)

    def when_listening(self):
        """A Deferred firing with {name: IListeningPort} once all listen."""
        names = list(self.listeners)
        # Twisted's private _waitingForPort (StreamServerEndpointService, no public accessor): the port's Deferred.
        waiting = [self.listeners[n]._waitingForPort for n in names]
        return gatherResults(waiting).addCallback(lambda ports: dict(zip(names, ports)))

    def startService(self):
        with tell_launcher(self.process.launcher):
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
        if self.process.handle_sighup:
            self._restore_sighup = sighup.install(self.reactor, lambda: sighup.reload(self.api, self.config))
        ports = self.when_listening()
        ports.addCallback(self._pause)
        # Each component starts loading at once (in order); the node serves once all have.
        starting = [ports] + [component.start() for component in self.components]
        self.ready = gatherResults(starting, consumeErrors=True)
        self.ready.addCallback(lambda results: self._serve(results[0]))
        self.ready.addErrback(self._failed)
        # Started, for systemd: SIGHUP handled, listeners bound (a reload may come now).
        self._tell_systemd("READY=1\nSTATUS=loading the stores" if not self.ready.called else "READY=1")

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
        self.addresses.listening(ports)
        self._tell_systemd("STATUS=serving")
        if self.signaling is not None:
            self.signaling.node_ready()
        if self.history is not None:
            self.history.start()
        if self.process.freeze_gc:
            # Everything made so far (modules, configuration, trust records,
            # restored sessions) lives as long as the process: keep the
            # cyclic garbage collector from walking it again and again.
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        return ports

    def _failed(self, failure):
        log.failure("cairn node could not start", failure)
        if getattr(self.reactor, "running", False):
            if self.process.exit_status:
                exit_with_status(1)
            self.reactor.stop()

    def _tell_systemd(self, state):
        if self.process.tell_systemd:
            sdnotify.notify(state)

    def stopService(self):
        self._tell_systemd("STOPPING=1")
        if self.history is not None:
            self.history.stop()
        if self._restore_sighup is not None:
            self._restore_sighup()
            self._restore_sighup = None
        d = super().stopService()  # stop listening first
        # Then stop accepting envelopes, let every service answer what it
        # accepted, and only then snapshot the sessions (see the class).
        steps = [("draining the sessions", self.peer.drain)]
        # The components stop in reverse order, one after the other: the
        # session services answer what they accepted, ...
        steps += [(_stopping(service), service.stop) for service in reversed(self._session_services())]
        # Whatever else was queued on the database thread before this point
        # (a pairing being recorded, whose PairConfirm follows the commit)
        # finishes, and is answered, before the snapshot.
        steps.append(("waiting for the database before saving sessions", lambda: self.db.run(_barrier_txn)))
        steps.append(("saving the sessions", self._save_sessions))
        # ... then pairing, the bus and presence.
        pairing_on = self.components[: self.components.index(self.pairing) + 1]
        steps += [(_stopping(component), component.stop) for component in reversed(pairing_on)]
        if self.cluster is not None:
            steps.append(("closing the NATS connection", self.cluster.close))
        steps.append(("closing the database", self.db.stop))
        # A step that fails is logged and the stop goes on: twistd would
        # drop the failure silently, and skip closing the database with it.
        for what, step in steps:
            d.addCallback(lambda _, step=step: step())
            d.addErrback(_step_failed, what)
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
            try:
                store.save(self.config.data_dir, snapshots)
            except OSError as e:
                # The stop goes on (the database still closes); the peers
                # find no session to resume and run a new handshake (§16).
                log.warn(
                    "could not save {count} session(s) for resume ({why}): their peers will open new sessions",
                    count=len(snapshots),
                    why=e.strerror or e,
                )
            else:
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


def _stopping(component):
    return f"stopping {type(component).__name__}"


def _step_failed(failure, what):
    log.failure("cairn node: {what} failed while stopping; the stop goes on", failure, what=what)
