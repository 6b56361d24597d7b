"""
The node's store-and-forward mailbox (docs/protocol.md §21).

L{MailboxService} registers the forward family's handlers (every one
behind L{paired_only}) and a session observer on the node's L{Peer}:

  - ForwardRequest is checked, handed to the store (which group-commits)
    and answered with a ForwardAck only once the store's Deferred fired,
    i.e. once the message is on disk;
  - each session of a paired peer has an L{_Outbox} (from its start, or
    from the moment its peer pairs on it: C{peer_paired}): a window of
    deliveries (and of receipts) sent but not yet acknowledged with
    ForwardPurge; the window bounds memory per session, and a new session
    starts again from the first unacknowledged message. Deliveries go out
    many to a ForwardDeliver (up to L{BATCH_BYTES}), receipts many to a
    ForwardReceipt, and a cumulative ForwardPurge C{"upto"} acknowledges
    every delivery up to a sequence number at once;
  - a periodic sweep on the injected clock expires old messages.
"""

from collections import Counter, OrderedDict
from types import MappingProxyType

from twisted.internet import defer
from twisted.logger import Logger

from cairn.diskspace import LowDiskSpace
from cairn.mailbox import messages, report
from cairn.mailbox.interfaces import Depth, Incoming, Limits, StoreFull
from cairn.mailbox.store import EXPIRE_BATCH
from cairn.pairing.interfaces import UnknownPeer
from cairn.storeservice import StoreService
from cairn.wire.constants import CloseCode, ForwardStatus, MessageType
from cairn.wire.schema import BodyError

log = Logger()

#: Deliveries (and receipts) in flight per session, and their byte budget.
WINDOW = 1024
WINDOW_BYTES = 4 * 1024 * 1024
#: Payload bytes (with L{messages.DELIVER_OVERHEAD} each) packed into one
#: ForwardDeliver; a larger message goes alone. Receipts per ForwardReceipt.
BATCH_BYTES = 64 * 1024
RECEIPT_BATCH = 256
SWEEP_INTERVAL = 60.0
#: Seconds before a session's failed delivery or receipt read is tried again.
READ_RETRY = 2.0
_REASONS = {
    ForwardStatus.MAILBOX_FULL: "the recipient's mailbox is full",
    ForwardStatus.STORAGE_FULL: "the node's mailbox storage is full",
}


#: What an outbox holds while nothing is in flight (most idle sessions):
#: the window's containers are made on the first delivery or receipt sent
#: and freed when all is acknowledged (an empty set is 216 bytes, an empty
#: OrderedDict 128; issue 20).
_NOTHING = MappingProxyType({})
_NO_RECEIPTS = frozenset()


class _Outbox:
    """What one session has been sent and not yet acknowledged."""

    __slots__ = (
        "session",
        "cursor",
        "inflight",
        "inflight_bytes",
        "rcursor",
        "rinflight",
        "fetching",
        "rfetching",
        "again",
        "ragain",
        "retry",
    )

    def __init__(self, session):
        self.session = session
        self.cursor = 0  # the highest seq delivered on this session
        self.inflight = _NOTHING  # seq -> size, in seq order (an OrderedDict once used)
        self.inflight_bytes = 0
        self.rcursor = 0
        self.rinflight = _NO_RECEIPTS  # rseqs sent, unacknowledged (a set once used)
        self.fetching = self.rfetching = False
        self.again = self.ragain = False
        self.retry = None  # the DelayedCall that reads again after a failed read

    def delivered(self, seq, size):
        if self.inflight is _NOTHING:
            self.inflight = OrderedDict()
        self.inflight[seq] = size
        self.inflight_bytes += size
        self.cursor = seq

    def acknowledged(self, seqs, upto):
        """Free the window of C{seqs} and of every seq up to C{upto}."""
        inflight = self.inflight
        if inflight is _NOTHING:
            return
        while inflight:
            seq = next(iter(inflight))
            if seq > upto:
                break
            self.inflight_bytes -= inflight.popitem(last=False)[1]
        for seq in seqs:
            self.inflight_bytes -= inflight.pop(seq, 0)
        if not inflight:
            self.inflight = _NOTHING

    def receipts_sent(self, rseqs):
        if self.rinflight is _NO_RECEIPTS:
            self.rinflight = set()
        self.rinflight.update(rseqs)

    def receipts_acknowledged(self, rseqs):
        if self.rinflight is not _NO_RECEIPTS:
            self.rinflight.difference_update(rseqs)
            if not self.rinflight:
                self.rinflight = _NO_RECEIPTS


