"""
The peer side of the mailbox, over a client L{Session} with a node.

    from cairn.mailbox import client as mailbox
    mailbox.set_inbox(client.peer, lambda sender, message_id, data: ...)
    mailbox.set_receipts(client.peer, lambda receipt: ...)
    result = yield mailbox.forward(session, recipient_peer_id, b"hello")

L{forward} fetches the recipient's identity key from the node
(PeerKeyRequest) once, checks that it hashes to the recipient's peer id
(the node cannot substitute a key), seals the data end to end
(L{cairn.mailbox.sealing}: the pair box by default, the signed sealed box
with C{signed=True}) and fires with a L{ForwardResult} once the
node has the message on disk, or fails with L{ForwardRejected}. To retry
after a failure (e.g. the session ended first), pass the same
C{message_id}: the node acknowledges it again without storing it twice.

Requests travel several to a ForwardRequest, Nagle-like, and a session
keeps up to L{WINDOW} ForwardRequests awaiting their ForwardAck (the
node's group commit) at once (docs/protocol.md §21.2 allows several; the
node answers each on its own, not necessarily in the order sent, and each
ack is matched by message id). A request made while nothing awaits goes
at once. While something awaits, requests queue: they go together when a
ForwardAck arrives (also those made by the callbacks of the acks it
carries), or, as soon as a full ForwardRequest's worth (L{BATCH_BYTES})
is queued, that much goes without waiting for an ack. Never more than
the window await: what is queued beyond it waits for acks, however much
it is (the backpressure: the callers' Deferreds fire later). A session
that ends fails the Deferred of every request it had sent or queued.

Deliveries (several per ForwardDeliver) are opened, checked, given to
the inbox callback once per (sender, message id) in order, and
acknowledged with one cumulative ForwardPurge C{"upto"} per
ForwardDeliver; receipts likewise, one ForwardPurge per ForwardReceipt.
A L{ReplayGuard} (L{cairn.mailbox.replay}) gives each (sender, message
id) to the inbox at most once and drops ids too old to be a genuine
delivery, so a node cannot replay old messages; it remembers ids in
memory unless L{set_replay_guard} gives it a file (L{SeenFile}) that
outlives the process, as C{cairn-mailbox} does.
"""

import os
import time
from collections import OrderedDict

import attr
from twisted.internet import defer
from twisted.logger import Logger

from cairn.answers import Answers
from cairn.mailbox import messages, replay, sealing
from cairn.session.errors import Rejected
from cairn.wire.constants import ForwardStatus, MessageType, ReceiptStatus

log = Logger()

#: Receipt ids remembered per client for the receipts' duplicate filter.
SEEN = 100_000
#: Payload bytes (with L{messages.DELIVER_OVERHEAD} each) in one ForwardRequest.
BATCH_BYTES = 64 * 1024
#: ForwardRequests of one session awaiting their ForwardAck at once (at
#: most L{BATCH_BYTES} each: with the default, 256 KiB of payload in flight).
WINDOW = 4


#: ReceiptStatus by value (an enum call per receipt costs more than the lookup).
_STATUSES = {status.value: status for status in ReceiptStatus}


class ForwardRejected(Rejected):
    """The node did not store the message; C{code} is a L{ForwardStatus} (or an unknown int)."""

    codes = ForwardStatus
    what = "forward"


class UnknownRecipient(ForwardRejected):
    """The node holds no key for the recipient (it is not paired), or offered a wrong one."""


@attr.s(frozen=True, auto_attribs=True)
class ForwardResult:
    """A message the node holds on disk; C{duplicate}: it already had it."""

    message_id: bytes
    duplicate: bool = False


@attr.s(frozen=True, auto_attribs=True)
class ReceiptEvent:
    """What became of a message sent: C{status} is a L{ReceiptStatus}."""

    message_id: bytes
    recipient: str
    status: int
    at: float


def uuid7(now: float = None) -> bytes:
    """A new 16-byte UUIDv7 (RFC 9562): Unix milliseconds, then random bits."""
    millis = int((time.time() if now is None else now) * 1000)
    rand = os.urandom(10)
    return millis.to_bytes(6, "big") + bytes([0x70 | (rand[0] & 0x0F), rand[1], 0x80 | (rand[2] & 0x3F)]) + rand[3:]


class _Outgoing:
    """
    The ForwardRequest entries of one session not sent yet (C{queued}: their
    bytes as L{BATCH_BYTES} counts them), and how many ForwardRequests await
    their ForwardAck.
    """

    __slots__ = ("queue", "queued", "awaiting")

    def __init__(self):
        self.queue = []
        self.queued = 0
        self.awaiting = 0


