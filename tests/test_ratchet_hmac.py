"""
Tests for the HMAC-SHA-256 family of L{cairn.crypto.ratchet_primitives}:
the HMAC and the section 11.4-11.5 KDFs written over copies
of hashlib's SHA-256 (issue 19), compared with C{cryptography}'s and the
standard library's own, and the pieces in which they feed long data.
"""

import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.trial import unittest

from cairn.crypto import ratchet_primitives as primitives


class SameBytesTests(unittest.TestCase):
    def test_hmac(self):
        for key_len in (0, 1, 31, 32, 63, 64, 65, 100):
            for data_len in (0, 1, 64, 2047, 2048, 2049, 5000):
                key, data = os.urandom(key_len), os.urandom(data_len)
                self.assertEqual(primitives.hmac_sha256(key, data), hmac.new(key, data, hashlib.sha256).digest())

    def test_kdfs(self):
        for _ in range(20):
            rk, dh, mk = os.urandom(32), os.urandom(32), os.urandom(32)
            okm = HKDF(hashes.SHA256(), 64, salt=rk, info=primitives.ROOT_INFO).derive(dh)
            self.assertEqual(primitives.kdf_root(rk, dh), (okm[:32], okm[32:]))
            okm = HKDF(hashes.SHA256(), 80, salt=b"\x00" * 32, info=primitives.AEAD_INFO).derive(mk)
            self.assertEqual(primitives._aead_keys(mk), (okm[:32], okm[32:64], okm[64:]))
            self.assertEqual(
                primitives.kdf_chain(mk),
                (hmac.new(mk, b"\x02", "sha256").digest(), hmac.new(mk, b"\x01", "sha256").digest()),
            )

    def test_kdf_chain_twice(self):
        # The keyed hashes are copied, not shared: the same key gives the same pair again.
        key = os.urandom(32)
        self.assertEqual(primitives.kdf_chain(key), primitives.kdf_chain(key))


class _Recorder:
    """A hashlib SHA-256 object that records the length of every update."""

    def __init__(self, h, sizes):
        self._h, self._sizes = h, sizes

    def copy(self):
        return _Recorder(self._h.copy(), self._sizes)

    def update(self, data):
        self._sizes.append(len(data))
        self._h.update(data)

    def digest(self):
        return self._h.digest()


class GILTests(unittest.TestCase):
    """
    hashlib releases the GIL for an update of 2048 bytes or more; the tag
    of a long message is fed in pieces below that (a released GIL costs a
    thread switch interval while a database thread is runnable).
    """

    def test_long_tag_in_pieces(self):
        sizes = []
        self.patch(primitives, "_SHA256", _Recorder(hashlib.sha256(), sizes))
        key, ad, plain = os.urandom(32), os.urandom(80), os.urandom(126_976)
        ct = primitives.aead_encrypt(key, plain, ad)
        self.assertLessEqual(max(sizes), 2047)
        self.assertGreaterEqual(sum(sizes), len(ad) + len(ct) - primitives.TAG_LEN)
        okm = HKDF(hashes.SHA256(), 80, salt=b"\x00" * 32, info=primitives.AEAD_INFO).derive(key)
        body = ct[: -primitives.TAG_LEN]
        self.assertEqual(ct[-primitives.TAG_LEN :], hmac.new(okm[32:64], ad + body, "sha256").digest())
        del sizes[:]
        self.assertEqual(primitives.aead_decrypt(key, ct, ad), plain)
        self.assertLessEqual(max(sizes), 2047)
        self.assertGreaterEqual(sum(sizes), len(ad) + len(body))
