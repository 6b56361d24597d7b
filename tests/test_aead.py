"""
Tests for L{cairn.crypto.aead}: the sealed payload layout of DESIGN.md
section 3 (ChaCha20-Poly1305 in a CBOR byte string, nonce from the
sequence number, header as associated data).
"""

import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from cairn.crypto.aead import (
    TAG_SIZE,
    DecryptError,
    SessionCipher,
    bstr_head,
    nonce_for,
    split_bstr,
)
from cairn.wire import cbor
from cairn.wire.constants import HEADER_SIZE
from cairn.wire.envelope import Envelope, EnvelopeError, decode

FAST = settings(max_examples=200, deadline=None, database=None)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
SID = b"S" * 16
BODY = cbor.dumps({"channel": 1, "dr": {"n": 0}})


def _pair():
    """Two ciphers facing each other: what one seals the other opens."""
    return SessionCipher(K1, K2), SessionCipher(K2, K1)


class NonceAndHeadTests(unittest.TestCase):
    """nonce_for and bstr_head."""

    def test_nonce_layout(self):
        """The nonce is 4 zero bytes then the sequence number as 8 bytes little-endian."""
        self.assertEqual(nonce_for(0), bytes(12))
        self.assertEqual(nonce_for(1), b"\x00" * 4 + b"\x01" + b"\x00" * 7)
        self.assertEqual(nonce_for(0x0102030405060708), b"\x00" * 4 + b"\x08\x07\x06\x05\x04\x03\x02\x01")
        self.assertEqual(nonce_for(2**64 - 1), b"\x00" * 4 + b"\xff" * 8)
        self.assertEqual(len(nonce_for(12345)), 12)

    def test_bstr_head_vectors(self):
        """bstr_head uses the shortest CBOR major-type-2 head for each length."""
        cases = {
            0: "40",
            1: "41",
            23: "57",
            24: "58 18",
            255: "58 ff",
            256: "59 01 00",
            65535: "59 ff ff",
            65536: "5a 00 01 00 00",
            2**32 - 1: "5a ff ff ff ff",
            2**32: "5b 00 00 00 01 00 00 00 00",
        }
        for length, expected in cases.items():
            self.assertEqual(bstr_head(length), bytes.fromhex(expected.replace(" ", "")), length)

    def test_bstr_head_matches_cbor(self):
        """bstr_head agrees with the head cbor.dumps writes for a byte string of that length."""
        for length in (0, 23, 24, 255, 256, 65535, 65536):
            head = bstr_head(length)
            self.assertEqual(cbor.dumps(b"\x00" * length)[: len(head)], head)


class SplitBstrTests(unittest.TestCase):
    """split_bstr, the unwrapping of the sealed payload."""

    def test_valid(self):
        """A payload that is exactly one byte string gives its content."""
        self.assertEqual(split_bstr(b"\x40"), b"")
        self.assertEqual(split_bstr(b"\x43abc"), b"abc")
        self.assertEqual(split_bstr(b"\x58\x18" + b"x" * 24), b"x" * 24)
        self.assertEqual(split_bstr(b"\x59\x01\x00" + b"y" * 256), b"y" * 256)
        self.assertEqual(split_bstr(cbor.dumps(b"z" * 70000)), b"z" * 70000)

    def test_not_a_byte_string(self):
        """Empty input, other major types and indefinite or reserved heads raise DecryptError."""
        for payload in [
            b"",
            b"\x00",
            b"\x01",
            b"\x61a",
            b"\x80",
            b"\xa0",
            b"\xc2\x41\x01",
            b"\xf6",
            b"\x5c",
            b"\x5d",
            b"\x5e",
            b"\x5f\x41a\xff",
            b"\x21",
        ]:
            self.assertRaises(DecryptError, split_bstr, payload)

    def test_truncated_head(self):
        """A byte-string head missing its length bytes raises DecryptError."""
        for payload in [b"\x58", b"\x59\x01", b"\x5a\x00\x00\x00", b"\x5b" + b"\x00" * 7]:
            self.assertRaises(DecryptError, split_bstr, payload)

    def test_length_mismatch(self):
        """A declared length shorter or longer than the bytes present raises DecryptError."""
        for payload in [
            b"\x43ab",
            b"\x41ab",
            b"\x40a",
            b"\x58\x05abcd",
            b"\x58\x05abcdef",
            b"\x5b" + b"\xff" * 8 + b"a",
            b"\x5a\xff\xff\xff\xff",
        ]:
            self.assertRaises(DecryptError, split_bstr, payload)


