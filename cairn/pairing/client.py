"""
The peer side of pairing, over a client L{Session}.

    session = yield client.connect(address)
    result = yield pair_psk(session, "the CAIRN_PSK value", name="laptop")
    result = yield pair_pin(session, "7K3M-Q9TZ")
    result = yield request_approval(session, name="phone")   # waits for the operator
    session, result = yield pair_link(client, "cairn://pair?...")
    yield unpair(session)                                     # node closes the session

Every call fails with L{PairingRejected} (C{.code}, a L{PairRejectCode},
and C{.reason}) when the node refuses, or when the node cannot prove the
secret itself (C{BAD_PROOF}); with L{NodeMismatch} when the node is not
the expected one (C{expect_peer_id}, the pin of a L{cairn.client.Client},
a link's C{peer}); with the session's L{SessionClosed} if the session
ends first. One pairing at a time per session. The replies are routed by
a small per-L{Peer} dispatcher registered for PairChallenge, PairConfirm
and PairReject on the client's L{Peer}.

PSK and PIN run SPAKE2 (RFC 9382, L{cairn.pairing.pake}); the device
proves the key first and accepts only a PairConfirm carrying the node's
key confirmation (there is no proofless "already paired" for them). A
successful pairing pins the node in the dialling L{cairn.client.Client}.
"""


import attr
from twisted.internet import defer
from twisted.logger import Logger

from cairn.pairing import messages, pake, proofs
from cairn.pairing.codes import normalize_pin, parse_link
from cairn.pairing.messages import APPROVAL, LINK, PAKE_METHODS, PIN, PSK
from cairn.pins import NodeMismatch
from cairn.session.errors import Rejected
from cairn.wire.constants import CloseCode, MessageType, PairRejectCode
from cairn.wire.schema import BodyError

log = Logger()


class PairingRejected(Rejected):
    """Pairing did not succeed; C{code} is a L{PairRejectCode} (or an int unknown to this version)."""

    codes = PairRejectCode
    what = "pairing"


class ServerMismatch(NodeMismatch):
    """The node reached through a link is not the one the link names."""

    def __init__(self, expected: str, actual: str):
        super().__init__(expected, actual)
        self.args = (f"the link names {expected}, but the node answering is {actual}",)


@attr.s(frozen=True, auto_attribs=True)
class PairResult:
    """
    A successful pairing.

    C{already_paired}: the node knew the peer already. C{verified}: the
    node's identity is established -- it proved the PSK or PIN, it is the
    peer a link names, or (approval) its peer id equals an expected or
    pinned one. An unverified approval must be checked by a person:
    compare C{peer_id} with the node's (C{cairn-server pair --id}).
    """

    peer_id: str
    method: str
    already_paired: bool = False
    verified: bool = True


class _Exchange:
    """One pairing in progress on one session."""

    def __init__(self, session, method, key=None):
        self.session = session
        self.method = method
        self.key = key  # expected server proof (link) or confirmation (psk, pin), once known
        self.side = None  # SPAKE2 side A until the PairChallenge
        self.on_pending = None
        self.known_node = False  # the node's peer id was expected or pinned
        self.deferred = defer.Deferred(self._cancel)

    def _cancel(self, _):
        dispatcher(self.session.local).forget(self)


