"""
Tests for L{cairn.crypto.identity}: the key file, the peer id, signatures
and the Noise static key derived from the identity.
"""

import hashlib
import os
import stat

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial import unittest

from cairn.crypto.identity import (
    KEY_FILE_NAME,
    Identity,
    IdentityError,
    load_or_create,
    parse_peer_id,
    peer_id_for,
    verify,
)

# RFC 8032 section 7.1, TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58encode(data: bytes) -> str:
    """An independent base58 (Bitcoin alphabet) encoder."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _ALPHABET[r] + out
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + out


class KeyFileTests(unittest.TestCase):
    """load_or_create and the identity.key file."""

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, KEY_FILE_NAME)

    def test_creates_file_mode_0600(self):
        """The first call creates identity.key, 32 bytes, with mode 0600."""
        self.assertEqual(KEY_FILE_NAME, "identity.key")
        load_or_create(self.dir)
        st = os.stat(self.path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_size, 32)

    def test_mode_0600_despite_permissive_umask(self):
        """The key file is 0600 even when the process umask is 0."""
        old = os.umask(0)
        try:
            load_or_create(self.dir)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_file_holds_the_seed(self):
        """The file holds the 32-byte seed of the returned identity."""
        identity = load_or_create(self.dir)
        with open(self.path, "rb") as f:
            seed = f.read()
        self.assertEqual(Identity.from_seed(seed).public_key, identity.public_key)

    def test_reuses_existing(self):
        """The second call loads the same identity and leaves the file untouched."""
        first = load_or_create(self.dir)
        with open(self.path, "rb") as f:
            before = f.read()
        second = load_or_create(self.dir)
        with open(self.path, "rb") as f:
            after = f.read()
        self.assertEqual(first.peer_id, second.peer_id)
        self.assertEqual(first.public_key, second.public_key)
        self.assertEqual(before, after)

    def test_loads_given_seed(self):
        """An existing file with a known seed loads to that seed's key pair."""
        with open(self.path, "wb") as f:
            f.write(RFC8032_SEED)
        self.assertEqual(load_or_create(self.dir).public_key, RFC8032_PUBLIC)

    def test_two_directories_differ(self):
        """Identities created in two directories are different."""
        other = self.mktemp()
        os.makedirs(other)
        self.assertNotEqual(load_or_create(self.dir).peer_id, load_or_create(other).peer_id)

    def test_never_seen_half_written(self):
        """
        Until the new key is written and synced, identity.key does not exist:
        a second process starting on the same directory at that moment makes
        its own attempt or reads a whole key, never an empty file.
        """
        seen = []
        real_fsync = os.fsync

        def fsync(fd):
            seen.append(os.path.lexists(self.path))
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        identity = load_or_create(self.dir)
        self.assertFalse(seen[0], "identity.key was visible before its key was synced")
        self.assertEqual(load_or_create(self.dir).peer_id, identity.peer_id)
        self.assertEqual(os.listdir(self.dir), [KEY_FILE_NAME])  # no temporary file left

    def test_made_meanwhile_by_another_process(self):
        """Another process linked its key first: this one reads theirs and leaves no temporary file."""
        theirs = Identity.generate()
        real_link = os.link

        def link(source, target):
            with open(target, "wb") as f:
                f.write(bytes(theirs.signing_key))
            real_link(source, target)

        self.patch(os, "link", link)
        self.assertEqual(load_or_create(self.dir).peer_id, theirs.peer_id)
        self.assertEqual(os.listdir(self.dir), [KEY_FILE_NAME])

    def test_wrong_size_rejected(self):
        """A key file of any size other than 32 bytes raises IdentityError and is left as it was."""
        for size in (0, 1, 31, 33, 64):
            with open(self.path, "wb") as f:
                f.write(b"\x01" * size)
            self.assertRaises(IdentityError, load_or_create, self.dir)
            self.assertEqual(os.path.getsize(self.path), size)


