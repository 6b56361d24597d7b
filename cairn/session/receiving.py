"""
What an established session does with each envelope that arrives: check
its session, version and sequence number, open it, decode its body and
hand it on -- to the session itself (Keepalive, KeyUpdate, Close), to its
channels (ChannelInit, Data) or to the handler registered for its type.

A mixin of L{cairn.session.session.Session}, like
L{cairn.session.keepalive.Keepalive}: it reads and sets the session's
attributes (C{cipher}, C{recv_seq}, C{_since_ack}, C{_handlers}, ...).
"""

from cairn.crypto.aead import DecryptError
from cairn.session.errors import ProtocolViolation, SessionClosed
from cairn.wire import cbor, schema
from cairn.wire.constants import CloseCode, MessageType, is_custom_type
from cairn.wire.layouts import arg

#: Send a Keepalive carrying an ack after this many acknowledgeable envelopes.
ACK_EVERY = 32
#: What only a peer allowed channels may send (L{Peer.channels_allowed}).
_CHANNEL_TYPES = frozenset({MessageType.DATA, MessageType.CHANNEL_INIT})
#: The types every envelope is compared with, bound once: a MessageType
#: member read as a class attribute costs about 950 instructions under
#: callgrind (on CPython 3.11, EnumType's __getattr__ puts every attribute
#: read of an enum class through a slow hook), a module global about 20
#: (issue 19).
_DATA, _RECONNECT, _KEEPALIVE = MessageType.DATA, MessageType.RECONNECT, MessageType.KEEPALIVE
#: A Keepalive body as every sender writes it, {"ack": n}, up to its ack.
_KEEPALIVE_ACK = b"\xa1\x63ack"


def _keepalive_ack(plain: bytes) -> int:
    """
    The ack of a Keepalive body laid out as C{cbor.dumps_keepalive} writes
    it ({"ack": n}, n below 2**32, nothing after it), else -1: the caller
    then decodes it in general, which reads every other encoding (and
    refuses what is not a Keepalive). Every idle session receives one per
    interval; the general decode and schema check cost about 8 us a
    Keepalive, this under 1 us (issue 20).
    """
    if not plain.startswith(_KEEPALIVE_ACK) or len(plain) < 6:
        return -1
    ack, end = arg(plain, 5, 0)
    return ack if end == len(plain) else -1


class Receiving:
    __slots__ = ()  # the state is in the slots of the class using it

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
        if envelope.type == _RECONNECT:
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
        if type_code == _DATA:
            parts = cbor.loads_data(plain)
            if parts is not None:
                # The common case, without a general CBOR decode (same
                # checks, same order as below).
                self._since_ack += 1
                if not self.local.channels_allowed(self):
                    raise ProtocolViolation(CloseCode.NOT_PAIRED, "pair with this node before opening channels")
                # The channels (made on first use) and _deliver(), written in: two calls fewer a message.
                received = (self._channel_state or self._channels).parts_received(*parts)
                if received is not None:
                    channel, data = received
                    if channel.on_data is not None:
                        channel.on_data(data)
                    else:
                        self.local.data_received(self, channel, data)
                if self._since_ack >= ACK_EVERY and self.closed is None:
                    self._send_ack()
                return
        if type_code == _KEEPALIVE:
            ack = _keepalive_ack(plain)
            if ack >= 0:
                self._acknowledged(ack)
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
        handlers = self._handlers
        handler = (handlers is not None and handlers.get(type_code)) or self.local.handler_for(type_code)
        if handler is None:
            # Unknown types are ignored so that new ones can roll out gradually.
            self.local.unknown_type(type_code)
            return
        handler(self, body)

    def register_handler(self, type_code: int, handler) -> None:
        """Handle custom C{type_code} on this session with C{handler(session, body)}."""
        if not is_custom_type(type_code):
            raise ValueError(f"0x{type_code:04x} is outside the custom range 0xF000-0xFFFF")
        if self._handlers is None:
            self._handlers = {}
        self._handlers[type_code] = handler