class PairingDispatcher:
    """Routes the node's pairing replies to the exchange of their session."""

    def __init__(self, peer):
        self.exchanges = {}
        handlers = {
            MessageType.PAIR_CHALLENGE: self._challenge,
            MessageType.PAIR_CONFIRM: self._confirm,
            MessageType.PAIR_REJECT: self._reject,
        }
        # The client policy (cairn.session.guards.log_only): a failure is
        # logged, not raised into the session layer, and fails the exchange.
        peer.register_guarded(handlers, "pairing client", failed=self._handler_failed)
        peer.add_observer(self)

    def _handler_failed(self, session, error):
        exchange = self.exchanges.get(session.session_id)
        if exchange is not None:
            self._finish(exchange, error=error)

    def begin(self, session, method, key=None) -> _Exchange:
        if session.closed is not None:
            raise session.closed
        if session.session_id in self.exchanges:
            raise RuntimeError("a pairing is already in progress on this session")
        exchange = _Exchange(session, method, key)
        self.exchanges[session.session_id] = exchange
        return exchange

    def forget(self, exchange):
        if self.exchanges.get(exchange.session.session_id) is exchange:
            del self.exchanges[exchange.session.session_id]

    def _finish(self, exchange, result=None, error=None):
        self.forget(exchange)
        if exchange.deferred.called:
            return
        if error is not None:
            exchange.deferred.errback(error)
        else:
            exchange.deferred.callback(result)

    def _fail(self, exchange, code, reason, close=False):
        # Forget the exchange before closing (so the close is not reported
        # as the failure) and close before firing (so the caller's
        # callbacks see the session already ended).
        self.forget(exchange)
        if close and exchange.session.closed is None:
            exchange.session.close(CloseCode.NOT_PAIRED, reason)
        self._finish(exchange, error=PairingRejected(code, reason))

    def _pending(self, exchange):
        if exchange.on_pending is not None:
            try:
                exchange.on_pending()
            except Exception:
                log.failure("on_pending callback failed")

    def _challenge(self, session, body):
        exchange = self.exchanges.get(session.session_id)
        if exchange is None:
            return
        try:
            method, message_b = messages.parse_pair_challenge(body)
        except BodyError as e:
            return self._fail(exchange, PairRejectCode.MALFORMED, f"node sent a bad PairChallenge: {e}")
        if method != exchange.method:
            return self._fail(exchange, PairRejectCode.MALFORMED, f"node answered {method} to {exchange.method}")
        if method == APPROVAL:
            # Pending: PairConfirm or PairReject comes when the operator decides.
            self._pending(exchange)
            return None
        side, exchange.side = exchange.side, None
        if side is None:
            return self._fail(exchange, PairRejectCode.MALFORMED, "node sent a second PairChallenge")
        try:
            client_confirm, exchange.key = side.finish(message_b)
        except pake.InvalidElement as e:
            return self._fail(exchange, PairRejectCode.MALFORMED, f"node sent an invalid SPAKE2 share: {e}")
        if session.closed is None:
            session.send(MessageType.PAIR_RESPONSE, {"method": method, "confirm": client_confirm})
        return None

    def _confirm(self, session, body):
        exchange = self.exchanges.get(session.session_id)
        if exchange is None:
            return
        try:
            method, already, proof = messages.parse_pair_confirm(body)
        except BodyError as e:
            return self._fail(exchange, PairRejectCode.MALFORMED, f"node sent a bad PairConfirm: {e}")
        if method != exchange.method:
            return self._fail(exchange, PairRejectCode.MALFORMED, f"node confirmed {method} to {exchange.method}")
        if method in PAKE_METHODS:
            # Never proofless (§20.3.5): the node proves the key on every
            # PSK or PIN pairing, already paired or not.
            if proof is None or exchange.key is None or not proofs.equal(proof, exchange.key):
                return self._fail(exchange, PairRejectCode.BAD_PROOF, "the node did not prove the secret", close=True)
        elif method == LINK:
            # The link's peer id was checked before anything was sent; a
            # proof, when present, must verify.
            if proof is not None and not proofs.equal(proof, exchange.key):
                return self._fail(exchange, PairRejectCode.BAD_PROOF, "the node did not prove the secret", close=True)
            if proof is None and not already:
                return self._fail(exchange, PairRejectCode.BAD_PROOF, "the node confirmed without a proof", close=True)
        verified = method != APPROVAL or exchange.known_node
        if verified:  # an unverified approval must not become the device's trust anchor
            _pin(session)
        self._finish(exchange, PairResult(session.remote_peer_id, method, already, verified))
        return None

    def _reject(self, session, body):
        exchange = self.exchanges.get(session.session_id)
        if exchange is None:
            return
        try:
            code, reason, _ = messages.parse_pair_reject(body)
        except BodyError as e:
            code, reason = PairRejectCode.MALFORMED, f"node sent a bad PairReject: {e}"
        if code == PairRejectCode.PENDING_APPROVAL and exchange.method == APPROVAL:
            self._pending(exchange)  # not sent by this node version; means "keep waiting"
            return
        self._finish(exchange, error=PairingRejected(code, reason))

    # Peer observer

    def session_closed(self, session):
        exchange = self.exchanges.get(session.session_id)
        if exchange is None:
            return
        if exchange.method == "revoke" and session.closed.code == CloseCode.PAIRING_REVOKED:
            self._finish(exchange, None)
        else:
            self._finish(exchange, error=session.closed)


def dispatcher(peer) -> PairingDispatcher:
    """The pairing dispatcher of C{peer}, created on first use (also C{Client.pairing})."""
    return peer.extension(PairingDispatcher)


def _pinning(session):
    """The L{cairn.client.Client} that dialled C{session}, if any (it keeps the pins)."""
    return getattr(session.local, "pinning", None)


def _pin(session):
    pinning = _pinning(session)
    if pinning is not None:
        try:
            pinning.pin(session)
        except Exception:  # the pairing stands; the pin is a later safeguard
            log.failure("could not record the node's pin")


