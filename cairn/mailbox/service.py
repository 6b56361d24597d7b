"""
The node's store-and-forward mailbox (docs/protocol.md §21).

L{MailboxService} registers the forward family's handlers (every one
behind L{paired_only}) and a session observer on the node's L{Peer}:

  - ForwardRequest is checked, handed to the store (which group-commits)
    and answered with a ForwardAck only once the store's Deferred fired,
    i.e. once the message is on disk;
  - each session of a paired peer has an L{Outbox} (from its start, or
    from the moment its peer pairs on it: C{peer_paired};
    L{cairn.mailbox.delivery}): a window of
    deliveries (and of receipts) sent but not yet acknowledged with
    ForwardPurge; the window bounds memory per session, and a new session
    starts again from the first unacknowledged message. Deliveries go out
    many to a ForwardDeliver (up to L{BATCH_BYTES}), receipts many to a
    ForwardReceipt, and a cumulative ForwardPurge C{"upto"} acknowledges
    every delivery up to a sequence number at once;
  - a periodic sweep on the injected clock expires old messages.
"""

from collections import Counter

from twisted.internet import defer
from twisted.logger import Logger

from cairn.cluster.bus import OWE, WAKE
from cairn.diskspace import LowDiskSpace
from cairn.mailbox import messages, report
from cairn.mailbox.delivery import Delivery
from cairn.mailbox.interfaces import Depth, Incoming, Limits, PartlyRemoved, PartlyStored, StoreFull
from cairn.mailbox.store import EXPIRE_BATCH
from cairn.pairing.interfaces import UnknownPeer
from cairn.session.guards import hold
from cairn.storeservice import StoreService
from cairn.wire.constants import CloseCode, ForwardStatus, MessageType
from cairn.wire.schema import BodyError

log = Logger()

#: Deliveries (and receipts) in flight per session, and their byte budget.
WINDOW = 1024
WINDOW_BYTES = 4 * 1024 * 1024
#: Payload bytes (with L{messages.DELIVER_OVERHEAD} each) packed into one
#: ForwardDeliver; a larger message goes alone (receipts per ForwardReceipt:
#: L{cairn.mailbox.delivery.RECEIPT_BATCH}). Each ForwardDeliver costs both
#: sides an envelope, a ForwardPurge back and a refill read besides its
#: entries: 256 KiB (about 230 messages of 1 KiB, a quarter of the window)
#: rather than 64 makes those a quarter as many in a drain (issue 19).
BATCH_BYTES = 256 * 1024
SWEEP_INTERVAL = 60.0
_REASONS = {
    ForwardStatus.MAILBOX_FULL: "the recipient's mailbox is full",
    ForwardStatus.STORAGE_FULL: "the node's mailbox storage is full",
    ForwardStatus.STORAGE_ERROR: "the node cannot store messages now",
}
UNSURE = "the node cannot check the recipient's pairing now"  #: for one L{ITrustStore.catch_up} could not check


