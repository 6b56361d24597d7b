"""
PeerAnnounce: the signed, clear envelope a peer sends to a signaling server.

A PeerAnnounce is never inside a Noise session (the signaling server is an
untrusted rendezvous): it is a plain envelope (version 1, type 0x0400, a
zero session id, a sequence number counting the announces of the
connection) whose payload is the CBOR map of docs/protocol.md §23, signed
with the announcer's Ed25519 identity key.

Rendezvous ids let two paired peers find each other without telling the
server who they are: both compute an X25519 shared secret from their
identity keys (converted to Curve25519, as for the Noise static key),
derive a key from it with HKDF, and MAC the day number with that key.
Nobody else can compute the id, and it changes every day.
"""

import struct

import attr
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519

from cairn.crypto.dh import x25519
from cairn.crypto.identity import peer_id_for, verify
from cairn.pairing.proofs import hkdf, mac
from cairn.wire import cbor
from cairn.wire.constants import SESSION_ID_SIZE, MessageType
from cairn.wire.envelope import Envelope, EnvelopeError, decode

#: Byte-exact labels (docs/protocol.md §23).
SIGNATURE_DOMAIN = b"cairn-announce:"
RENDEZVOUS_KEY = b"cairn-rendezvous-v1 key"
RENDEZVOUS_LABEL = b"cairn-rendezvous"

VERSION = 1
ZERO_SESSION = bytes(SESSION_ID_SIZE)
RENDEZVOUS_SIZE = 32
DAY = 86400

#: Limits a signaling server enforces (and an announcer respects).
MAX_RENDEZVOUS = 64
MAX_ADDRESSES = 16
MAX_ADDRESS_LENGTH = 256
MAX_ANNOUNCE_SIZE = 8192
#: Accepted distance between an announce's timestamp and the server's clock.
FRESHNESS = 300

_FIELDS = frozenset({"peer_id", "identity", "addresses", "rendezvous", "ts", "sig"})


class AnnounceError(ValueError):
    """Bytes that are not a valid, fresh, correctly signed PeerAnnounce."""


@attr.s(frozen=True, auto_attribs=True)
class Announce:
    """A verified PeerAnnounce."""

    peer_id: str
    identity: bytes
    addresses: tuple
    rendezvous: tuple
    ts: int


def day_number(seconds: float) -> int:
    """The UTC day of a POSIX time, as rendezvous ids use it."""
    return int(seconds // DAY)


def rendezvous_key(identity, peer_identity_key: bytes) -> bytes:
    """
    The key both C{identity} and the peer with C{peer_identity_key} derive.

    X25519 between our Curve25519 private key and the peer's Ed25519 key
    converted to Curve25519; HKDF-SHA256 (empty salt, info
    C{RENDEZVOUS_KEY}) of the shared secret.

    @raise LowOrderPoint: the agreement gives the all-zero result.
    """
    theirs = crypto_sign_ed25519_pk_to_curve25519(bytes(peer_identity_key))
    shared = x25519(identity.noise_static_private(), theirs)  # all-zero refused (§23.4)
    return hkdf(shared, RENDEZVOUS_KEY)


def rendezvous_id(key: bytes, day: int) -> bytes:
    """HMAC-SHA256 under C{key} of C{RENDEZVOUS_LABEL} and C{day} (u32 BE)."""
    return mac(key, RENDEZVOUS_LABEL, struct.pack(">I", day))


def signed_bytes(fields: dict) -> bytes:
    """What the signature covers: the domain prefix, then the map without C{sig}."""
    return SIGNATURE_DOMAIN + cbor.dumps({k: v for k, v in fields.items() if k != "sig"})


def encode(identity, addresses, rendezvous, ts: int, seq: int) -> bytes:
    """A complete PeerAnnounce envelope from C{identity}, ready to send."""
    fields = {
        "peer_id": identity.peer_id,
        "identity": identity.public_key,
        "addresses": list(addresses),
        "rendezvous": list(rendezvous),
        "ts": int(ts),
    }
    fields["sig"] = identity.sign(signed_bytes(fields))
    payload = cbor.dumps(fields)
    return Envelope(VERSION, MessageType.PEER_ANNOUNCE, ZERO_SESSION, seq, payload).to_bytes()


def _check_fields(fields) -> None:
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise AnnounceError("not a PeerAnnounce map")
    identity, sig = fields["identity"], fields["sig"]
    if not (isinstance(identity, bytes) and len(identity) == 32):
        raise AnnounceError("identity is not a 32-byte key")
    if not (isinstance(sig, bytes) and len(sig) == 64):
        raise AnnounceError("sig is not 64 bytes")
    ts = fields["ts"]
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise AnnounceError("ts is not an unsigned integer")
    addresses = fields["addresses"]
    if not (isinstance(addresses, list) and len(addresses) <= MAX_ADDRESSES):
        raise AnnounceError("addresses is not a list of at most 16")
    for address in addresses:
        if not (isinstance(address, str) and len(address) <= MAX_ADDRESS_LENGTH):
            raise AnnounceError("an address is not a short text")
    rendezvous = fields["rendezvous"]
    if not (isinstance(rendezvous, list) and len(rendezvous) <= MAX_RENDEZVOUS):
        raise AnnounceError("rendezvous is not a list of at most 64")
    for item in rendezvous:
        if not (isinstance(item, bytes) and len(item) == RENDEZVOUS_SIZE):
            raise AnnounceError("a rendezvous id is not 32 bytes")


def parse(data: bytes, now: float = None) -> Announce:
    """
    Decode and verify one PeerAnnounce envelope.

    @param now: the verifier's clock; when given, a C{ts} further than
        L{FRESHNESS} seconds from it is refused.
    @raise AnnounceError: too large, not a PeerAnnounce, malformed, stale,
        or not signed by the key it names.
    """
    if len(data) > MAX_ANNOUNCE_SIZE:
        raise AnnounceError("announce too large")
    try:
        envelope = decode(data, MAX_ANNOUNCE_SIZE)
    except EnvelopeError as e:
        raise AnnounceError(e.reason) from None
    if envelope.version != VERSION or envelope.type != MessageType.PEER_ANNOUNCE:
        raise AnnounceError("not a version 1 PeerAnnounce envelope")
    try:
        fields = cbor.loads(envelope.payload)
    except cbor.CBORError as e:
        raise AnnounceError(f"bad CBOR: {e}") from None
    _check_fields(fields)
    if fields["peer_id"] != peer_id_for(fields["identity"]):
        raise AnnounceError("peer_id does not match identity")
    if now is not None and abs(fields["ts"] - now) > FRESHNESS:
        raise AnnounceError("stale or future timestamp")
    if not verify(fields["identity"], signed_bytes(fields), fields["sig"]):
        raise AnnounceError("bad signature")
    return Announce(
        fields["peer_id"],
        fields["identity"],
        tuple(fields["addresses"]),
        tuple(fields["rendezvous"]),
        fields["ts"],
    )
