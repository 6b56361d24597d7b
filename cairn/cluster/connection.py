"""
The node's one connection to NATS, shared by its JetStream stores.

L{JetStream} owns the asyncio thread (L{cairn.cluster.loop}) and the
nats-py client, and sets up the layout at each connection: the streams and
buckets every store uses, versioned (L{cairn.cluster.layout}).

Start-up never fails because NATS is unreachable: L{JetStream.connect}
retries with backoff (on the injected clock), logging one line per
attempt, and L{JetStream.health} says why the node is degraded -- also
while a stream just set up does not answer yet (L{cairn.cluster.ready}),
which start-up waits for, bounded, before the node is ready. Once
connected, nats-py reconnects by itself; while it is disconnected every
store call fails fast (the mailbox answers STORAGE_ERROR, never a false
ForwardAck) and the node resumes as soon as the client is back -- unless
the server it is back on has a C{max_payload} below C{CAIRN_MAX_PAYLOAD},
which is refused as at start (L{cairn.cluster.layout.check_max_payload}).
What the node may have missed while away is made up for: the writes in
flight fail at the disconnection (L{cairn.cluster.pubacks.Disconnected}),
and L{JetStream.reconnected}'s callbacks (the node bus's re-check) run
once it is "ok" again. A message nats-py drops as a slow consumer goes to
its subscription's owner (L{JetStream.drops}; docs/scaling.md, "Slow
consumers").
"""

import asyncio
import datetime

import attr
from twisted.internet import defer, task
from twisted.logger import Logger

from cairn.cluster import direct as D
from cairn.cluster import layout
from cairn.cluster.layout import LayoutError
from cairn.cluster.loop import AsyncioThread
from cairn.cluster.nats_errors import Drops, ErrorsSaid, describe
from cairn.cluster.pubacks import Acks
from cairn.cluster.reserve import Ballast, Reserve, prepare
from cairn.cluster.watch import Watchers
from cairn.config_values import shown_url

log = Logger()