class PeerIdTests(unittest.TestCase):
    """The base58 multihash peer id."""

    def test_rfc8032_key(self):
        """Identity.from_seed gives the RFC 8032 public key for the RFC 8032 seed."""
        self.assertEqual(Identity.from_seed(RFC8032_SEED).public_key, RFC8032_PUBLIC)

    def test_format(self):
        """The peer id is base58 of 0x12 0x20 followed by sha256 of the public key."""
        expected = _b58encode(b"\x12\x20" + hashlib.sha256(RFC8032_PUBLIC).digest())
        self.assertEqual(peer_id_for(RFC8032_PUBLIC), expected)
        self.assertEqual(Identity.from_seed(RFC8032_SEED).peer_id, expected)

    def test_starts_with_qm(self):
        """Every peer id is 46 characters starting with "Qm"."""
        for _ in range(20):
            pid = Identity.generate().peer_id
            self.assertTrue(pid.startswith("Qm"), pid)
            self.assertEqual(len(pid), 46)
            self.assertTrue(set(pid) <= set(_ALPHABET))

    def test_parse_round_trip(self):
        """parse_peer_id returns the sha256 of the public key the id was made from."""
        identity = Identity.generate()
        self.assertEqual(parse_peer_id(identity.peer_id), hashlib.sha256(identity.public_key).digest())

    def test_parse_rejects(self):
        """parse_peer_id raises ValueError for non-base58 text and for other multihashes."""
        digest = hashlib.sha256(b"k").digest()
        bad = [
            "",
            "0OIl",  # characters outside the alphabet
            "Qm\u00e9",  # non-ASCII
            "Qm" + "0" * 44,
            _b58encode(b"\x12\x21" + digest + b"\x00"),  # wrong length byte
            _b58encode(b"\x12\x20" + digest[:31]),  # digest too short
            _b58encode(b"\x12\x20" + digest + b"\x00"),  # digest too long
            _b58encode(b"\x11\x14" + digest[:20]),  # sha1 multihash
            _b58encode(b"\x13\x20" + digest),  # other hash function
            _b58encode(digest),  # bare digest
        ]
        for text in bad:
            self.assertRaises(ValueError, parse_peer_id, text)

    def test_peer_id_for_rejects_bad_key_size(self):
        """peer_id_for raises ValueError unless given 32 bytes."""
        for size in (0, 31, 33):
            self.assertRaises(ValueError, peer_id_for, b"\x00" * size)


class SignatureTests(unittest.TestCase):
    """sign() and verify()."""

    def test_rfc8032_signature(self):
        """Signing the empty message with the RFC 8032 seed gives the RFC's signature."""
        self.assertEqual(Identity.from_seed(RFC8032_SEED).sign(b""), RFC8032_SIG_EMPTY)

    def test_verify_true(self):
        """verify() accepts a signature made by sign()."""
        identity = Identity.generate()
        self.assertTrue(verify(identity.public_key, b"msg", identity.sign(b"msg")))

    def test_signature_checks_with_cryptography(self):
        """A signature from sign() verifies with an independent Ed25519 implementation."""
        identity = Identity.generate()
        sig = identity.sign(b"independent")
        Ed25519PublicKey.from_public_bytes(identity.public_key).verify(sig, b"independent")

    def test_verify_false(self):
        """verify() returns False, without raising, for any wrong message, signature or key."""
        identity = Identity.generate()
        other = Identity.generate()
        sig = identity.sign(b"msg")
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        cases = [
            (identity.public_key, b"msh", sig),
            (identity.public_key, b"msg", flipped),
            (other.public_key, b"msg", sig),
            (identity.public_key, b"msg", sig[:63]),
            (identity.public_key, b"msg", sig + b"\x00"),
            (identity.public_key, b"msg", b""),
            (identity.public_key[:31], b"msg", sig),
            (b"", b"msg", sig),
            (identity.public_key, b"msg", None),
            (None, b"msg", sig),
            (identity.public_key, b"msg", other.sign(b"msg")),
        ]
        for key, message, signature in cases:
            self.assertIs(verify(key, message, signature), False)