class MailboxService(Delivery, StoreService):
    """
    The mailbox of a node's L{Peer}.

    @param trust: the L{ITrustStore}; both sender and recipient must be paired.
    @param store: an L{IMailboxStore}.
    @param clock: an C{IReactorTime} for stored_at, expiry and the sweep.
    @param max_payload: the node's maximum envelope payload (bounds a
        forwarded payload so that its ForwardDeliver fits too).
    """

    def __init__(
        self,
        peer,
        trust,
        store,
        clock,
        *,
        enabled=True,
        limits=None,
        max_payload=1_000_000,
        window=WINDOW,
        window_bytes=WINDOW_BYTES,
        batch_bytes=BATCH_BYTES,
        sweep_interval=SWEEP_INTERVAL,
        bus=None,
        recheck=None,
    ):
        super().__init__(peer, trust, store, clock, sweep_interval, bus, recheck)
        self.enabled = enabled
        self.limits = limits or Limits()
        self.max_forward = max_payload - messages.DELIVER_OVERHEAD
        self.window = window
        self.window_bytes = window_bytes
        # A ForwardDeliver stays within the node's own envelope limit.
        self.batch_bytes = min(batch_bytes, max_payload - messages.DELIVER_OVERHEAD)
        #: ForwardAck statuses sent, by name.
        self.statuses = Counter()
        #: ForwardRequests handled (a bench divides the entries by it).
        self.requests = 0
        self.delivered = 0
        self._outboxes = {}  # session id -> Outbox
        #: peer id -> a tuple of its sessions' outboxes: a stored message or
        #: receipt finds its peer's sessions without a scan of every session
        #: (a few ms each at 100,000 sessions, issue 20).
        self._by_peer = {}
        #: recipient -> [(seqs, upto)] whose deletion failed (full disk); the sweep retries them.
        self._unpurged = {}
        handlers = {
            MessageType.FORWARD_REQUEST: self._forward_request,
            MessageType.FORWARD_PURGE: self._forward_purge,
            MessageType.PEER_KEY_REQUEST: self._peer_key,
        }
        self._register(handlers)
        # A store shared with other nodes reports what they stored: deliver it too.
        store.watch(self._deliver_to)
        # Stored here or on another node: the bus wakes the sessions of its recipient/sender.
        self.bus.subscribe(WAKE, self._deliver_to)
        self.bus.subscribe(OWE, self._owed_to)

    name = "mailbox"

    # Life cycle

    @defer.inlineCallbacks
    def sweep(self):
        """Expire what is past C{CAIRN_FORWARD_MAX_AGE}; errors are logged, never raised (the loop goes on)."""
        try:
            self._retry_unpurged()
            yield self._retry_purges()
            more = True
            while more:
                expired = self.store.expire(self.clock.seconds(), EXPIRE_BATCH, self.limits.max_age)
                receipts, more = yield self._track(expired.addErrback(self._removed_in_part))
                if receipts:
                    log.info("mailbox: {count} message(s) expired", count=len(receipts))
                self._owe(receipts)
        except StoreFull as e:
            log.warn("mailbox expiry sweep failed: {why}; the next sweep tries again", why=str(e))
        except Exception:
            log.failure("mailbox expiry sweep failed")

    def stop(self):
        """
        L{StoreService.stop}; what the store gathers (the SQLite store's
        acknowledgements, L{cairn.mailbox.store.ACK_GATHER}) is written now,
        not at the end of its interval: the stop waits for it.
        """
        self.store.flushed()
        return super().stop()

    def purge(self, peer_id):
        """
        The pairing purge hook: drop everything held for C{peer_id}, telling
        the senders. If the store is full, the sweep tries again
        (L{_retry_purges}) and the failure goes to the caller (a 507).
        """

        def purged(receipts):
            if receipts:
                log.info("mailbox of {peer_id} purged: {count} message(s)", peer_id=peer_id, count=len(receipts))
            self._owe(receipts)

        d = self.store.purge(peer_id, self.clock.seconds(), self.limits.max_age).addErrback(self._removed_in_part)
        return self._purging(peer_id, self._track(d)).addCallback(purged)

    def held_for(self):
        return self.store.depths()

    # Handlers

    def _forward_request(self, session, body):
        self.requests += 1
        try:
            entries = messages.request_entries(body)
        except BodyError as e:
            session.close(CloseCode.BAD_CBOR, str(e))
            return
        self._forward(session, entries)

    def _forward(self, session, entries):
        """
        Check and store a request's C{entries}. If some name a recipient the
        trust store does not know as paired, first let it catch up (a store
        shared with other nodes reads them: paired through another node a
        moment ago, they count; L{ITrustStore.catch_up}) and check again;
        the session's requests that come meanwhile wait behind this one
        (L{hold}), so its forwards are stored in the order sent.
        """
        now = self.clock.seconds()
        unknown = []  # recipients not paired here (checking costs nothing more for the others)
        checked = [self._check(session, entry, now, unknown) for entry in entries]
        if not unknown:
            self._store(session, checked, now)
            return
        resumed = defer.Deferred()
        self._track(self.trust.catch_up(unknown).addBoth(self._caught_up, session, entries, resumed))
        if not resumed.called:
            hold(session, resumed)

    def _caught_up(self, unsure, session, entries, resumed):
        # Recipients the store could not check: STORAGE_ERROR (sent again later), not NOT_PAIRED.
        try:
            now = self.clock.seconds()
            unsure = {entry.get("to") for entry in entries} if isinstance(unsure, defer.Failure) else set(unsure or ())
            return self._store(session, [self._check(session, entry, now, unsure=unsure) for entry in entries], now)
        finally:
            resumed.callback(None)  # the requests held meanwhile follow, once this one's store has begun

    def _store(self, session, checked, now):
        items = [entry for entry in checked if isinstance(entry, Incoming)]
        if not items:
            self._send(session, MessageType.FORWARD_ACK, {"acks": checked})
            return None
        # One store call (one group commit) and one ForwardAck for the envelope.
        d = self._track(self.store.enqueue(items, now, self.limits))
        return d.addCallbacks(self._stored, self._not_stored, (session, checked), None, (session, checked))

    def _check(self, session, entry, now, unknown=None, unsure=frozenset()):
        """
        The L{Incoming} to store for one ForwardRequest entry, or the ack
        refusing it; a recipient not paired here is added to C{unknown}
        (and refused STORAGE_ERROR if it is in C{unsure}).
        """
        message_id = entry["id"]
        if not self.enabled:
            return self._ack(message_id, ForwardStatus.DISABLED, "the mailbox is disabled on this node")
        try:
            recipient, _, payload = messages.parse_forward_request(entry)
        except BodyError as e:
            return self._ack(message_id, ForwardStatus.INVALID, str(e))
        if len(payload) > self.max_forward:
            return self._ack(message_id, ForwardStatus.TOO_LARGE, f"payload over {self.max_forward} bytes")
        millis = messages.uuid7_millis(message_id)
        if millis is None:
            return self._ack(message_id, ForwardStatus.INVALID, "'id' is not a UUIDv7")
        if millis / 1000.0 < now - self.limits.max_age:
            return self._ack(message_id, ForwardStatus.INVALID, "'id' is older than the maximum age")
        if not self.trust.is_paired(recipient):
            if unknown is not None:
                unknown.append(recipient)
            if recipient in unsure:
                return self._ack(message_id, ForwardStatus.STORAGE_ERROR, UNSURE)
            return self._ack(message_id, ForwardStatus.NOT_PAIRED, "the recipient is not paired")
        return Incoming(session.remote_peer_id, recipient, message_id, payload)

    def _stored(self, results, session, checked):
        results = iter(results)
        recipients = set()
        acks = []
        for entry in checked:
            if isinstance(entry, Incoming):
                status, _ = next(results)
                if status == ForwardStatus.STORED:
                    recipients.add(entry.recipient)
                entry = self._ack(entry.message_id, status, _REASONS.get(status, ""))
            acks.append(entry)
        self._send(session, MessageType.FORWARD_ACK, {"acks": acks})
        for recipient in recipients:
            self.bus.wake(recipient)

    def _not_stored(self, failure, session, checked):
        if failure.check(LowDiskSpace):
            pass  # logged once, when the disk reached the reserve
        elif failure.check(StoreFull):
            log.warn("mailbox: cannot store messages: {why}", why=failure.getErrorMessage())
        else:
            log.failure("mailbox: storing messages failed", failure)
        reason = _REASONS[ForwardStatus.STORAGE_ERROR]
        acks = [
            self._ack(entry.message_id, ForwardStatus.STORAGE_ERROR, reason) if isinstance(entry, Incoming) else entry
            for entry in checked
        ]
        self._send(session, MessageType.FORWARD_ACK, {"acks": acks})
        if failure.check(PartlyStored):
            # Held though refused: delivered as if stored (a retry is DUPLICATE, which wakes no one).
            items = [entry for entry in checked if isinstance(entry, Incoming)]
            results = failure.value.results
            for recipient in {items[i].recipient for i, r in enumerate(results) if r and r[0] == ForwardStatus.STORED}:
                self.bus.wake(recipient)

    def _ack(self, message_id, status, reason=""):
        """One entry of a ForwardAck (counted in L{statuses})."""
        self.statuses[ForwardStatus(status).name] += 1
        ack = {"id": message_id, "status": int(status)}
        if reason:
            ack["reason"] = reason
        return ack

    def _forward_purge(self, session, body):
        try:
            seqs, rseqs = messages.parse_forward_purge(body)
            upto = messages.parse_purge_upto(body)
        except BodyError as e:
            session.close(CloseCode.BAD_CBOR, str(e))
            return
        outbox = self._outboxes.get(session.session_id)
        peer_id = session.remote_peer_id
        # Only what this session was sent can be acknowledged cumulatively.
        upto = min(upto, outbox.deliveries.cursor) if outbox is not None else 0
        if seqs or upto:
            if outbox is not None:
                outbox.deliveries.acknowledged(seqs, upto)
            self._delete_delivered(peer_id, seqs, upto)
        if rseqs:
            if outbox is not None:
                outbox.receipts.acknowledged(rseqs)
            self._track(self.store.drop_receipts(peer_id, rseqs)).addErrback(self._log_failure, "dropping receipts")
        # Each window is refilled only if this freed some of it (a
        # recipient's acks do not touch its receipts, a sender's receipt
        # acks not its deliveries): a read for nothing costs a thread hop.
        if outbox is not None:
            if seqs or upto:
                self._pump(outbox)
            if rseqs:
                self._pump_receipts(outbox)

    # A deletion that could not be written (full disk) is retried by the
    # sweep, so that its DELIVERED receipts do not wait for the
    # recipient's next session (which would have it redelivered).

    def _delete_delivered(self, peer_id, seqs, upto):
        d = self._track(self.store.acknowledge(peer_id, seqs, self.clock.seconds(), self.limits.max_age, upto))
        d.addCallbacks(self._acknowledged, self._delete_failed, errbackArgs=(peer_id, seqs, upto))

    def _delete_failed(self, failure, peer_id, seqs, upto):
        if failure.check(PartlyRemoved):
            self._acknowledged(failure.value.receipts)
        if not failure.check(StoreFull):
            self._log_failure(failure, "deleting delivered messages")
            return
        if not self._unpurged:  # one line per episode, not per ForwardPurge
            log.warn("mailbox: cannot delete delivered messages now ({why}); retrying", why=failure.getErrorMessage())
        self._unpurged.setdefault(peer_id, []).append((seqs, upto))

    def _retry_unpurged(self):
        unpurged, self._unpurged = self._unpurged, {}
        for peer_id, failed in unpurged.items():
            for seqs, upto in failed:
                self._delete_delivered(peer_id, seqs, upto)

    def _acknowledged(self, receipts):
        self.delivered += len(receipts)
        self._owe(receipts)

    def _removed_in_part(self, failure):
        """A removal that failed owes the receipts of what it did remove (L{PartlyRemoved}); the failure goes on."""
        if failure.check(PartlyRemoved):
            self._owe(failure.value.receipts)
        return failure

    @defer.inlineCallbacks
    def _peer_key(self, session, body):
        try:
            peer_id = messages.parse_peer_key_request(body)
        except BodyError as e:
            session.close(CloseCode.BAD_CBOR, str(e))
            return
        key, unsure = None, () if self.trust.is_paired(peer_id) else (yield self.trust.catch_up([peer_id]))
        if self.trust.is_paired(peer_id):
            record = yield self.trust.get(peer_id)
            key = record.identity_key if record is not None else None
        answer = {"peer": peer_id, "key": key}
        if key is None and peer_id in (unsure or ()):  # not known unpaired: the store could not check (§21.7)
            answer["retry"] = True
        self._send(session, MessageType.PEER_KEY_RESPONSE, answer)

    # Management (the JSON and the metrics are built in cairn.mailbox.report)

    def stats(self):
        """C{GET /mailbox}: per-peer depth, bytes and oldest age, and the totals."""
        return report.stats(self.store, self.limits, self.enabled, self.clock.seconds())

    def peer_stats(self, peer_id):
        """C{GET /mailbox/{peer_id}}, or None for a peer neither paired nor holding mail."""
        depth = self.store.depths().get(peer_id)
        if depth is None:
            if not self.trust.is_paired(peer_id):
                return None
            depth = Depth()
        result = report.peer_json(self.store, self.limits, peer_id, depth, self.clock.seconds())
        result["connected"] = any(o.session.attached for o in self._outboxes_of(peer_id))
        return result

    def set_peer_limits(self, peer_id, body):
        """
        C{PUT /mailbox/{peer_id}/limits}: persist C{{"max_messages": n|null,
        "max_bytes": n|null}} for a paired peer; fires with its L{peer_stats}.

        @raise ValueError: a bad body. @raise UnknownPeer: not paired.
        """
        limits = report.parse_peer_limits(body)
        if not self.trust.is_paired(peer_id):
            raise UnknownPeer(peer_id)
        log.info("mailbox limits of {peer_id} set to {limits}", peer_id=peer_id, limits=limits.to_json())
        return self.store.set_limits(peer_id, limits).addCallback(lambda _: self.peer_stats(peer_id))

    def collect_metrics(self):
        """Prometheus families for L{cairn.management.metrics.Metrics.add_collector}."""
        return report.collect_metrics(self.store, self.statuses, self.delivered, self.clock.seconds())
