"""
End-to-end sealing of forwarded payloads (docs/protocol.md §21.8).

The sender seals for the recipient's identity: the recipient's Ed25519
key converted to X25519 (C{crypto_sign_ed25519_pk_to_curve25519}) is the
key of a libsodium sealed box, whose plaintext is the CBOR map
C{{"from": sender Ed25519 key, "sig": signature, "data": bytes}}, the
signature covering C{"cairn-forward-v1:" || recipient digest (32) ||
message id (16) || data}. The node stores and forwards ciphertext only.
"""

import hashlib
import hmac

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from cairn.crypto.identity import parse_peer_id, peer_id_for, verify
from cairn.wire import cbor

SIGNATURE_PREFIX = b"cairn-forward-v1:"


class SealError(Exception):
    """A payload cannot be opened, or its sender cannot be authenticated."""


def key_matches(peer_id: str, key: bytes) -> bool:
    """Whether C{key} is the Ed25519 key C{peer_id} names (sha256 of the key)."""
    try:
        digest = parse_peer_id(peer_id)
    except ValueError:
        return False
    return isinstance(key, bytes) and len(key) == 32 and hmac.compare_digest(hashlib.sha256(key).digest(), digest)


def _signed(recipient_id, message_id, data):
    return SIGNATURE_PREFIX + parse_peer_id(recipient_id) + message_id + data


def seal(identity, recipient_id: str, recipient_key: bytes, message_id: bytes, data: bytes) -> bytes:
    """The opaque payload carrying C{data} from C{identity} to the recipient."""
    if not key_matches(recipient_id, recipient_key):
        raise SealError(f"the key offered is not {recipient_id}'s")
    inner = cbor.dumps(
        {"from": identity.public_key, "sig": identity.sign(_signed(recipient_id, message_id, data)), "data": data}
    )
    box = SealedBox(PublicKey(crypto_sign_ed25519_pk_to_curve25519(recipient_key)))
    return box.encrypt(inner)


def unseal(identity, sender_id: str, message_id: bytes, payload: bytes) -> bytes:
    """The data inside C{payload}, checked to come from C{sender_id}; else L{SealError}."""
    try:
        inner = cbor.loads(SealedBox(PrivateKey(identity.noise_static_private())).decrypt(payload))
    except (CryptoError, ValueError) as e:
        raise SealError(f"cannot open the payload: {e}") from None
    if not isinstance(inner, dict):
        raise SealError("the sealed payload is not a map")
    key, sig, data = inner.get("from"), inner.get("sig"), inner.get("data")
    if not isinstance(key, bytes) or len(key) != 32 or not isinstance(sig, bytes) or not isinstance(data, bytes):
        raise SealError("the sealed payload lacks from/sig/data")
    if peer_id_for(key) != sender_id:
        raise SealError("the payload was sealed by another peer than the node says")
    if not verify(key, _signed(identity.peer_id, message_id, data), sig):
        raise SealError("the sender's signature does not verify")
    return data
