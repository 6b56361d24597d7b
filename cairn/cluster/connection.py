"""
The node's one connection to NATS, shared by its JetStream stores.

L{JetStream} owns the asyncio thread (L{cairn.cluster.loop}), the nats-py
client and the layout: the streams and buckets every store uses, set up
idempotently and versioned. A key C{layout} in the C{<prefix>_meta}
bucket records the layout version; a node finding a newer one refuses to
start with one line, an older one is upgraded by L{_UPGRADES} (idempotent
and crash-safe: the version is recorded only once the upgrade is done, and
an interrupted one runs again at the next start).

Start-up never fails because NATS is unreachable: L{JetStream.connect}
retries with backoff (on the injected clock), logging one line per
attempt, and L{JetStream.health} says why the node is degraded. Once
connected, nats-py reconnects by itself; while it is disconnected every
store call fails fast (the mailbox answers STORAGE_ERROR, never a false
ForwardAck) and the node resumes as soon as the client is back -- unless
the server it is back on has a C{max_payload} below C{CAIRN_MAX_PAYLOAD},
which is refused as at start (L{_check_max_payload}).
"""

import asyncio

import attr
from twisted.internet import defer, task
from twisted.logger import Logger

from cairn.cluster.direct import Acks
from cairn.cluster.loop import AsyncioThread

log = Logger()

#: The layout version this code writes and reads (see docs/scaling.md):
#: 2 since a removed message's tombstone carries its receipt (mailbox_layout).
LAYOUT = 2
#: Seconds between connection attempts at start-up: doubling up to the cap.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: Seconds a single NATS request may take before the store call fails.
REQUEST_TIMEOUT = 5.0
#: Seconds L{JetStream.close} waits for the calls in flight.
CLOSE_GRACE = 10.0
#: Seconds a PubAck may take: fsync'd writes queue behind each other on a
#: busy server (R1 on a loaded disk took over 5 s in the bench).
PUBACK_TIMEOUT = 30.0


class LayoutError(Exception):
    """
    The streams cannot be set up now; C{str()} is one line for the operator.

    @ivar permanent: retrying cannot help (a newer layout): the node
        stays degraded; otherwise (e.g. "no suitable peers for placement"
        while a cluster forms, or too many replicas asked for) it retries.
    """

    def __init__(self, message, permanent=False):
        super().__init__(message)
        self.permanent = permanent


@attr.s(frozen=True, auto_attribs=True)
class Settings:
    """What L{JetStream} needs from the config (C{CAIRN_CLUSTER_*})."""

    servers: tuple
    replicas: int = 3
    prefix: str = "cairn"
    creds_file: str = None
    #: C{CAIRN_MAX_PAYLOAD}: NATS's C{max_payload} must be at least this
    #: (None: not checked).
    max_payload: int = None


