"""
Post-handshake payload protection.

After the handshake every payload is a CBOR byte string holding
ChaCha20-Poly1305 (RFC 8439) ciphertext of the CBOR body:

    key    = the Split() key of the sending direction
    nonce  = 4 zero bytes || sequence number, 8 bytes little-endian
    ad     = the envelope's 31-byte header (its length field counts the
             whole sealed payload, CBOR byte-string head included)

A receiver accepts a sequence number only if it is greater than the last
one it accepted in that direction.

Each direction's key is updated on its own (docs/protocol.md §8.3,
KeyUpdate): the next epoch's key is C{next_key(key)}, a one-way step, and
the old key is forgotten, so a key that leaks exposes one epoch of one
direction, not what came before it.
"""

import struct
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from cairn.wire.constants import HEADER_SIZE, SESSION_ID_SIZE
from cairn.wire.envelope import Envelope, encode_header, pack_header

TAG_SIZE = 16
#: HKDF-Expand info of a key update (§8.3).
KEY_UPDATE_INFO = b"cairn key update"


def next_key(key: bytes) -> bytes:
    """The next epoch's key: HKDF-Expand-SHA-256(PRK=C{key}, info=C{b"cairn key update"}, L=32)."""
    return HKDFExpand(hashes.SHA256(), 32, KEY_UPDATE_INFO).derive(key)


class DecryptError(Exception):
    """A sealed payload does not authenticate."""


_NONCE = struct.Struct("<4xQ")  # 4 zero bytes, then u64 little-endian
#: The envelope header, then a CBOR byte string's head with a two-byte length (0x59).
_HEADER_BSTR16 = struct.Struct(">BH16sQIBH")


