"""
The per-transport state machine: handshake or resume, then hand-off.

A L{Connection} lives as long as one TCP connection or WebSocket. It
runs the Noise XX handshake (either role) or a Reconnect, and once a
L{Session} is established or resumed it forwards envelopes to it. Every
protocol error ends here: a Close carrying its code is sent (sealed if a
session is attached, in clear otherwise) and this one transport closes.
Its states, and the envelopes that move it from one to the next, are the
table L{TABLE} at the end of this module.

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

import os

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from cairn.crypto.handshake import HandshakeError, NoiseHandshake
from cairn.session.interfaces import IConnectionSink
from cairn.session.session import ProtocolViolation, Session, SessionClosed
from cairn.wire import cbor, schema
from cairn.wire.constants import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    CloseCode,
    MessageType,
)
from cairn.wire.envelope import Envelope

log = Logger()

_ZERO_SID = b"\x00" * 16

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
class Connection:
    """
    Drives one transport. Responders are built by the listening factory;
    initiators by L{cairn.client}.

    @param resume: an existing (detached) L{Session} to resume instead of
        running a handshake; initiators only.
    @ivar ready: (initiators) fires with the L{Session} once established
        or resumed, or fails with L{HandshakeFailed}.
    """

    def __init__(self, local, initiator: bool, resume: Session = None, session_id: bytes = None):
        self.local = local
        self.initiator = initiator
        self.transport = None
        self.session = None
        self.ready = Deferred()
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
        self._lost_waiters = []

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
            handler, after = TABLE.get((state, envelope.type)) or TABLE[state, ANY]
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
        self._handshake = None
        state, self._state = self._state, "closed"
        session, self.session = self.session, None
        if session is not None:
            session.detach(self)
        if self.initiator and not self.ready.called:
            code, why = self._close_reason or (CloseCode.GOING_AWAY, "connection lost")
            self.ready.errback(HandshakeFailed(code, why))
        log.debug("connection closed in state {state}", state=state)
        self._lost = True
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    def when_lost(self) -> Deferred:
        """A Deferred firing (with None) once the transport is gone."""
        if self._lost:
            return succeed(None)
        d = Deferred()
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

    # Clear-text messages before a session exists

    def _send_handshake(self, type_code, noise: bytes):
        env = Envelope(
            PROTOCOL_VERSION, type_code, self._session_id, self._seq, cbor.dumps({"noise": noise})
        )
        self._seq += 1
        self.write(env.to_bytes())

    def _handshake_body(self, envelope, expected_seq):
        if envelope.session_id != self._session_id:
            raise ProtocolViolation(CloseCode.UNKNOWN_SESSION, "handshake for another session")
        if envelope.seq != expected_seq:
            raise ProtocolViolation(
                CloseCode.REPLAY, f"handshake sequence {envelope.seq}, expected {expected_seq}"
            )
        try:
            return schema.parse_handshake(cbor.loads(envelope.payload))
        except (cbor.CBORError, schema.BodyError) as e:
            raise ProtocolViolation(CloseCode.BAD_CBOR, str(e)) from None

    @staticmethod
    def _clear_close_body(envelope):
        try:
            return schema.parse_close(cbor.loads(envelope.payload))
        except (cbor.CBORError, schema.BodyError):
            return CloseCode.BAD_CBOR, "unreadable Close"

    def _clear_close(self, envelope):
        """The peer's Close in clear (allowed until a sealed envelope is accepted)."""
        code, reason = self._clear_close_body(envelope)
        self._close_reason = (code, reason)
        self._state = "closed"
        self._let_peer_close()

    def _unexpected(self, envelope):
        raise ProtocolViolation(
            CloseCode.UNEXPECTED_MESSAGE, f"type 0x{envelope.type:04x} instead of {AWAITED[self._state]}"
        )

    # Responder states

    def _accept_init(self, envelope):
        self._session_id = envelope.session_id
        if envelope.version not in SUPPORTED_VERSIONS:
            self.fail(
                CloseCode.VERSION_UNSUPPORTED,
                f"version {envelope.version} not supported",
                supported=list(SUPPORTED_VERSIONS),
            )
            return
        if self.local.sessions.get(envelope.session_id) is not None:
            raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, "session id already in use")
        noise = self._handshake_body(envelope, 0)
        self._handshake = NoiseHandshake(
            self.local.identity, initiator=False, session_id=envelope.session_id, version=envelope.version
        )
        try:
            self._handshake.read_init(noise)
            response = self._handshake.write_response()
        except HandshakeError as e:
            raise ProtocolViolation(CloseCode.HANDSHAKE_FAILED, str(e)) from None
        self._send_handshake(MessageType.HANDSHAKE_RESPONSE, response)

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

    def _accept_final(self, envelope):
        if envelope.version != PROTOCOL_VERSION:
            raise ProtocolViolation(CloseCode.VERSION_UNSUPPORTED, "version changed mid-handshake")
        noise = self._handshake_body(envelope, 1)
        try:
            self._handshake.read_final(noise)
            result = self._handshake.result()
        except HandshakeError as e:
            raise ProtocolViolation(CloseCode.HANDSHAKE_FAILED, str(e)) from None
        self._refuse_if_stopping()
        if self.local.sessions.get(self._session_id) is not None:
            # Another handshake with the same id finished first.
            raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, "session id already in use")
        session = Session(self.local, self._session_id, result, PROTOCOL_VERSION, send_seq=1, recv_seq=1)
        self._establish(session)

    def _accept_reconnect(self, envelope):
        self._session_id = envelope.session_id
        self._refuse_if_stopping()
        session = self.local.sessions.get(envelope.session_id)
        if session is None or session.closed is not None:
            raise ProtocolViolation(CloseCode.UNKNOWN_SESSION, "no such session to resume")
        expected = getattr(self.transport, "expected_peer_id", None)
        if expected is not None and session.remote_peer_id != expected:
            # A relay circuit offered for one peer carries a Reconnect of
            # another peer's session: the node misrouted it. Refused like an
            # unknown session, before anything is sent or attached, so the
            # session waits for its own peer (docs/protocol.md §25.5).
            raise ProtocolViolation(CloseCode.UNKNOWN_SESSION, "no such session to resume")
        # Failing here leaves the session exactly as it was: a stolen
        # session id without the key cannot disturb its owner.
        last_received = self._open_reconnect(session, envelope)
        self._attach(session)
        session.send(MessageType.RECONNECT, {"last_received": session.recv_seq})
        self._resend(session, last_received)
        self.local.session_resumed(session)

    # Initiator states

    def _send_init(self):
        self._session_id = self._session_id or os.urandom(16)
        self._handshake = NoiseHandshake(
            self.local.identity, initiator=True, session_id=self._session_id, version=PROTOCOL_VERSION
        )
        self._send_handshake(MessageType.HANDSHAKE_INIT, self._handshake.write_init())

    def _accept_response(self, envelope):
        if envelope.version != PROTOCOL_VERSION:
            raise ProtocolViolation(CloseCode.VERSION_UNSUPPORTED, f"responder chose version {envelope.version}")
        noise = self._handshake_body(envelope, 0)
        try:
            self._handshake.read_response(noise)
            final = self._handshake.write_final()
            result = self._handshake.result()
        except HandshakeError as e:
            raise ProtocolViolation(CloseCode.HANDSHAKE_FAILED, str(e)) from None
        self._send_handshake(MessageType.HANDSHAKE_FINAL, final)
        session = Session(self.local, self._session_id, result, PROTOCOL_VERSION, send_seq=2, recv_seq=0)
        self._attach(session)
        self._establish(session)

    def _send_reconnect(self):
        session = self._resume
        # The Reconnect is sealed under the session key: that is the proof.
        # It is written directly, not attached, so nothing else goes first.
        self.session = None
        data = session.cipher.seal(
            session.version,
            MessageType.RECONNECT,
            session.session_id,
            session.send_seq,
            cbor.dumps({"last_received": session.recv_seq}),
        ).to_bytes()
        session.send_seq += 1
        self.write(data)

    def _accept_resumed(self, envelope):
        session = self._resume
        last_received = self._open_reconnect(session, envelope)
        self._attach(session)
        self._resend(session, last_received)
        self.local.session_resumed(session)
        if not self.ready.called:
            self.ready.callback(session)
        if session.on_resume is not None:
            session.on_resume()

    # Shared

    def _open_reconnect(self, session, envelope) -> int:
        try:
            last_received = session.open_reconnect(envelope)
            # A listener does not count the Reconnect itself: until the
            # dialer has our answer it may still give up with a Close in
            # clear (docs/protocol.md §12.2).
            self._sealed_seen = self.initiator
            return last_received
        except ProtocolViolation as e:
            # Answered in clear: this connection never proved the key.
            self.session = None
            raise ProtocolViolation(e.code, e.reason) from None

    def _resend(self, session, last_received):
        try:
            session.resend_after(last_received)
        except ProtocolViolation as e:
            self.fail(e.code, e.reason)

    def _refuse_if_stopping(self):
        if self.local.frozen or self.local.draining:
            # Sessions were already saved for the stop; one made now would
            # be lost without the peer knowing, so refuse it.
            raise ProtocolViolation(CloseCode.GOING_AWAY, "node is stopping")

    def _attach(self, session):
        # Established from the moment the session is attached (what the
        # rows into "established" say), before the handler goes on.
        self._cancel_timer()
        self.session = session
        self._state = "established"
        session.attach(self)

    def _establish(self, session):
        # The finished Noise state (key pairs, cipher states) is no longer
        # needed: keeping it cost about 12 KB per session.
        self._handshake = None
        if self.session is not session:
            self._attach(session)
        self.local.session_established(session)
        if not self.ready.called and session.closed is None:
            self.ready.callback(session)

    def _to_session(self, envelope):
        session = self.session
        if session is None:
            return
        if self.local.draining:
            # The node is stopping: what it has not accepted it must not
            # acknowledge (on resume) without an answer, so it is dropped
            # unopened and the peer resends it to the restarted node.
            return
        if not self._sealed_seen and envelope.type == MessageType.CLOSE and not _looks_sealed(envelope):
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
            session._end(SessionClosed(code, reason), remote=True)
            return
        if envelope.type != MessageType.CLOSE:
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