def _check_node(session, expect_peer_id):
    """
    Whether the node's peer id is known to be right (expected or pinned);
    raises L{NodeMismatch} (the session closed) if it is known to be wrong.
    """
    pinning = _pinning(session)
    pinned = pinning.pinned(session) if pinning is not None else None
    known = False
    for expected in (expect_peer_id, pinned):
        if expected is None:
            continue
        if expected != session.remote_peer_id:
            if session.closed is None:
                session.close(CloseCode.NORMAL, "not the node this device expects")
            raise NodeMismatch(expected, session.remote_peer_id)
        known = True
    return known


def _start(session, method, body, key=None, prepare=None, expect_peer_id=None):
    try:
        known = _check_node(session, expect_peer_id)
        exchange = dispatcher(session.local).begin(session, method, key)
    except Exception as e:
        return defer.fail(e)
    exchange.known_node = known
    if prepare is not None:
        prepare(exchange)
    session.send(MessageType.PAIR_REQUEST, body)
    return exchange.deferred


def _pake(session, method, w, name, expect_peer_id):
    side = pake.SideA(w, session.local.identity.public_key, session.remote_identity, session.result.handshake_hash)

    def prepare(exchange):
        exchange.side = side

    body = {"method": method, "name": name, "pake": side.share}
    return _start(session, method, body, prepare=prepare, expect_peer_id=expect_peer_id)


def pair_psk(session, psk: str, name: str = "", expect_peer_id: str = None):
    """
    Pair with the node's PSK (SPAKE2; the text is NFC-normalised); fires
    with a L{PairResult}. C{expect_peer_id}: refuse any other node
    (L{NodeMismatch}) before sending anything.
    """
    if not isinstance(psk, str) or not psk:
        return defer.fail(ValueError("the PSK is a non-empty string"))
    return _pake(session, PSK, proofs.psk_scalar(psk), name, expect_peer_id)


def pair_pin(session, pin: str, name: str = "", expect_peer_id: str = None):
    """Pair with a PIN shown by the node (SPAKE2); fires with a L{PairResult}."""
    try:
        canonical = normalize_pin(pin)
    except ValueError as e:
        return defer.fail(e)
    return _pake(session, PIN, proofs.pin_scalar(canonical.encode("ascii")), name, expect_peer_id)


def request_approval(session, name: str = "", on_pending=None, expect_peer_id: str = None):
    """
    Ask the operator to approve this peer; fires with a L{PairResult} once
    approved, fails with C{REJECTED_BY_OPERATOR} if rejected. Cancel the
    Deferred to stop waiting. There is no secret: the result is
    C{verified} only if the node's peer id equals C{expect_peer_id} or
    the pinned one.

    @param on_pending: called with no arguments once the node has filed
        the request (to tell the user to wait for the operator).
    """

    def prepare(exchange):
        exchange.on_pending = on_pending

    body = {"method": APPROVAL, "name": name}
    return _start(session, APPROVAL, body, prepare=prepare, expect_peer_id=expect_peer_id)


def unpair(session):
    """Revoke this peer's pairing; fires once the node has closed the session (PAIRING_REVOKED)."""
    try:
        exchange = dispatcher(session.local).begin(session, "revoke")
    except Exception as e:
        return defer.fail(e)
    session.send(MessageType.PAIR_REVOKE, {})
    return exchange.deferred


@defer.inlineCallbacks
def pair_link(client, uri: str, name: str = ""):
    """
    Pair through a C{cairn://pair?...} link: dial its addresses in turn,
    refuse a node whose peer id differs from the link's
    (L{ServerMismatch}), then prove the link secret.

    @return: a Deferred firing with C{(session, PairResult)}.
    """
    link = parse_link(uri)
    if not link.addresses:
        raise ValueError("the link holds no address to dial")
    session, last_error = None, None
    for address in link.addresses:
        try:
            session = yield client.connect(address)
            break
        except NodeMismatch:
            raise
        except Exception as e:  # try the next address
            log.info("pairing link: cannot reach {address}: {why}", address=address, why=e)
            last_error = e
    if session is None:
        raise last_error
    if session.remote_peer_id != link.peer_id:
        session.close(CloseCode.NORMAL, "not the node named in the pairing link")
        raise ServerMismatch(link.peer_id, session.remote_peer_id)
    key = proofs.link_key(link.secret)
    client_proof, server_proof = proofs.link_proofs(key, session.result.handshake_hash)
    body = {"method": LINK, "name": name, "link_id": proofs.link_id(link.secret), "proof": client_proof}
    try:
        result = yield _start(session, LINK, body, key=server_proof)
    except Exception:
        if session.closed is None:
            session.close(CloseCode.NORMAL, "pairing failed")
        raise
    return session, result
