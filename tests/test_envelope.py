"""
Tests for L{cairn.wire.envelope} (the 31-byte header, one-shot decoding and
stream framing) and L{cairn.wire.schema} (the session-layer body checks).
"""

import struct

import attr
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from cairn.wire.constants import HEADER_SIZE, CloseCode
from cairn.wire.envelope import (
    Envelope,
    EnvelopeError,
    EnvelopeParser,
    decode,
    encode_header,
    parse_header,
)
from cairn.wire.schema import (
    BodyError,
    parse_channel_init,
    parse_close,
    parse_data,
    parse_handshake,
    parse_keepalive,
    parse_reconnect,
)

SID = bytes(range(0xA0, 0xB0))
MAX = 1024
FAST = settings(max_examples=200, deadline=None, database=None)


def _envelope(type_=0x0300, seq=0, payload=b"", sid=SID, version=1):
    return Envelope(version, type_, sid, seq, payload)


def _raw_header(length, type_=0x0300, seq=0, sid=SID, version=1):
    """A header built without the module under test."""
    return bytes([version]) + struct.pack(">H", type_) + sid + struct.pack(">QI", seq, length)


envelopes = st.builds(
    Envelope,
    version=st.integers(0, 0xFF),
    type=st.integers(0, 0xFFFF),
    session_id=st.binary(min_size=16, max_size=16),
    seq=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=200),
)


