"""
An established session: sealing, ordering, keepalive, resume state (the
resend buffer and the restart snapshot are in L{cairn.session.resume}).

A L{Session} outlives the transports that carry it. While attached it
sends through its current L{IFrameTransport}; while detached it keeps
what it sent and the peer has not acknowledged, so that a Reconnect on a
new transport can resend it. It never touches sockets, WebSocket frames
or wall-clock time: the clock is injected.
"""


from twisted.logger import Logger
from zope.interface import implementer

from cairn.crypto.aead import DecryptError, SessionCipher
from cairn.crypto.identity import peer_id_for
from cairn.session.channels import Channel, Channels
from cairn.session.errors import ProtocolViolation, SessionClosed
from cairn.session.interfaces import ISession
from cairn.session.rekey import KeyEpochs
from cairn.session.resume import ResumeState
from cairn.wire import cbor, schema
from cairn.wire.constants import CloseCode, MessageType, is_custom_type

log = Logger()

#: Send a Keepalive carrying an ack after this many acknowledgeable envelopes.
ACK_EVERY = 32
#: Types that are never resent after a Reconnect (and so never buffered).
_UNBUFFERED = frozenset({MessageType.KEEPALIVE, MessageType.CLOSE, MessageType.RECONNECT})
#: What only a peer allowed channels may send (L{Peer.channels_allowed}).
_CHANNEL_TYPES = frozenset({MessageType.DATA, MessageType.CHANNEL_INIT})
__all__ = ["Channel", "ProtocolViolation", "Session", "SessionClosed"]


