"""
The seed of the Double Ratchet (docs/protocol.md section 11.3): what both
ends derive from the finished Noise handshake to start it (L{derive_seed},
L{RatchetSeed}), the 64-byte HKDF output a session keeps in place of the
handshake keys once it has forgotten them (L{seed_okm}, L{seed_from_okm};
L{cairn.session.rekey}), and the associated data a session gives the
ratchet for each channel (L{session_ad}).

Why separate: seeding is done once per session (or rekey), from the
handshake's outputs, and needs nothing of the ratchet itself;
L{cairn.crypto.ratchet} keeps the ratchet's API (its wire form, its keys,
L{cairn.crypto.ratchet.Ratchet}), which takes a L{RatchetSeed} to start
(#18: no module over 399 lines).
"""

import struct
from typing import Any

import attr
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_scalarmult_base

SEED_INFO = b"cairn-ratchet-seed-v1"

_KEY_LEN = 32


def _check_key(instance: Any, attribute: "attr.Attribute[bytes]", value: Any) -> None:
    if not isinstance(value, bytes) or len(value) != _KEY_LEN:
        raise ValueError("%s must be 32 bytes" % (attribute.name,))


@attr.s(frozen=True, repr=False)
class RatchetSeed:
    """
    What both ends derive from the finished handshake to start the ratchet.

    The repr never shows key material.
    """

    shared_secret: bytes = attr.ib(validator=_check_key)
    responder_private: bytes = attr.ib(validator=_check_key)
    responder_public: bytes = attr.ib(validator=_check_key)

    def __repr__(self) -> str:
        return "<RatchetSeed responder_public=%s>" % (self.responder_public.hex(),)


def seed_okm(handshake_hash: bytes, key_i2r: bytes, key_r2i: bytes) -> bytes:
    """
    The 64-byte HKDF output L{derive_seed} starts from: a session keeps it
    instead of the handshake keys once it has forgotten them (§8.3).

    @raise ValueError: an input is not 32 bytes.
    """
    for name, value in (
        ("handshake_hash", handshake_hash),
        ("key_i2r", key_i2r),
        ("key_r2i", key_r2i),
    ):
        if not isinstance(value, bytes) or len(value) != _KEY_LEN:
            raise ValueError("%s must be 32 bytes" % (name,))
    return HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=handshake_hash,
        info=SEED_INFO,
    ).derive(key_i2r + key_r2i)


def seed_from_okm(okm: bytes) -> RatchetSeed:
    """The L{RatchetSeed} made from L{seed_okm}'s output."""
    private = okm[32:]
    # libsodium's fixed-base multiplication: half the cost of parsing the
    # key with cryptography, which computes the public key that way too.
    public = crypto_scalarmult_base(private)
    return RatchetSeed(shared_secret=okm[:32], responder_private=private, responder_public=public)


def derive_seed(handshake_hash: bytes, key_i2r: bytes, key_r2i: bytes) -> RatchetSeed:
    """
    Derive the ratchet seed from a finished Noise handshake.

    okm = HKDF-SHA-256(salt=handshake_hash, ikm=key_i2r || key_r2i,
    info=C{b"cairn-ratchet-seed-v1"}, length=64); the first 32 bytes are the
    shared secret, the last 32 the responder's initial X25519 ratchet
    private key, whose public key is X25519(priv, 9).

    @param handshake_hash: the Noise handshake hash C{h} (32 bytes).
    @param key_i2r: the initiator-to-responder transport key (32 bytes).
    @param key_r2i: the responder-to-initiator transport key (32 bytes).
    @raise ValueError: an input is not 32 bytes.
    """
    seed = seed_from_okm(seed_okm(handshake_hash, key_i2r, key_r2i))
    return seed


def session_ad(session_id: bytes, channel: int) -> bytes:
    """
    The associated data a session gives the ratchet for a Data on C{channel}:
    the 16-byte session id, then the channel id as u32 big-endian
    (docs/protocol.md §9.5), so that a ratchet message opens only in the
    session and on the channel it was sealed for.
    """
    return session_id + struct.pack(">I", channel)