#: Seconds between connection attempts at start-up: doubling up to the cap.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: Seconds a single NATS request may take before the store call fails.
REQUEST_TIMEOUT = 5.0
#: Seconds L{JetStream.close} waits for the calls in flight.
CLOSE_GRACE = 10.0
#: Seconds a PubAck may take: fsync'd writes queue behind each other on a
#: busy server (R1 on a loaded disk took over 5 s in the bench).
PUBACK_TIMEOUT = 30.0


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
    #: C{CAIRN_CLUSTER_RESERVE}: bytes of ballast kept in the reserve stream (0: none).
    reserve: int = 0
    #: An C{ssl.SSLContext} for C{tls://} servers (C{CAIRN_CLUSTER_TLS_CA};
    #: None: nats-py's default, the system's authorities).
    tls: object = None


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
        self._refused = False  # a server reconnected to failed L{cairn.cluster.layout.check_max_payload}
        self._closing = None  # the asyncio task closing the client then (kept from the GC)
        self.kv = {}  # bucket suffix -> nats KeyValue
        self._inflight = set()  # Deferreds of calls running on the loop
        #: Full mode at JetStream's storage limit (L{cairn.cluster.reserve}).
        self.reserve = Reserve(Ballast(self), settings.reserve, self.clock)
        self._ballast = True  # whether the ballast was found (or written) at the last connection
        #: The NATS errors said in the log (L{cairn.cluster.nats_errors}), and the last one since the
        #: connection was last lost or regained: /health's reason names it while disconnected.
        self.errors = ErrorsSaid(self.clock)
        self.last_error = None
        #: Who hears of the messages a subscription dropped as a slow consumer (on the NATS loop).
        self.drops = Drops()
        #: Called (on the reactor) at each reconnection, once the node is "ok" again: what other
        #: nodes published to this one's subscriptions while it was away was lost (L{_on_reconnected}).
        self.reconnected = Watchers()

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
            self.reason = f"NATS unreachable ({describe(failure.value)})"
            log.warn(
                "cairn: NATS at {servers} unreachable ({why}); retrying in {delay:g}s",
                servers=",".join(map(shown_url, self.settings.servers)),
                why=describe(failure.value),
                delay=delay,
            )
            self._retry = task.deferLater(self.clock, delay, self._attempt, min(delay * 2, BACKOFF_MAX))
            self._retry.addErrback(lambda f: f.trap(defer.CancelledError))
            return None

        def connected(_):
            self.state, self.reason = "ok", None
            self.reserve.begin(self._ballast)
            log.info(
                "cairn: storage on NATS JetStream at {servers}", servers=",".join(map(shown_url, self.settings.servers))
            )
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
        if self.settings.tls is not None:
            options["tls"] = self.settings.tls
        nc = await nats.connect(**options)
        # Once connected, never give up: nats-py reconnects in the background.
        nc.options["max_reconnect_attempts"] = -1
        try:
            layout.check_max_payload(nc.max_payload, self.settings.max_payload)
            self.js = nc.jetstream(timeout=REQUEST_TIMEOUT)
            # Deletions and purges are writes: they queue behind the
            # fsync'd writes in flight like a publish does, so they get the
            # PubAck's time (a drain's receipt purges took over 5 s at R3).
            self.js_writes = nc.jetstream(timeout=PUBACK_TIMEOUT)
            await layout.ensure(self, nc)
            self._ballast = await prepare(self, nc, self.settings.reserve)
            # Each stream's subjects as prefixes ("cairn.mbox.>" -> "cairn.mbox."): whose writes its election fails.
            configs = layout.stream_configs(self)
            streams = {name: tuple(s.rstrip(">*") for s in c.subjects) for name, c in configs.items()}
            acks = Acks(nc, PUBACK_TIMEOUT, streams=streams)
            await acks.start()  # before any write
            for subscription in acks.subscriptions:
                self.drops.add(subscription, acks.dropped)
            # Again: nats-py may have reconnected, to another server, meanwhile.
            layout.check_max_payload(nc.max_payload, self.settings.max_payload)
        except BaseException:
            await nc.close()
            raise
        self.acks = acks
        self.acks.on_no_room = lambda why: self.thread.to_reactor(self.reserve.no_room, why)
        self.nc = nc

    async def _on_error(self, error):
        if type(error).__name__ == "SlowConsumerError":
            if not self.drops.dropped(error):  # a subscription's owner, else a batch read's
                D.dropped(error)
        self.thread.to_reactor(self._error, describe(error))

    async def _on_disconnected(self):
        if self.acks is not None:
            self.acks.disconnected()  # their PubAcks may be lost with the connection: not waited for
        self.thread.to_reactor(self._note, "degraded", "disconnected from NATS; reconnecting")

    async def _on_reconnected(self):
        if self.nc is None:
            return  # still setting up: L{_connect} checks again at its end
        # The server reconnected to may not be the one checked at start:
        # the same rule for its max_payload (nats-py has read its INFO).
        try:
            layout.check_max_payload(self.nc.max_payload, self.settings.max_payload)
        except LayoutError as e:
            self._refused = True
            # Not awaited: closing cancels nats-py's reconnection task, which is running this callback.
            self._closing = asyncio.get_running_loop().create_task(self.nc.close())
            self.thread.to_reactor(self._refuse, str(e))
            return
        # nats-py (2.16, Client._attempt_reconnect) wrote every SUB again on
        # the new socket, then awaited a PING's PONG behind them before
        # calling this: the server has them all (it handles one connection's
        # commands in order; tests/test_cluster_connection.py holds nats-py
        # to it). What other nodes published to them while this node was
        # away is lost all the same: its owners make up for it (a bus
        # re-check; the writes in flight failed at the disconnection).
        self.thread.to_reactor(self._note, "ok", None)

    def _refuse(self, reason):
        """As at start for a permanent L{LayoutError}: degraded for good, said once."""
        self.state, self.reason = "degraded", reason
        log.error("cairn: {reason}", reason=reason)

    def waiting(self, reason):
        """Start-up waits for a stream to answer (L{cairn.cluster.layout.ensure}): said once, and by /health."""
        if self._stopping:
            return
        self.state, self.reason = "degraded", reason
        log.warn("cairn: {reason}", reason=reason)

    def _error(self, why):
        """
        nats-py reported an error: said in the log (rate-limited), and in
        /health's reason while the connection is lost (an authorization or
        TLS error is why a reconnection fails). Connected, the node stays
        "ok": such an error refuses one operation (a permissions violation,
        which that call's caller answers for) or drops messages (a slow
        consumer: the log says so), while /health says whether the stores
        can be used.
        """
        if self._quiet():
            return
        self.last_error = why
        self.errors.said(why)

    def _quiet(self):
        # Still connecting (L{_attempt} reports it), refused for good, or
        # closed by L{close} itself: a clean stop is not a disconnection.
        return self.nc is None or self._refused or self._stopping

    def _note(self, state, reason):
        if self._quiet():
            return
        if state == "ok" and self.acks is not None:
            self.acks.clear()  # a server restarted: its streams write again (or say so)
        if state == "ok" and self.state != "ok":
            log.info("cairn: reconnected to NATS")
        elif state == "degraded" and self.state == "ok":
            log.warn("cairn: {reason}", reason=reason)
        if state != self.state:
            self.last_error = None  # what is said from now on is about the new state
        self.state, self.reason = state, reason
        if state == "ok":
            self.reconnected()

    def health(self):
        """C{(ok, reason)}: whether the stores can be used now, and why not."""
        if self.nc is not None and self.nc.is_connected:
            if self.reserve.full:
                return False, self.reserve.reason()
            stalled = self.acks.stalled_since if self.acks is not None else None
            if stalled is None:
                return True, None
            return False, (
                f"JetStream has stored no write since {_utc(stalled)} ({self.acks.stalled_why}; writes are"
                " refused): see the NATS servers' logs and storage -- a full disk stops a stream until its"
                " server is restarted"
            )
        reason = self.reason or "disconnected from NATS; reconnecting"
        return False, reason if self.last_error is None else f"{reason} (last NATS error: {self.last_error})"

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
        self.reserve.stop()
        if self._retry is not None and not self._retry.called:
            self._retry.cancel()

        async def drain():
            if self.nc is not None and not self.nc.is_closed:
                try:
                    await self.nc.drain()
                except Exception:
                    await self.nc.close()

        # Let the calls in flight finish (a few seconds at most) before the loop goes. Stopping
        # the loop cancels what still runs on it (cairn.cluster.loop): a mailbox removal cancelled
        # there after some of its tombstones were confirmed does not count those out of this
        # node's depths (MaybeRemoved.ended counts out only the writes it left unanswered), which
        # nothing reads afterwards: the node's services waited for their store calls before this
        # (StoreService.stop), the management API stopped listening first, and neither this
        # connection nor a store on it starts again (tests/test_cluster_mailbox_counted.py
        # WritesEndedTests); the next process loads the depths from the stream.
        waiting = defer.DeferredList([_observe(d) for d in list(self._inflight)])
        waiting.addTimeout(CLOSE_GRACE, self.reactor, onTimeoutCancel=lambda result, timeout: None)
        waiting.addCallback(lambda _: self.thread.run(drain) if self.thread.running else None)
        waiting.addErrback(lambda f: log.warn("cairn: closing NATS: {why}", why=f.getErrorMessage()))
        return waiting.addCallback(lambda _: self.thread.stop())


def _observe(d):
    observer = defer.Deferred()
    d.addBoth(lambda result: (observer.callback(None), result)[1])
    return observer


def _utc(seconds):
    """C{seconds} since the epoch as an ISO 8601 UTC time, to the second."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