def _rechunk(data, cuts):
    """Split C{data} at the sorted, de-duplicated positions in C{cuts}."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


class HeaderTests(unittest.TestCase):
    """The binary header layout."""

    def test_header_size(self):
        """An encoded header is exactly 31 bytes, whatever the field values."""
        self.assertEqual(HEADER_SIZE, 31)
        self.assertEqual(len(encode_header(1, 0x0100, SID, 0, 0)), 31)
        self.assertEqual(len(encode_header(0xFF, 0xFFFF, b"\xff" * 16, 2**64 - 1, 2**32 - 1)), 31)

    def test_known_bytes(self):
        """Fields are big-endian at offsets 0, 1, 3, 19 and 27."""
        header = encode_header(0x01, 0x0303, SID, 0x0102030405060708, 0x0A0B0C0D)
        expected = (
            b"\x01" + b"\x03\x03" + bytes(range(0xA0, 0xB0)) + b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x0a\x0b\x0c\x0d"
        )
        self.assertEqual(header, expected)
        self.assertEqual(header[0:1], b"\x01")
        self.assertEqual(header[1:3], b"\x03\x03")
        self.assertEqual(header[3:19], SID)
        self.assertEqual(header[19:27], bytes(range(1, 9)))
        self.assertEqual(header[27:31], b"\x0a\x0b\x0c\x0d")

    def test_small_values_are_big_endian(self):
        """A type of 0x0001 and a sequence of 1 put their set byte last in their field."""
        header = encode_header(1, 0x0001, SID, 1, 2)
        self.assertEqual(header[1:3], b"\x00\x01")
        self.assertEqual(header[19:27], b"\x00" * 7 + b"\x01")
        self.assertEqual(header[27:31], b"\x00\x00\x00\x02")

    def test_parse_header_round_trip(self):
        """parse_header returns the five fields encode_header packed."""
        fields = (1, 0xF00D, SID, 2**64 - 1, 2**32 - 1)
        self.assertEqual(parse_header(encode_header(*fields)), fields)

    def test_envelope_to_bytes(self):
        """An envelope on the wire is its header, whose length counts the payload, then the payload."""
        env = _envelope(type_=0x0201, seq=7, payload=b"hello")
        data = env.to_bytes()
        self.assertEqual(data, _raw_header(5, type_=0x0201, seq=7) + b"hello")
        self.assertEqual(env.header(), data[:HEADER_SIZE])

    def test_extreme_values_accepted(self):
        """The largest value of every field encodes."""
        header = encode_header(0xFF, 0xFFFF, SID, 2**64 - 1, 2**32 - 1)
        self.assertEqual(header, b"\xff\xff\xff" + SID + b"\xff" * 12)

    def test_bad_session_id_length(self):
        """A session id of any length other than 16 raises ValueError."""
        for size in (0, 1, 15, 17, 32):
            self.assertRaises(ValueError, encode_header, 1, 0x0100, b"\x00" * size, 0, 0)

    def test_out_of_range_fields(self):
        """A version, type, sequence or length outside its field raises ValueError."""
        bad = [
            (256, 0x0100, 0, 0),
            (-1, 0x0100, 0, 0),
            (1, 0x10000, 0, 0),
            (1, -1, 0, 0),
            (1, 0x0100, 2**64, 0),
            (1, 0x0100, -1, 0),
            (1, 0x0100, 0, 2**32),
            (1, 0x0100, 0, -1),
        ]
        for version, type_, seq, length in bad:
            self.assertRaises(ValueError, encode_header, version, type_, SID, seq, length)

    def test_envelope_with_bad_fields_refuses_to_serialize(self):
        """An Envelope holding an out-of-range sequence cannot be put on the wire."""
        self.assertRaises(ValueError, _envelope(seq=2**64).to_bytes)


class DecodeTests(unittest.TestCase):
    """Decoding exactly one envelope."""

    def test_round_trip(self):
        """decode() of an envelope's bytes gives the same envelope back."""
        env = _envelope(type_=0xF123, seq=2**40 + 3, payload=b"\xa0payload")
        self.assertEqual(decode(env.to_bytes(), MAX), env)

    def test_received_envelopes_as_attrs_makes_them(self):
        """decode() and the parser make, without Envelope's __init__, envelopes attrs' own constructor would make."""
        fields = attr.fields(Envelope)
        self.assertEqual([f.name for f in fields], ["version", "type", "session_id", "seq", "payload"])
        for field in fields:
            self.assertIsNone(field.validator)
            self.assertIsNone(field.converter)
            self.assertNotIsInstance(field.default, attr.Factory)
        expected = _envelope(type_=0xF123, seq=2**40 + 3, payload=b"\xa0payload")
        data = expected.to_bytes()

        def refused(*args, **kwargs):
            raise AssertionError("Envelope.__init__ called")

        self.patch(Envelope, "__init__", refused)
        for envelope in (decode(data, MAX), decode(bytearray(data), MAX), *EnvelopeParser(MAX).feed(data * 2)):
            self.assertIs(type(envelope), Envelope)
            self.assertIs(type(envelope.payload), bytes)
            self.assertEqual(envelope, expected)
            self.assertEqual(hash(envelope), hash(expected))
            self.assertEqual(repr(envelope), repr(expected))
            self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, envelope, "seq", 1)
        split = EnvelopeParser(MAX)
        self.assertEqual(split.feed(data[:35]), [])
        self.assertEqual(split.feed(data[35:]), [expected])

    def test_empty_payload(self):
        """A 31-byte message with length 0 decodes to an envelope with an empty payload."""
        env = decode(_raw_header(0), MAX)
        self.assertEqual(env.payload, b"")
        self.assertEqual(env.session_id, SID)

    def test_payload_of_exactly_max(self):
        """A payload of exactly the maximum size is accepted."""
        env = _envelope(payload=b"x" * MAX)
        self.assertEqual(decode(env.to_bytes(), MAX), env)

    def test_truncated_header(self):
        """Fewer than 31 bytes is MALFORMED_ENVELOPE, for every shorter size."""
        data = _raw_header(0)
        for n in range(HEADER_SIZE):
            e = self.assertRaises(EnvelopeError, decode, data[:n], MAX)
            self.assertEqual(e.code, CloseCode.MALFORMED_ENVELOPE)

    def test_length_mismatch(self):
        """A length field that disagrees with the data size is MALFORMED_ENVELOPE."""
        for length, payload in [(5, b"1234"), (5, b"123456"), (0, b"x"), (3, b"")]:
            e = self.assertRaises(EnvelopeError, decode, _raw_header(length) + payload, MAX)
            self.assertEqual(e.code, CloseCode.MALFORMED_ENVELOPE)

    def test_length_above_max(self):
        """A length above the maximum is PAYLOAD_TOO_LARGE, even when the payload is all there."""
        data = _raw_header(MAX + 1) + b"x" * (MAX + 1)
        e = self.assertRaises(EnvelopeError, decode, data, MAX)
        self.assertEqual(e.code, CloseCode.PAYLOAD_TOO_LARGE)

    def test_length_field_at_ceiling(self):
        """A header alone announcing 2**32-1 bytes is PAYLOAD_TOO_LARGE."""
        e = self.assertRaises(EnvelopeError, decode, _raw_header(2**32 - 1), MAX)
        self.assertEqual(e.code, CloseCode.PAYLOAD_TOO_LARGE)

    def test_error_is_value_error(self):
        """EnvelopeError is a ValueError carrying its code and reason."""
        e = self.assertRaises(EnvelopeError, decode, b"", MAX)
        self.assertIsInstance(e, ValueError)
        self.assertIsInstance(e.reason, str)

    @FAST
    @given(envelopes)
    def test_round_trip_property(self, env):
        """Every in-range envelope decodes back to itself."""
        self.assertEqual(decode(env.to_bytes(), 200), env)


