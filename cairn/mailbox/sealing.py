"""
End-to-end sealing of forwarded payloads (docs/protocol.md §21.8).

The node stores and forwards ciphertext only. A payload's first byte
names its format; the recipient accepts both.

C{PAIR} (0x02, the default): an authenticated box under keys the sender
and the recipient share, derived once per (sender, recipient) from the
X25519 agreement of their identity keys (each Ed25519 key converted with
libsodium's C{crypto_sign_ed25519_*_to_curve25519})::

    shared    = X25519(own secret, peer public)
    enc_key   = BLAKE2b-256(key=shared, "cairn-forward-v2 key"   || sender Ed25519 key || recipient Ed25519 key)
    nonce_key = BLAKE2b-256(key=shared, "cairn-forward-v2 nonce" || sender Ed25519 key || recipient Ed25519 key)
    nonce     = BLAKE2b-96(key=nonce_key, message id || data)
    payload   = 0x02 || sender Ed25519 key || nonce || ChaCha20-Poly1305(enc_key, nonce, data, ad=message id)

The keys are per direction (sender first), so a payload cannot be
reflected to its sender; the message id is the associated data, so it
cannot be replayed under another id, and another recipient derives other
keys. The nonce is synthetic (a MAC of id and data), so a retry that
reuses an id with other data still gets a fresh nonce. Per message this
costs one BLAKE2b and one AEAD (a few microseconds at 1 KiB) instead of an
X25519 agreement, a key conversion and an Ed25519 signature.

What it gives up against C{SIGNED} (see §21.8): the authentication is
symmetric -- the recipient knows the sender wrote the message but cannot
prove it to anyone else (no signature); the sender's identity key opens
every message between the pair, in both directions, not only the
recipient's (no ephemeral sender key); whoever holds the recipient's key
can forge messages to it from any peer (key-compromise impersonation);
and a retry of the same (id, data) gives the same ciphertext. Neither
format has forward secrecy.

C{SIGNED} (0x01, on request): C{0x01 || crypto_box_seal(inner,
X25519(recipient))} with C{inner = CBOR {"from": sender Ed25519 key,
"sig": signature, "data": data}}, the signature covering
C{"cairn-forward-v1:" || recipient digest (32) || message id (16) ||
data}: an ephemeral sender key per message and a transferable signature.
"""

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaClRuntimeError
from nacl.public import PrivateKey, PublicKey, SealedBox

from cairn.crypto.dh import x25519
from cairn.crypto.identity import parse_peer_id, peer_id_for, verify
from cairn.wire import cbor

SIGNED = 0x01
PAIR = 0x02
SIGNATURE_PREFIX = b"cairn-forward-v1:"
KEY_LABEL = b"cairn-forward-v2 key"
NONCE_LABEL = b"cairn-forward-v2 nonce"
NONCE_SIZE = 12
#: Bytes a PAIR payload adds to the data: format, sender key, nonce, tag.
PAIR_OVERHEAD = 1 + 32 + NONCE_SIZE + 16
#: Peers whose pair keys a L{Sealer} keeps (per direction).
CACHED_PEERS = 4096


class SealError(Exception):
    """A payload cannot be sealed or opened, or its sender cannot be authenticated."""


def key_matches(peer_id: str, key: bytes) -> bool:
    """Whether C{key} is the Ed25519 key C{peer_id} names (sha256 of the key)."""
    try:
        digest = parse_peer_id(peer_id)
    except ValueError:
        return False
    return isinstance(key, bytes) and len(key) == 32 and hmac.compare_digest(hashlib.sha256(key).digest(), digest)


class _PairKey:
    """The keys of one direction of one pair, and the peer's id."""

    __slots__ = ("aead", "nonce_key", "sender_key", "peer_id")

    def __init__(self, shared, sender_key, recipient_key, peer_id):
        keys = sender_key + recipient_key
        self.aead = ChaCha20Poly1305(hashlib.blake2b(KEY_LABEL + keys, key=shared, digest_size=32).digest())
        self.nonce_key = hashlib.blake2b(NONCE_LABEL + keys, key=shared, digest_size=32).digest()
        self.sender_key = sender_key
        self.peer_id = peer_id


