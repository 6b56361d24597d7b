"""
Key derivations and proofs of the pairing methods (docs/protocol.md §20).

Every secret -- the PSK, a link secret, the SPAKE2 key of a PIN exchange
-- is first turned into a method key with HKDF-SHA256 (empty salt, an
ASCII label as info); proofs are HMAC-SHA256 under that key over a role
label followed by the session's Noise handshake hash (and, for PINs, both
SPAKE2 messages), so a proof is worth nothing on any other session and
the client's proof never verifies as the server's.
"""

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Labels, byte-exact (docs/protocol.md §20.3).
PSK_KEY = b"cairn-pair-v1 psk"
PSK_CLIENT = b"cairn-pair-v1 psk client"
PSK_SERVER = b"cairn-pair-v1 psk server"
LINK_ID = b"cairn-pair-v1 link id"
LINK_KEY = b"cairn-pair-v1 link"
LINK_CLIENT = b"cairn-pair-v1 link client"
LINK_SERVER = b"cairn-pair-v1 link server"
PIN_KEY = b"cairn-pair-v1 pin"
PIN_CLIENT = b"cairn-pair-v1 pin client"
PIN_SERVER = b"cairn-pair-v1 pin server"

PROOF_SIZE = 32
LINK_ID_SIZE = 16
LINK_SECRET_SIZE = 16
SPAKE2_MESSAGE_SIZE = 33
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


# PSK


def psk_key(psk: str) -> bytes:
    """The PSK method key: the PSK's UTF-8 bytes, exactly as configured."""
    return hkdf(psk.encode("utf-8"), PSK_KEY)


def psk_proofs(key: bytes, handshake_hash: bytes):
    """(client proof, server proof) for one session."""
    return mac(key, PSK_CLIENT, handshake_hash), mac(key, PSK_SERVER, handshake_hash)


# Links


def link_id(secret: bytes) -> bytes:
    """The 16-byte id under which the server files a link secret."""
    return hkdf(secret, LINK_ID, LINK_ID_SIZE)


def link_key(secret: bytes) -> bytes:
    return hkdf(secret, LINK_KEY)


def link_proofs(key: bytes, handshake_hash: bytes):
    """(client proof, server proof) for one session."""
    return mac(key, LINK_CLIENT, handshake_hash), mac(key, LINK_SERVER, handshake_hash)


# PIN (SPAKE2 key confirmation)


def pin_confirmations(spake2_key: bytes, handshake_hash: bytes, message_a: bytes, message_b: bytes):
    """
    (client MAC, server MAC) confirming a SPAKE2 key.

    A wrong PIN does not make SPAKE2 fail, it yields a different key: only
    these MACs tell the two sides whether they agree.
    """
    key = hkdf(spake2_key, PIN_KEY)
    transcript = handshake_hash + message_a + message_b
    return mac(key, PIN_CLIENT, transcript), mac(key, PIN_SERVER, transcript)