class ParserTests(unittest.TestCase):
    """Stream framing with EnvelopeParser."""

    def _stream(self):
        envs = [
            _envelope(type_=0x0100, seq=0, payload=b"\xa1enoiseC\x01\x02\x03"),
            _envelope(type_=0x0200, seq=1, payload=b""),
            _envelope(type_=0x0300, seq=2, payload=bytes(range(40))),
        ]
        return envs, b"".join(e.to_bytes() for e in envs)

    def test_coalesced(self):
        """Several envelopes in one chunk all come out, in order, leaving nothing buffered."""
        envs, data = self._stream()
        parser = EnvelopeParser(MAX)
        self.assertEqual(parser.feed(data), envs)
        self.assertEqual(parser.buffered(), 0)

    def test_every_split_point(self):
        """The stream split in two at any byte boundary yields the same envelopes."""
        envs, data = self._stream()
        for i in range(len(data) + 1):
            parser = EnvelopeParser(MAX)
            out = parser.feed(data[:i]) + parser.feed(data[i:])
            self.assertEqual(out, envs, f"split at {i}")
            self.assertEqual(parser.buffered(), 0)

    def test_every_pair_of_split_points(self):
        """The stream split in three at any two byte boundaries yields the same envelopes."""
        envs, data = self._stream()
        for i in range(len(data) + 1):
            for j in range(i, len(data) + 1):
                parser = EnvelopeParser(MAX)
                out = parser.feed(data[:i]) + parser.feed(data[i:j]) + parser.feed(data[j:])
                self.assertEqual(out, envs, f"split at {i}, {j}")

    def test_byte_at_a_time(self):
        """Fed one byte at a time, each envelope comes out exactly when its last byte arrives."""
        envs, data = self._stream()
        parser = EnvelopeParser(MAX)
        ends = []
        total = 0
        for e in envs:
            total += len(e.to_bytes())
            ends.append(total)
        out = []
        for i in range(len(data)):
            got = parser.feed(data[i : i + 1])
            if got:
                self.assertIn(i + 1, ends)
            out.extend(got)
        self.assertEqual(out, envs)
        self.assertEqual(parser.buffered(), 0)

    def test_partial_is_buffered(self):
        """An incomplete envelope is held, not returned."""
        _, data = self._stream()
        parser = EnvelopeParser(MAX)
        self.assertEqual(parser.feed(data[:40]), [])
        self.assertEqual(parser.buffered(), 40)

    def test_buffer_held_only_while_an_envelope_is_cut(self):
        """A parser holds no buffer until a chunk ends inside an envelope, and drops it once that envelope is whole."""
        envs, data = self._stream()
        parser = EnvelopeParser(MAX)
        self.assertIsNone(parser._buffer)
        self.assertEqual(parser.feed(data[:5]), [])
        self.assertEqual(parser.buffered(), 5)
        first = len(envs[0].to_bytes())
        self.assertEqual(parser.feed(data[5:first]), envs[:1])
        self.assertIsNone(parser._buffer)
        self.assertEqual(parser.feed(data[first:]), envs[1:])
        self.assertIsNone(parser._buffer)

    def test_empty_feed(self):
        """Feeding no bytes returns no envelopes."""
        parser = EnvelopeParser(MAX)
        self.assertEqual(parser.feed(b""), [])
        self.assertEqual(parser.buffered(), 0)

    @FAST
    @given(st.lists(envelopes, max_size=8), st.lists(st.integers(0, 10_000), max_size=20))
    def test_rechunked_stream_property(self, envs, cuts):
        """Any list of envelopes, serialized and re-chunked anywhere, parses back to the same list."""
        data = b"".join(e.to_bytes() for e in envs)
        parser = EnvelopeParser(200)
        out = []
        for chunk in _rechunk(data, cuts):
            out.extend(parser.feed(chunk))
        self.assertEqual(out, envs)
        self.assertEqual(parser.buffered(), 0)

    def test_oversized_refused_at_header(self):
        """An oversized length is refused on the 31st header byte, before any payload is buffered."""
        header = _raw_header(MAX + 1)
        parser = EnvelopeParser(MAX)
        for i in range(HEADER_SIZE - 1):
            self.assertEqual(parser.feed(header[i : i + 1]), [])
        e = self.assertRaises(EnvelopeError, parser.feed, header[-1:])
        self.assertEqual(e.code, CloseCode.PAYLOAD_TOO_LARGE)
        self.assertEqual(parser.buffered(), 0)

    def test_oversized_with_payload_in_same_chunk(self):
        """A header and part of its oversized payload in one chunk are dropped, not kept."""
        parser = EnvelopeParser(MAX)
        e = self.assertRaises(EnvelopeError, parser.feed, _raw_header(2**32 - 1) + b"x" * 500)
        self.assertEqual(e.code, CloseCode.PAYLOAD_TOO_LARGE)
        self.assertEqual(parser.buffered(), 0)

    def test_oversized_after_good_envelope(self):
        """An oversized header following a good envelope in the same stream is refused."""
        parser = EnvelopeParser(MAX)
        good = _envelope(payload=b"ok").to_bytes()
        self.assertEqual(len(parser.feed(good)), 1)
        e = self.assertRaises(EnvelopeError, parser.feed, _raw_header(MAX + 1))
        self.assertEqual(e.code, CloseCode.PAYLOAD_TOO_LARGE)

    def test_good_envelope_in_same_chunk_as_oversized_header(self):
        """Envelopes completed in the chunk that ends with an oversized header come with the error."""
        parser = EnvelopeParser(MAX)
        good = _envelope(payload=b"ok")
        e = self.assertRaises(EnvelopeError, parser.feed, good.to_bytes() + _raw_header(MAX + 1))
        self.assertEqual(e.code, CloseCode.PAYLOAD_TOO_LARGE)
        self.assertEqual(e.envelopes, [good])

    def test_refuses_input_after_failure(self):
        """After refusing a stream the parser raises EnvelopeError on every later feed, even a valid one."""
        parser = EnvelopeParser(MAX)
        self.assertRaises(EnvelopeError, parser.feed, _raw_header(MAX + 1))
        self.assertRaises(EnvelopeError, parser.feed, _envelope(payload=b"ok").to_bytes())
        self.assertRaises(EnvelopeError, parser.feed, b"")
        self.assertEqual(parser.buffered(), 0)

    def test_zero_max_payload(self):
        """With a maximum of 0, empty-payload envelopes pass and a 1-byte payload is refused."""
        parser = EnvelopeParser(0)
        self.assertEqual(parser.feed(_raw_header(0)), [_envelope()])
        e = self.assertRaises(EnvelopeError, parser.feed, _raw_header(1))
        self.assertEqual(e.code, CloseCode.PAYLOAD_TOO_LARGE)

    @FAST
    @given(
        st.sampled_from([0, 16, 200, 2**32 - 1]),
        st.lists(st.binary(max_size=300), max_size=12),
    )
    def test_arbitrary_bytes_bounded(self, max_payload, chunks):
        """Arbitrary bytes in arbitrary chunks only ever raise EnvelopeError, with bounded buffering."""
        parser = EnvelopeParser(max_payload)
        for chunk in chunks:
            try:
                out = parser.feed(chunk)
            except EnvelopeError as e:
                self.assertIn(e.code, (CloseCode.PAYLOAD_TOO_LARGE, CloseCode.MALFORMED_ENVELOPE))
                self.assertEqual(parser.buffered(), 0)
                self.assertRaises(EnvelopeError, parser.feed, b"\x00")
                return
            for env in out:
                self.assertLessEqual(len(env.payload), max_payload)
            self.assertLessEqual(parser.buffered(), max_payload + HEADER_SIZE + len(chunk))
            # What stays buffered is always an incomplete envelope.
            self.assertLess(parser.buffered(), max_payload + HEADER_SIZE)

    @FAST
    @given(
        st.lists(
            st.one_of(
                st.integers(0, 40).map(lambda n: _raw_header(n) + b"p" * n),
                st.integers(0, 2**32 - 1).map(_raw_header),
                st.binary(max_size=40),
            ),
            max_size=10,
        ),
        st.lists(st.integers(0, 10_000), max_size=10),
    )
    def test_header_heavy_input_bounded(self, pieces, cuts):
        """Mixes of plausible headers and garbage only ever raise EnvelopeError, with bounded buffering."""
        parser = EnvelopeParser(32)
        for chunk in _rechunk(b"".join(pieces), cuts):
            try:
                parser.feed(chunk)
            except EnvelopeError:
                self.assertEqual(parser.buffered(), 0)
                return
            self.assertLess(parser.buffered(), 32 + HEADER_SIZE)