class SealOpenTests(unittest.TestCase):
    """SessionCipher.seal and SessionCipher.open."""

    def test_round_trip(self):
        """What one side seals the other side opens to the same body."""
        alice, bob = _pair()
        env = alice.seal(1, 0x0300, SID, 7, BODY)
        self.assertEqual(bob.open(env), BODY)
        self.assertEqual((env.version, env.type, env.session_id, env.seq), (1, 0x0300, SID, 7))

    def test_round_trip_over_the_wire(self):
        """A sealed envelope survives encoding and decode() and still opens."""
        alice, bob = _pair()
        env = alice.seal(1, 0x0200, SID, 3, cbor.dumps({}))
        self.assertEqual(bob.open(decode(env.to_bytes(), 1 << 20)), b"\xa0")

    def test_layout(self):
        """The payload is a CBOR byte string of ChaCha20-Poly1305(send key, 0000||LE seq, body, header)."""
        alice, _ = _pair()
        seq = 0x0102030405
        env = alice.seal(1, 0x0300, SID, seq, BODY)
        header = env.header()
        # The header's length field counts the whole sealed payload.
        self.assertEqual(struct.unpack(">I", header[27:31])[0], len(env.payload))
        nonce = b"\x00" * 4 + struct.pack("<Q", seq)
        expected_ct = ChaCha20Poly1305(K1).encrypt(nonce, BODY, header)
        self.assertEqual(len(expected_ct), len(BODY) + TAG_SIZE)
        self.assertEqual(env.payload, cbor.dumps(expected_ct))
        self.assertEqual(cbor.loads(env.payload), expected_ct)

    def test_seal_bytes(self):
        """seal_bytes gives exactly seal(...).to_bytes(), whatever the length head."""
        alice, _ = _pair()
        for size in (0, 7, 8, 239, 240, 65519, 65520, 200000):
            body = b"b" * size
            self.assertEqual(
                alice.seal_bytes(1, 0x0502, SID, size, body), alice.seal(1, 0x0502, SID, size, body).to_bytes()
            )

    def test_large_body_head(self):
        """A body whose ciphertext needs a 2- and 4-byte length head still round-trips."""
        alice, bob = _pair()
        for size in (7, 8, 239, 240, 65519, 65520):  # ciphertext lengths 23/24, 255/256, ...
            body = b"b" * size
            env = alice.seal(1, 0x0300, SID, size, body)
            self.assertEqual(env.payload[: len(bstr_head(size + 16))], bstr_head(size + 16))
            self.assertEqual(bob.open(env), body)

    def test_empty_body(self):
        """An empty body seals to a 16-byte tag and opens to b""."""
        alice, bob = _pair()
        env = alice.seal(1, 0x0200, SID, 0, b"")
        self.assertEqual(len(env.payload), 1 + TAG_SIZE)
        self.assertEqual(bob.open(env), b"")

    def test_tampered_header(self):
        """Changing any header byte makes the envelope undecodable or fail with DecryptError."""
        alice, bob = _pair()
        wire = alice.seal(1, 0x0300, SID, 9, BODY).to_bytes()
        for pos in range(HEADER_SIZE):
            data = bytearray(wire)
            data[pos] ^= 0x01
            if pos >= 27:
                # The length field no longer matches: rejected before decryption.
                self.assertRaises(EnvelopeError, decode, bytes(data), 1 << 20)
                continue
            env = decode(bytes(data), 1 << 20)
            self.assertRaises(DecryptError, bob.open, env)

    def test_tampered_payload(self):
        """Changing any payload byte, CBOR head included, raises DecryptError."""
        alice, bob = _pair()
        env = alice.seal(1, 0x0300, SID, 9, BODY)
        for pos in range(len(env.payload)):
            for flip in (0x01, 0x80):
                payload = bytearray(env.payload)
                payload[pos] ^= flip
                forged = Envelope(env.version, env.type, env.session_id, env.seq, bytes(payload))
                self.assertRaises(DecryptError, bob.open, forged)

    def test_truncated_or_extended_payload(self):
        """A payload with bytes removed or appended raises DecryptError."""
        alice, bob = _pair()
        env = alice.seal(1, 0x0300, SID, 9, BODY)
        for payload in (env.payload[:-1], env.payload + b"\x00", env.payload[:1], b""):
            forged = Envelope(env.version, env.type, env.session_id, env.seq, payload)
            self.assertRaises(DecryptError, bob.open, forged)

    def test_wrong_key(self):
        """An envelope opened with a key other than the sender's send key raises DecryptError."""
        alice, _ = _pair()
        env = alice.seal(1, 0x0300, SID, 1, BODY)
        # alice's own receive key is the other direction's key
        self.assertRaises(DecryptError, alice.open, env)
        self.assertRaises(DecryptError, SessionCipher(K2, b"\x00" * 32).open, env)

    def test_other_sequence_number(self):
        """A sealed payload moved to another sequence number raises DecryptError."""
        alice, bob = _pair()
        env = alice.seal(1, 0x0300, SID, 5, BODY)
        for seq in (4, 6, 5 + 2**32):
            moved = Envelope(env.version, env.type, env.session_id, seq, env.payload)
            self.assertRaises(DecryptError, bob.open, moved)

    def test_other_session_or_type(self):
        """A sealed payload moved to another session id or message type raises DecryptError."""
        alice, bob = _pair()
        env = alice.seal(1, 0x0300, SID, 5, BODY)
        for moved in (
            Envelope(env.version, 0x0200, env.session_id, env.seq, env.payload),
            Envelope(env.version, env.type, b"T" * 16, env.seq, env.payload),
            Envelope(2, env.type, env.session_id, env.seq, env.payload),
        ):
            self.assertRaises(DecryptError, bob.open, moved)

    def test_seal_rejects_out_of_range_header(self):
        """Sealing with a sequence number beyond 64 bits or a short session id raises ValueError."""
        alice, _ = _pair()
        self.assertRaises(ValueError, alice.seal, 1, 0x0300, SID, 2**64, BODY)
        self.assertRaises(ValueError, alice.seal, 1, 0x0300, b"short", 0, BODY)

    def test_seal_bytes_rejects_out_of_range_header(self):
        """seal_bytes refuses what seal refuses, with or without the two-byte head's single pack."""
        alice, _ = _pair()
        for body in (b"b" * 10, b"b" * 1024):
            self.assertRaises(ValueError, alice.seal_bytes, 1, 0x0300, SID, 2**64, body)
            self.assertRaises(ValueError, alice.seal_bytes, 1, 0x10000, SID, 0, body)
            self.assertRaises(ValueError, alice.seal_bytes, 256, 0x0300, SID, 0, body)
            self.assertRaises(ValueError, alice.seal_bytes, 1, 0x0300, b"short", 0, body)

    @FAST
    @given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
    def test_round_trip_property(self, body, seq):
        """Any body at any sequence number opens to itself."""
        alice, bob = _pair()
        self.assertEqual(bob.open(alice.seal(1, 0x0300, SID, seq, body)), body)

    @FAST
    @given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
    def test_arbitrary_payload(self, payload, seq):
        """Arbitrary payload bytes make open() raise DecryptError and nothing else."""
        _, bob = _pair()
        self.assertRaises(DecryptError, bob.open, Envelope(1, 0x0300, SID, seq, payload))

    @FAST
    @given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
    def test_arbitrary_ciphertext_in_bstr(self, ct, seq):
        """Arbitrary bytes wrapped in a well-formed byte string raise DecryptError."""
        _, bob = _pair()
        payload = bstr_head(len(ct)) + ct
        self.assertRaises(DecryptError, bob.open, Envelope(1, 0x0300, SID, seq, payload))