class JetStream:
    """
    The NATS connection and layout of one node.

    @ivar state: C{"connecting"}, C{"ok"} or C{"degraded"}.
    @ivar reason: why it is not C{"ok"} (one line, no secrets).
    """

    def __init__(self, reactor, settings, clock=None):
        self.reactor = reactor
        self.clock = clock or reactor
        self.settings = settings
        self.prefix = settings.prefix
        self.thread = AsyncioThread(reactor)
        self.nc = None
        self.js = self.js_writes = None
        self.acks = None
        self.state = "connecting"
        self.reason = "not connected to NATS yet"
        self._waiters = []
        self._stopping = False
        self._retry = None
        self._refused = False  # a server reconnected to failed L{_check_max_payload}
        self._closing = None  # the asyncio task closing the client then (kept from the GC)
        self.kv = {}  # bucket suffix -> nats KeyValue
        self._inflight = set()  # Deferreds of calls running on the loop

    # Names

    def stream(self, name):
        """The stream called C{name} under this deployment's prefix."""
        return f"{self.prefix}_{name}"

    def subject(self, *parts):
        return ".".join((self.prefix, *parts))

    # Life cycle

    def when_ready(self):
        """A Deferred firing once connected and the layout is in place."""
        if self.state == "ok":
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def connect(self):
        """Connect (retrying with backoff until connected or stopped) and set the layout up; fires once ready."""
        self.thread.start()
        self._attempt(BACKOFF_FIRST)
        return self.when_ready()

    def _attempt(self, delay):
        if self._stopping:
            return
        d = self.thread.run(self._connect)

        def failed(failure):
            if self._stopping:
                return None
            if failure.check(LayoutError):
                self.state, self.reason = "degraded", failure.getErrorMessage()
                if failure.value.permanent:
                    log.error("cairn: {reason}", reason=self.reason)
                    return None
                log.warn("cairn: {reason}; retrying in {delay:g}s", reason=self.reason, delay=delay)
                self._retry = task.deferLater(self.clock, delay, self._attempt, min(delay * 2, BACKOFF_MAX))
                self._retry.addErrback(lambda f: f.trap(defer.CancelledError))
                return None
            self.state = "degraded"
            self.reason = f"NATS unreachable ({_describe(failure.value)})"
            log.warn(
                "cairn: NATS at {servers} unreachable ({why}); retrying in {delay:g}s",
                servers=",".join(self.settings.servers),
                why=_describe(failure.value),
                delay=delay,
            )
            self._retry = task.deferLater(self.clock, delay, self._attempt, min(delay * 2, BACKOFF_MAX))
            self._retry.addErrback(lambda f: f.trap(defer.CancelledError))
            return None

        def connected(_):
            self.state, self.reason = "ok", None
            log.info("cairn: storage on NATS JetStream at {servers}", servers=",".join(self.settings.servers))
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

        d.addCallbacks(connected, failed)

    async def _connect(self):
        import nats

        options = dict(
            servers=list(self.settings.servers),
            name="cairn-server",
            connect_timeout=2,
            reconnect_time_wait=1,
            # Try each server twice; past that, L{_attempt} backs off.
            max_reconnect_attempts=1,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        if self.settings.creds_file:
            options["user_credentials"] = self.settings.creds_file
        nc = await nats.connect(**options)
        # Once connected, never give up: nats-py reconnects in the background.
        nc.options["max_reconnect_attempts"] = -1
        try:
            _check_max_payload(nc.max_payload, self.settings.max_payload)
            self.js = nc.jetstream(timeout=REQUEST_TIMEOUT)
            # Deletions and purges are writes: they queue behind the
            # fsync'd writes in flight like a publish does, so they get the
            # PubAck's time (a drain's receipt purges took over 5 s at R3).
            self.js_writes = nc.jetstream(timeout=PUBACK_TIMEOUT)
            await self._ensure_layout(nc)
            # Again: nats-py may have reconnected, to another server, meanwhile.
            _check_max_payload(nc.max_payload, self.settings.max_payload)
        except BaseException:
            await nc.close()
            raise
        self.acks = Acks(nc, PUBACK_TIMEOUT)
        self.nc = nc

    async def _on_error(self, error):
        self.thread.to_reactor(self._note, None, f"NATS error ({_describe(error)})")

    async def _on_disconnected(self):
        self.thread.to_reactor(self._note, "degraded", "disconnected from NATS; reconnecting")

    async def _on_reconnected(self):
        if self.nc is None:
            return  # still setting up: L{_connect} checks again at its end
        # The server reconnected to may not be the one checked at start:
        # the same rule for its max_payload (nats-py has read its INFO).
        try:
            _check_max_payload(self.nc.max_payload, self.settings.max_payload)
        except LayoutError as e:
            self._refused = True
            # Not awaited: closing cancels nats-py's reconnection task, which is running this callback.
            self._closing = asyncio.get_running_loop().create_task(self.nc.close())
            self.thread.to_reactor(self._refuse, str(e))
            return
        self.thread.to_reactor(self._note, "ok", None)

    def _refuse(self, reason):
        """As at start for a permanent L{LayoutError}: degraded for good, said once."""
        self.state, self.reason = "degraded", reason
        log.error("cairn: {reason}", reason=reason)

    def _note(self, state, reason):
        if self.nc is None or self._refused:
            return  # still connecting (L{_attempt} reports it), or refused for good
        if state == "ok" and self.state != "ok":
            log.info("cairn: reconnected to NATS")
        elif state == "degraded" and self.state == "ok":
            log.warn("cairn: {reason}", reason=reason)
        if state is not None:
            self.state, self.reason = state, reason

    def health(self):
        """C{(ok, reason)}: whether the stores can be used now, and why not."""
        if self.nc is not None and self.nc.is_connected:
            return True, None
        return False, self.reason or "disconnected from NATS; reconnecting"

    def run(self, function, *args, **kwargs):
        """Run coroutine function C{function} on the NATS loop; a Deferred of its result."""
        d = self.thread.run(function, *args, **kwargs)
        self._inflight.add(d)

        def done(result):
            self._inflight.discard(d)
            return result

        return d.addBoth(done)

    def close(self):
        """Stop retrying, drain the client (what was published is flushed) and stop the loop thread."""
        self._stopping = True
        if self._retry is not None and not self._retry.called:
            self._retry.cancel()

        async def drain():
            if self.nc is not None and not self.nc.is_closed:
                try:
                    await self.nc.drain()
                except Exception:
                    await self.nc.close()

        # Let the calls in flight finish (a few seconds at most) before the loop goes.
        waiting = defer.DeferredList([_observe(d) for d in list(self._inflight)])
        waiting.addTimeout(CLOSE_GRACE, self.reactor, onTimeoutCancel=lambda result, timeout: None)
        waiting.addCallback(lambda _: self.thread.run(drain) if self.thread.running else None)
        waiting.addErrback(lambda f: log.warn("cairn: closing NATS: {why}", why=f.getErrorMessage()))
        return waiting.addCallback(lambda _: self.thread.stop())

    # Layout

    def stream_configs(self):
        """{stream name: StreamConfig} of layout L{LAYOUT}."""
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        common = dict(
            storage=StorageType.FILE,
            num_replicas=self.settings.replicas,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            # Expiry is the node's (it owes EXPIRED receipts): no server-side age.
            max_age=0,
            allow_direct=True,
        )
        mbox = self.stream("mbox")
        sync = self.stream("sync")
        return {
            mbox: StreamConfig(
                name=mbox,
                description=f"cairn mailbox, layout {LAYOUT}",
                # rcpt: layout 1's receipts (none once upgraded); rdone: the consumed markers.
                subjects=[self.subject("mbox", ">"), self.subject("rcpt", ">"), self.subject("rdone", "*")],
                # An acknowledged message is replaced by its tombstone.
                allow_rollup_hdrs=True,
                **common,
            ),
            sync: StreamConfig(
                name=sync,
                description=f"cairn sync hub, layout {LAYOUT}",
                subjects=[self.subject("sync", ">"), self.subject("syncids", ">")],
                # One publish = the dedup id and the update, committed together.
                allow_atomic=True,
                **common,
            ),
        }

    #: KV bucket suffixes of layout L{LAYOUT}: overrides, cursors, trust, relay.
    BUCKETS = ("limits", "cursors", "trust", "relay")

    async def _ensure_layout(self, nc):
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

        js = self.js
        replicas = self.settings.replicas

        async def bucket(suffix):
            config = KeyValueConfig(
                bucket=f"{self.prefix}_{suffix}", history=1, replicas=replicas, storage=StorageType.FILE
            )
            try:
                return await js.create_key_value(config=config)
            except BadRequestError as e:
                raise LayoutError(_layout_problem(e, replicas)) from None

        meta = self.kv["meta"] = await bucket("meta")
        try:
            found = int((await meta.get("layout")).value)
        except KeyNotFoundError:
            found = None
        if found is not None and found > LAYOUT:
            raise LayoutError(
                f"the JetStream layout under prefix {self.prefix!r} is version {found}, newer than this node's"
                f" {LAYOUT}: upgrade cairn-server (or set CAIRN_CLUSTER_PREFIX to a new deployment)",
                permanent=True,
            )
        for version in range(found or LAYOUT, LAYOUT):
            await _UPGRADES[version](self, nc)
        for config in self.stream_configs().values():
            try:
                await js.add_stream(config=config)
            except BadRequestError as e:
                if "different configuration" not in str(e) and e.err_code != 10058:
                    raise LayoutError(_layout_problem(e, replicas)) from None
                await js.update_stream(config=config)
        for suffix in self.BUCKETS:
            self.kv[suffix] = await bucket(suffix)
        if found is None:
            try:
                await meta.create("layout", str(LAYOUT).encode())
            except KeyWrongLastSequenceError:
                pass  # another node wrote it first; the streams above are the same
        elif found < LAYOUT:
            await meta.put("layout", str(LAYOUT).encode())


async def _upgrade_1(jet, nc):
    from cairn.cluster.mailbox_layout import upgrade_from_1

    converted = await upgrade_from_1(jet, nc)
    jet.thread.to_reactor(lambda: log.info("cairn: JetStream layout 1 upgraded to 2 ({n} receipts moved)", n=converted))


#: Upgrades from layout N to N + 1 (coroutine functions of the L{JetStream} and the client).
_UPGRADES = {1: _upgrade_1}


def _observe(d):
    observer = defer.Deferred()
    d.addBoth(lambda result: (observer.callback(None), result)[1])
    return observer


def _check_max_payload(nats_limit, max_payload):
    """
    Refuse (a permanent L{LayoutError}) a NATS server whose C{max_payload}
    is below C{CAIRN_MAX_PAYLOAD}. A mailbox message, a sync update or a
    relayed message is one NATS message: its payload is at most
    C{CAIRN_MAX_PAYLOAD} less the envelope's overhead (256 bytes or more),
    which leaves room for the subject and headers the stores add
    (tests/test_cluster_payload.py checks the limit case on a real server).
    Without this check the largest messages would fail one by one, each
    answered STORAGE_ERROR as if JetStream were away.
    """
    if max_payload is not None and nats_limit < max_payload:
        raise LayoutError(
            f"CAIRN_MAX_PAYLOAD ({max_payload}) is above the NATS server's max_payload ({nats_limit}):"
            f" lower CAIRN_MAX_PAYLOAD or set max_payload to at least {max_payload} in nats-server.conf",
            permanent=True,
        )


def _layout_problem(error, replicas):
    text = getattr(error, "description", None) or str(error)
    if "insufficient resources" in text or "replicas" in text:
        return (
            f"NATS cannot place {replicas} replica(s) ({text}): set CAIRN_CLUSTER_REPLICAS to at most"
            " the number of JetStream servers"
        )
    return f"cannot set up the JetStream streams ({text})"


def _describe(error):
    """One line about a connection error, without secrets (nats-py never puts creds in them)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