class SchemaTests(unittest.TestCase):
    """The session-layer body parsers."""

    def _bad(self, parser, bodies):
        for body in bodies:
            self.assertRaises(BodyError, parser, body)

    NOT_MAPS = [None, [], [1], b"", "", 0, 1.0, True]
    NOT_UINTS = [-1, True, False, "1", b"\x01", 1.0, [], {}, None]

    def test_keepalive_valid(self):
        """A Keepalive body is {} (no ack) or {"ack": uint}; unknown keys are ignored."""
        self.assertIsNone(parse_keepalive({}))
        self.assertEqual(parse_keepalive({"ack": 0}), 0)
        self.assertEqual(parse_keepalive({"ack": 2**64 - 1}), 2**64 - 1)
        self.assertEqual(parse_keepalive({"ack": 5, "extra": "x"}), 5)

    def test_keepalive_invalid(self):
        """A Keepalive body that is not a map, or whose ack is not a u64, is a BodyError."""
        self._bad(parse_keepalive, self.NOT_MAPS)
        self._bad(parse_keepalive, [{"ack": v} for v in self.NOT_UINTS if v is not None])
        self._bad(parse_keepalive, [{"ack": 2**64}])

    def test_close_valid(self):
        """A Close body gives (code, reason), with code up to 0xFFFF and reason up to 1024 UTF-8 bytes."""
        self.assertEqual(parse_close({"code": 0, "reason": ""}), (0, ""))
        self.assertEqual(parse_close({"code": 0xFFFF, "reason": "x" * 1024}), (0xFFFF, "x" * 1024))
        self.assertEqual(parse_close({"code": 4, "reason": "\u00e9" * 512}), (4, "\u00e9" * 512))
        self.assertEqual(parse_close({"code": 1, "reason": "r", "more": 1}), (1, "r"))

    def test_close_invalid(self):
        """A Close body missing a field, with a bad code, or with an over-long reason is a BodyError."""
        self._bad(parse_close, self.NOT_MAPS)
        self._bad(parse_close, [{"code": v, "reason": ""} for v in self.NOT_UINTS])
        self._bad(
            parse_close,
            [
                {"reason": ""},
                {"code": 0},
                {"code": 0x10000, "reason": ""},
                {"code": 0, "reason": b"bytes"},
                {"code": 0, "reason": None},
                {"code": 0, "reason": "x" * 1025},
                # 513 two-byte characters: 1026 bytes although only 513 characters.
                {"code": 0, "reason": "\u00e9" * 513},
            ],
        )

    def test_reconnect_valid(self):
        """A Reconnect body gives its last_received sequence number."""
        self.assertEqual(parse_reconnect({"last_received": 0}), 0)
        self.assertEqual(parse_reconnect({"last_received": 2**64 - 1}), 2**64 - 1)

    def test_reconnect_invalid(self):
        """A Reconnect body without a u64 last_received is a BodyError."""
        self._bad(parse_reconnect, self.NOT_MAPS)
        self._bad(parse_reconnect, [{"last_received": v} for v in self.NOT_UINTS])
        self._bad(parse_reconnect, [{}, {"last_received": 2**64}, {"ack": 1}])

    def test_channel_init_valid(self):
        """A ChannelInit body gives (channel, name) for channels 1 to 2**32-1 and names up to 255 bytes."""
        self.assertEqual(parse_channel_init({"channel": 1, "name": "chat"}), (1, "chat"))
        self.assertEqual(parse_channel_init({"channel": 2**32 - 1, "name": "n" * 255}), (2**32 - 1, "n" * 255))
        self.assertEqual(parse_channel_init({"channel": 3, "name": ""}), (3, ""))

    def test_channel_init_zero_reserved(self):
        """Channel 0 is reserved and refused in a ChannelInit."""
        self.assertRaises(BodyError, parse_channel_init, {"channel": 0, "name": "x"})

    def test_channel_init_invalid(self):
        """A ChannelInit body with a bad channel or name is a BodyError; True is not channel 1."""
        self._bad(parse_channel_init, self.NOT_MAPS)
        self._bad(parse_channel_init, [{"channel": v, "name": "x"} for v in self.NOT_UINTS])
        self._bad(
            parse_channel_init,
            [
                {"name": "x"},
                {"channel": 1},
                {"channel": 2**32, "name": "x"},
                {"channel": 1, "name": b"x"},
                {"channel": 1, "name": "n" * 256},
                {"channel": 1, "name": "\u00e9" * 128},
            ],
        )

    def test_data_valid(self):
        """A Data body gives (channel, ratchet map); channel 0 is allowed."""
        dr = {"h": b"\x01", "c": b"\x02"}
        self.assertEqual(parse_data({"channel": 0, "dr": dr}), (0, dr))
        self.assertEqual(parse_data({"channel": 2**32 - 1, "dr": {}}), (2**32 - 1, {}))

    def test_data_invalid(self):
        """A Data body with a bad channel or a non-map dr is a BodyError."""
        self._bad(parse_data, self.NOT_MAPS)
        self._bad(parse_data, [{"channel": v, "dr": {}} for v in self.NOT_UINTS])
        self._bad(
            parse_data,
            [
                {"dr": {}},
                {"channel": 1},
                {"channel": 2**32, "dr": {}},
                {"channel": 1, "dr": []},
                {"channel": 1, "dr": b""},
                {"channel": 1, "dr": None},
            ],
        )

    def test_handshake_valid(self):
        """A handshake payload gives the bytes under "noise"."""
        self.assertEqual(parse_handshake({"noise": b"\x01\x02"}), b"\x01\x02")
        self.assertEqual(parse_handshake({"noise": b"", "x": 1}), b"")

    def test_handshake_invalid(self):
        """A handshake payload without a byte string under "noise" is a BodyError."""
        self._bad(parse_handshake, self.NOT_MAPS)
        self._bad(
            parse_handshake,
            [{}, {"noise": "text"}, {"noise": None}, {"noise": [1]}, {"noise": 1}, {b"noise": b""}],
        )

    def test_body_error_is_value_error(self):
        """BodyError is a ValueError."""
        self.assertTrue(issubclass(BodyError, ValueError))
