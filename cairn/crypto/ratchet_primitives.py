"""
The Double Ratchet's cryptographic functions (docs/protocol.md sections
11.4 to 11.6): the root and message-chain KDFs and the message AEAD
(AES-256-CBC then HMAC-SHA-256), with the associated data they
authenticate. L{cairn.crypto.ratchet_state} is the state machine that
calls them; tests/test_ratchet.py checks them against the C{doubleratchet}
library's own classes.

HMAC-SHA-256 and HKDF are written out here over hashlib's SHA-256 rather
than taken from C{cryptography}, for speed only (issue 19): every key
changes with each message, and a C{cryptography} HMAC or HKDF object costs
about 1.2 us to make (see the notes above L{hmac_sha256});
tests/test_ratchet_hmac.py compares each function with C{cryptography}'s
and the standard library's, and the section 11.9 vectors pin the bytes.
"""

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT_INFO = b"cairn-ratchet-root"
AEAD_INFO = b"cairn-ratchet-aead"
#: One HMAC input byte per output: first the next chain key, then the
#: message key: message key = HMAC(ck, 0x01), next chain key = HMAC(ck, 0x02).
MESSAGE_CHAIN_CONSTANT = b"\x02\x01"

TAG_LEN = 32  # HMAC-SHA-256, not truncated
AES_BLOCK = 16
_HEADER = struct.Struct(">II")
#: PKCS#7 padding by length (1 to 16).
_PADDING = [bytes((n,)) * n for n in range(AES_BLOCK + 1)]


class RatchetFailure(Exception):
    """A message must be rejected; the state is unchanged. str() is the reason."""


# ---------------------------------------------------------------------------
# HMAC-SHA-256 (RFC 2104) over copies of hashlib's SHA-256
#
# Every KDF and the tag of section 11 is an HMAC-SHA-256 under a key that
# changes with each message, so no keyed object can be reused across
# messages; what each message pays is the set-up of new ones. A
# cryptography HMAC (or HKDFExpand, or an HMAC inside HKDF) costs about
# 1.2 us of CPU to make here, almost none of it hashing: OpenSSL 3 fetches
# the digest implementation again for each context, and the binding checks
# the algorithm against an abstract class. A copy of a SHA-256 object that
# hashlib made once costs about 0.1 us. So the HMAC construction is
# written out here over such copies (issue 19: 2.05 -> 1.58 us for a chain
# step, 2.24 -> 1.65 us for the tag of 1 KiB, 3.38 -> 3.03 us for the
# message keys, natively, best of seven; callgrind counts about the same
# instructions either way, so what is saved is cycles that instructions do
# not show, presumably the locks of OpenSSL's fetch). The standard
# library's hmac.new does the same hashing behind a Python wrapper per
# call (1.54 us for one HMAC). tests/test_ratchet_hmac.py compares every
# function here with cryptography's HMAC and HKDF, tests/test_ratchet.py
# with the doubleratchet library, and the section 11.9 vectors pin the bytes.

_SHA256 = hashlib.sha256()  # never updated: the start of every hash here
_BLOCK = 64  # SHA-256's block size, the HMAC key's padded length
_IPAD = bytes(b ^ 0x36 for b in range(256))  # bytes.translate tables: key XOR ipad / opad
_OPAD = bytes(b ^ 0x5C for b in range(256))
#: hashlib releases the GIL for an update of 2048 bytes or more (CPython's
#: HASHLIB_GIL_MINSIZE), which costs a thread switch interval whenever
#: another thread (a database pool) is runnable; longer data is fed in
#: pieces below that, as cryptography's HMAC (which keeps the GIL) did.
_UPDATE_MAX = 2047


def _keyed(key: bytes) -> tuple["hashlib._Hash", "hashlib._Hash"]:
    """The inner and outer hashes of HMAC-SHA-256 with this key, each having absorbed its padded key."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    inner = _SHA256.copy()
    inner.update(padded.translate(_IPAD))
    outer = _SHA256.copy()
    outer.update(padded.translate(_OPAD))
    return inner, outer


def _update(h: "hashlib._Hash", data: bytes) -> None:
    """C{h.update(data)}, in pieces that keep the GIL (see L{_UPDATE_MAX})."""
    if len(data) <= _UPDATE_MAX:
        h.update(data)
        return
    view = memoryview(data)
    for start in range(0, len(view), _UPDATE_MAX):
        h.update(view[start : start + _UPDATE_MAX])


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256(key, data)."""
    inner, outer = _keyed(key)
    _update(inner, data)
    outer.update(inner.digest())
    return outer.digest()