class MailboxClient:
    """The mailbox dispatcher of one client L{Peer}: see the module docstring."""

    def __init__(self, peer, window: int = WINDOW):
        if window < 1:
            raise ValueError(f"the window must be at least 1 ForwardRequest, not {window}")
        self.peer = peer
        #: ForwardRequests a session keeps awaiting their ForwardAck at once (L{WINDOW}).
        self.window = window
        #: Called with (sender peer id, message id, data) once per message.
        self.on_message = None
        #: Called with a L{ReceiptEvent}.
        self.on_receipt = None
        #: Called with (sender, message id, data) before the inbox; a true
        #: result consumes the message (e.g. a sync group key, L{cairn.sync.sealing}).
        self.filters = []
        self._acks = Answers()  # ForwardAcks awaited
        self._outgoing = {}  # session id -> _Outgoing
        self._key_waiters = {}  # (session id, peer id) -> [Deferred]
        self._keys = {}  # peer id -> verified identity key
        self._seen = OrderedDict()
        self.guard = replay.ReplayGuard(peer.clock.seconds)
        self.sealer = sealing.Sealer(peer.identity)
        handlers = {
            MessageType.FORWARD_ACK: self._ack,
            MessageType.FORWARD_DELIVER: self._deliver,
            MessageType.FORWARD_RECEIPT: self._receipt,
            MessageType.PEER_KEY_RESPONSE: self._peer_key,
        }
        peer.register_guarded(handlers, "mailbox client")
        peer.add_observer(self)

    # Sending

    def peer_key(self, session, peer_id):
        """Fires with C{peer_id}'s identity key, verified against the id, fetched from the node once."""
        if peer_id in self._keys:
            return defer.succeed(self._keys[peer_id])
        if session.closed is not None:
            return defer.fail(session.closed)
        key = (session.session_id, peer_id)
        d = defer.Deferred()
        first = key not in self._key_waiters
        self._key_waiters.setdefault(key, []).append(d)
        if first:
            session.send(MessageType.PEER_KEY_REQUEST, {"peer": peer_id})
        return d

    def forward(self, session, peer_id, data: bytes, message_id: bytes = None, signed: bool = False):
        """Seal C{data} for C{peer_id} and have the node store it; see the module docstring."""
        message_id = message_id or uuid7()
        key = self._keys.get(peer_id)
        if key is None:
            d = self.peer_key(session, peer_id)
            return d.addCallback(lambda key: self._request(session, peer_id, key, data, message_id, signed))
        try:
            return self._request(session, peer_id, key, data, message_id, signed)
        except Exception:
            return defer.fail()

    def _request(self, session, peer_id, key, data, message_id, signed):
        payload = self.sealer.seal(peer_id, key, message_id, data, signed)
        if session.closed is not None:
            raise session.closed
        d = self._acks.add(session.session_id, message_id)
        entry = {"to": peer_id, "id": message_id, "payload": payload}
        outgoing = self._outgoing.get(session.session_id)
        if outgoing is None:
            outgoing = self._outgoing[session.session_id] = _Outgoing()
        outgoing.queue.append(entry)
        outgoing.queued += len(payload) + messages.DELIVER_OVERHEAD
        if not outgoing.awaiting:
            self._flush(session, outgoing)
        elif outgoing.queued >= BATCH_BYTES:
            self._flush(session, outgoing, full_only=True)
        return d

    def _flush(self, session, outgoing, full_only=False):
        """
        Send what C{outgoing} holds, in ForwardRequests of at most
        L{BATCH_BYTES} (a larger entry alone), while fewer than L{window}
        await their ack; with C{full_only}, only full ones (the rest waits
        for an ack).
        """
        queue = outgoing.queue
        while queue and outgoing.awaiting < self.window:
            if full_only and outgoing.queued < BATCH_BYTES:
                break
            end, size = 0, 0
            while end < len(queue):
                cost = len(queue[end]["payload"]) + messages.DELIVER_OVERHEAD
                if end and size + cost > BATCH_BYTES:
                    break
                size += cost
                end += 1
            # Off the queue and counted before it is sent (a send may run an
            # ack's handler, which counts it off and flushes too).
            batch = queue[:end]
            del queue[:end]
            outgoing.queued -= size
            outgoing.awaiting += 1
            if not _send(session, MessageType.FORWARD_REQUEST, {"messages": batch}):
                outgoing.awaiting -= 1

    # Handlers

    def _peer_key(self, session, body):
        peer_id, key, retry = messages.parse_peer_key_response(body)
        waiters = self._key_waiters.pop((session.session_id, peer_id), [])
        if retry:  # the node could not check: not final, as a STORAGE_ERROR
            error = ForwardRejected(ForwardStatus.STORAGE_ERROR, f"the node cannot check {peer_id}'s pairing now")
        elif key is None:
            error = UnknownRecipient(ForwardStatus.NOT_PAIRED, f"the node knows no paired peer {peer_id}")
        elif not sealing.key_matches(peer_id, key):
            log.warn("mailbox: the node offered a key that is not {peer_id}'s", peer_id=peer_id)
            error = UnknownRecipient(ForwardStatus.INVALID, "the node offered a key that does not match the peer id")
        else:
            self._keys[peer_id] = key
            error = None
        for d in waiters:
            if error is None:
                d.callback(key)
            else:
                d.errback(error)

    def _ack(self, session, body):
        acks = messages.parse_acks(body)
        outgoing = self._outgoing.get(session.session_id)
        try:
            for message_id, status, reason in acks:
                d = self._acks.answered(session.session_id, message_id)
                if d is None:
                    continue
                if status in (ForwardStatus.STORED, ForwardStatus.DUPLICATE):
                    d.callback(ForwardResult(message_id, status == ForwardStatus.DUPLICATE))
                else:
                    d.errback(ForwardRejected(status, reason))
        finally:
            # What was asked for meanwhile (also from the callbacks above) goes now, together.
            if outgoing is not None:
                outgoing.awaiting = max(0, outgoing.awaiting - 1)
                if outgoing.queue:
                    self._flush(session, outgoing)

    def _remember(self, key) -> bool:
        """Record C{key}; False if it was seen already."""
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)
        return True

    def _deliver(self, session, body):
        deliveries = messages.parse_deliveries(body)
        try:
            opened = []
            for message_id, sender, _, _, payload in deliveries:
                try:
                    opened.append((sender, message_id, self.sealer.unseal(sender, message_id, payload)))
                except sealing.SealError as e:
                    log.warn("mailbox: dropped a message from {sender}: {why}", sender=sender, why=str(e))
            # Only what opened is recorded as seen (a forged payload must not
            # shadow the genuine message), and recorded before it is handed over.
            admitted, dropped = self.guard.admit([(sender, message_id) for sender, message_id, _ in opened])
            for index, why in dropped:
                if why != "duplicate":
                    log.warn("mailbox: dropped a message from {sender}: {why}", sender=opened[index][0], why=why)
            filters, on_message = self.filters, self.on_message
            for index in admitted:
                if filters and any(consume(*opened[index]) for consume in filters):
                    continue
                if on_message is not None:
                    on_message(*opened[index])
        finally:
            # Acknowledged (cumulatively, up to the last one handed over) in
            # every case: a message that cannot be opened never will be, and
            # must not be redelivered forever.
            _send(session, MessageType.FORWARD_PURGE, {"upto": deliveries[-1][2]})

    def _receipt(self, session, body):
        receipts = messages.parse_receipts(body)
        try:
            for message_id, recipient, _, status, at in receipts:
                if self._remember(("receipt", message_id, status)) and self.on_receipt is not None:
                    # A known status as its ReceiptStatus, another as the int.
                    status = _STATUSES.get(status, status)
                    self.on_receipt(ReceiptEvent(message_id, recipient, status, at))
        finally:
            _send(session, MessageType.FORWARD_PURGE, {"receipts": [r[2] for r in receipts]})

    # Peer observer

    def session_closed(self, session):
        sid = session.session_id
        self._outgoing.pop(sid, None)
        self._acks.session_closed(sid, session.closed)
        for key in [k for k in self._key_waiters if k[0] == sid]:
            for d in self._key_waiters.pop(key):
                d.errback(session.closed)


