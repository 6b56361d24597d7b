"""
The node's side of PSK and PIN pairing: one SPAKE2 exchange
(docs/protocol.md §20.3.1) per PairRequest, under the limits of §20.6.

The node never checks the state of the PIN or PSK before the device's key
confirmation has verified, and runs the exchange with a random password
when no PIN is active, so that a peer without the secret always sees the
same PairChallenge, then BAD_PROOF.
"""

from twisted.logger import Logger

from cairn.pairing import messages, pake, proofs
from cairn.pairing.messages import PIN, PSK
from cairn.pairing.ratelimit import FailureLimiter, source_key
from cairn.wire.constants import MessageType, PairRejectCode
from cairn.wire.schema import BodyError

log = Logger()

#: PSK/PIN exchanges a source may leave unproven per window (a successful
#: one is given back; failures are also counted apart, 5 per 10 minutes).
#: At about 0.2 ms each this bounds a source to 2 ms of PAKE CPU a second.
MAX_SOURCE_EXCHANGES = 600
EXCHANGE_WINDOW = 60.0


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
            return source_key(host)
    return str(getattr(transport, "peer_address", "unknown"))


class _Exchange:
    """A PSK or PIN exchange waiting for the device's PairResponse."""

    __slots__ = ("method", "name", "generation", "expect", "confirm")

    def __init__(self, method, name, generation, expect, confirm):
        self.method = method
        self.name = name
        self.generation = generation  # of the PIN in force at the request (None: none)
        self.expect = expect  # cA
        self.confirm = confirm  # cB, sent only once cA is verified


class PakeMethods:
    """
    PSK and PIN exchanges for a L{cairn.pairing.service.PairingService}
    (its PSK, PIN book, failure limiter and reply helpers).

    @ivar pins_burned: PINs invalidated by wrong answers, for the operator.
    @ivar last_pin_burned_at: when the last was, or None.
    """

    def __init__(self, service, max_source_exchanges=MAX_SOURCE_EXCHANGES):
        self.service = service
        self.exchange_starts = FailureLimiter(service.clock, max_source_exchanges, EXCHANGE_WINDOW)
        self.pins_burned = 0
        self.last_pin_burned_at = None
        # The password of "no PIN is active": random, known to no one, fixed
        # for the process so that its blinding elements stay cached.
        self._no_pin = pake.random_scalar()
        self._exchanges = {}
        self._sessions = set()  # sessions with a failed or unfinished exchange

    def forget(self, session):
        """Drop what is kept for C{session} (it ended)."""
        self._exchanges.pop(session.session_id, None)
        self._sessions.discard(session.session_id)

    def start(self, session, request, source):
        """Answer a PSK or PIN PairRequest with the node's share (or a PairReject)."""
        method = request.method
        if method == PSK and not self.service.psk.enabled:
            self.service.refuse(
                session, PSK, PairRejectCode.METHOD_UNAVAILABLE, "PSK pairing is not enabled on this node"
            )
            return
        if session.session_id in self._sessions:
            self.service.refuse(
                session,
                method,
                PairRejectCode.RATE_LIMITED,
                "one failed or unfinished PSK/PIN exchange per session: reconnect to retry",
            )
            return
        if self.exchange_starts.limited(source):
            wait = int(self.exchange_starts.retry_after(source)) + 1
            self.service.refuse(
                session, method, PairRejectCode.RATE_LIMITED, f"too many pairing attempts, retry in {wait} s"
            )
            return
        generation = None
        if method == PSK:
            w = self.service.psk.w
        elif self.service.pins.current is not None:
            generation = self.service.pins.current.generation
            w = proofs.pin_scalar(self.service.pins.current.key)
        else:
            # No PIN: run the exchange all the same with a password nobody
            # holds, so that the reply does not tell whether a PIN is active.
            w = self._no_pin
        side = pake.SideB(
            w, session.remote_identity, self.service.peer.identity.public_key, session.result.handshake_hash
        )
        try:
            expect, confirm = side.finish(request.pake)
        except pake.InvalidElement as e:
            self.service.refuse(session, method, PairRejectCode.MALFORMED, f"'pake': {e}")
            return
        self._sessions.add(session.session_id)
        self.exchange_starts.failed(source)
        self._exchanges[session.session_id] = _Exchange(method, request.name, generation, expect, confirm)
        self.service.send_reply(session, MessageType.PAIR_CHALLENGE, {"method": method, "pake": side.share})

    def respond(self, session, body):
        """Check a PairResponse: pair (PairConfirm with cB) or PairReject."""
        try:
            method, confirm = messages.parse_pair_response(body)
        except BodyError as e:
            # Echo the method only when it is one this node knows: a PairReject
            # must itself follow its schema (text of at most 32 bytes).
            echoed = body.get("method") if isinstance(body, dict) else None
            method = echoed if echoed in messages.PAKE_METHODS else ""
            self.service.refuse(session, method, PairRejectCode.MALFORMED, str(e))
            return None
        exchange = self._exchanges.pop(session.session_id, None)
        if exchange is None or exchange.method != method:
            self.service.refuse(
                session, method, PairRejectCode.MALFORMED, f"no {method} exchange in progress on this session"
            )
            return None
        source = source_of(session)
        if self.service.sources.limited(source):
            self.service.refuse_rate_limited(session, method, source)
            return None
        if not proofs.equal(confirm, exchange.expect):
            self._failed(session, exchange, source)
            return None
        # The device proved the secret: only now may it learn the state of the
        # PIN or PSK (a party without the secret gets BAD_PROOF whatever it is).
        if method == PIN:
            # Spent once in the deployment: another node may have used it first.
            spending = self.service.pins.spend(exchange.generation)
            return spending.addCallback(self._spent, session, exchange, source)
        refusal = self.service.psk.refusal()
        if refusal is not None:
            self.service.refuse(session, PSK, *refusal)
            return None
        self.service.psk.used()
        return self._proven(session, exchange, source)

    def _spent(self, refusal, session, exchange, source):
        if refusal is not None:
            self.service.refuse(session, PIN, *refusal)
            return None
        return self._proven(session, exchange, source)

    def _proven(self, session, exchange, source):
        # A proven exchange lifts the once-per-session limit (it bounds
        # guesses) and does not count against its source's budget.
        self._sessions.discard(session.session_id)
        self.exchange_starts.forgive(source)
        return self.service.pair_session(session, exchange.method, exchange.name, exchange.confirm)

    def _failed(self, session, exchange, source):
        self.service.sources.failed(source)
        reason = "wrong PSK" if exchange.method == PSK else "wrong PIN"
        if exchange.method == PIN and self.service.pins.failed(exchange.generation):
            self.pins_burned += 1
            self.last_pin_burned_at = self.service.clock.seconds()
            log.warn(
                "pairing PIN invalidated after {n} wrong answers, the last from {peer_id}: "
                "create a new PIN for the device you are pairing",
                n=self.service.pins.max_failures,
                peer_id=session.remote_peer_id,
            )
        self.service.refuse(session, exchange.method, PairRejectCode.BAD_PROOF, reason)
