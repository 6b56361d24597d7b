"""
The node's side of pairing: PSK and PIN (SPAKE2, RFC 9382), links,
operator approval, unpairing, and the gate that keeps unpaired sessions
to pairing only.

L{PairingService} registers its handlers (PairRequest, PairResponse,
PairRevoke) and its session observer on the node's L{Peer} when it is
constructed; L{PairingService.start} loads the trust store, and the node
must not accept sessions before that Deferred has fired. The operator's
decisions (approve, reject, unpair) are in L{cairn.pairing.decisions}.
"""

import sqlite3

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from cairn.mailbox.interfaces import StoreFull
from cairn.pairing import messages
from cairn.pairing.books import LinkBook, PinBook
from cairn.pairing.code_store import LocalCodes
from cairn.pairing.decisions import Decisions
from cairn.pairing.exchange import MAX_SOURCE_EXCHANGES, PakeMethods, source_of
from cairn.pairing.interfaces import PENDING, REVOKED, IPairingService
from cairn.pairing.messages import APPROVAL, LINK, PSK
from cairn.pairing.methods import ApprovalMethod, link_method
from cairn.pairing.pending import MAX_PENDING, MAX_PENDING_PER_SOURCE, PendingQueue
from cairn.pairing.psk import PskSetting
from cairn.pairing.ratelimit import FailureLimiter
from cairn.session.guards import register_service
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode, MessageType, PairRejectCode
from cairn.wire.schema import BodyError

log = Logger()

#: How often last-seen times are written (they are advisory).
LAST_SEEN_FLUSH = 60.0

#: Defaults (docs/protocol.md §20.6).
PIN_TTL = 300.0
LINK_TTL = 3600.0
MAX_SOURCE_FAILURES = 5
FAILURE_WINDOW = 600.0
MAX_CODE_FAILURES = 3


