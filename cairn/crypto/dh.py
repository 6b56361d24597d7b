"""
X25519 (RFC 7748) where cairn computes it itself, with the all-zero check.

An X25519 result of 32 zero bytes means the peer's public key was a point
of small order: the "shared secret" is then known to anyone, and a key
derived from it protects nothing. docs/protocol.md requires every X25519
that cairn performs itself to refuse that result: the ratchet's DH steps
(§11.1), the mailbox pair box (§21.8) and the signaling rendezvous ids
(§23.4). (The Noise handshake's DH, L{cairn.crypto.noise_xx}, goes
through C{cryptography}'s X25519, which refuses it there, §6.)

libsodium's C{crypto_scalarmult} and OpenSSL's X25519 already fail on
that result; the check here does not depend on them.
"""

import hmac

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaClRuntimeError

_ZERO = bytes(32)


class LowOrderPoint(ValueError):
    """An X25519 agreement gave the all-zero result (a small-order public key)."""


def check_shared(shared: bytes) -> bytes:
    """C{shared}, unless it is 32 zero bytes (compared in constant time)."""
    if hmac.compare_digest(bytes(shared), _ZERO):
        raise LowOrderPoint("X25519 result is all zeros (small-order public key)")
    return shared


def x25519(private: bytes, public: bytes) -> bytes:
    """
    X25519(C{private}, C{public}) with libsodium.

    @raise LowOrderPoint: the result would be all zeros.
    """
    try:
        shared = crypto_scalarmult(private, public)
    except (NaClRuntimeError, CryptoError):
        # libsodium refuses the all-zero result itself (-1 from the call).
        raise LowOrderPoint("X25519 result is all zeros (small-order public key)") from None
    return check_shared(shared)