def nonce_for(seq: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce for sequence number C{seq}."""
    return _NONCE.pack(seq)


def bstr_head(length: int) -> bytes:
    """The CBOR major-type-2 head for a byte string of C{length} bytes."""
    if length < 24:
        return bytes([0x40 | length])
    if length < 0x100:
        return bytes([0x58, length])
    if length < 0x10000:
        return b"\x59" + struct.pack(">H", length)
    if length < 0x100000000:
        return b"\x5a" + struct.pack(">I", length)
    return b"\x5b" + struct.pack(">Q", length)


def split_bstr(payload: bytes) -> bytes:
    """
    The content of a payload that must be exactly one CBOR byte string.

    @raise DecryptError: anything else.
    """
    if not payload:
        raise DecryptError("empty sealed payload")
    head = payload[0]
    info = head & 0x1F
    if head >> 5 != 2 or info > 27:
        raise DecryptError("sealed payload is not a CBOR byte string")
    if info < 24:
        start, length = 1, info
    else:
        width = 1 << (info - 24)
        start = 1 + width
        if len(payload) < start:
            raise DecryptError("truncated CBOR byte-string head")
        length = int.from_bytes(payload[1:start], "big")
    if start + length != len(payload):
        raise DecryptError("sealed payload length mismatch")
    return payload[start:]


#: Seconds: a direction used again within this keeps its AEAD object for
#: the next use; one used less often (an idle session's keepalives) makes a
#: new one each time.
HOT = 1.0


class SessionCipher:
    """
    Seals and opens envelopes with the two direction keys of a session.

    A C{ChaCha20Poly1305} object holds OpenSSL contexts: about 2.2 KB of
    RSS each (measured, cryptography 50.0.2), two per session, which made them
    the largest part of an idle session's memory (issue 20). Each direction
    keeps its object only while it is used at least once every L{HOT}
    seconds (a busy session pays nothing: one clock read per envelope); an
    idle one makes a fresh object per envelope (about 3.5 us) and holds
    none in between.

    @ivar send_key: the current sending key (epoch C{send_epoch}).
    @ivar recv_key: the current receiving key (epoch C{recv_epoch}).
    @param now: a monotonic clock, C{() -> seconds} (for tests).
    """

    __slots__ = ("send_key", "recv_key", "send_epoch", "recv_epoch", "_send", "_recv", "_sent_at", "_opened_at", "_now")

    def __init__(self, send_key: bytes, recv_key: bytes, send_epoch: int = 0, recv_epoch: int = 0, now=time.monotonic):
        self.send_key, self.recv_key = send_key, recv_key
        self.send_epoch, self.recv_epoch = send_epoch, recv_epoch
        self._send = self._recv = None
        self._sent_at = self._opened_at = float("-inf")
        self._now = now

    def _sender(self, now):
        """The sending AEAD object at C{now} (see the class docstring); L{seal_bytes} inlines its hot case."""
        hot, self._sent_at = now - self._sent_at < HOT, now
        aead = self._send
        if aead is None:
            aead = ChaCha20Poly1305(self.send_key)
            if hot:
                self._send = aead
        elif not hot:
            self._send = None  # idle since its last use: this one is its last
        return aead

    def _receiver(self, now):
        """The receiving AEAD object at C{now}; L{open} inlines its hot case."""
        hot, self._opened_at = now - self._opened_at < HOT, now
        aead = self._recv
        if aead is None:
            aead = ChaCha20Poly1305(self.recv_key)
            if hot:
                self._recv = aead
        elif not hot:
            self._recv = None
        return aead

    def update_send(self) -> None:
        """Move the sending direction to its next epoch (after sending a KeyUpdate)."""
        self.send_key = next_key(self.send_key)
        self.send_epoch += 1
        self._send = None

    def update_recv(self) -> None:
        """Move the receiving direction to its next epoch (after accepting a KeyUpdate)."""
        self.recv_key = next_key(self.recv_key)
        self.recv_epoch += 1
        self._recv = None

    def open_reconnect(self, envelope: Envelope) -> bytes:
        """
        L{open} for a Reconnect, which the peer seals under its newest key:
        that may be one epoch ahead of ours when its last KeyUpdate is among
        the envelopes it is about to resend (§14). Our key does not move:
        the resent KeyUpdate moves it, in order.

        @raise DecryptError: neither key authenticates it.
        """
        try:
            return self.open(envelope)
        except DecryptError:
            pass
        ahead = ChaCha20Poly1305(next_key(self.recv_key))
        try:
            return ahead.decrypt(nonce_for(envelope.seq), split_bstr(envelope.payload), envelope.header())
        except InvalidTag:
            raise DecryptError("authentication failed") from None

    def seal(self, version: int, type_: int, session_id: bytes, seq: int, body: bytes) -> Envelope:
        """Build the sealed envelope carrying CBOR C{body}."""
        ct_len = len(body) + TAG_SIZE
        head = bstr_head(ct_len)
        header = encode_header(version, type_, session_id, seq, len(head) + ct_len)
        ct = self._sender(self._now()).encrypt(nonce_for(seq), body, header)
        return Envelope(version, type_, session_id, seq, head + ct)

    def seal_bytes(self, version: int, type_: int, session_id: bytes, seq: int, body: bytes) -> bytes:
        """
        L{seal}, as the bytes that go on the wire (C{seal(...).to_bytes()}).

        One concatenation instead of two: for large bodies each extra copy
        is a fresh allocation of the whole envelope. A body of 240 to
        65,519 bytes (every 1 KiB message) has its header and its byte
        string's two-byte head packed at once, and the AEAD object of a
        busy direction is taken without a call: four Python calls fewer per
        envelope (issue 19).
        """
        ct_len = len(body) + TAG_SIZE
        if 0x100 <= ct_len < 0x10000 and len(session_id) == SESSION_ID_SIZE:
            try:
                start = _HEADER_BSTR16.pack(version, type_, session_id, seq, ct_len + 3, 0x59, ct_len)
            except struct.error as e:  # as encode_header says it
                raise ValueError(f"header field out of range: {e}") from None
            header = start[:HEADER_SIZE]
        else:
            head = bstr_head(ct_len)
            header = encode_header(version, type_, session_id, seq, len(head) + ct_len)
            start = header + head
        now = self._now()
        aead = self._send
        if aead is not None and now - self._sent_at < HOT:
            self._sent_at = now
        else:
            aead = self._sender(now)
        return b"".join((start, aead.encrypt(_NONCE.pack(seq), body, header)))

    def open(self, envelope: Envelope) -> bytes:
        """
        Return the CBOR body of a sealed C{envelope}.

        @raise DecryptError: not a byte string, or authentication fails.
        """
        payload = envelope.payload
        size = len(payload)
        if size > 3 and payload[0] == 0x59 and ((payload[1] << 8) | payload[2]) == size - 3:
            ct = payload[3:]  # a two-byte head (every 1 KiB message): split_bstr without the call
        else:
            ct = split_bstr(payload)
        seq = envelope.seq
        # The header as Envelope.header() makes it, without its range checks:
        # the fields of a received envelope came from a header.
        header = pack_header(envelope.version, envelope.type, envelope.session_id, seq, size)
        now = self._now()
        aead = self._recv
        if aead is not None and now - self._opened_at < HOT:
            self._opened_at = now
        else:
            aead = self._receiver(now)
        try:
            return aead.decrypt(_NONCE.pack(seq), ct, header)
        except InvalidTag:
            raise DecryptError("authentication failed") from None
