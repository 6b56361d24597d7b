"""
The per-transport state machine: handshake or resume, then hand-off.

A L{Connection} lives as long as one TCP connection or WebSocket. It
runs the Noise XX handshake (either role) or a Reconnect, and once a
L{Session} is established or resumed it forwards envelopes to it. Every
protocol error ends here: a Close carrying its code is sent (sealed if a
session is attached, in clear otherwise) and this one transport closes.
Its states, and the envelopes that move it from one to the next, are the
table L{TABLE} at the end of this module; the handshake and Reconnect
handlers are in L{cairn.session.opening}.

Who closes the transport after a Close: the side that sent the Close
closes it at once. The side that received it closes at once too on a
transport without a closing handshake (TCP). On a transport whose close
is a handshake started by one side (WebSocket; the transport says so with
a true C{closing_handshake} attribute) the receiver lets the sender start
it and only answers, so that the two ends never start it at the same
time (autobahn then aborts the TCP connection under a close frame still
being written, and the other end waits out its close timeout); if the
peer has not closed within L{PEER_CLOSE_TIMEOUT} seconds on the local
clock, the receiver aborts the transport.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from cairn.session.interfaces import IConnectionSink
from cairn.session.opening import Opening
from cairn.session.session import ProtocolViolation, Session, SessionClosed
from cairn.wire import cbor
from cairn.wire.constants import (
    PROTOCOL_VERSION,
    CloseCode,
    MessageType,
)
from cairn.wire.envelope import Envelope

log = Logger()

_ZERO_SID = b"\x00" * 16
#: Compared with every envelope's type: bound once, see L{cairn.session.receiving._DATA}.
_CLOSE = MessageType.CLOSE

#: Seconds the receiver of a Close waits for the peer to close a transport
#: with a closing handshake (WebSocket) before aborting it.
PEER_CLOSE_TIMEOUT = 5.0


class HandshakeFailed(Exception):
    """The connection closed before a session was established or resumed."""

    def __init__(self, code, reason):
        super().__init__(f"({code}) {reason}")
        self.code = code
        self.reason = reason


@implementer(IConnectionSink)
class Connection(Opening):
    """
    Drives one transport. Responders are built by the listening factory;
    initiators by L{cairn.client}.

    @param resume: an existing (detached) L{Session} to resume instead of
        running a handshake; initiators only.
    @ivar ready: (initiators) fires with the L{Session} once established
        or resumed, or fails with L{HandshakeFailed}; None for a responder
        (nothing waits on it; a Deferred per idle session on a node cost
        about 140 bytes, issue 19).
    """

    # Slots (issue 20): one Connection per attached session; its 15
    # attributes in an instance dict cost about 100 bytes more. Opening
    # (a mixin) has none, so an instance still gets a __dict__ if
    # something sets another attribute (tests patch methods).
    __slots__ = (
        "local",
        "initiator",
        "transport",
        "session",
        "ready",
        "_resume",
        "_session_id",
        "_handshake",
        "_state",
        "_seq",
        "_timer",
        "_close_reason",
        "_sealed_seen",
        "_peer_closed",
        "_lost",
        "_lost_waiters",
    )

    def __init__(self, local, initiator: bool, resume: Session = None, session_id: bytes = None):
        self.local = local
        self.initiator = initiator
        self.transport = None
        self.session = None
        self.ready = Deferred() if initiator else None
        self._resume = resume
        self._session_id = session_id or (resume.session_id if resume else None)
        self._handshake = None
        self._state = "new"
        self._seq = 0  # next handshake-phase sequence number of ours
        self._timer = None
        self._close_reason = None
        #: A Close in clear is accepted until a sealed envelope is accepted.
        self._sealed_seen = False
        #: True while the peer's Close is being handled: the session that
        #: it ends leaves closing the transport to the peer.
        self._peer_closed = False
        self._lost = False
        #: L{when_lost} Deferreds: None until one is asked for (most never are).
        self._lost_waiters = None

    def __repr__(self):
        return f"<Connection {self._state} initiator={self.initiator}>"

    # IConnectionSink

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._timer = self.local.clock.callLater(self.local.handshake_timeout, self._timed_out)
        if not self.initiator:
            self._state = "await_first"
        elif self._resume is not None:
            self._state = "await_reconnect"
            self._send_reconnect()
        else:
            self._state = "await_response"
            self._send_init()

    def envelope_received(self, envelope) -> None:
        state = self._state
        if state == "closed":
            return
        try:
            # A state whose one row takes every type (established) needs no
            # (state, type) pair made and looked up twice: about 1,200
            # instructions of every envelope a session receives (issue 19).
            handler, after = SOLE_ROW.get(state) or TABLE.get((state, envelope.type)) or TABLE[state, ANY]
            handler(self, envelope)
            if after is not None and self._state == state:
                self._state = after
        except ProtocolViolation as e:
            self.fail(e.code, e.reason)
        except Exception:
            # A bug (ours or a handler's) must cost this connection only.
            log.failure("error handling an envelope of type 0x{type:04x}", type=envelope.type)
            self.fail(CloseCode.INTERNAL, "internal error")

    def framing_error(self, code, reason) -> None:
        self.fail(code, reason)

    def connection_lost(self, reason=None) -> None:
        self._cancel_timer()
        self._forget_handshake()
        state, self._state = self._state, "closed"
        session, self.session = self.session, None
        if session is not None:
            session.detach(self)
        if self.initiator and not self.ready.called:
            code, why = self._close_reason or (CloseCode.GOING_AWAY, "connection lost")
            self.ready.errback(HandshakeFailed(code, why))
        if state != "closed":
            # A connection closed after a Close (the session's "closed" line
            # or "closing connection" already said so) is not logged again:
            # an event costs its emitter even when nothing shows it.
            log.debug("connection closed in state {state}", state=state)
        self._lost = True
        # The transport refers back to this connection (its sink): without
        # this both, with the transport's socket and buffers, would wait
        # for the cyclic garbage collector (issue 19).
        self.transport = None
        waiters, self._lost_waiters = self._lost_waiters, None
        for d in waiters or ():
            d.callback(None)

    def when_lost(self) -> Deferred:
        """A Deferred firing (with None) once the transport is gone."""
        if self._lost:
            return succeed(None)
        d = Deferred()
        if self._lost_waiters is None:
            self._lost_waiters = []
        self._lost_waiters.append(d)
        return d

    # Used by the session

    def write(self, data: bytes) -> None:
        if self.transport is not None and self._state != "closed":
            self.transport.write_envelope(data)

    def replaced(self) -> None:
        """The session moved to a newer connection: drop this one."""
        self.session = None
        self._state = "closed"
        self._lose()

    def drop_transport(self) -> None:
        """Abort the transport (keepalive timeout); the session stays resumable."""
        self._lose(abort=True)

    def session_ended(self) -> None:
        """The attached session ended: its Close is written, or the peer's was received."""
        self.session = None
        self._state = "closed"
        if self._peer_closed:
            self._let_peer_close()
        else:
            self._lose()

    # Failures

    def fail(self, code, reason: str, **extra) -> None:
        """Close this connection with a Close carrying C{code}."""
        if self._state == "closed":
            return
        log.info("closing connection: code {code} ({reason})", code=int(code), reason=reason)
        self._close_reason = (code, reason)
        session = self.session
        if session is not None and session.closed is None:
            session.close(code, reason)  # sealed Close, then session_ended()
            return
        self._send_clear_close(code, reason, **extra)
        self._state = "closed"
        self._lose()

    def _send_clear_close(self, code, reason, **extra):
        body = {"code": int(code), "reason": reason}
        body.update(extra)
        payload = cbor.dumps(body)
        sid = self._session_id or _ZERO_SID
        env = Envelope(PROTOCOL_VERSION, MessageType.CLOSE, sid, self._seq, payload)
        self._seq += 1
        self.write(env.to_bytes())

    def _timed_out(self):
        self._timer = None
        self.fail(CloseCode.TIMEOUT, "handshake not completed in time")

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _lose(self, abort=False):
        self._cancel_timer()
        if self.transport is not None:
            self.transport.lose(abort=abort)

    def _let_peer_close(self):
        """
        The peer sent a Close (and closes the transport after it): close
        now if the transport has no closing handshake, otherwise wait for
        the peer to start it, and abort if it does not in time.
        """
        self._cancel_timer()
        if self.transport is None:
            return
        if not getattr(self.transport, "closing_handshake", False):
            self.transport.lose()
            return
        self._timer = self.local.clock.callLater(PEER_CLOSE_TIMEOUT, self._peer_close_timed_out)

    def _peer_close_timed_out(self):
        self._timer = None
        self._lose(abort=True)

    def _unexpected(self, envelope):
        raise ProtocolViolation(
            CloseCode.UNEXPECTED_MESSAGE, f"type 0x{envelope.type:04x} instead of {AWAITED[self._state]}"
        )

    # Responder: a preface, or anything else first

    def _preface(self, envelope):
        take_over = self.local.preface_handler(envelope.type)
        if take_over is None:
            self._unexpected_first(envelope)
        # Not a session: a RelayAttach, whose handler (the relay service)
        # takes the connection over or refuses it with a Close.
        self._cancel_timer()
        take_over(self, envelope)

    def _unexpected_first(self, envelope):
        self._session_id = envelope.session_id
        raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, f"type 0x{envelope.type:04x} before a handshake")

    def _ignore(self, envelope):
        pass  # handed over: the transport no longer delivers envelopes

    def _to_session(self, envelope):
        session = self.session
        if session is None:
            return
        if self.local.draining:
            # The node is stopping: what it has not accepted it must not
            # acknowledge (on resume) without an answer, so it is dropped
            # unopened and the peer resends it to the restarted node.
            return
        if not self._sealed_seen and envelope.type == _CLOSE and not _looks_sealed(envelope):
            if not self.initiator:
                # The dialer gave up on its Reconnect before our answer
                # reached it: this connection ends, the session stays
                # (detached) for the next attempt.
                self._clear_close(envelope)
                return
            # The responder refused our HandshakeFinal (or Reconnect) before
            # it had keys to seal with: a Close in clear ends the session.
            code, reason = self._clear_close_body(envelope)
            self._close_reason = (code, reason)
            self._peer_closed = True
            session.end_without_close(SessionClosed(code, reason), remote=True)
            return
        if envelope.type != _CLOSE:
            session.envelope_received(envelope)
        else:
            # If it is accepted, the session ends and calls session_ended()
            # from inside; if it is refused, the exception leads to fail(),
            # a Close of ours, and this side closes the transport.
            self._peer_closed = True
            try:
                session.envelope_received(envelope)
            finally:
                self._peer_closed = False
        self._sealed_seen = True


