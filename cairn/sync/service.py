"""
The node's multi-device sync hub (docs/protocol.md §24).

L{SyncService} registers the sync family's handlers (every one behind
L{paired_only}) and a session observer on the node's L{Peer}:

  - SyncPublish is checked, handed to the store (which group-commits: one
    log row per update, whatever the number of devices) and answered with
    a SyncAck only once durable; the update is then fanned out to every
    attached session subscribed to the topic, but the publisher's;
  - SyncSubscribe makes sure the device has a durable cursor per topic and
    replays each topic from it; SyncCursor raises it;
  - each session of a paired peer that subscribed has an L{Outbox} (from
    its first SyncSubscribe: most sessions never subscribe, and an empty
    outbox is about 800 bytes): a window of SyncUpdates sent and not
    yet covered by a SyncCursor, bounding memory per session;
  - a device whose cursor is behind what retention removed is sent a
    SyncReset (never skipped silently); retention (age, total bytes, the
    forward limits) is swept on the injected clock;
  - a device reads and writes only the topics its L{Access} allows (its
    own grant, else the node's default): a publish elsewhere is answered
    FORBIDDEN, a subscription elsewhere with SyncDenied (§24.9).

Delivery to the sessions (the outboxes, the pump, resets, the session
observer and the outboxes across a clean restart) is in
L{cairn.sync.delivery}.
"""

from collections import Counter

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster.bus import TOPIC
from cairn.diskspace import LowDiskSpace
from cairn.mailbox.interfaces import Limits
from cairn.pairing.interfaces import UnknownPeer
from cairn.session.guards import guard, hold, paired_only
from cairn.storeservice import StoreService
from cairn.sync import access, messages, report
from cairn.sync.delivery import Delivery, Outbox
from cairn.sync.interfaces import ISyncHub, Publish
from cairn.sync.store import EXPIRE_BATCH
from cairn.wire.constants import CloseCode, MessageType, SyncStatus
from cairn.wire.schema import BodyError

log = Logger()

#: Updates in flight per session, and their byte budget.
WINDOW = 64
WINDOW_BYTES = 4 * 1024 * 1024
SWEEP_INTERVAL = 60.0
#: The reason given when the device's grant could not be read (another node may have widened it).
UNCHECKED = "the node cannot check this device's access now"


