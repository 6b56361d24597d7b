"""
How a L{cairn.session.connection.Connection} gets its session: the Noise
XX handshake or a Reconnect, in either role (docs/protocol.md §7, §12).

A mixin of L{Connection}, which owns the state it uses (C{local},
C{initiator}, C{transport}, C{session}, C{ready}, C{_resume},
C{_session_id}, C{_handshake}, C{_seq}, C{_sealed_seen}) and whose state
table (L{cairn.session.connection.TABLE}) names these handlers. Also
the Closes in clear it reads before a session exists.
"""

import os

from cairn.crypto.aead import bstr_head
from cairn.crypto.handshake import HandshakeError, NoiseHandshake
from cairn.session.errors import ProtocolViolation
from cairn.session.session import Session
from cairn.wire import cbor, schema
from cairn.wire.constants import PROTOCOL_VERSION, SUPPORTED_VERSIONS, CloseCode, MessageType
from cairn.wire.envelope import Envelope

#: The constant start of a handshake body's canonical CBOR: a map of one
#: pair whose key is the text "noise" (docs/protocol.md §6.3-6.5).
_BODY_START = b"\xa1\x65noise"


def handshake_body(noise: bytes) -> bytes:
    """
    C{cbor.dumps({"noise": noise})}, the same canonical bytes written
    directly: the map's head and key are constant, and only the byte
    string's head (its length, in the shortest form) varies. The general
    encoder, which first tries the batch layouts, cost about three times
    as much (issue 19, handshakes round 3).
    """
    if len(noise) >= 0x10000:  # over Noise's limit: refused further on, whatever its form
        return cbor.dumps({"noise": noise})
    return _BODY_START + bstr_head(len(noise)) + noise


def _canonical_noise(payload: bytes):
    """
    The "noise" byte string of a handshake body in the form
    L{handshake_body} writes, or None for any other form (left to the
    general decoder, which accepts or refuses it as before).
    """
    if not payload.startswith(_BODY_START) or len(payload) < 8:
        return None
    first = payload[7]
    if 0x40 <= first < 0x58:
        size, at = first - 0x40, 8
    elif first == 0x58 and len(payload) > 8 and payload[8] >= 24:
        size, at = payload[8], 9
    elif first == 0x59 and len(payload) > 9 and payload[8] != 0:
        size, at = int.from_bytes(payload[8:10], "big"), 10
    else:
        return None
    if len(payload) != at + size:
        return None
    return payload[at:]


def parse_handshake_body(payload: bytes) -> bytes:
    """The Noise message of a handshake body: what C{schema.parse_handshake(cbor.loads(payload))} gives or raises."""
    noise = _canonical_noise(payload)
    if noise is None:
        return schema.parse_handshake(cbor.loads(payload))
    return noise


class Opening:
    """The handshake and Reconnect handlers of a L{Connection}, both roles, and its Closes in clear."""

    # Closes in clear, before a session exists

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

    # Handshake envelopes (in clear)

    def _send_handshake(self, type_code, noise: bytes):
        env = Envelope(PROTOCOL_VERSION, type_code, self._session_id, self._seq, handshake_body(noise))
        self._seq += 1
        self.write(env.to_bytes())

    def _handshake_body(self, envelope, expected_seq):
        if envelope.session_id != self._session_id:
            raise ProtocolViolation(CloseCode.UNKNOWN_SESSION, "handshake for another session")
        if envelope.seq != expected_seq:
            raise ProtocolViolation(CloseCode.REPLAY, f"handshake sequence {envelope.seq}, expected {expected_seq}")
        try:
            return parse_handshake_body(envelope.payload)
        except (cbor.CBORError, schema.BodyError) as e:
            raise ProtocolViolation(CloseCode.BAD_CBOR, str(e)) from None

    # Responder

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

    # Initiator

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

    # Both roles

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

    def _forget_handshake(self):
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            handshake.forget()  # freed now, not at the next full collection

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
        self._forget_handshake()
        if self.session is not session:
            self._attach(session)
        self.local.session_established(session)
        ready = self.ready
        if ready is not None and not ready.called and session.closed is None:
            ready.callback(session)
