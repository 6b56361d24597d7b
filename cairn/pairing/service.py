"""
The node's side of pairing: PSK, PIN (SPAKE2), links, operator approval,
unpairing, and the gate that keeps unpaired sessions to pairing only.

L{PairingService} registers its handlers (PairRequest, PairResponse,
PairRevoke) and its session observer on the node's L{Peer} when it is
constructed; L{PairingService.start} loads the trust store, and the node
must not accept sessions before that Deferred has fired.
"""

from spake2 import SPAKE2_B
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from cairn.pairing import messages, proofs
from cairn.pairing.codes import LinkBook, PinBook
from cairn.pairing.interfaces import PENDING, REVOKED, IPairingService, UnknownPeer
from cairn.pairing.messages import APPROVAL, LINK, PIN, PSK
from cairn.pairing.ratelimit import FailureLimiter
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
MAX_PENDING = 100
#: Seconds between two "pending requests at the limit" warnings.
PENDING_FULL_WARN_EVERY = 60.0
#: A PSK shorter than this (in bytes) is logged as weak at start-up.
WEAK_PSK = 16


def paired_only(trust, handler):
    """
    Wrap a service handler C{handler(session, body)} so that it runs only
    for paired peers; a session of any other peer is closed with
    C{NOT_PAIRED}.
    """

    def guarded(session, body):
        if not trust.is_paired(session.remote_peer_id):
            session.close(CloseCode.NOT_PAIRED, "pair with this node first")
            return None
        return handler(session, body)

    guarded.__wrapped__ = handler
    return guarded


def source_of(session) -> str:
    """
    The source host of the transport carrying C{session}, the key of the
    per-source rate limit (the port is left out: it changes per dial).
    """
    transport = getattr(session.connection, "transport", None)
    inner = getattr(transport, "transport", None)
    get_peer = getattr(inner, "getPeer", None)
    if get_peer is not None:
        host = getattr(get_peer(), "host", None)
        if host:
            return host
    return str(getattr(transport, "peer_address", "unknown"))


class _PinExchange:
    """A PIN exchange waiting for the client's PairResponse."""

    __slots__ = ("generation", "name", "client_mac", "server_mac")

    def __init__(self, generation, name, client_mac, server_mac):
        self.generation = generation
        self.name = name
        self.client_mac = client_mac
        self.server_mac = server_mac