def _tag(auth_key: bytes, ad: bytes, body: bytes) -> bytes:
    """HMAC-SHA-256 over ad || body, without making ad || body (a copy of the whole message)."""
    # L{_keyed} written in: the key is 32 bytes (from L{_aead_keys}), and a
    # Python call fewer on both sides of every message (issue 19).
    padded = auth_key.ljust(_BLOCK, b"\0")
    inner = _SHA256.copy()
    inner.update(padded.translate(_IPAD))
    outer = _SHA256.copy()
    outer.update(padded.translate(_OPAD))
    if len(ad) + len(body) <= _UPDATE_MAX:
        inner.update(ad)
        inner.update(body)
    else:
        _update(inner, ad)
        _update(inner, body)
    outer.update(inner.digest())
    return outer.digest()


class _AESCBC(Cipher):
    """
    C{Cipher(algorithms.AES(key), modes.CBC(iv))} without C{Cipher.__init__}.

    That constructor checks the algorithm's and the mode's types and the
    IV's length against the block size (C{isinstance} against abstract
    classes, C{validate_for_algorithm}): about 10,000 of the 40,000
    instructions of a context under callgrind, paid by every message on
    each side (issue 19). Here the key and IV are always slices of the
    80-byte HKDF output (32 and 16 bytes), and C{algorithms.AES} still
    checks the key's size. C{encryptor()} and C{decryptor()} are
    C{Cipher}'s own; tests/test_ratchet.py compares the bytes with
    C{Cipher}'s and the section 11.9 vectors pin them. What L{_cbc_encrypt}
    and L{_cbc_decrypt} fall back to.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:  # Cipher.__init__ not called: see above
        self.algorithm = algorithms.AES(key)
        self.mode = modes.CBC(iv)


def _public_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    return _AESCBC(key, iv).encryptor().update(data)


def _public_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    return _AESCBC(key, iv).decryptor().update(data)


# AES-256-CBC contexts straight from cryptography's binding (issue 19,
# round 8). What C{Cipher.encryptor()} hands the binding is an
# C{algorithms.AES} and a C{modes.CBC}; their constructors (byte-like and
# key-size checks in four Python calls), L{_AESCBC} and the encryptor's
# C{isinstance} against an abstract class cost about 11,000 of a context's
# 37,000 instructions (callgrind), on each side of every Data message. Here
# the two objects are made without their constructors and given to the
# function C{encryptor()} calls (C{create_encryption_ctx}). Nothing here
# checks what the constructors would: the key and IV are always 32 and 16
# bytes (slices of the HKDF output; a shorter IV would panic the binding),
# the data a whole number of blocks (padded before encrypting, checked
# before decrypting), so C{update} returns all of it and C{finalize} has
# nothing to add. The binding is private to cryptography, so it is used
# only if present and if, at import, it gives C{Cipher}'s bytes both ways
# for a fixed key, IV and data; otherwise the public path above.
# tests/test_ratchet.py compares both paths with C{Cipher}.
_new = object.__new__
_AES, _CBC = algorithms.AES, modes.CBC


def _binding_pair():
    """C{(encrypt, decrypt)} through the binding, or None if it is missing or gives other bytes."""
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        create_encryption, create_decryption = (
            rust_openssl.ciphers.create_encryption_ctx,
            rust_openssl.ciphers.create_decryption_ctx,
        )

        def encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
            algorithm, mode = _new(_AES), _new(_CBC)
            algorithm.key, mode._initialization_vector = key, iv
            return create_encryption(algorithm, mode).update(data)

        def decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
            algorithm, mode = _new(_AES), _new(_CBC)
            algorithm.key, mode._initialization_vector = key, iv
            return create_decryption(algorithm, mode).update(data)

        key, iv, data = bytes(range(32)), bytes(range(16, 32)), bytes(range(48))
        expected = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor().update(data)
        if encrypt(key, iv, data) == expected and decrypt(key, iv, expected) == data:
            return encrypt, decrypt
    except Exception:  # another cryptography: the public path
        pass
    return None


#: AES-256-CBC of whole blocks, C{(key, iv, data) -> bytes}, each way.
_cbc_encrypt, _cbc_decrypt = _binding_pair() or (_public_encrypt, _public_decrypt)


#: HKDF-Expand's inputs after T(0) (empty) and with T(n-1) before them:
#: info || n, one byte per 32-byte block (RFC 5869).
_ROOT_T1, _ROOT_T2 = ROOT_INFO + b"\x01", ROOT_INFO + b"\x02"
_AEAD_T1, _AEAD_T2, _AEAD_T3 = AEAD_INFO + b"\x01", AEAD_INFO + b"\x02", AEAD_INFO + b"\x03"


def kdf_root(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """Section 11.4: HKDF-SHA-256(salt=rk, ikm=dh, info=ROOT_INFO, 64) -> (rk', ck)."""
    # RFC 5869 written out for its two blocks (see the HMAC notes above):
    # PRK = HMAC(rk, dh); rk' = HMAC(PRK, info || 1); ck = HMAC(PRK, rk' || info || 2).
    inner, outer = _keyed(root_key)
    inner.update(dh_out)
    outer.update(inner.digest())
    inner, outer = _keyed(outer.digest())
    h = inner.copy()
    h.update(_ROOT_T1)
    o = outer.copy()
    o.update(h.digest())
    new_root_key = o.digest()
    inner.update(new_root_key + _ROOT_T2)
    outer.update(inner.digest())
    return new_root_key, outer.digest()


def kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """Section 11.4: (next chain key, message key) = (HMAC(ck, 0x02), HMAC(ck, 0x01))."""
    # One padded key for both: copies of the keyed hashes for the second
    # input. L{_keyed} written in, as in L{_tag}: a chain key is 32 bytes.
    padded = chain_key.ljust(_BLOCK, b"\0")
    inner = _SHA256.copy()
    inner.update(padded.translate(_IPAD))
    outer = _SHA256.copy()
    outer.update(padded.translate(_OPAD))
    other, other_outer = inner.copy(), outer.copy()
    inner.update(b"\x02")
    other.update(b"\x01")
    outer.update(inner.digest())
    other_outer.update(other.digest())
    return outer.digest(), other_outer.digest()


#: HKDF-Extract's HMAC keyed with the AEAD's all-zero salt, made once:
#: each message's extract continues copies of these (see L{_aead_keys}).
_ZERO_SALT_INNER, _ZERO_SALT_OUTER = _keyed(b"\x00" * 32)


def _aead_keys(message_key: bytes) -> tuple[bytes, bytes, bytes]:
    """
    HKDF-SHA-256(salt=32 zero bytes, ikm=mk, info=AEAD_INFO, 80) as
    (encryption key, authentication key, iv).

    RFC 5869 written out for its three blocks (see the HMAC notes above):
    the extract, PRK = HMAC(salt, mk), continues copies of the hashes keyed
    with the constant salt once; the expand's blocks share one keyed PRK.
    """
    h = _ZERO_SALT_INNER.copy()
    h.update(message_key)
    o = _ZERO_SALT_OUTER.copy()
    o.update(h.digest())
    padded = o.digest().ljust(_BLOCK, b"\0")  # the PRK, keyed as L{_keyed} does (written in, as in L{_tag})
    inner = _SHA256.copy()
    inner.update(padded.translate(_IPAD))
    outer = _SHA256.copy()
    outer.update(padded.translate(_OPAD))
    h = inner.copy()
    h.update(_AEAD_T1)
    o = outer.copy()
    o.update(h.digest())
    enc_key = o.digest()
    h = inner.copy()
    h.update(enc_key + _AEAD_T2)
    o = outer.copy()
    o.update(h.digest())
    auth_key = o.digest()
    inner.update(auth_key + _AEAD_T3)
    outer.update(inner.digest())
    return enc_key, auth_key, outer.digest()[:16]


def aead_encrypt(message_key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Section 11.5: AES-256-CBC (PKCS#7) then HMAC-SHA-256(ad || body), tag appended."""
    enc_key, auth_key, iv = _aead_keys(message_key)
    pad = AES_BLOCK - len(plaintext) % AES_BLOCK  # 1 to 16 bytes
    body = _cbc_encrypt(enc_key, iv, plaintext + _PADDING[pad])
    return body + _tag(auth_key, ad, body)


def aead_decrypt(message_key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Open L{aead_encrypt}'s output; the tag is compared in constant time (C{hmac.compare_digest})."""
    dec_key, auth_key, iv = _aead_keys(message_key)
    body = ciphertext[:-TAG_LEN]
    if not hmac.compare_digest(_tag(auth_key, ad, body), ciphertext[-TAG_LEN:]):
        raise RatchetFailure("authentication failed (wrong key, ad, or tampered message)")
    if len(body) % AES_BLOCK:  # (the ratchet checks it before; update() would keep the rest)
        raise RatchetFailure("decryption failed (not a whole number of blocks)")
    padded = _cbc_decrypt(dec_key, iv, body)
    pad = padded[-1] if padded else 0
    # Authenticated already, so a bad padding is the sender's bug, not an
    # oracle; still, reject it the way PKCS#7 does.
    if not 1 <= pad <= AES_BLOCK or not padded.endswith(_PADDING[pad]):
        raise RatchetFailure("decryption failed (bad padding)")
    return padded[:-pad]


def full_ad(ad: bytes, pub: bytes, pn: int, n: int) -> bytes:
    """Section 11.6: ad || ratchet pub || u32be pn || u32be n."""
    return ad + pub + _HEADER.pack(pn, n)