def _send(session, type_code, body) -> bool:
    """Send if the session is open (whether it was); what is lost with a transport is owed again (the node resends)."""
    return session.send_if_open(type_code, body)


def mailbox(peer) -> MailboxClient:
    """The L{MailboxClient} of C{peer}, created on first use (also C{Client.mailbox})."""
    return peer.extension(MailboxClient)


def forward(session, peer_id: str, data: bytes, message_id: bytes = None, signed: bool = False):
    """Send C{data} to C{peer_id} through the node of C{session}; see L{MailboxClient.forward}."""
    return mailbox(session.local).forward(session, peer_id, data, message_id, signed)


def set_inbox(peer, callback) -> None:
    """Give C{callback(sender, message_id, data)} every message delivered to C{peer}, once."""
    mailbox(peer).on_message = callback


def set_replay_guard(peer, guard) -> None:
    """
    Use C{guard} (a L{replay.ReplayGuard}) for C{peer}'s deliveries, e.g.
    C{ReplayGuard(reactor.seconds, SeenFile(path), max_age=node's CAIRN_FORWARD_MAX_AGE)}.
    """
    mailbox(peer).guard = guard


def set_receipts(peer, callback) -> None:
    """Give C{callback(ReceiptEvent)} every receipt for messages C{peer} sent."""
    mailbox(peer).on_receipt = callback
