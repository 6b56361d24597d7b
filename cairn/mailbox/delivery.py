"""
Delivery from a node's mailbox to the sessions of paired peers
(docs/protocol.md §21): each such session has an L{Outbox}, two windows
(deliveries and receipts) filled from the store as the peer acknowledges,
read again L{READ_RETRY} seconds after a failed read, and kept across a
clean restart (§16).

A mixin of L{cairn.mailbox.service.MailboxService}, which owns the state it
uses: C{store}, C{trust}, C{clock}, C{window}, C{window_bytes},
C{batch_bytes}, C{_outboxes}, C{_by_peer}, and L{cairn.storeservice.StoreService}'s
C{_stopped} and C{_track}.
"""

from twisted.logger import Logger

from cairn.mailbox import messages
from cairn.mailbox.interfaces import StoreFull
from cairn.mailbox.window import Outbox
from cairn.wire import cbor
from cairn.wire.constants import MessageType

log = Logger()

#: Receipts per ForwardReceipt.
RECEIPT_BATCH = 256
#: Most messages one store read fetches for a session: an empty window (a
#: drain's start) is filled by several reads, the first delivered while the
#: next is read, instead of one read of the whole window (1024 rows, 3-7
#: ms on the bench's machine) before anything goes out (issue 19).
READ_ROWS = 256
#: Seconds before a session's failed delivery or receipt read is tried again.
READ_RETRY = 2.0


class Delivery:
    """The outboxes of a L{MailboxService}: pushing to sessions, and the session observer."""

    def _outboxes_of(self, peer_id):
        return self._by_peer.get(peer_id, ())

    def _add_outbox(self, session):
        self._remove_outbox(session)  # one per session
        outbox = self._outboxes[session.session_id] = Outbox(session)
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
            self.bus.owe(sender)

    def _owed_to(self, sender):
        for outbox in self._outboxes_of(sender):
            self._pump_receipts(outbox)

    def _pump_all(self):
        for outbox in list(self._outboxes.values()):
            self._pump(outbox)
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
        read = self._read_deliveries(outbox)
        if read is not None:
            self._deliver_fetched(outbox, *read)

    def _read_deliveries(self, outbox):
        """Start a read to fill C{outbox}'s delivery window: (its Deferred, its limit), or None."""
        session, window = outbox.session, outbox.deliveries
        if not self._serving(session):
            return None
        room = window.begin_read(self.window, self.window_bytes)
        if not room:
            return None
        limit = min(room, READ_ROWS)
        return self._track(self.store.fetch(session.remote_peer_id, window.cursor, limit)), limit

    def _deliver_fetched(self, outbox, read, limit):
        """Deliver what C{read} (from L{_read_deliveries}) fetches, reading the next page meanwhile."""
        window = outbox.deliveries

        def fetched(held):
            window.end_read()
            budget = self.window_bytes - window.inflight_bytes
            going = []
            for message in held:
                if budget <= 0:
                    break
                going.append(message)
                budget -= len(message.payload)
            # In flight from now: the next page is read beside this one's
            # encoding and sending instead of after it (issue 19: a drain's
            # reads and sends took turns). Its rows are handled only once
            # these are sent: its callbacks are added after them, so a
            # store that answers at once cannot reorder the deliveries.
            window.sent_all([(m.seq, len(m.payload)) for m in going])
            following = None
            if window.again or (held and len(going) == limit and budget > 0):
                following = self._read_deliveries(outbox)
            try:
                self._deliver_batches(outbox, going)
            finally:
                if following is not None:
                    self._deliver_fetched(outbox, *following)

        def failed(failure):
            window.end_read()
            self._read_failed(outbox, failure, "messages to deliver")

        read.addCallbacks(fetched, failed)

    def _deliver_batches(self, outbox, going):
        """Send C{going} (L{Stored}s in seq order) in ForwardDelivers of up to C{batch_bytes}."""
        batch, size = [], 0
        batch_bytes, overhead = self.batch_bytes, messages.DELIVER_OVERHEAD
        for message in going:
            length = len(message.payload)
            if batch and size + length + overhead > batch_bytes:
                if not self._deliver_batch(outbox, batch):
                    return
                batch, size = [], 0
            batch.append(message)
            size += length + overhead
        if batch:
            self._deliver_batch(outbox, batch)

    def _deliver_batch(self, outbox, batch):
        """Send C{batch} (L{Stored}s in seq order) as one ForwardDeliver; whether it was sent."""
        body = cbor.dumps_deliveries(
            (message_id, seq, sender, payload, stored_at) for seq, _, sender, message_id, stored_at, _, payload in batch
        )
        return outbox.session.send_payload_if_open(MessageType.FORWARD_DELIVER, body)

    def _pump_receipts(self, outbox):
        session, window = outbox.session, outbox.receipts
        if not self._serving(session):
            return
        room = window.begin_read(self.window)
        if not room:
            return

        def fetched(receipts):
            window.end_read()
            for start in range(0, len(receipts), RECEIPT_BATCH):
                batch = receipts[start : start + RECEIPT_BATCH]
                body = cbor.dumps_receipts(
                    (at, message_id, recipient, rseq, status) for rseq, _, recipient, message_id, status, at in batch
                )
                if not session.send_payload_if_open(MessageType.FORWARD_RECEIPT, body):
                    return
                window.sent_all([(r.rseq, 0) for r in batch])
            if window.again:
                self._pump_receipts(outbox)

        def failed(failure):
            window.end_read()
            self._read_failed(outbox, failure, "receipts")

        self._track(self.store.receipts(session.remote_peer_id, window.cursor, room)).addCallbacks(fetched, failed)

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
        deliveries, receipts = outbox.deliveries, outbox.receipts
        return {
            "cursor": deliveries.cursor,
            "inflight": [[seq, size] for seq, size in deliveries.inflight.items()],
            "rcursor": receipts.cursor,
            "rinflight": sorted(receipts.inflight),
        }

    def restore_session(self, session, state):
        """Recreate the outbox of a restored C{session} from L{session_state} output."""
        # Trust is not loaded yet at restore; every push asks it anyway.
        if state is None:
            return
        outbox = self._add_outbox(session)
        outbox.deliveries.restore(state["cursor"], state["inflight"])
        outbox.receipts.restore(state["rcursor"], [(rseq, 0) for rseq in state["rinflight"]])
