"""
Property-based tests of the framing layer and of the fuzz entry point:
the stream parser's result never depends on how the bytes are split, a
single envelope decodes or is refused with Close 1 or 2, and
L{targets.one_input} (the atheris target) holds on arbitrary input.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from cairn.wire.constants import HEADER_SIZE, CloseCode, MessageType
from cairn.wire.envelope import Envelope
from tests.fuzz import strategies as fs
from tests.fuzz import targets

envelopes = st.builds(
    Envelope,
    st.integers(0, 255),
    fs.type_codes,
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=100),
)


class StreamTests(unittest.TestCase):
    @fs.FUZZ
    @given(st.lists(envelopes, max_size=5), st.binary(max_size=64), st.lists(st.integers(0, 800), max_size=12))
    def test_split_independent(self, good, tail, cuts):
        """Envelopes then arbitrary bytes give the same error and envelopes (up to the error) however split."""
        data = b"".join(e.to_bytes() for e in good) + tail
        targets.check_split(data, fs.split(data, cuts))
        whole, error = targets.feed_stream([data], max_payload=100)
        if error is None:
            self.assertEqual(whole[: len(good)], good)

    def test_split_reference_catches_loss(self):
        """The split check reports a parser that loses an envelope."""
        data = Envelope(1, 0x0200, b"\x00" * 16, 0, b"").to_bytes()
        self.assertRaises(targets.Unexpected, targets.check_split, data + data, [data])

    @fs.FUZZ
    @given(st.binary(max_size=300), st.integers(0, 200))
    def test_decode_arbitrary(self, data, max_payload):
        """Arbitrary bytes as one WebSocket message decode exactly or are refused with Close 1 or 2."""
        ok, result = targets.decode_one(data, max_payload)
        if ok:
            self.assertEqual(len(result.payload), len(data) - HEADER_SIZE)
        elif len(data) < HEADER_SIZE:
            self.assertEqual(result.code, CloseCode.MALFORMED_ENVELOPE)


class EntryPointTests(unittest.TestCase):
    @fs.FUZZ
    @given(st.binary(max_size=400))
    def test_one_input(self, data):
        """The coverage-guided fuzzer's target accepts arbitrary bytes without an unexpected outcome."""
        targets.one_input(data)

    @fs.FUZZ
    @given(
        st.integers(0, 255), st.lists(st.tuples(st.integers(0, 0xEF), st.integers(0, 3), fs.cbor_values), max_size=5)
    )
    def test_one_input_sealed(self, first, items):
        """The sealed mode of the target holds on CBOR bodies of every type (what random bytes rarely reach)."""
        data = bytearray([4, first])
        for code, flags, value in items:
            body = targets.cbor.dumps(value)[:255]
            data += bytes([code, flags, len(body)]) + body
        targets.one_input(bytes(data))

    def test_unexpected_close_is_reported(self):
        """An envelope that makes the node close with a code outside the allowed set is reported."""
        saved = targets.SESSION_CODES
        self.addCleanup(setattr, targets, "SESSION_CODES", saved)
        targets.SESSION_CODES = frozenset()
        replayed = bytes([4, 1, list(MessageType).index(MessageType.KEEPALIVE), 1, 1, 0xA0])
        self.assertRaises(targets.Unexpected, targets.one_input, replayed)
