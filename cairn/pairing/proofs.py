"""
Key derivations and proofs of the pairing methods (docs/protocol.md §20.3).

PSK and PIN pairing run SPAKE2 (RFC 9382, L{cairn.pairing.pake}) keyed by
a password scalar derived from the secret, with the session's Noise
handshake hash as the associated data of the key confirmation: a
confirmation is worth nothing on any other session, and neither side ever
sends a value against which more than one guess can be tested.

Links keep an HMAC proof: their secret is 128 random bits and the device
checks the node's peer id (which the link names) before proving anything.
"""

import hashlib
import hmac
import unicodedata

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cairn.pairing import pake

#: Labels, byte-exact (docs/protocol.md §20.3).
PSK_W = b"cairn-pair-v2 psk w"
PIN_W = b"cairn-pair-v2 pin w"
LINK_ID = b"cairn-pair-v1 link id"
LINK_KEY = b"cairn-pair-v1 link"
LINK_CLIENT = b"cairn-pair-v1 link client"
LINK_SERVER = b"cairn-pair-v1 link server"

PROOF_SIZE = 32
LINK_ID_SIZE = 16
LINK_SECRET_SIZE = 16
PAKE_SHARE_SIZE = 32
CONFIRM_SIZE = 32
HANDSHAKE_HASH_SIZE = 32


def hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of C{secret} with an empty salt and C{info}."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 under C{key} of the concatenation of C{parts}."""
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)


# PSK and PIN: the SPAKE2 password scalar


def psk_bytes(psk: str) -> bytes:
    """The PSK as the PAKE uses it: its text in Unicode NFC, as UTF-8."""
    return unicodedata.normalize("NFC", psk).encode("utf-8")


def psk_scalar(psk: str) -> int:
    """w for PSK pairing."""
    return pake.password_scalar(psk_bytes(psk), PSK_W)


def pin_scalar(canonical_pin: bytes) -> int:
    """w for PIN pairing, from the PIN's canonical form (8 ASCII bytes)."""
    return pake.password_scalar(canonical_pin, PIN_W)


# Links


def link_id(secret: bytes) -> bytes:
    """The 16-byte id under which the server files a link secret."""
    return hkdf(secret, LINK_ID, LINK_ID_SIZE)


def link_key(secret: bytes) -> bytes:
    return hkdf(secret, LINK_KEY)


def link_proofs(key: bytes, handshake_hash: bytes):
    """(client proof, server proof) for one session."""
    return mac(key, LINK_CLIENT, handshake_hash), mac(key, LINK_SERVER, handshake_hash)
