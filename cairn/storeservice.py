"""
What the store-backed services (mailbox, sync hub) share.

A L{StoreService} registers its handlers with
L{cairn.session.guards.register_service} (paired peers only, one error policy), runs its store's
periodic sweep on the injected clock, tracks store calls in progress, and
stops cleanly: no more requests, then every call in progress finished and
whatever the store queued committed.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from cairn.cluster.bus import LocalBus
from cairn.mailbox.interfaces import StoreFull
from cairn.pairing.interfaces import REVOKED
from cairn.session.guards import register_service

log = Logger()


def observe(d):
    """A Deferred firing (with None) when C{d} does, leaving C{d}'s result alone."""
    observer = defer.Deferred()

    def fire(result):
        observer.callback(None)
        return result

    d.addBoth(fire)
    return observer


class RetriedPurges:
    """
    The pairing purge hook's part that a full store made fail, tried
    again by the service's periodic sweep until it succeeds (mailbox, sync
    hub, relay). Needs C{name}, C{trust}, C{purge(peer_id)}, C{held_for()}
    and C{purges_pending}, a set: the unpaired peers whose purge met a
    full store (DELETE /peers/{id} answered 507). The service calls
    L{_retry_purges} from its sweep.
    """

    def held_for(self):
        """The peer ids the store holds something for (cached figures); subclasses implement it."""
        raise NotImplementedError

    def _purging(self, peer_id, d):
        """
        C{d}, the store's purge of C{peer_id}; one that meets a full store
        is remembered, for the sweep to try again (L{_retry_purges}), and
        the failure goes on to the caller (a 507).
        """

        def purged(result):
            self.purges_pending.discard(peer_id)
            return result

        def failed(failure):
            if failure.check(StoreFull):
                self.purges_pending.add(peer_id)
            return failure

        return d.addCallbacks(purged, failed)

    @defer.inlineCallbacks
    def _retry_purges(self):
        """
        Purge again, at each sweep until it succeeds, the unpaired peers
        whose purge met a full store: those this node saw fail, and (so
        that a restart, or a purge failed on another node of a cluster,
        loses none) any peer the store still holds something for though
        its pairing is revoked. A peer paired again meanwhile is left
        alone: what is held for it now is its own. Failures are logged,
        one line each.
        """
        candidates = set(self.purges_pending)
        candidates.update(peer_id for peer_id in self.held_for() if not self.trust.is_paired(peer_id))
        for peer_id in sorted(candidates):
            if self.trust.is_paired(peer_id):
                self.purges_pending.discard(peer_id)
                continue
            if peer_id not in self.purges_pending:
                record = yield self.trust.get(peer_id)
                if record is None or record.state != REVOKED:
                    continue
            try:
                yield self.purge(peer_id)
            except StoreFull as e:
                log.warn(
                    "{name}: purging {peer_id} failed again ({why}); the next sweep retries",
                    name=self.name,
                    peer_id=peer_id,
                    why=str(e),
                )


class StoreService(RetriedPurges):
    """
    Base of a service backed by a store with a periodic C{sweep()}.

    @cvar name: names the service in logs and Close reasons.
    """

    name = "service"

    def __init__(self, peer, trust, store, clock, sweep_interval, bus=None, recheck=None):
        self.peer = peer
        #: The L{INodeBus} its wake-ups go through (one node alone: the direct call).
        self.bus = bus if bus is not None else LocalBus(None)
        #: Seconds between re-checks of every served session (None: never,
        #: one node alone). Several nodes: bounds what a missed wake-up costs.
        self.recheck = recheck
        self._rechecker = None
        self.trust = trust
        self.store = store
        self.clock = clock
        self.sweep_interval = sweep_interval
        self._sweeper = None
        self._stopped = False
        self._pending = set()  # store Deferreds not yet fired
        self.purges_pending = set()  # L{RetriedPurges}

    def _register(self, handlers):
        register_service(self.peer, handlers, self.name, trust=self.trust, stopped=lambda: self._stopped)
        self.peer.add_observer(self)

    # Life cycle

    def sweep(self):
        """Expire what the store no longer keeps; subclasses implement it."""
        raise NotImplementedError

    def start(self):
        """Load the store's figures, sweep once, then sweep periodically; fires once ready."""

        def swept(_):
            self._sweeper = task.LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(self.sweep_interval, now=False)
            if self.recheck:
                self._rechecker = task.LoopingCall(self._pump_all)
                self._rechecker.clock = self.clock
                self._rechecker.start(self.recheck, now=False)
                self.bus.on_missed(self._missed)

        d = defer.maybeDeferred(self.store.start)
        d.addCallback(lambda _: self.sweep())  # what expired while the node was down
        return d.addCallback(swept)

    def stop(self):
        """
        Stop the sweep and take no more requests (they go unanswered, so
        their senders retry); fires once every store call in progress is
        done (what was queued is committed and acknowledged).
        """
        self._stopped = True
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        if self._rechecker is not None and self._rechecker.running:
            self._rechecker.stop()
        waiting = defer.DeferredList([observe(d) for d in list(self._pending)])
        return waiting.addCallback(lambda _: self.store.flushed())

    def _track(self, d):
        """Remember store Deferred C{d} until it fires, for L{stop}."""
        self._pending.add(d)

        def done(result):
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def _missed(self):
        """The bus may have lost notices addressed here: the re-check now, not at its next period."""
        if not self._stopped:
            self._pump_all()

    def _pump_all(self):
        """Pump every served session, as if woken for all it may have (the periodic re-check)."""
        raise NotImplementedError

    # Session observer (subclasses keep an outbox per served session in C{_outboxes})

    def peer_paired(self, peer_id):
        """A peer paired on a session it already had: serve that session (and any other) from now on (§20.1)."""
        for session in list(self.peer.sessions.values()):
            if session.remote_peer_id == peer_id and session.closed is None:
                if session.session_id not in self._outboxes:
                    self.session_established(session)

    # Handlers

    def _send(self, session, type_code, body) -> bool:
        """Send if the session is still open; whether it was sent."""
        return session.send_if_open(type_code, body)

    def _log_failure(self, failure, what):
        """Log a store call that failed: a full or unavailable store (an expected condition) in one line."""
        if failure.check(StoreFull):
            log.warn("{name}: {what} failed: {why}", name=self.name, what=what, why=failure.getErrorMessage())
        else:
            log.failure("{name}: {what} failed", failure, name=self.name, what=what)