@implementer(ISyncHub)
class SyncService(Delivery, StoreService):
    """
    The sync hub of a node's L{Peer}.

    @param trust: the L{ITrustStore}; only paired devices take part.
    @param store: an L{ISyncStore}.
    @param clock: an C{IReactorTime} for timestamps, expiry and the sweep.
    @param limits: the forward L{Limits}; C{max_age} and C{max_total} are the retention.
    @param default_access: the L{access.Access} of a device without its own grant.
    """

    def __init__(
        self,
        peer,
        trust,
        store,
        clock,
        *,
        limits=None,
        max_payload=1_000_000,
        window=WINDOW,
        window_bytes=WINDOW_BYTES,
        sweep_interval=SWEEP_INTERVAL,
        default_access=access.ALL,
        bus=None,
        recheck=None,
    ):
        super().__init__(peer, trust, store, clock, sweep_interval, bus, recheck)
        self.default_access = default_access
        self.limits = limits or Limits()
        self.max_update = max_payload - messages.UPDATE_OVERHEAD
        self.window = window
        self.window_bytes = window_bytes
        #: SyncAck statuses sent, by name; resets sent; updates acknowledged.
        self.statuses = Counter()
        self.resets = 0
        self.acknowledged = 0
        self._outboxes = {}  # session id -> Outbox
        handlers = {
            MessageType.SYNC_SUBSCRIBE: self._subscribe,
            MessageType.SYNC_PUBLISH: self._publish,
            MessageType.SYNC_CURSOR: self._cursor,
        }
        self._register(handlers)
        store.watch(self._fan_out)  # a store shared with other nodes reports their updates: fan them out too
        self.bus.subscribe(TOPIC, self._fan_out)

    name = "sync"

    # Life cycle

    @defer.inlineCallbacks
    def sweep(self):
        """Remove updates older than C{max_age}; errors are logged, never raised (the loop goes on)."""
        try:
            yield self._retry_purges()
            removed, more = 0, True
            while more:
                count, more = yield self._track(self.store.expire(self.clock.seconds(), EXPIRE_BATCH))
                removed += count
            if removed:
                log.info("sync: {count} update(s) expired", count=removed)
                self._pump_all()
        except Exception:
            log.failure("sync retention sweep failed")

    def purge(self, peer_id):
        """
        The pairing purge hook: drop every cursor of C{peer_id}, and its
        access grant. If the store is full, the sweep tries again
        (L{_retry_purges}) and the failure goes to the caller (a 507).
        """
        for outbox in self._outboxes_of(peer_id):
            outbox.topics.clear()
            outbox.inflight.clear()

        def purged(count):
            if count:
                log.info("sync cursors of {peer_id} dropped: {count}", peer_id=peer_id, count=count)

        return self._purging(peer_id, self._track(self.store.purge(peer_id))).addCallback(purged)

    def held_for(self):
        return set(self.store.cursors()) | set(self.store.access())

    # Access

    def access_of(self, device) -> access.Access:
        """The topics C{device} may read and write: its grant, else the node's default."""
        own = self.store.grant_of(device)  # per request: not a copy of every grant
        return self.default_access if own is None else own

    def set_access(self, peer_id, body):
        """
        C{PUT /sync/{peer_id}/access}: persist C{{"read": [...], "write": [...]}}
        (null: back to the default) for a paired peer; fires with L{access_report}.
        Subscriptions the new grant no longer allows end at once with SyncDenied.

        @raise ValueError: a bad body. @raise UnknownPeer: not paired.
        """
        grant = None if body is None else access.parse_access(body)
        if not self.trust.is_paired(peer_id):
            raise UnknownPeer(peer_id)
        log.info("sync access of {peer_id} set to {grant}", peer_id=peer_id, grant=grant and grant.to_json())

        def stored(_):
            for outbox in self._outboxes_of(peer_id):
                for topic in [t for t in outbox.topics if not self.access_of(peer_id).may_read(t)]:
                    self._end_subscription(outbox, topic)
            return self.access_report(peer_id)

        return self.store.set_access(peer_id, grant).addCallback(stored)

    def access_report(self, peer_id):
        """C{GET /sync/{peer_id}/access}: the effective grant and whether it is the default."""
        if not self.trust.is_paired(peer_id):
            raise UnknownPeer(peer_id)
        own = self.store.grant_of(peer_id)
        effective = self.default_access if own is None else own
        return {"peer_id": peer_id, "default": own is None, **effective.to_json()}

    def _deny(self, session, topic):
        self._send(session, MessageType.SYNC_DENIED, {"topic": topic, "reason": "this device may not read the topic"})

    def _end_subscription(self, outbox, topic):
        """A subscription the device's grant no longer allows: SyncDenied, and its updates in flight forgotten."""
        self._deny(outbox.session, topic)
        del outbox.topics[topic]
        for key in [k for k in outbox.inflight if k[0] == topic]:
            del outbox.inflight[key]

    def _read_access(self, session, body, handler):
        """
        The device's grant as this node holds it refuses part of C{body}:
        read the grant first (one made through another node a moment ago
        counts; L{ISyncStore.catch_up_access}), then call C{handler(session,
        body, checked)} (C{checked}: whether the grant is known current).
        The session's later requests wait behind it (L{hold}, bounded).
        """
        outcome = []
        d = self.store.catch_up_access(session.remote_peer_id)
        d.addErrback(self._log_failure, "reading an access grant").addCallback(lambda ok: outcome.append(ok is True))
        if d.called:  # a local store (or no read due): at once
            return handler(session, body, outcome[0])
        then = guard(lambda s, b: handler(s, b, outcome[0]), self.name, lambda: self._stopped)
        hold(session, self._track(d), (paired_only(self.trust, then), body))
        return None

    # Handlers

    def _subscribe(self, session, body, checked=None):
        wanted = messages.parse_subscribe(body)
        device = session.remote_peer_id
        allowed = self.access_of(device)
        refused = [t for t in wanted if not allowed.may_read(t)]
        if refused and checked is None:
            return self._read_access(session, body, self._subscribe)
        if refused and not checked:  # not known to be refused: the device subscribes again later
            session.close(CloseCode.GOING_AWAY, UNCHECKED + "; try again later")
            return None
        for topic in refused:
            del wanted[topic]
            self._deny(session, topic)
        if not wanted:
            return

        def subscribed(cursors):
            outbox = self._outboxes.get(session.session_id)
            if outbox is None:
                if session.closed is not None:
                    return
                # Its first subscription (the device is paired: paired_only).
                outbox = self._outboxes[session.session_id] = Outbox(session)
            for topic, seq in cursors.items():
                outbox.topics[topic] = seq
                for key in [k for k in outbox.inflight if k[0] == topic]:
                    del outbox.inflight[key]
                outbox.own.pop(topic, None)
                self._pump(outbox, topic)

        d = self._track(self.store.subscribe(device, wanted))
        d.addCallbacks(subscribed, self._log_failure, errbackArgs=("subscribing",))

    def _publish(self, session, body, checked=None):
        update_id = messages.publish_id(body)
        try:
            topic, _, payload = messages.parse_publish(body)
        except BodyError as e:
            return self._ack(session, update_id, SyncStatus.INVALID, None, str(e))
        if not self.access_of(session.remote_peer_id).may_write(topic):
            if checked is None:
                return self._read_access(session, body, self._publish)
            if not checked:  # not known to be forbidden: the device sends it again
                return self._ack(session, update_id, SyncStatus.STORAGE_ERROR, None, UNCHECKED)
            return self._ack(session, update_id, SyncStatus.FORBIDDEN, None, "this device may not write the topic")
        if len(payload) > self.max_update or len(payload) > self.limits.max_total:
            reason = f"payload over {min(self.max_update, self.limits.max_total)} bytes"
            return self._ack(session, update_id, SyncStatus.TOO_LARGE, None, reason)
        item = Publish(session.remote_peer_id, topic, update_id, payload)

        def stored(results):
            status, seq = results[0]
            self._ack(session, update_id, status, seq)
            if status == SyncStatus.COMMITTED:
                self.bus.fan_out(topic)

        def failed(failure):
            if not failure.check(LowDiskSpace):  # that one is logged once, at the reserve
                log.warn("sync: cannot store an update: {why}", why=failure.getErrorMessage())
            self._ack(session, update_id, SyncStatus.STORAGE_ERROR, None, "the node cannot store updates now")

        d = self._track(self.store.publish([item], self.clock.seconds(), self.limits))
        d.addCallbacks(stored, failed)
        return None

    def _ack(self, session, update_id, status, seq, reason=""):
        self.statuses[SyncStatus(status).name] += 1
        body = {"id": update_id, "status": int(status), "seq": seq}
        if reason:
            body["reason"] = reason
        self._send(session, MessageType.SYNC_ACK, body)

    def _cursor(self, session, body):
        topic, seq = messages.parse_cursor(body)
        outbox = self._outboxes.get(session.session_id)
        if outbox is not None:
            covered = [k for k in outbox.inflight if k[0] == topic and k[1] <= seq]
            for key in covered:
                del outbox.inflight[key]
            if not outbox.inflight_of(topic) and outbox.own.get(topic, 0) > seq:
                seq = outbox.own.pop(topic)

        def acknowledged(value):
            if value is not None:
                self.acknowledged += 1
            if outbox is not None and topic in outbox.topics:
                self._pump(outbox, topic)

        d = self._track(self.store.set_cursor(session.remote_peer_id, topic, seq))
        d.addCallbacks(acknowledged, self._log_failure, errbackArgs=("saving a cursor",))

    # Management

    def _connected(self):
        """The paired devices with an attached session (subscribed or not)."""
        paired = self.trust.is_paired
        return {s.remote_peer_id for s in list(self.peer.sessions.values()) if s.attached and paired(s.remote_peer_id)}

    def stats(self):
        """C{GET /sync}: every topic with its devices' cursors and lag, and the totals."""
        return report.stats(self.store, self.limits, self.resets, self._connected())

    def collect_metrics(self):
        """Prometheus families for L{cairn.management.metrics.Metrics.add_collector}."""
        return report.collect_metrics(self.store, self.statuses, self.resets)