class ReprAndNoiseKeyTests(unittest.TestCase):
    """What an Identity shows and the Noise static key it derives."""

    def test_repr_has_no_key_material(self):
        """repr() and str() show the peer id and no seed, private or public key bytes."""
        identity = Identity.from_seed(RFC8032_SEED)
        for text in (repr(identity), str(identity)):
            self.assertIn(identity.peer_id, text)
            for secret in (
                RFC8032_SEED,
                RFC8032_PUBLIC,
                identity.noise_static_private(),
                identity.noise_static_public(),
            ):
                self.assertNotIn(secret.hex(), text)
                self.assertNotIn(secret.hex().upper(), text)
                self.assertNotIn(repr(secret), text)
                self.assertNotIn(repr(secret)[2:12], text)

    def test_noise_static_public_matches_private(self):
        """noise_static_public() is the X25519 public key of noise_static_private()."""
        for _ in range(5):
            identity = Identity.generate()
            private = identity.noise_static_private()
            self.assertEqual(len(private), 32)
            derived = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
            self.assertEqual(identity.noise_static_public(), derived)

    def test_noise_static_key_is_stable(self):
        """The Noise static key is a function of the seed alone."""
        a = Identity.from_seed(RFC8032_SEED)
        b = Identity.from_seed(RFC8032_SEED)
        self.assertEqual(a.noise_static_private(), b.noise_static_private())
        self.assertNotEqual(a.noise_static_public(), Identity.generate().noise_static_public())

    def test_noise_static_private_is_sha512_clamped_seed(self):
        """The Noise static private key is the clamped first half of sha512(seed), libsodium's conversion."""
        h = bytearray(hashlib.sha512(RFC8032_SEED).digest()[:32])
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        self.assertEqual(Identity.from_seed(RFC8032_SEED).noise_static_private(), bytes(h))


class MemoTests(unittest.TestCase):
    """Values derived from the key pair are computed once per Identity and are the same values."""

    def test_derived_values_computed_once(self):
        """noise_static_public/private, public_key and peer_id convert once and match fresh conversions."""
        from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519, crypto_sign_ed25519_sk_to_curve25519

        from cairn.crypto import identity as module

        calls = []
        self.patch(module, "crypto_sign_ed25519_pk_to_curve25519",
                   lambda pk: calls.append("pk") or crypto_sign_ed25519_pk_to_curve25519(pk))
        self.patch(module, "crypto_sign_ed25519_sk_to_curve25519",
                   lambda sk: calls.append("sk") or crypto_sign_ed25519_sk_to_curve25519(sk))
        identity = Identity.from_seed(RFC8032_SEED)
        for _ in range(3):
            self.assertEqual(identity.public_key, RFC8032_PUBLIC)
            self.assertEqual(identity.noise_static_public(), crypto_sign_ed25519_pk_to_curve25519(RFC8032_PUBLIC))
            self.assertEqual(
                identity.noise_static_private(),
                crypto_sign_ed25519_sk_to_curve25519(RFC8032_SEED + RFC8032_PUBLIC),
            )
            self.assertEqual(identity.peer_id, peer_id_for(RFC8032_PUBLIC))
        self.assertEqual(sorted(calls), ["pk", "sk"])

    def test_memo_not_part_of_value(self):
        """Two identities from one seed are equal and hash alike whatever each has computed."""
        a, b = Identity.from_seed(RFC8032_SEED), Identity.from_seed(RFC8032_SEED)
        a.noise_static_public()
        a.memo("anything", lambda: 1)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertNotIn("anything", repr(a))

    def test_memo_computes_once_per_name(self):
        identity = Identity.generate()
        calls = []
        self.assertEqual(identity.memo("x", lambda: calls.append(1) or 5), 5)
        self.assertEqual(identity.memo("x", lambda: calls.append(1) or 6), 5)
        self.assertEqual(identity.memo("y", lambda: 7), 7)
        self.assertEqual(calls, [1])

    def test_peer_id_cache_matches_and_accepts_bytearray(self):
        """peer_id_for gives the same id cached or not, and still takes a bytearray."""
        key = Identity.generate().public_key
        expected = _b58encode(b"\x12\x20" + hashlib.sha256(key).digest())
        self.assertEqual(peer_id_for(key), expected)
        self.assertEqual(peer_id_for(key), expected)
        self.assertEqual(peer_id_for(bytearray(key)), expected)
        self.assertRaises(ValueError, peer_id_for, bytearray(31))