class MailboxService(StoreService):
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
    ):
        super().__init__(peer, trust, store, clock, sweep_interval)
        self.enabled = enabled
        self.limits = limits or Limits()
        self.max_forward = max_payload - messages.DELIVER_OVERHEAD
        self.window = window
        self.window_bytes = window_bytes
        # A ForwardDeliver stays within the node's own envelope limit.
        self.batch_bytes = min(batch_bytes, max_payload - messages.DELIVER_OVERHEAD)
        #: ForwardAck statuses sent, by name.
        self.statuses = Counter()
        self.delivered = 0
        self._outboxes = {}  # session id -> _Outbox
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

    name = "mailbox"

    # Life cycle

    @defer.inlineCallbacks
    def sweep(self):
        """Expire what is past C{CAIRN_FORWARD_MAX_AGE}; errors are logged, never raised (the loop goes on)."""
        try:
            self._retry_unpurged()
            more = True
            while more:
                receipts, more = yield self._track(
                    self.store.expire(self.clock.seconds(), EXPIRE_BATCH, self.limits.max_age)
                )
                if receipts:
                    log.info("mailbox: {count} message(s) expired", count=len(receipts))
                self._owe(receipts)
        except Exception:
            log.failure("mailbox expiry sweep failed")

    def purge(self, peer_id):
        """The pairing purge hook: drop everything held for C{peer_id}, telling the senders."""

        def purged(receipts):
            if receipts:
                log.info("mailbox of {peer_id} purged: {count} message(s)", peer_id=peer_id, count=len(receipts))
            self._owe(receipts)

        return self.store.purge(peer_id, self.clock.seconds(), self.limits.max_age).addCallback(purged)

    # Handlers

    def _forward_request(self, session, body):
        try:
            entries = messages.request_entries(body)
        except BodyError as e:
            session.close(CloseCode.BAD_CBOR, str(e))
            return
        now = self.clock.seconds()
        checked = [self._check(session, entry, now) for entry in entries]
        items = [entry for entry in checked if isinstance(entry, Incoming)]
        if not items:
            self._send(session, MessageType.FORWARD_ACK, {"acks": checked})
            return
        # One store call (one group commit) and one ForwardAck for the envelope.
        d = self._track(self.store.enqueue(items, now, self.limits))
        d.addCallbacks(self._stored, self._not_stored, (session, checked), None, (session, checked))

    def _check(self, session, entry, now):
        """The L{Incoming} to store for one ForwardRequest entry, or the ack refusing it."""
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
            self._deliver_to(recipient)

    def _not_stored(self, failure, session, checked):
        if failure.check(LowDiskSpace):
            pass  # logged once, when the disk reached the reserve
        elif failure.check(StoreFull):
            log.warn("mailbox: cannot store messages: {why}", why=failure.getErrorMessage())
        else:
            log.failure("mailbox: storing messages failed", failure)
        reason = "the node cannot store messages now"
        acks = [
            self._ack(entry.message_id, ForwardStatus.STORAGE_ERROR, reason) if isinstance(entry, Incoming) else entry
            for entry in checked
        ]
        self._send(session, MessageType.FORWARD_ACK, {"acks": acks})

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
        upto = min(upto, outbox.cursor) if outbox is not None else 0
        if seqs or upto:
            if outbox is not None:
                outbox.acknowledged(seqs, upto)
            self._delete_delivered(peer_id, seqs, upto)
        if rseqs:
            if outbox is not None:
                outbox.receipts_acknowledged(rseqs)
            self._track(self.store.drop_receipts(peer_id, rseqs)).addErrback(self._log_failure, "dropping receipts")
        if outbox is not None:
            self._pump(outbox)
            self._pump_receipts(outbox)

    # A deletion that could not be written (full disk) is retried by the
    # sweep, so that its DELIVERED receipts do not wait for the
    # recipient's next session (which would have it redelivered).

    def _delete_delivered(self, peer_id, seqs, upto):
        d = self._track(self.store.acknowledge(peer_id, seqs, self.clock.seconds(), self.limits.max_age, upto))
        d.addCallbacks(self._acknowledged, self._delete_failed, errbackArgs=(peer_id, seqs, upto))

    def _delete_failed(self, failure, peer_id, seqs, upto):
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

    @defer.inlineCallbacks
    def _peer_key(self, session, body):
        try:
            peer_id = messages.parse_peer_key_request(body)
        except BodyError as e:
            session.close(CloseCode.BAD_CBOR, str(e))
            return
        key = None
        if self.trust.is_paired(peer_id):
            record = yield self.trust.get(peer_id)
            key = record.identity_key if record is not None else None
        self._send(session, MessageType.PEER_KEY_RESPONSE, {"peer": peer_id, "key": key})

    # Delivery

    def _outboxes_of(self, peer_id):
        return self._by_peer.get(peer_id, ())

    def _add_outbox(self, session):
        self._remove_outbox(session)  # one per session
        outbox = self._outboxes[session.session_id] = _Outbox(session)
        peer_id = session.remote_peer_id
        self._by_peer[peer_id] = self._by_peer.get(peer_id, ()) + (outbox,)
        return outbox

    def _remove_outbox(self, session):
        outbox = self._outboxes.pop(session.session_id, None)
        if outbox is not None:
            peer_id = session.remote_peer_id
            left = tuple(o for o in self._by_peer.get(peer_id, ()) if o is not outbox)
            if left:
                self._by_peer[peer_id] = left
            else:
                self._by_peer.pop(peer_id, None)
        return outbox

    def _deliver_to(self, recipient):
        for outbox in self._outboxes_of(recipient):
            self._pump(outbox)

    def _owe(self, receipts):
        for sender in {r.sender for r in receipts}:
            for outbox in self._outboxes_of(sender):
                self._pump_receipts(outbox)

    def _serving(self, session) -> bool:
        # Trust is asked at every push, so an unpairing stops them at once.
        return (
            not self._stopped
            and session.closed is None
            and session.attached
            and self.trust.is_paired(session.remote_peer_id)
        )

    def _pump(self, outbox):
        session = outbox.session
        if not self._serving(session):
            return
        if outbox.fetching:
            outbox.again = True
            return
        room = self.window - len(outbox.inflight)
        if room <= 0 or outbox.inflight_bytes >= self.window_bytes:
            return
        outbox.fetching, outbox.again = True, False

        def fetched(held):
            outbox.fetching = False
            budget = self.window_bytes - outbox.inflight_bytes
            batch, size, sent = [], 0, 0
            for message in held:
                if budget <= 0:
                    break
                cost = len(message.payload) + messages.DELIVER_OVERHEAD
                if batch and size + cost > self.batch_bytes:
                    if not self._deliver_batch(outbox, batch):
                        return
                    sent += len(batch)
                    batch, size = [], 0
                batch.append(message)
                size += cost
                budget -= len(message.payload)
            if batch:
                if not self._deliver_batch(outbox, batch):
                    return
                sent += len(batch)
            if outbox.again or (held and sent == room and budget > 0):
                self._pump(outbox)

        def failed(failure):
            outbox.fetching = False
            self._read_failed(outbox, failure, "messages to deliver")

        self._track(self.store.fetch(session.remote_peer_id, outbox.cursor, room)).addCallbacks(fetched, failed)

    def _deliver_batch(self, outbox, batch):
        """Send C{batch} (L{Stored}s in seq order) as one ForwardDeliver; whether it was sent."""
        body = {
            "messages": [
                {"id": m.message_id, "from": m.sender, "seq": m.seq, "stored_at": m.stored_at, "payload": m.payload}
                for m in batch
            ]
        }
        if not self._send(outbox.session, MessageType.FORWARD_DELIVER, body):
            return False
        for m in batch:
            outbox.delivered(m.seq, len(m.payload))
        return True

    def _pump_receipts(self, outbox):
        session = outbox.session
        if not self._serving(session):
            return
        if outbox.rfetching:
            outbox.ragain = True
            return
        room = self.window - len(outbox.rinflight)
        if room <= 0:
            return
        outbox.rfetching, outbox.ragain = True, False

        def fetched(receipts):
            outbox.rfetching = False
            for start in range(0, len(receipts), RECEIPT_BATCH):
                batch = receipts[start : start + RECEIPT_BATCH]
                body = {
                    "receipts": [
                        {"id": r.message_id, "to": r.recipient, "rseq": r.rseq, "status": r.status, "at": r.at}
                        for r in batch
                    ]
                }
                if not self._send(session, MessageType.FORWARD_RECEIPT, body):
                    return
                outbox.receipts_sent(r.rseq for r in batch)
                outbox.rcursor = batch[-1].rseq
            if outbox.ragain:
                self._pump_receipts(outbox)

        def failed(failure):
            outbox.rfetching = False
            self._read_failed(outbox, failure, "receipts")

        self._track(self.store.receipts(session.remote_peer_id, outbox.rcursor, room)).addCallbacks(fetched, failed)

    def stop(self):
        """L{StoreService.stop}, with no read retry left scheduled."""
        for outbox in self._outboxes.values():
            self._forget(outbox)
        return super().stop()

    def _read_failed(self, outbox, failure, what):
        """
        A read for C{outbox} failed (the store is unavailable for now): read
        again after L{READ_RETRY} seconds instead of waiting for the session's
        next event, which may never come.
        """
        if failure.check(StoreFull):
            log.warn("mailbox: reading {what} failed ({why}); retrying", what=what, why=failure.getErrorMessage())
        else:
            log.failure("mailbox: reading {what} failed; retrying", failure, what=what)
        if outbox.retry is None and self._serving(outbox.session):
            outbox.retry = self.clock.callLater(READ_RETRY, self._read_again, outbox)

    def _read_again(self, outbox):
        outbox.retry = None
        self._pump(outbox)
        self._pump_receipts(outbox)

    def _forget(self, outbox):
        if outbox is not None and outbox.retry is not None:
            if outbox.retry.active():
                outbox.retry.cancel()
            outbox.retry = None

    # Session observer

    def session_established(self, session):
        if self.trust.is_paired(session.remote_peer_id):
            outbox = self._add_outbox(session)
            self._pump(outbox)
            self._pump_receipts(outbox)

    def session_resumed(self, session):
        outbox = self._outboxes.get(session.session_id)
        if outbox is None:
            self.session_established(session)
            return
        # The session layer resends what was in flight; carry on after it.
        self._pump(outbox)
        self._pump_receipts(outbox)

    def session_closed(self, session):
        self._forget(self._remove_outbox(session))

    # Across a clean restart (docs/protocol.md §16): the outbox comes back
    # with its session, so that what the session's resend buffer holds
    # (deliveries and receipts sent, not yet acknowledged) is still counted
    # in the window and acknowledgeable, and delivery carries on after it.

    def session_state(self, session):
        """The outbox of C{session} as CBOR-ready values, or None."""
        outbox = self._outboxes.get(session.session_id)
        if outbox is None:
            return None
        return {
            "cursor": outbox.cursor,
            "inflight": [[seq, size] for seq, size in outbox.inflight.items()],
            "rcursor": outbox.rcursor,
            "rinflight": sorted(outbox.rinflight),
        }

    def restore_session(self, session, state):
        """Recreate the outbox of a restored C{session} from L{session_state} output."""
        # Trust is not loaded yet at restore; every push asks it anyway.
        if state is None:
            return
        outbox = self._add_outbox(session)
        for seq, size in state["inflight"]:
            outbox.delivered(seq, size)
        outbox.cursor = state["cursor"]
        outbox.rcursor = state["rcursor"]
        if state["rinflight"]:
            outbox.receipts_sent(state["rinflight"])

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
