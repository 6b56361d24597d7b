"""
The Double Ratchet's cryptographic functions (docs/protocol.md sections
11.4 to 11.6): the root and message-chain KDFs and the message AEAD
(AES-256-CBC then HMAC-SHA-256), with the associated data they
authenticate. L{cairn.crypto.ratchet_state} is the state machine that
calls them; tests/test_ratchet.py checks them against the C{doubleratchet}
library's own classes.
"""

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

ROOT_INFO = b"cairn-ratchet-root"
AEAD_INFO = b"cairn-ratchet-aead"
#: One HMAC input byte per output: first the next chain key, then the
#: message key: message key = HMAC(ck, 0x01), next chain key = HMAC(ck, 0x02).
MESSAGE_CHAIN_CONSTANT = b"\x02\x01"

TAG_LEN = 32  # HMAC-SHA-256, not truncated
AES_BLOCK = 16
_SHA256 = hashes.SHA256()
_ZERO_SALT = b"\x00" * 32
_HEADER = struct.Struct(">II")
#: PKCS#7 padding by length (1 to 16).
_PADDING = [bytes((n,)) * n for n in range(AES_BLOCK + 1)]


class RatchetFailure(Exception):
    """A message must be rejected; the state is unchanged. str() is the reason."""


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    # cryptography's HMAC, not the standard library's hmac.digest: the latter
    # releases the GIL on every call, which costs a thread switch interval
    # (milliseconds) whenever another thread (a database pool) is runnable.
    mac = HMAC(key, _SHA256)
    mac.update(data)
    return mac.finalize()


def _mac(auth_key: bytes, ad: bytes, body: bytes) -> HMAC:
    """HMAC-SHA-256 over ad || body, without making ad || body (a copy of the whole message)."""
    mac = HMAC(auth_key, _SHA256)
    mac.update(ad)
    mac.update(body)
    return mac


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
    C{Cipher}'s and the section 11.9 vectors pin them.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:  # Cipher.__init__ not called: see above
        self.algorithm = algorithms.AES(key)
        self.mode = modes.CBC(iv)


def kdf_root(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """Section 11.4: HKDF-SHA-256(salt=rk, ikm=dh, info=ROOT_INFO, 64) -> (rk', ck)."""
    okm = HKDF(algorithm=_SHA256, length=64, salt=root_key, info=ROOT_INFO).derive(dh_out)
    return okm[:32], okm[32:]


def kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """Section 11.4: (next chain key, message key) = (HMAC(ck, 0x02), HMAC(ck, 0x01))."""
    # One keyed HMAC, copied for the second input: a copy skips the digest
    # lookup and key schedule that each new HMAC object pays (issue 19).
    mac = HMAC(chain_key, _SHA256)
    other = mac.copy()
    mac.update(b"\x02")
    other.update(b"\x01")
    return mac.finalize(), other.finalize()


#: HKDF-Extract's HMAC keyed with the AEAD's all-zero salt, made once:
#: each message's extract is a copy of it (see L{_aead_keys}).
_ZERO_SALT_HMAC = HMAC(_ZERO_SALT, _SHA256)


def _aead_keys(message_key: bytes) -> tuple[bytes, bytes, bytes]:
    """
    HKDF-SHA-256(salt=32 zero bytes, ikm=mk, info=AEAD_INFO, 80) as
    (encryption key, authentication key, iv).

    RFC 5869's two steps called separately: the extract, PRK = HMAC(salt,
    ikm), is a copy of an HMAC keyed with the constant salt once, which
    saves the key schedule and digest look-up that an HKDF object pays for
    it on every message (about a fifth of the derivation under callgrind;
    issue 19); the expand is C{cryptography}'s HKDFExpand.
    """
    extract = _ZERO_SALT_HMAC.copy()
    extract.update(message_key)
    okm = HKDFExpand(_SHA256, 80, AEAD_INFO).derive(extract.finalize())
    return okm[:32], okm[32:64], okm[64:]


def aead_encrypt(message_key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Section 11.5: AES-256-CBC (PKCS#7) then HMAC-SHA-256(ad || body), tag appended."""
    enc_key, auth_key, iv = _aead_keys(message_key)
    pad = AES_BLOCK - len(plaintext) % AES_BLOCK  # 1 to 16 bytes
    encryptor = _AESCBC(enc_key, iv).encryptor()
    body = encryptor.update(plaintext + _PADDING[pad]) + encryptor.finalize()
    return body + _mac(auth_key, ad, body).finalize()


def aead_decrypt(message_key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Open L{aead_encrypt}'s output; the tag is compared in constant time (C{HMAC.verify})."""
    dec_key, auth_key, iv = _aead_keys(message_key)
    body = ciphertext[:-TAG_LEN]
    try:
        _mac(auth_key, ad, body).verify(ciphertext[-TAG_LEN:])
    except InvalidSignature:
        raise RatchetFailure("authentication failed (wrong key, ad, or tampered message)") from None
    decryptor = _AESCBC(dec_key, iv).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    pad = padded[-1] if padded else 0
    # Authenticated already, so a bad padding is the sender's bug, not an
    # oracle; still, reject it the way PKCS#7 does.
    if not 1 <= pad <= AES_BLOCK or not padded.endswith(_PADDING[pad]):
        raise RatchetFailure("decryption failed (bad padding)")
    return padded[:-pad]


def full_ad(ad: bytes, pub: bytes, pn: int, n: int) -> bytes:
    """Section 11.6: ad || ratchet pub || u32be pn || u32be n."""
    return ad + pub + _HEADER.pack(pn, n)