class Sealer:
    """
    Seals and opens payloads for one local identity, keeping the pair keys
    of the last L{CACHED_PEERS} peers in each direction.
    """

    def __init__(self, identity):
        self.identity = identity
        self._to = {}  # recipient Ed25519 key -> _PairKey (own key first)
        self._from = {}  # sender Ed25519 key -> _PairKey (its key first)

    def _pair(self, cache, peer_key, sending):
        found = cache.get(peer_key)
        if found is not None:
            return found
        try:
            public = crypto_sign_ed25519_pk_to_curve25519(peer_key)
            shared = x25519(self.identity.noise_static_private(), public)  # all-zero refused (§21.8)
        except (NaClRuntimeError, CryptoError, TypeError, ValueError):
            raise SealError("the peer's identity key is not usable for X25519") from None
        own, peer_id = self.identity.public_key, peer_id_for(peer_key)
        found = _PairKey(shared, own, peer_key, peer_id) if sending else _PairKey(shared, peer_key, own, peer_id)
        if len(cache) >= CACHED_PEERS:
            del cache[next(iter(cache))]
        cache[peer_key] = found
        return found

    def seal(self, recipient_id: str, recipient_key: bytes, message_id: bytes, data: bytes, signed=False) -> bytes:
        """The opaque payload carrying C{data} to the recipient (C{PAIR} format unless C{signed})."""
        if type(recipient_key) is not bytes or len(recipient_key) != 32 or peer_id_for(recipient_key) != recipient_id:
            raise SealError(f"the key offered is not {recipient_id}'s")
        if signed:
            return _seal_signed(self.identity, recipient_id, recipient_key, message_id, data)
        pair = self._pair(self._to, recipient_key, True)
        nonce = hashlib.blake2b(message_id + data, key=pair.nonce_key, digest_size=NONCE_SIZE).digest()
        return b"".join((b"\x02", self.identity.public_key, nonce, pair.aead.encrypt(nonce, data, message_id)))

    def unseal(self, sender_id: str, message_id: bytes, payload: bytes) -> bytes:
        """The data inside C{payload}, checked to come from C{sender_id}; else L{SealError}."""
        kind = payload[:1]
        if kind == b"\x02":
            if len(payload) < PAIR_OVERHEAD:
                raise SealError("the sealed payload is too short")
            key = payload[1:33]
            # A pair known for this key has the key's peer id: one lookup per
            # message of a drain instead of two calls (issue 19).
            pair = self._from.get(key)
            if pair is None or pair.peer_id != sender_id:
                if peer_id_for(key) != sender_id:
                    raise SealError("the payload was sealed by another peer than the node says")
                pair = self._pair(self._from, key, False)
            try:
                return pair.aead.decrypt(payload[33:45], payload[45:], message_id)
            except InvalidTag:
                raise SealError("cannot open the payload: it was not sealed for this id by this pair") from None
        if kind == b"\x01":
            return _unseal_signed(self.identity, sender_id, message_id, payload[1:])
        raise SealError("unknown sealing format")


def seal(identity, recipient_id: str, recipient_key: bytes, message_id: bytes, data: bytes, signed=False) -> bytes:
    """L{Sealer.seal} with a throw-away L{Sealer} (no key cache)."""
    return Sealer(identity).seal(recipient_id, recipient_key, message_id, data, signed)


def unseal(identity, sender_id: str, message_id: bytes, payload: bytes) -> bytes:
    """L{Sealer.unseal} with a throw-away L{Sealer} (no key cache)."""
    return Sealer(identity).unseal(sender_id, message_id, payload)


# SIGNED


def _signed(recipient_id, message_id, data):
    return SIGNATURE_PREFIX + parse_peer_id(recipient_id) + message_id + data


def _seal_signed(identity, recipient_id, recipient_key, message_id, data):
    inner = cbor.dumps(
        {"from": identity.public_key, "sig": identity.sign(_signed(recipient_id, message_id, data)), "data": data}
    )
    box = SealedBox(PublicKey(crypto_sign_ed25519_pk_to_curve25519(recipient_key)))
    return b"\x01" + box.encrypt(inner)


def _unseal_signed(identity, sender_id, message_id, box):
    try:
        inner = cbor.loads(SealedBox(PrivateKey(identity.noise_static_private())).decrypt(box))
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