@implementer(IPairingService)
class PairingService:
    """
    Pairing for the node's L{Peer}.

    @param psk: the pre-shared key (C{CAIRN_PSK}) or None; an empty string
        counts as none.
    @param link_addresses: the addresses put in pairing links, as a client
        dials them (C{"tcp:host=...:port=..."}, C{"ws://.../"}).
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
    ):
        self.peer = peer
        self.trust = trust
        self.clock = clock
        self.link_addresses = tuple(link_addresses)
        self.max_pending = max_pending
        self._full_warned_at = None
        self._unrecorded = 0
        self._psk_key = proofs.psk_key(psk) if psk else None
        if psk and len(psk.encode("utf-8")) < WEAK_PSK:
            log.warn("CAIRN_PSK is shorter than {n} bytes: use a long random key", n=WEAK_PSK)
        self.pins = PinBook(clock, pin_ttl, max_code_failures)
        self.links = LinkBook(clock, link_ttl, max_code_failures)
        self.sources = FailureLimiter(clock, max_source_failures, failure_window)
        self._purge_hooks = []
        self._pin_exchanges = {}
        # Unknown peers recorded as pending on connecting, not yet logged:
        # most pair by themselves (PSK, PIN, link) within the session, so
        # "pending approval" is logged only if one leaves still pending.
        self._unannounced = set()
        peer.register_handler(MessageType.PAIR_REQUEST, self._guarded(self._pair_request))
        peer.register_handler(MessageType.PAIR_RESPONSE, self._guarded(self._pair_response))
        peer.register_handler(MessageType.PAIR_REVOKE, self._guarded(self._pair_revoke))
        peer.add_observer(self)
        self._flusher = None
        self._stopped = False

    def start(self):
        """Load the trust store; fires once L{ITrustStore.is_paired} is accurate."""
        self._flusher = LoopingCall(self._flush)
        self._flusher.clock = self.clock
        self._flusher.start(LAST_SEEN_FLUSH, now=False)
        return self.trust.start()

    def stop(self):
        """Stop writing: flush what is pending; later events are not persisted."""
        self._stopped = True
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        return self._flush()

    def _flush(self):
        flush = getattr(self.trust, "flush", None)
        if flush is None:
            return defer.succeed(None)
        # A periodic job logs its own errors: a LoopingCall stops at the first.
        return flush().addErrback(lambda f: log.failure("could not write last-seen times", f))

    # IPairingService

    def connected(self, peer_id) -> bool:
        return any(s.attached for s in self._sessions_of(peer_id))

    def create_pin(self):
        pin, expires_at = self.pins.create()
        log.info("pairing PIN created (replaces any earlier one), valid until {expires_at}", expires_at=expires_at)
        return {"pin": pin, "expires_at": expires_at}

    def create_link(self):
        if not self.link_addresses:
            log.warn("pairing link created without addresses: set the node's public addresses")
        link = self.links.create(self.peer.peer_id, self.link_addresses)
        log.info("pairing link created, valid until {expires_at}", expires_at=link.expires_at)
        return {"link": link.to_uri(), "expires_at": link.expires_at}

    def approve(self, peer_id):
        def check(record):
            if record is None or record.state != PENDING:
                raise UnknownPeer(peer_id)
            return self.trust.set_paired(peer_id, record.identity_key, record.name, APPROVAL, self.clock.seconds())

        def approved(record):
            log.info("peer {peer_id} paired by operator approval", peer_id=peer_id)
            for session in self._sessions_of(peer_id):
                self._send(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(APPROVAL))
            return record

        return self.trust.get(peer_id).addCallback(check).addCallback(approved)

    def reject(self, peer_id):
        def rejected(_):
            log.info("pairing request of {peer_id} rejected by the operator", peer_id=peer_id)
            for session in self._sessions_of(peer_id):
                self._reject(session, APPROVAL, PairRejectCode.REJECTED_BY_OPERATOR, "rejected by the operator")

        return self.trust.reject(peer_id).addCallback(rejected)

    def unpair(self, peer_id):
        def revoked(_):
            log.info("peer {peer_id} unpaired", peer_id=peer_id)
            for session in self._sessions_of(peer_id):
                try:
                    session.close(CloseCode.PAIRING_REVOKED, "pairing revoked")
                except Exception:  # one broken transport must not stop the revocation
                    log.failure("closing a revoked session failed")
            return self._purge(peer_id)

        return self.trust.revoke(peer_id, self.clock.seconds()).addCallback(revoked)

    def add_purge_hook(self, hook):
        self._purge_hooks.append(hook)

    def _purge(self, peer_id):
        results = [defer.maybeDeferred(hook, peer_id) for hook in self._purge_hooks]

        def done(outcomes):
            failures = [value for ok, value in outcomes if not ok]
            for failure in failures:
                log.failure("purge hook failed for {peer_id}", failure, peer_id=peer_id)
            if failures:
                return failures[0]  # revoked all the same; the caller learns the purge failed
            return None

        return defer.DeferredList(results, consumeErrors=True).addCallback(done)

    # The gate for other services

    def require_paired(self, session) -> bool:
        """Whether C{session}'s peer is paired; if not, the session is closed with NOT_PAIRED."""
        if self.trust.is_paired(session.remote_peer_id):
            return True
        session.close(CloseCode.NOT_PAIRED, "pair with this node first")
        return False

    # Session observer

    def session_established(self, session):
        self._guard_deferred(self._seen(session, inbound=not session.initiator), session, close=False)

    def session_resumed(self, session):
        self._guard_deferred(self.trust.touch(session.remote_peer_id, self.clock.seconds()), session, close=False)

    def session_closed(self, session):
        self._pin_exchanges.pop(session.session_id, None)
        if session.remote_peer_id in self._unannounced:
            self._unannounced.discard(session.remote_peer_id)
            self._guard_deferred(self._announce_pending(session.remote_peer_id), session, close=False)
        self._guard_deferred(self.trust.touch(session.remote_peer_id, self.clock.seconds()), session, close=False)

    @defer.inlineCallbacks
    def _seen(self, session, inbound):
        """Record last_seen; an unknown peer dialling in becomes a pending request."""
        peer_id = session.remote_peer_id
        record = yield self.trust.get(peer_id)
        now = self.clock.seconds()
        if record is None and inbound:
            if (yield self._pending_full(peer_id)):
                self._warn_pending_full(peer_id, now)
                return
            yield self.trust.add_pending(peer_id, session.remote_identity, "", now)
            if session.closed is None:
                self._unannounced.add(peer_id)
            else:  # it has left already (the store is on its own thread)
                yield self._announce_pending(peer_id)
        yield self.trust.touch(peer_id, now)

    @defer.inlineCallbacks
    def _announce_pending(self, peer_id, name=""):
        """Log a pending request once it is known not to pair by itself."""
        record = yield self.trust.get(peer_id)
        if record is not None and record.state == PENDING:
            log.info(
                "pairing request from {peer_id} {name}pending approval (cairn-server approve {peer_id})",
                peer_id=peer_id,
                name=f"({name}) " if name else "",
            )

    def _warn_pending_full(self, peer_id, now):
        # A flood of fresh identities must not become a flood of log lines:
        # one warning a minute, saying how many were not recorded since.
        self._unrecorded += 1
        if self._full_warned_at is not None and now - self._full_warned_at < PENDING_FULL_WARN_EVERY:
            return
        log.warn(
            "pending pairing requests at the limit ({n}): {count} peer(s) not recorded, the last {peer_id}",
            n=self.max_pending,
            count=self._unrecorded,
            peer_id=peer_id,
        )
        self._full_warned_at, self._unrecorded = now, 0

    @defer.inlineCallbacks
    def _pending_full(self, peer_id):
        pending = yield self.trust.list(PENDING)
        return len(pending) >= self.max_pending and all(r.peer_id != peer_id for r in pending)

    # Handlers

    def _guarded(self, handler):
        def guarded(session, body):
            try:
                result = handler(session, body)
            except Exception:
                log.failure("pairing handler failed")
                self._internal_error(session)
                return
            self._guard_deferred(result, session)

        return guarded

    def _guard_deferred(self, result, session, close=True):
        if isinstance(result, defer.Deferred):

            def failed(failure):
                if self._stopped:
                    # The node is stopping and its database closing.
                    log.info("pairing step dropped at shutdown: {why}", why=failure.getErrorMessage())
                    return
                log.failure("pairing step failed", failure)
                if close:
                    self._internal_error(session)

            result.addErrback(failed)

    def _internal_error(self, session):
        if session.closed is None:
            session.close(CloseCode.INTERNAL, "pairing failed on the node")

    @defer.inlineCallbacks
    def _pair_request(self, session, body):
        try:
            request = messages.parse_pair_request(body)
        except messages.UnsupportedMethod as e:
            self._reject(session, "", PairRejectCode.METHOD_UNAVAILABLE, str(e))
            return
        except BodyError as e:
            self._reject(session, "", PairRejectCode.MALFORMED, str(e))
            return
        method = request.method
        peer_id = session.remote_peer_id
        if method != PSK and self.trust.is_paired(peer_id):
            self._send(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(method, already_paired=True))
            return
        record = yield self.trust.get(peer_id)
        if record is not None and record.state == REVOKED and method in (PSK, APPROVAL):
            self._reject(
                session,
                method,
                PairRejectCode.REJECTED_BY_OPERATOR,
                "pairing was revoked: ask the operator for a PIN or link",
            )
            return
        if method == APPROVAL:
            yield self._approval(session, request, record)
            return
        source = source_of(session)
        if self.sources.limited(source):
            self._rate_limited(session, method, source)
            return
        step = {PSK: self._psk, PIN: self._pin_start, LINK: self._link}[method]
        yield step(session, request, source)

    def _psk(self, session, request, source):
        if self._psk_key is None:
            self._reject(session, PSK, PairRejectCode.METHOD_UNAVAILABLE, "no PSK is configured")
            return None
        client_proof, server_proof = proofs.psk_proofs(self._psk_key, session.result.handshake_hash)
        if not proofs.equal(request.proof, client_proof):
            self.sources.failed(source)
            self._reject(session, PSK, PairRejectCode.BAD_PROOF, "wrong PSK")
            return None
        return self._paired(session, PSK, request.name, server_proof)

    def _pin_start(self, session, request, source):
        refusal = self.pins.refusal()
        if refusal is not None:
            self._reject(session, PIN, *refusal)
            return
        pin = self.pins.current
        spake = SPAKE2_B(pin.key, idA=session.remote_identity, idB=self.peer.identity.public_key)
        message_b = spake.start()
        try:
            key = spake.finish(request.spake2)
        except Exception:  # spake2 raises ValueError, SPAKEError or NotOnCurve for a bad element
            self._reject(session, PIN, PairRejectCode.MALFORMED, "'spake2' is not a valid SPAKE2 message")
            return
        client_mac, server_mac = proofs.pin_confirmations(key, session.result.handshake_hash, request.spake2, message_b)
        self._pin_exchanges[session.session_id] = _PinExchange(pin.generation, request.name, client_mac, server_mac)
        self._send(session, MessageType.PAIR_CHALLENGE, {"method": PIN, "spake2": message_b})

    def _pair_response(self, session, body):
        try:
            confirm = messages.parse_pair_response(body)
        except BodyError as e:
            self._reject(session, PIN, PairRejectCode.MALFORMED, str(e))
            return None
        exchange = self._pin_exchanges.pop(session.session_id, None)
        if exchange is None:
            self._reject(session, PIN, PairRejectCode.MALFORMED, "no PIN exchange in progress on this session")
            return None
        source = source_of(session)
        if self.sources.limited(source):
            self._rate_limited(session, PIN, source)
            return None
        refusal = self.pins.refusal(exchange.generation)
        if refusal is not None:
            self._reject(session, PIN, *refusal)
            return None
        pin = self.pins.current
        if not proofs.equal(confirm, exchange.client_mac):
            pin.failures += 1
            self.sources.failed(source)
            burned = pin.failures >= self.pins.max_failures
            reason = "wrong PIN" + ("; the PIN is now invalid" if burned else "")
            self._reject(session, PIN, PairRejectCode.BAD_PROOF, reason)
            return None
        pin.used = True
        return self._paired(session, PIN, exchange.name, exchange.server_mac)

    def _link(self, session, request, source):
        code = self.links.get(request.link_id)
        refusal = self.links.refusal(code)
        if refusal is not None:
            if code is None:
                self.sources.failed(source)
            self._reject(session, LINK, *refusal)
            return None
        client_proof, server_proof = proofs.link_proofs(code.key, session.result.handshake_hash)
        if not proofs.equal(request.proof, client_proof):
            code.failures += 1
            self.sources.failed(source)
            self._reject(session, LINK, PairRejectCode.BAD_PROOF, "wrong link proof")
            return None
        code.used = True
        return self._paired(session, LINK, request.name, server_proof)

    @defer.inlineCallbacks
    def _approval(self, session, request, record):
        peer_id = session.remote_peer_id
        if (record is None or record.state != PENDING) and (yield self._pending_full(peer_id)):
            self._reject(session, APPROVAL, PairRejectCode.RATE_LIMITED, "too many pending requests, try later")
            return
        yield self.trust.add_pending(peer_id, session.remote_identity, request.name, self.clock.seconds())
        if not self.trust.is_paired(peer_id):  # approve() confirms by itself
            self._unannounced.discard(peer_id)
            yield self._announce_pending(peer_id, request.name)
            self._send(session, MessageType.PAIR_CHALLENGE, {"method": APPROVAL})

    def _paired(self, session, method, name, server_proof):
        peer_id = session.remote_peer_id
        if self.trust.is_paired(peer_id):
            self._send(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(method, server_proof, True))
            return None

        def paired(record):
            self._unannounced.discard(peer_id)
            log.info("peer {peer_id} paired by {method}", peer_id=peer_id, method=method)
            self._send(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(method, server_proof))

        d = self.trust.set_paired(peer_id, session.remote_identity, name, method, self.clock.seconds())
        return d.addCallback(paired)

    @defer.inlineCallbacks
    def _pair_revoke(self, session, body):
        try:
            messages.parse_pair_revoke(body)
        except BodyError as e:
            self._reject(session, "", PairRejectCode.MALFORMED, str(e))
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

    def _send(self, session, type_code, body):
        if session.closed is not None:
            return
        try:
            session.send(type_code, body)
        except SessionClosed:
            pass

    def _reject(self, session, method, code, reason):
        log.info(
            "pairing ({method}) of {peer_id} refused: {code}",
            method=method or "?",
            peer_id=session.remote_peer_id,
            code=PairRejectCode(code).name,
        )
        self._send(session, MessageType.PAIR_REJECT, messages.pair_reject(code, reason, method))

    def _rate_limited(self, session, method, source):
        wait = int(self.sources.retry_after(source)) + 1
        self._reject(session, method, PairRejectCode.RATE_LIMITED, f"too many failed attempts, retry in {wait} s")