def _truncate_utf8(text: str, limit: int) -> str:
    """C{text} cut to at most C{limit} UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


@implementer(ISession)
class Session(KeyEpochs, ResumeState):
    """
    One authenticated session with a remote peer.

    @param local: the local L{cairn.session.peer.Peer} (clock, limits,
        handlers, registry).
    @param result: the L{HandshakeResult} the session was keyed from.
    @param send_seq: the next sequence number to send.
    @param recv_seq: the last sequence number accepted from the peer.
    """

    # Slots: the instance dict of these 30 attributes outgrew CPython's
    # shared-key table and cost ~1.5 KB per session (issue 20). The bases
    # (mixins) have no slots, so an instance still has a __dict__, made
    # only if something sets an attribute not listed (tests patch methods).
    __slots__ = (
        "local",
        "clock",
        "session_id",
        "result",
        "initiator",
        "version",
        "remote_identity",
        "remote_peer_id",
        "cipher",
        "_epoch_sent",
        "_epoch_started",
        "_key_update_seq",
        "_seed_okm",
        "send_seq",
        "recv_seq",
        "connection",
        "closed",
        "_handlers",
        "_unacked",
        "_unacked_bytes",
        "_dropped_upto",
        "_since_ack",
        "_reconnect_seq",
        "_last_rx",
        "_channel_state",
        "_keepalive",
        "_expiry",
        "on_channel",
        "on_close",
        "on_resume",
    )

    def __init__(self, local, session_id: bytes, result, version: int, send_seq: int, recv_seq: int):
        self.local = local
        self.clock = local.clock
        self.session_id = session_id
        self.result = result
        self.initiator = result.initiator
        self.version = version
        self.remote_identity = result.remote_identity
        self.remote_peer_id = peer_id_for(result.remote_identity)
        self.cipher = SessionCipher(result.send_key, result.recv_key)
        #: Envelopes sealed under the current sending key, and since when.
        self._epoch_sent = 0
        self._epoch_started = self.clock.seconds()
        #: Sequence number of our KeyUpdate not yet acknowledged, or None.
        self._key_update_seq = None
        #: The ratchet seed's HKDF output, once the handshake keys are forgotten.
        self._seed_okm = None
        self.send_seq = send_seq
        self.recv_seq = recv_seq
        self.connection = None
        self.closed = None
        self._handlers = {}
        # (seq, sealed bytes) awaiting the peer's ack; an empty tuple while
        # there are none (most idle sessions): an empty deque is 760 bytes.
        self._unacked = ()
        self._unacked_bytes = 0
        #: Highest sequence number dropped from the resend buffer unacked.
        self._dropped_upto = -1
        self._since_ack = 0
        #: Highest sequence number of an accepted Reconnect (its own counter,
        #: so that envelopes resent after it, with lower numbers, still pass).
        self._reconnect_seq = -1
        self._last_rx = self.clock.seconds()
        self._channel_state = None
        self._keepalive = None
        self._expiry = None
        #: Called with the L{Channel} when the peer opens one.
        self.on_channel = None
        #: Called with L{SessionClosed} when the session ends.
        self.on_close = None
        #: Called with no arguments after the session is resumed.
        self.on_resume = None

    @property
    def _channels(self) -> Channels:
        # Made on first use: most sessions never open a channel.
        if self._channel_state is None:
            self._channel_state = Channels(self)
        return self._channel_state

    @property
    def channels(self) -> dict:
        """The open channels by id."""
        if self._channel_state is None:
            return {}
        return self._channel_state.by_id

    @property
    def attached(self) -> bool:
        return self.connection is not None

    def __repr__(self):
        return f"<Session {self.session_id.hex()[:8]} peer={self.remote_peer_id[:10]}>"

    # Attachment to transports

    def attach(self, connection) -> None:
        """Carry the session over C{connection} from now on."""
        old, self.connection = self.connection, connection
        if old is not None and old is not connection:
            old.replaced()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._last_rx = self.clock.seconds()
        self._start_keepalive()

    def detach(self, connection) -> None:
        """C{connection} is gone; keep the session resumable for the TTL."""
        if self.connection is not connection:
            return
        self.connection = None
        self._stop_keepalive()
        if self.closed is None:
            self._expiry = self.clock.callLater(self.local.detached_ttl(self), self._expire)
            self.local.session_detached(self)

    def _expire(self):
        self._expiry = None
        self._end(SessionClosed(CloseCode.TIMEOUT, "detached longer than the session TTL"))

    # Keepalive

    def _start_keepalive(self):
        # One DelayedCall, rescheduled by each tick, rather than a
        # LoopingCall (which also holds a Deferred and its own state): about
        # 500 bytes less per attached session (issue 20).
        self._stop_keepalive()
        interval = self.local.keepalive_interval
        if interval and interval > 0:
            self._keepalive = self.clock.callLater(interval, self._keepalive_tick)

    def _stop_keepalive(self):
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def _keepalive_tick(self):
        # Next tick first: the checks below may detach the session, which
        # cancels it.
        self._keepalive = self.clock.callLater(self.local.keepalive_interval, self._keepalive_tick)
        if self.clock.seconds() - self._last_rx >= self.local.keepalive_timeout:
            log.info("session {sid} keepalive timeout", sid=self.session_id.hex()[:8])
            connection = self.connection
            if connection is not None:
                connection.drop_transport()
            return
        self._send_ack()

    def _send_ack(self):
        self._since_ack = 0
        self.send(MessageType.KEEPALIVE, {"ack": self.recv_seq})

    # Sending

    def send(self, type_code: int, body) -> int:
        """
        Seal C{body} as the next envelope of C{type_code}.

        Buffered for resend until the peer acknowledges it (except
        Keepalive, Close and Reconnect); sent now if attached.

        @return: the sequence number used.
        @raise SessionClosed: the session has ended.
        """
        if self.closed is not None:
            raise self.closed
        return self.send_payload(type_code, cbor.dumps(body))

    def send_payload(self, type_code: int, payload: bytes) -> int:
        """L{send} of a body already encoded as canonical CBOR C{payload}."""
        if self.closed is not None:
            raise self.closed
        if len(payload) + 32 > self.local.max_payload:
            raise ValueError(
                f"body of {len(payload)} bytes exceeds the maximum payload {self.local.max_payload}"
            )
        self._maybe_update_key(type_code)
        seq = self.send_seq
        self.send_seq += 1
        self._epoch_sent += 1
        data = self.cipher.seal_bytes(self.version, type_code, self.session_id, seq, payload)
        if type_code not in _UNBUFFERED:
            self._buffer(seq, data)
        if self.connection is not None:
            self.connection.write(data)
        return seq

    def send_if_open(self, type_code: int, body) -> bool:
        """L{send} unless the session has ended; whether it was sent (or buffered)."""
        if self.closed is not None:
            return False
        try:
            self.send(type_code, body)
        except SessionClosed:
            return False
        return True

    # Receiving

    def open_envelope(self, envelope):
        """
        Authenticate C{envelope} and return its decoded body.

        The sequence number must exceed the last accepted one; it is
        recorded only once the AEAD check passes.

        @raise ProtocolViolation: replay, failed AEAD, bad CBOR.
        """
        return self._decode(self._open_plain(envelope))

    def _open_plain(self, envelope) -> bytes:
        """L{open_envelope} up to the CBOR decoding: the body's bytes."""
        if envelope.session_id != self.session_id:
            raise ProtocolViolation(CloseCode.UNKNOWN_SESSION, "envelope for another session")
        if envelope.version != self.version:
            raise ProtocolViolation(
                CloseCode.VERSION_UNSUPPORTED, f"version {envelope.version} after agreeing on {self.version}"
            )
        if envelope.type == MessageType.RECONNECT:
            raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, "Reconnect on an established session")
        if envelope.seq <= self.recv_seq:
            raise ProtocolViolation(
                CloseCode.REPLAY, f"sequence {envelope.seq} not above {self.recv_seq}"
            )
        try:
            plain = self.cipher.open(envelope)
        except DecryptError as e:
            raise ProtocolViolation(CloseCode.DECRYPT_FAILED, str(e)) from None
        self.recv_seq = envelope.seq
        self._last_rx = self.clock.seconds()
        return plain

    @staticmethod
    def _decode(plain: bytes):
        try:
            return cbor.loads(plain)
        except cbor.CBORError as e:
            raise ProtocolViolation(CloseCode.BAD_CBOR, str(e)) from None

    def open_reconnect(self, envelope) -> int:
        """
        Authenticate a Reconnect for this session; return its last_received.

        The sequence number must exceed both the last ordinary envelope and
        the last Reconnect accepted; only the latter is advanced. On any
        failure the session is left exactly as it was.

        @raise ProtocolViolation: wrong session, stale number, bad AEAD.
        """
        if envelope.session_id != self.session_id:
            raise ProtocolViolation(CloseCode.UNKNOWN_SESSION, "envelope for another session")
        if envelope.version != self.version:
            raise ProtocolViolation(CloseCode.VERSION_UNSUPPORTED, "version differs from the session's")
        if envelope.seq <= max(self.recv_seq, self._reconnect_seq):
            raise ProtocolViolation(CloseCode.REPLAY, "stale Reconnect sequence number")
        try:
            plain = self.cipher.open_reconnect(envelope)
        except DecryptError:
            raise ProtocolViolation(CloseCode.DECRYPT_FAILED, "Reconnect does not prove the session key") from None
        try:
            last_received = schema.parse_reconnect(cbor.loads(plain))
        except (cbor.CBORError, schema.BodyError) as e:
            raise ProtocolViolation(CloseCode.BAD_CBOR, str(e)) from None
        self._reconnect_seq = envelope.seq
        self._last_rx = self.clock.seconds()
        return last_received

    def envelope_received(self, envelope) -> None:
        """
        Handle one envelope on an attached connection.

        @raise ProtocolViolation: the session must end with its code.
        """
        plain = self._open_plain(envelope)
        type_code = envelope.type
        if type_code == MessageType.DATA:
            parts = cbor.loads_data(plain)
            if parts is not None:
                # The common case, without a general CBOR decode (same
                # checks, same order as below).
                self._since_ack += 1
                if not self.local.channels_allowed(self):
                    raise ProtocolViolation(CloseCode.NOT_PAIRED, "pair with this node before opening channels")
                self._deliver(self._channels.parts_received(*parts))
                if self._since_ack >= ACK_EVERY and self.closed is None:
                    self._send_ack()
                return
        body = self._decode(plain)
        if type_code == MessageType.KEEPALIVE:
            ack = self._parse(schema.parse_keepalive, body)
            if ack is not None:
                self._acknowledged(ack)
            return
        if type_code == MessageType.KEY_UPDATE:
            self._key_update_received(self._parse(schema.parse_key_update, body))
            self._since_ack += 1
            return
        if type_code == MessageType.CLOSE:
            code, reason = self._parse(schema.parse_close, body)
            self._end(SessionClosed(code, reason), remote=True)
            return
        self._since_ack += 1
        if type_code in _CHANNEL_TYPES and not self.local.channels_allowed(self):
            # Refused before any ratchet work: a node serves no channels to
            # a peer it has not paired with (docs/protocol.md §10).
            raise ProtocolViolation(CloseCode.NOT_PAIRED, "pair with this node before opening channels")
        if type_code == MessageType.DATA:
            self._data_received(*self._parse(schema.parse_data, body))
        elif type_code == MessageType.CHANNEL_INIT:
            channel = self._channels.init_received(*self._parse(schema.parse_channel_init, body))
            if self.on_channel is not None:
                self.on_channel(channel)
            else:
                self.local.channel_opened(self, channel)
        elif type_code in (
            MessageType.HANDSHAKE_INIT,
            MessageType.HANDSHAKE_RESPONSE,
            MessageType.HANDSHAKE_FINAL,
        ):
            raise ProtocolViolation(
                CloseCode.UNEXPECTED_MESSAGE, f"type 0x{type_code:04x} on an established session"
            )
        else:
            self._dispatch(type_code, body)
        if self._since_ack >= ACK_EVERY and self.closed is None:
            self._send_ack()

    @staticmethod
    def _parse(parser, body):
        try:
            return parser(body)
        except schema.BodyError as e:
            raise ProtocolViolation(CloseCode.BAD_CBOR, str(e)) from None

    def _dispatch(self, type_code, body):
        handler = self._handlers.get(type_code) or self.local.handler_for(type_code)
        if handler is None:
            # Unknown types are ignored so that new ones can roll out gradually.
            self.local.unknown_type(type_code)
            return
        handler(self, body)

    def register_handler(self, type_code: int, handler) -> None:
        """Handle custom C{type_code} on this session with C{handler(session, body)}."""
        if not is_custom_type(type_code):
            raise ValueError(f"0x{type_code:04x} is outside the custom range 0xF000-0xFFFF")
        self._handlers[type_code] = handler

    # Channels

    def open_channel(self, name: str) -> Channel:
        """
        Open (or return the already open) channel called C{name}.

        @raise ValueError: the name is longer than 255 UTF-8 bytes.
        """
        return self._channels.open(name)

    def _data_received(self, cid, message):
        self._deliver(self._channels.data_received(cid, message))

    def _deliver(self, received):
        """Hand C{(channel, plaintext)} from the channels to its reader (None: nothing to)."""
        if received is None:
            return
        channel, plain = received
        if channel.on_data is not None:
            channel.on_data(plain)
        else:
            self.local.data_received(self, channel, plain)

    # Ending

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session, telling the peer with a Close if attached."""
        if self.closed is not None:
            return
        reason = _truncate_utf8(reason, 1024)
        if self.connection is not None:
            self.send(MessageType.CLOSE, {"code": int(code), "reason": reason})
        self._end(SessionClosed(code, reason))

    def end_without_close(self, closed: SessionClosed, remote: bool = False) -> None:
        """
        End the session with C{closed} without sending a Close: the peer
        said so itself (C{remote}), or cannot be told (its circuit or node
        is gone, or it refused the session). Idempotent.
        """
        self._end(closed, remote=remote)

    def _end(self, closed: SessionClosed, remote: bool = False):
        if self.closed is not None:
            return
        self.closed = closed
        self._stop_keepalive()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._unacked = ()
        self._unacked_bytes = 0
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.session_ended()
        self.local.session_closed(self)
        if self.on_close is not None:
            self.on_close(closed)

    def freeze(self) -> None:
        """Stop silently: no Close, no more sends, transport aborted."""
        if self.closed is not None:
            return
        self.closed = SessionClosed(CloseCode.GOING_AWAY, "node stopped")
        self._stop_keepalive()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.replaced()
