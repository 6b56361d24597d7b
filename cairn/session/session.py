"""
An established session: sealing, ordering, resume state (opening and
dispatching what arrives is in L{cairn.session.receiving}; the resend
buffer and the restart snapshot in L{cairn.session.resume}; keepalive
and attachment timers in L{cairn.session.keepalive}).

A L{Session} outlives the transports that carry it. While attached it
sends through its current L{IFrameTransport}; while detached it keeps
what it sent and the peer has not acknowledged, so that a Reconnect on a
new transport can resend it. It never touches sockets, WebSocket frames
or wall-clock time: the clock is injected.
"""

from zope.interface import implementer

from cairn.crypto.aead import SessionCipher
from cairn.crypto.identity import peer_id_for
from cairn.session.channels import Channel, Channels
from cairn.session.errors import ProtocolViolation, SessionClosed
from cairn.session.interfaces import ISession
from cairn.session.keepalive import Keepalive
from cairn.session.receiving import Receiving
from cairn.session.rekey import NO_REKEY_BEFORE, KeyEpochs
from cairn.session.resume import ResumeState
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType

#: Types that are never resent after a Reconnect (and so never buffered).
_UNBUFFERED = frozenset({MessageType.KEEPALIVE, MessageType.CLOSE, MessageType.RECONNECT})
__all__ = ["Channel", "ProtocolViolation", "Session", "SessionClosed"]


def _truncate_utf8(text: str, limit: int) -> str:
    """C{text} cut to at most C{limit} UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


@implementer(ISession)
class Session(Receiving, Keepalive, KeyEpochs, ResumeState):
    """
    One authenticated session with a remote peer.

    @param local: the local L{cairn.session.peer.Peer} (clock, limits,
        handlers, registry).
    @param result: the L{HandshakeResult} the session was keyed from.
    @param send_seq: the next sequence number to send.
    @param recv_seq: the last sequence number accepted from the peer.
    """

    # Slots: the instance dict of these 30 attributes outgrew CPython's
    # shared-key table and cost ~1.5 KB per session (issue 20). The mixins
    # have empty slots too, so a session has no __dict__ at all: without
    # them each still carried an attribute array and a dict pointer,
    # about 40 bytes (issue 19). Tests patch methods on the class.
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
        #: Custom-type handlers of this session alone: None until the first
        #: L{register_handler} (an empty dict per idle session is 64 bytes).
        self._handlers = None
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
        if self._key_update_seq is None and type_code not in NO_REKEY_BEFORE and self._rekey_due():
            self._update_send_key()  # a KeyUpdate first, if one is due (written in: a call fewer an envelope)
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
        return self.closed is None and self.send_payload_if_open(type_code, cbor.dumps(body))

    def send_payload_if_open(self, type_code: int, payload: bytes) -> bool:
        """L{send_payload} unless the session has ended; whether it was sent (or buffered)."""
        if self.closed is not None:
            return False
        try:
            self.send_payload(type_code, payload)
        except SessionClosed:
            return False
        return True

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
        self._stop_expiry()
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
        self._stop_expiry()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.replaced()
