"""
The one error policy for the message handlers of the node's services.

A service registers its handlers once, with L{register_service}; every
handler then follows the same rules, whatever its family:

  - a body that does not follow its schema (L{BodyError}, raised by every
    family's parsers) closes the session with C{BAD_CBOR};
  - a L{ProtocolViolation} closes it with the violation's own code;
  - anything else, a failed Deferred included, is a bug of ours: it is
    logged and the session is closed with C{INTERNAL} (only that session);
  - with a trust store, an unpaired peer's session is closed with
    C{NOT_PAIRED} before the handler runs (L{paired_only}, §20.1), once
    the store has caught up on the peer (a store shared with other nodes
    reads it: paired through another node a moment ago, it counts; one
    it could not check is closed C{GOING_AWAY}, to try again later);
  - once the service is stopped, new requests go unanswered (their senders
    resend after resuming) and a step still in progress that fails is
    logged, not answered: the node is stopping and its stores closing.

Client applications keep a different policy on purpose (L{log_only},
registered with C{Peer.register_guarded}): a bad reply from the node is
logged, and the client's session is not ended for it; a client whose
request waits for the reply (pairing) passes C{failed} to fail that
request with the error instead. The relay client is the exception: a
malformed relay body is a protocol error either way (§25.1), so it
registers with L{register_service}.
"""

from twisted.internet import defer
from twisted.logger import Logger

from cairn.session.errors import ProtocolViolation
from cairn.wire.constants import CloseCode
from cairn.wire.schema import BodyError

log = Logger()


#: Sessions whose requests are held (L{hold}), each with the requests
#: that came meanwhile ((guarded handler, body), in order): they run once
#: the hold ends, so a session's requests keep their order. An entry goes
#: when its hold fires.
_held = {}
#: Requests held for one session at most; one more closes it with
#: C{LIMIT_REACHED} (a peer that floods while the node reads for it).
HELD_MAX = 256
HELD_TOO_MANY = "too many requests while the node reads its shared stores"


def hold(session, until, first=None):
    """
    Hold the requests of C{session} that reach a handler behind
    L{paired_only} until the Deferred C{until} fires (a store reading what
    one of them needs: L{ITrustStore.catch_up}, a sync grant's
    L{cairn.sync.interfaces.ISyncStore.catch_up_access}); then they run in the order
    they came, after C{first} (a (guarded handler, body) pair) if given.
    At most L{HELD_MAX} are held; one more closes the session with
    C{LIMIT_REACHED}. Returns C{until}, which must fire (success or not).
    """
    _held[session] = [first] if first is not None else []
    return until.addBoth(_release, session)


def _release(result, session):
    requests = _held.pop(session)
    for i, (guarded, body) in enumerate(requests):
        if session.closed is not None:
            break
        guarded(session, body)
        if session in _held:  # held again: the rest wait behind that hold (after its first), still in order
            _held[session].extend(requests[i + 1 :])
            break
    return result


def paired_only(trust, handler):
    """
    Wrap a service handler C{handler(session, body)} so that it runs only
    for paired peers; a session of any other peer is closed with
    C{NOT_PAIRED}, after L{ITrustStore.catch_up} on it (C{GOING_AWAY} if
    the store could not check it: not known to be unpaired).
    """

    def guarded(session, body):
        held = _held.get(session) if _held else None  # (nearly always empty: no look-up)
        if held is not None:
            if len(held) >= HELD_MAX:
                return _close(session, CloseCode.LIMIT_REACHED, HELD_TOO_MANY)
            held.append((guarded, body))
            return None
        if trust.is_paired(session.remote_peer_id):
            return handler(session, body)
        # Paired through another node a moment ago? A store shared with
        # other nodes reads the peer first; this request and the session's
        # requests that come meanwhile then run again, in order.
        unsure = set()
        caught_up = trust.catch_up([session.remote_peer_id]).addCallback(lambda checked: unsure.update(checked or ()))
        if caught_up.called:
            return _not_paired(session, unsure)
        hold(session, caught_up, (lambda session, body: _checked(session, body, unsure), body))
        return None

    def _checked(session, body, unsure):
        """Run again after the catch-up: served if now paired, else closed (no second read)."""
        if trust.is_paired(session.remote_peer_id):
            return handler(session, body)
        return _not_paired(session, unsure)

    guarded.__wrapped__ = handler
    return guarded


def _not_paired(session, unsure=()):
    if session.remote_peer_id in unsure:  # the trust store could not check it: not known unpaired
        session.close(CloseCode.GOING_AWAY, "the node cannot check this device's pairing now; try again later")
    else:
        session.close(CloseCode.NOT_PAIRED, "pair with this node first")


def _close(session, code, reason):
    if session.closed is None:
        session.close(code, reason)


def guard(handler, name, stopped=None, where="on the node"):
    """
    C{handler(session, body)} behind the policy of this module; C{name}
    names the service in logs and in the INTERNAL Close's reason (with
    C{where}), and C{stopped()} (optional) says whether it has stopped.
    """

    def failed(failure, session):
        if stopped is not None and stopped():
            log.info("{name}: step dropped at shutdown: {why}", name=name, why=failure.getErrorMessage())
            return None
        if failure.check(BodyError, ProtocolViolation):
            return _refuse(failure.value, session)
        log.failure("{name} handler failed", failure, name=name)
        _close(session, CloseCode.INTERNAL, f"{name} failed {where}".rstrip())
        return None

    def guarded(session, body):
        if stopped is not None and stopped():
            return None
        try:
            result = handler(session, body)
        except Exception:
            return failed(defer.Failure(), session)
        if isinstance(result, defer.Deferred):
            result.addErrback(failed, session)
        return result

    guarded.__wrapped__ = handler
    return guarded


def _refuse(error, session):
    if isinstance(error, BodyError):
        _close(session, CloseCode.BAD_CBOR, str(error))
    else:
        _close(session, error.code, error.reason)
    return None


def register_service(peer, handlers, name, *, trust=None, stopped=None, where="on the node"):
    """
    Register C{handlers} ({type code: fn(session, body)}) on C{peer} behind
    L{guard}, and behind L{paired_only} when C{trust} is given.
    """
    for type_code, handler in handlers.items():
        guarded = guard(handler, name, stopped, where)
        if trust is not None:
            guarded = paired_only(trust, guarded)
        peer.register_handler(type_code, guarded)


def log_only(handler, name, failed=None):
    """
    A client's handler: a malformed body or a bug is logged under C{name}
    and never raised into the session layer (which would end the client's
    session with its node for one bad reply); then C{failed(session,
    error)}, if given, is told (to fail what waited for the reply).
    """

    def guarded(session, body):
        try:
            handler(session, body)
        except BodyError as e:
            log.warn("{name}: the peer sent a bad body: {why}", name=name, why=str(e))
            if failed is not None:
                failed(session, e)
        except Exception as e:
            log.failure("{name} handler failed", name=name)
            if failed is not None:
                failed(session, e)

    guarded.__wrapped__ = handler
    return guarded