@implementer(IPairingService)
class PairingService(Decisions):
    """
    Pairing for the node's L{Peer}.

    @param psk: the pre-shared key (C{CAIRN_PSK}) or None; an empty string
        counts as none.
    @param link_addresses: the addresses put in pairing links, as a client
        dials them (C{"tcp:host=...:port=..."}, C{"ws://.../"}); or a
        callable giving them when a link is made (the node's
        L{cairn.addresses.LinkAddresses}: known once its listeners are bound).
    """

    def __init__(
        self,
        peer,
        trust,
        clock,
        psk=None,
        link_addresses=(),
        pin_ttl=PIN_TTL,
        link_ttl=LINK_TTL,
        max_source_failures=MAX_SOURCE_FAILURES,
        failure_window=FAILURE_WINDOW,
        max_code_failures=MAX_CODE_FAILURES,
        max_pending=MAX_PENDING,
        psk_max_uses=0,
        psk_lifetime=None,
        psk_file=None,
        max_source_exchanges=MAX_SOURCE_EXCHANGES,
        max_pending_per_source=MAX_PENDING_PER_SOURCE,
        codes=None,
    ):
        self.peer = peer
        self.trust = trust
        self.clock = clock
        if callable(link_addresses):
            self._link_addresses = link_addresses
        else:
            fixed = tuple(link_addresses)
            self._link_addresses = lambda: fixed
        self.max_pending = max_pending
        #: The approval queue's bounds (L{cairn.pairing.pending}).
        self.pending = PendingQueue(trust, clock, max_pending, max_pending_per_source, on_evicted=self._evicted)
        self.psk = PskSetting(clock, psk, psk_max_uses, psk_lifetime, psk_file)
        #: Where PINs and links are shared (L{ICodeStore}; a node alone: nowhere).
        self.codes = codes if codes is not None else LocalCodes()
        self.pins = PinBook(clock, pin_ttl, max_code_failures, codes=self.codes)
        self.links = LinkBook(clock, link_ttl, max_code_failures, codes=self.codes)
        self.sources = FailureLimiter(clock, max_source_failures, failure_window)
        self.pake = PakeMethods(self, max_source_exchanges)
        self.approvals = ApprovalMethod(self)
        self._purge_hooks = []
        handlers = {
            MessageType.PAIR_REQUEST: self._pair_request,
            MessageType.PAIR_RESPONSE: self.pake.respond,
            MessageType.PAIR_REVOKE: self._pair_revoke,
        }
        register_service(peer, handlers, "pairing", stopped=lambda: self._stopped)
        peer.add_observer(self)
        self._flusher = None
        self._stopped = False
        # A trust store shared by several nodes reports what the others
        # decided (an approval, a rejection, a revocation): act on it here.
        watch = getattr(trust, "watch", None)
        if watch is not None:
            watch(self._decided_elsewhere)

    @property
    def link_addresses(self) -> tuple:
        """The addresses pairing links carry now."""
        return tuple(self._link_addresses())

    def start(self):
        """Load the trust store; fires once L{ITrustStore.is_paired} is accurate."""
        self._flusher = LoopingCall(self._flush)
        self._flusher.clock = self.clock
        self._flusher.start(LAST_SEEN_FLUSH, now=False)
        return defer.gatherResults([self.trust.start(), self.codes.start()], consumeErrors=True).addCallback(
            lambda results: results[0]
        )

    def stop(self):
        """Stop writing: flush what is pending; later events are not persisted."""
        self._stopped = True
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        return self._flush().addCallback(lambda _: self.codes.stop())

    def _flush(self):
        flush = getattr(self.trust, "flush", None)
        if flush is None:
            return defer.succeed(None)
        # A periodic job logs its own errors: a LoopingCall stops at the first.
        return flush().addErrback(_flush_failed)

    # IPairingService

    def connected(self, peer_id) -> bool:
        return any(s.attached for s in self._sessions_of(peer_id))

    def create_pin(self):
        pin, expires_at = self.pins.create()
        log.info("pairing PIN created (replaces any earlier one), valid until {expires_at}", expires_at=expires_at)
        return {"pin": pin, "expires_at": expires_at}

    def codes_shared(self):
        """A Deferred firing once the codes created so far can be used on every node."""
        return self.codes.flushed()

    def create_link(self):
        if not self.link_addresses:
            log.warn("pairing link created without addresses: set the node's public addresses")
        link = self.links.create(self.peer.peer_id, self.link_addresses)
        log.info("pairing link created, valid until {expires_at}", expires_at=link.expires_at)
        return {"link": link.to_uri(), "expires_at": link.expires_at}

    # The gate for other services

    def require_paired(self, session) -> bool:
        """Whether C{session}'s peer is paired; if not, the session is closed with NOT_PAIRED."""
        if self.trust.is_paired(session.remote_peer_id):
            return True
        session.close(CloseCode.NOT_PAIRED, "pair with this node first")
        return False

    # Session observer

    def channels_allowed(self, session) -> bool:
        """Only paired peers open channels on the node (L{cairn.session.peer.Peer.channels_allowed})."""
        return self.trust.is_paired(session.remote_peer_id)

    def session_established(self, session):
        self._guard_deferred(self._seen(session, inbound=not session.initiator), session)

    def session_resumed(self, session):
        self._guard_deferred(self.trust.touch(session.remote_peer_id, self.clock.seconds()), session)

    def session_closed(self, session):
        self.approvals.forget(session)
        self.pake.forget(session)
        self._guard_deferred(self.trust.touch(session.remote_peer_id, self.clock.seconds()), session)

    def _seen(self, session, inbound):
        """
        Record last_seen. A handshake alone files no request: only a
        PairRequest C{approval} does (L{cairn.pairing.pending}).
        """
        return self.trust.touch(session.remote_peer_id, self.clock.seconds())

    def _evicted(self, peer_id):
        """A pending request was dropped to make room: tell its peer."""
        for session in self._sessions_of(peer_id):
            self.refuse(
                session, APPROVAL, PairRejectCode.RATE_LIMITED, "too many pending requests: this one was dropped"
            )

    # Handlers

    def _guard_deferred(self, result, session):
        """Log a failed session-event step (last seen); the session goes on."""
        if isinstance(result, defer.Deferred):

            def failed(failure):
                if self._stopped:
                    # The node is stopping and its database closing.
                    log.info("pairing step dropped at shutdown: {why}", why=failure.getErrorMessage())
                    return
                log.failure("pairing step failed", failure)

            result.addErrback(failed)

    @defer.inlineCallbacks
    def _pair_request(self, session, body):
        try:
            request = messages.parse_pair_request(body)
        except messages.UnsupportedVersion as e:
            self.refuse(session, body.get("method", ""), PairRejectCode.UNSUPPORTED_VERSION, str(e))
            return
        except messages.UnsupportedMethod as e:
            self.refuse(session, "", PairRejectCode.METHOD_UNAVAILABLE, str(e))
            return
        except BodyError as e:
            self.refuse(session, "", PairRejectCode.MALFORMED, str(e))
            return
        method = request.method
        peer_id = session.remote_peer_id
        if method in (LINK, APPROVAL) and self.trust.is_paired(peer_id):
            # No code consumed: a link's device has checked this node's peer
            # id, an approval's device compares it (§20.3.5). PSK and PIN
            # always run the whole exchange, so their confirmation is proven.
            self.send_reply(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(method, already_paired=True))
            return
        record = yield self.trust.get(peer_id)
        if record is not None and record.state == REVOKED and method in (PSK, APPROVAL):
            self.refuse(
                session,
                method,
                PairRejectCode.REJECTED_BY_OPERATOR,
                "pairing was revoked: ask the operator for a PIN or link",
            )
            return
        if method == APPROVAL:
            yield self.approvals.file(session, request, record)
            return
        source = source_of(session)
        if self.sources.limited(source):
            self.refuse_rate_limited(session, method, source)
            return
        if method == LINK:
            yield link_method(self, session, request, source)
            return
        self.pake.start(session, request, source)

    def pairing_status(self) -> dict:
        """The state of PSK and PIN pairing for the management API (no secrets)."""
        pin = self.pins.current
        now = self.clock.seconds()
        active = pin is not None and pin.refusal(now, self.pins.max_failures) is None
        return {
            "psk": self.psk.status(),
            "pin": {
                "active": active,
                "expires_at": pin.expires_at if active else None,
                "failures": pin.failures if pin is not None else 0,
                "burned": self.pake.pins_burned,
                "last_burned_at": self.pake.last_pin_burned_at,
            },
            "links_active": len(self.links),
        }

    def rotate_psk(self, psk=None) -> dict:
        """Put a new PSK in force (C{psk}, or a random one); the result holds it once."""
        psk = self.psk.rotate(psk)
        return {"psk": psk, **self.psk.status()}

    def disable_psk(self) -> dict:
        """Turn PSK pairing off until the next rotation."""
        self.psk.disable()
        return self.psk.status()

    def pair_session(self, session, method, name, server_proof):
        peer_id = session.remote_peer_id
        if self.trust.is_paired(peer_id):
            self.send_reply(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(method, server_proof, True))
            return None

        def paired(record):
            log.info("peer {peer_id} paired by {method}", peer_id=peer_id, method=method)
            self.send_reply(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(method, server_proof))
            self.peer.peer_paired(peer_id)

        def not_stored(failure):
            failure.trap(StoreFull)  # a full disk, JetStream's limit, NATS away: expected, one line
            log.warn("peer {peer_id} not paired: {why}", peer_id=peer_id, why=failure.getErrorMessage())
            if session.closed is None:
                session.close(CloseCode.INTERNAL, "the node cannot store the pairing now; try again later")

        d = self.trust.set_paired(peer_id, session.remote_identity, name, method, self.clock.seconds())
        return d.addCallbacks(paired, not_stored)

    @defer.inlineCallbacks
    def _pair_revoke(self, session, body):
        try:
            messages.parse_pair_revoke(body)
        except BodyError as e:
            self.refuse(session, "", PairRejectCode.MALFORMED, str(e))
            return
        peer_id = session.remote_peer_id
        if self.trust.is_paired(peer_id):
            yield self.unpair(peer_id)
            return
        record = yield self.trust.get(peer_id)
        if record is not None and record.state == PENDING:
            yield self.trust.reject(peer_id)
        if session.closed is None:
            session.close(CloseCode.PAIRING_REVOKED, "not paired with this node")

    # Replies

    def _sessions_of(self, peer_id):
        return [s for s in list(self.peer.sessions.values()) if s.remote_peer_id == peer_id and s.closed is None]

    def send_reply(self, session, type_code, body):
        if session.closed is not None:
            return
        try:
            session.send(type_code, body)
        except SessionClosed:
            pass

    def refuse(self, session, method, code, reason):
        log.info(
            "pairing ({method}) of {peer_id} refused: {code}",
            method=method or "?",
            peer_id=session.remote_peer_id,
            code=PairRejectCode(code).name,
        )
        self.send_reply(session, MessageType.PAIR_REJECT, messages.pair_reject(code, reason, method))

    def refuse_rate_limited(self, session, method, source):
        wait = int(self.sources.retry_after(source)) + 1
        self.refuse(session, method, PairRejectCode.RATE_LIMITED, f"too many failed attempts, retry in {wait} s")


def _flush_failed(failure):
    """A last-seen write that failed: one line for the store's own errors (a full disk), a traceback for the rest."""
    if failure.check(sqlite3.Error, OSError, StoreFull):
        log.warn("could not write last-seen times: {why}", why=str(failure.value).splitlines()[0][:200])
    else:
        log.failure("could not write last-seen times", failure)
