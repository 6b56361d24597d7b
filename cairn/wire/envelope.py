"""
The binary envelope: a 31-byte big-endian header followed by the payload.

    version u8 | type u16 | session id 16 bytes | sequence u64 | length u32

The header is not CBOR; the payload is (sealed after the handshake).
L{EnvelopeParser} turns a byte stream into envelopes whatever the split
or coalescing of its chunks; L{decode} takes exactly one envelope, as a
WebSocket message carries.
"""

import struct

import attr

from cairn.wire.constants import HEADER_SIZE, SESSION_ID_SIZE, CloseCode

_HEADER = struct.Struct(">BH16sQI")
assert _HEADER.size == HEADER_SIZE


class EnvelopeError(ValueError):
    """
    Bytes that cannot be an envelope.

    @ivar code: the L{CloseCode} to send back.
    @ivar envelopes: (from L{EnvelopeParser.feed}) the envelopes completed
        before the bad header in the same chunk, to be handled before the
        Close, so that how the stream was cut does not change what happens.
    """

    def __init__(self, code: CloseCode, reason: str, envelopes=()):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.envelopes = list(envelopes)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Envelope:
    """One framed message. C{payload} is the raw (CBOR or sealed) payload."""

    version: int
    type: int
    session_id: bytes
    seq: int
    payload: bytes = b""

    def header(self) -> bytes:
        """The 31 header bytes, which also serve as the AEAD associated data."""
        return encode_header(self.version, self.type, self.session_id, self.seq, len(self.payload))

    def to_bytes(self) -> bytes:
        """The envelope as it goes on the wire."""
        return self.header() + self.payload


# A received envelope made without attrs' frozen __init__ (which sets each
# field through a bound object.__setattr__): the instance's slots filled
# through their descriptors, the same object for 4,600 instructions
# instead of 6,800 under callgrind, on every envelope received (issue 19).
# Only for a class whose fields have no default factory, validator or
# converter to apply (tests/test_envelope.py pins it).
_new = object.__new__
_SET_VERSION, _SET_TYPE, _SET_SESSION_ID, _SET_SEQ, _SET_PAYLOAD = (
    Envelope.__dict__[field.name].__set__ for field in attr.fields(Envelope)
)


def received(version: int, type_: int, session_id: bytes, seq: int, payload: bytes) -> Envelope:
    """C{Envelope(version, type_, session_id, seq, payload)}, made as L{decode} makes it."""
    envelope = _new(Envelope)
    _SET_VERSION(envelope, version)
    _SET_TYPE(envelope, type_)
    _SET_SESSION_ID(envelope, session_id)
    _SET_SEQ(envelope, seq)
    _SET_PAYLOAD(envelope, payload)
    return envelope


#: The five header fields packed without L{encode_header}'s checks: for
#: fields that came from a parsed header (struct.error if not).
pack_header = _HEADER.pack


def encode_header(version, type_, session_id, seq, length) -> bytes:
    """Pack the five header fields; raises C{ValueError} if one is out of range."""
    if len(session_id) != SESSION_ID_SIZE:
        raise ValueError("session id must be 16 bytes")
    try:
        return _HEADER.pack(version, type_, session_id, seq, length)
    except struct.error as e:
        raise ValueError(f"header field out of range: {e}") from None


def parse_header(data) -> tuple:
    """
    Unpack the first 31 bytes of C{data}.

    @return: (version, type, session_id, seq, length)
    """
    return _HEADER.unpack_from(data, 0)


