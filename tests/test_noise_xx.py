"""
Tests for L{cairn.crypto.noise_xx}: the Noise test vector of
C{Noise_XX_25519_ChaChaPoly_SHA256}, handshakes with noiseprotocol both
ways, and the state machine's refusals.
"""

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection
from twisted.trial import unittest

from cairn.crypto.noise_xx import MAX_MESSAGE, NoiseError, XXState, public_bytes

#: The vector for this protocol name from cacophony's test vectors (as
#: carried by noiseprotocol's tests, tests/vectors/cacophony.txt). Messages
#: 1-3 are the handshake; 4-6 transport messages after Split(), written by
#: the responder, the initiator, the responder.
VECTOR = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f276e038c48378ffce2b65285"
            "e08d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f488ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f"
            "8814c7194e83f23dbd8d162c9326ad",
        ),
        (
            "462e20412e20486179656b",
            "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475b9df0f169ae80a89be0865b57f"
            "58c9fea0d4ec82a286427402f113e4b6ae769a1d95941d49b25030",
        ),
        ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
        ("4a65616e2d426170746973746520536179", "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5"),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
        ),
    ],
}

NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"


def state(initiator, static_hex=None, ephemeral_hex=None, prologue=b"p"):
    static = (
        X25519PrivateKey.generate()
        if static_hex is None
        else X25519PrivateKey.from_private_bytes(bytes.fromhex(static_hex))
    )
    ephemeral = None if ephemeral_hex is None else X25519PrivateKey.from_private_bytes(bytes.fromhex(ephemeral_hex))
    return XXState(initiator, static, public_bytes(static), prologue, ephemeral)


def library(initiator, prologue=b"p"):
    conn = NoiseConnection.from_name(NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, X25519PrivateKey.generate().private_bytes_raw())
    conn.start_handshake()
    return conn


def nonce(n):
    return bytes(4) + n.to_bytes(8, "little")


class VectorTests(unittest.TestCase):
    def test_cacophony_vector(self):
        """The three handshake messages, the handshake hash and the split keys are the vector's."""
        prologue = bytes.fromhex(VECTOR["prologue"])
        i = state(True, VECTOR["init_static"], VECTOR["init_ephemeral"], prologue)
        r = state(False, VECTOR["resp_static"], VECTOR["resp_ephemeral"], prologue)
        messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in VECTOR["messages"]]
        for (writer, reader), (payload, ciphertext) in zip(((i, r), (r, i), (i, r)), messages):
            self.assertEqual(writer.write_message(payload), ciphertext)
            self.assertEqual(reader.read_message(ciphertext), payload)
        self.assertTrue(i.finished and r.finished)
        self.assertEqual(i.handshake_hash.hex(), VECTOR["handshake_hash"])
        self.assertEqual(r.handshake_hash.hex(), VECTOR["handshake_hash"])
        i2r, r2i = i.split()
        self.assertEqual(r.split(), (i2r, r2i))
        for key, n, (payload, ciphertext) in zip((r2i, i2r, r2i), (0, 0, 1), messages[3:]):
            self.assertEqual(ChaCha20Poly1305(key).encrypt(nonce(n), payload, b""), ciphertext)
        self.assertEqual(i.rs, public_bytes(X25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["resp_static"]))))


class LibraryTests(unittest.TestCase):
    """Handshakes with noiseprotocol, either side being the library."""

    @settings(max_examples=20, deadline=None, database=None)
    @given(st.booleans(), st.lists(st.binary(max_size=300), min_size=3, max_size=3), st.binary(max_size=40))
    def test_with_noiseprotocol(self, we_initiate, payloads, prologue):
        """Every message, payload, the handshake hash and the transport keys agree with noiseprotocol's."""
        ours, theirs = state(we_initiate, prologue=prologue), library(not we_initiate, prologue)
        for turn, payload in enumerate(payloads):
            if (turn % 2 == 0) == we_initiate:
                self.assertEqual(bytes(theirs.read_message(ours.write_message(payload))), payload)
            else:
                self.assertEqual(ours.read_message(bytes(theirs.write_message(payload))), payload)
        self.assertTrue(ours.finished and theirs.handshake_finished)
        self.assertEqual(ours.handshake_hash, bytes(theirs.get_handshake_hash()))
        i2r, r2i = ours.split()
        proto = theirs.noise_protocol
        send, recv = proto.cipher_state_encrypt.k, proto.cipher_state_decrypt.k
        self.assertEqual((i2r, r2i), (recv, send) if we_initiate else (send, recv))


class RefusalTests(unittest.TestCase):
    def test_out_of_turn(self):
        """A side cannot read when it should write, nor go on after the third message."""
        i, r = state(True), state(False)
        self.assertRaises(NoiseError, i.read_message, bytes(32))
        self.assertRaises(NoiseError, r.write_message, b"")
        r.read_message(i.write_message(b""))
        i.read_message(r.write_message(b""))
        r.read_message(i.write_message(b""))
        for s in (i, r):
            self.assertRaises(NoiseError, s.write_message, b"")
            self.assertRaises(NoiseError, s.read_message, bytes(64))

    def test_split_before_finished(self):
        self.assertRaises(NoiseError, state(True).split)

    def test_too_long(self):
        """Neither side writes nor reads a message over 65535 bytes."""
        self.assertRaises(NoiseError, state(True).write_message, bytes(MAX_MESSAGE))
        self.assertRaises(NoiseError, state(False).read_message, bytes(MAX_MESSAGE + 1))
        self.assertEqual(state(False).read_message(bytes(MAX_MESSAGE)), bytes(MAX_MESSAGE - 32))

    def test_short(self):
        """A message shorter than its keys is refused."""
        self.assertRaises(NoiseError, state(False).read_message, bytes(31))
        i, r = state(True), state(False)
        r.read_message(i.write_message(b""))
        self.assertRaises(InvalidTag, i.read_message, r.write_message(b"")[:79])

    def test_zero_dh_output_refused(self):
        """A DH giving 32 zero bytes fails the handshake even if the X25519 in use let it through (protocol §6.1)."""

        class Lax:
            def __init__(self, key):
                self.key = key

            def exchange(self, peer):
                return bytes(32)

            def public_key(self):
                return self.key.public_key()

        i, r = state(True), state(False)
        r._s = Lax(r._s)
        r.read_message(i.write_message(b""))
        r._e = Lax(X25519PrivateKey.generate())
        self.assertRaises(NoiseError, r.write_message, b"")

    def test_no_cycles(self):
        """A finished state is freed by reference counting (no cycle to wait for the collector)."""
        import gc
        import weakref

        i, r = state(True), state(False)
        r.read_message(i.write_message(b""))
        i.read_message(r.write_message(b""))
        r.read_message(i.write_message(b""))
        refs = [weakref.ref(i), weakref.ref(r)]
        enabled = gc.isenabled()
        gc.disable()
        try:
            del i, r
            self.assertEqual([ref() for ref in refs], [None, None])
        finally:
            if enabled:
                gc.enable()