class IdleCipherTests(unittest.TestCase):
    """A direction keeps its AEAD object (~2.2 KB of OpenSSL state) only while it is used often (issue 20)."""

    def setUp(self):
        self.time = [1000.0]
        now = lambda: self.time[0]  # noqa: E731
        self.a, self.b = SessionCipher(K1, K2, now=now), SessionCipher(K2, K1, now=now)

    def exchange(self, seq):
        env = self.a.seal(1, 0x10, SID, seq, b"\xa0")
        self.assertEqual(self.b.open(env), b"\xa0")

    def test_idle_holds_none(self):
        """Used once in a while (keepalives), a cipher holds no AEAD object between uses."""
        for seq in range(1, 4):
            self.exchange(seq)
            self.assertEqual((self.a._send, self.b._recv), (None, None))
            self.time[0] += 30

    def test_busy_keeps_then_frees(self):
        """Used within HOT seconds it keeps one; the first use after an idle spell is the last with it."""
        self.exchange(1)
        self.time[0] += 0.1
        self.exchange(2)
        kept = self.a._send
        self.assertIsNotNone(kept)
        self.assertIsNotNone(self.b._recv)
        self.time[0] += 0.1
        self.exchange(3)
        self.assertIs(self.a._send, kept)
        self.time[0] += 30
        self.exchange(4)
        self.assertEqual((self.a._send, self.b._recv), (None, None))

    def test_key_update_forgets_the_old_object(self):
        """A KeyUpdate drops the kept object: the next envelope is under the new key."""
        self.exchange(1)
        self.exchange(2)
        self.a.update_send()
        self.b.update_recv()
        self.assertEqual((self.a._send, self.b._recv), (None, None))
        self.exchange(3)
        self.exchange(4)
        self.assertIsNotNone(self.a._send)
