"""
Tests for the handshake body written and read directly
(L{cairn.session.opening.handshake_body}, L{cairn.session.opening.parse_handshake_body}):
the same bytes as the general CBOR encoder, the same answers as the
general decoder.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from cairn.session import opening
from cairn.wire import cbor, schema

FAST = settings(max_examples=300, deadline=None, database=None)


def general(payload):
    """What the general path gives: ("ok", noise) or ("error", exception class)."""
    try:
        return ("ok", schema.parse_handshake(cbor.loads(payload)))
    except (cbor.CBORError, schema.BodyError) as e:
        return ("error", type(e))


def direct(payload):
    try:
        return ("ok", opening.parse_handshake_body(payload))
    except (cbor.CBORError, schema.BodyError) as e:
        return ("error", type(e))


class HandshakeBodyTests(unittest.TestCase):
    def test_same_bytes_as_cbor(self):
        """The body of every Noise message size (the heads' edges included) is cbor.dumps's."""
        for size in [*range(0, 300), 65535, 65536, 70000, 23, 24, 255, 256, 1000]:
            noise = bytes((size * 7 + i) % 256 for i in range(size))
            self.assertEqual(opening.handshake_body(noise), cbor.dumps({"noise": noise}), size)

    def test_read_back(self):
        """What handshake_body writes, parse_handshake_body reads without the general decoder."""
        self.patch(opening.cbor, "loads", lambda data: self.fail("general decoder used"))
        for size in (0, 23, 24, 32, 255, 256, 300, 65535):
            noise = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            self.assertEqual(opening.parse_handshake_body(opening.handshake_body(noise)), noise)

    def test_other_forms_to_the_general_decoder(self):
        """Non-shortest lengths, other keys, extra or missing bytes get the general decoder's answers."""
        cases = [
            b"\xa1\x65noise\x58\x05hello",  # a length that fits the head's byte
            b"\xa1\x65noise\x59\x00\x05hello",
            b"\xa1\x65noise\x45hell",
            b"\xa1\x65noise\x45hello!",
            b"\xa1\x65noise",
            b"\xa1\x65noisf\x45hello",
            b"\xa1\x65noise\x65hello",  # text, not bytes
            b"\xa2\x65noise\x45hello\x61a\x01",
            b"",
        ]
        for payload in cases:
            self.assertEqual(direct(payload), general(payload), payload)

    @FAST
    @given(st.binary(max_size=300), st.integers(0, 400), st.binary(min_size=1, max_size=3))
    def test_same_answers_as_cbor(self, noise, pos, junk):
        """A body, altered anywhere or not, is read as the general decoder reads it."""
        payload = bytearray(opening.handshake_body(noise))
        self.assertEqual(direct(bytes(payload)), general(bytes(payload)))
        pos %= len(payload) + 1
        payload[pos : pos + len(junk)] = junk
        self.assertEqual(direct(bytes(payload)), general(bytes(payload)))

    @FAST
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes(self, payload):
        self.assertEqual(direct(b"\xa1\x65noise" + payload), general(b"\xa1\x65noise" + payload))
        self.assertEqual(direct(payload), general(payload))