#: The input of a row that matches every envelope type without a row of its own.
ANY = None

T = MessageType
C = Connection

#: The state machine: (state, envelope type) -> (handler, next state).
#:
#: An envelope is looked up under its type in the connection's state, else
#: under C{ANY}; the handler runs, and the connection moves to the next
#: state if the handler left the state as it was (None: stays). From every
#: state, a failure (a L{ProtocolViolation} raised, or L{Connection.fail})
#: sends a Close and moves to C{closed}, as does losing the transport; in
#: C{closed} envelopes are dropped. The first state is C{await_first} for a
#: responder, C{await_response} for an initiator that sent a HandshakeInit,
#: C{await_reconnect} for one that sent a Reconnect (L{Connection.connection_made}).
TABLE = {
    # Responder: a handshake, a Reconnect or a preface (RelayAttach) first.
    ("await_first", T.CLOSE): (C._clear_close, "closed"),
    ("await_first", T.HANDSHAKE_INIT): (C._accept_init, "await_final"),
    ("await_first", T.RECONNECT): (C._accept_reconnect, "established"),
    ("await_first", T.RELAY_ATTACH): (C._preface, "attaching"),
    ("await_first", ANY): (C._unexpected_first, "closed"),
    ("await_final", T.CLOSE): (C._clear_close, "closed"),
    ("await_final", T.HANDSHAKE_FINAL): (C._accept_final, "established"),
    ("await_final", ANY): (C._unexpected, "closed"),
    ("attaching", ANY): (C._ignore, None),
    # Initiator: the answer to its HandshakeInit or Reconnect.
    ("await_response", T.CLOSE): (C._clear_close, "closed"),
    ("await_response", T.HANDSHAKE_RESPONSE): (C._accept_response, "established"),
    ("await_response", ANY): (C._unexpected, "closed"),
    ("await_reconnect", T.CLOSE): (C._clear_close, "closed"),
    ("await_reconnect", T.RECONNECT): (C._accept_resumed, "established"),
    ("await_reconnect", ANY): (C._unexpected, "closed"),
    # Both: everything goes to the session (a Close too: sealed, it ends it).
    ("established", ANY): (C._to_session, None),
}

#: The row of each state that has only its C{ANY} row, by state: what
#: L{Connection.envelope_received} finds in L{TABLE} for every envelope type.
SOLE_ROW = {
    state: row
    for (state, type_code), row in TABLE.items()
    if type_code is ANY and [s for s, _ in TABLE].count(state) == 1
}

#: What L{Connection._unexpected} names as awaited, by state.
AWAITED = {
    "await_final": "HandshakeFinal",
    "await_response": "HandshakeResponse",
    "await_reconnect": "Reconnect",
}

del T, C


def _looks_sealed(envelope) -> bool:
    """A sealed payload is a CBOR byte string (major type 2); a clear Close is a map."""
    return bool(envelope.payload) and envelope.payload[0] >> 5 == 2


__all__ = ["Connection", "HandshakeFailed", "SessionClosed"]