def decode(data: bytes, max_payload: int) -> Envelope:
    """
    Decode exactly one envelope (e.g. one WebSocket message).

    @raise EnvelopeError: too short, length field disagreeing with the
        data, or a payload above C{max_payload}.
    """
    if len(data) < HEADER_SIZE:
        raise EnvelopeError(CloseCode.MALFORMED_ENVELOPE, "truncated header")
    version, type_, sid, seq, length = _HEADER.unpack_from(data, 0)  # parse_header(), without the call
    if length > max_payload:
        raise EnvelopeError(
            CloseCode.PAYLOAD_TOO_LARGE,
            f"payload length {length} above maximum {max_payload}",
        )
    if length != len(data) - HEADER_SIZE:
        raise EnvelopeError(CloseCode.MALFORMED_ENVELOPE, "length field does not match message size")
    envelope = _new(Envelope)  # L{received}, written in: a call fewer a message
    _SET_VERSION(envelope, version)
    _SET_TYPE(envelope, type_)
    _SET_SESSION_ID(envelope, sid)
    _SET_SEQ(envelope, seq)
    _SET_PAYLOAD(envelope, bytes(data[HEADER_SIZE:]))
    return envelope


class EnvelopeParser:
    """
    Incremental stream framing: feed bytes, get whole envelopes.

    Memory is bounded by C{max_payload + HEADER_SIZE} plus one received
    chunk: a header announcing more than C{max_payload} is refused as soon
    as its 31 bytes are in, before any payload is buffered.
    """

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        #: The start of an envelope cut by a chunk's end; None while there
        #: is none (an idle connection's parser held an empty bytearray,
        #: 56 bytes per session, issue 19).
        self._buffer = None
        self._failed = False

    def buffered(self) -> int:
        """How many bytes are held waiting for the rest of an envelope."""
        return 0 if self._buffer is None else len(self._buffer)

    def feed(self, data: bytes) -> list:
        """
        Add C{data}; return the envelopes it completes, in order.

        Envelopes that lie whole in C{data} are sliced out of it (one copy
        each, none for a chunk that is exactly one envelope); only an
        envelope cut by the chunk's end goes through the buffer. (Copying
        every chunk into the buffer first was about a tenth of the TCP
        receive path's CPU, issue 19.)

        @raise EnvelopeError: the stream cannot continue (header announcing
            an oversized payload). The parser refuses further input after.
        """
        if self._failed:
            raise EnvelopeError(CloseCode.MALFORMED_ENVELOPE, "stream already failed")
        if type(data) is not bytes:
            data = bytes(data)
        out = []
        offset = 0
        buf = self._buffer
        if buf is not None:
            offset = self._finish_buffered(data, out)
            if offset < 0:
                return out
        max_payload = self.max_payload
        end = len(data)
        while end - offset >= HEADER_SIZE:
            version, type_, sid, seq, length = _HEADER.unpack_from(data, offset)
            if length > max_payload:
                self._refuse(length, out)
            stop = offset + HEADER_SIZE + length
            if stop > end:
                break
            out.append(received(version, type_, sid, seq, data[offset + HEADER_SIZE : stop]))
            offset = stop
        if offset < end:
            self._buffer = bytearray(memoryview(data)[offset:])
        return out

    def _finish_buffered(self, data: bytes, out: list) -> int:
        """
        Complete the envelope the buffer holds the start of, from the head
        of C{data}; append it to C{out}. Returns how many bytes of C{data}
        that took, or -1 when all of C{data} went into the buffer.
        """
        buf = self._buffer
        offset = 0
        if len(buf) < HEADER_SIZE:
            offset = HEADER_SIZE - len(buf)
            buf += data[:offset]
            if len(buf) < HEADER_SIZE:
                return -1
        version, type_, sid, seq, length = _HEADER.unpack_from(buf, 0)
        if length > self.max_payload:
            self._refuse(length, out)
        need = HEADER_SIZE + length - len(buf)
        if len(data) - offset < need:
            buf += memoryview(data)[offset:]
            return -1
        buf += memoryview(data)[offset : offset + need]
        # One copy (through a view) rather than two (slice, then bytes);
        # the view is released before the buffer is dropped below.
        with memoryview(buf) as view:
            payload = bytes(view[HEADER_SIZE:])
        self._buffer = None
        out.append(received(version, type_, sid, seq, payload))
        return offset + need

    def _refuse(self, length: int, out: list):
        self._failed = True
        self._buffer = None
        raise EnvelopeError(
            CloseCode.PAYLOAD_TOO_LARGE,
            f"payload length {length} above maximum {self.max_payload}",
            out,
        )
