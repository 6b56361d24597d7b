"""
SPAKE2 (RFC 9382) over edwards25519, the PAKE of PSK and PIN pairing
(docs/protocol.md §20.3.1).

Hand-written on libsodium's edwards25519 primitives (through PyNaCl)
rather than taken from the C{spake2} package, for two reasons:

- C{python-spake2} does not implement RFC 9382: its blinding elements,
  password scalar and transcript are its own, so a second implementation
  could only reproduce them by reading its source (issue 12). RFC 9382 is
  a published specification with constants and test vectors that any
  language's libraries can follow.
- The protocol document must specify every byte; this module is short
  enough to be read against it line by line.

Only group operations come from libsodium (scalar multiplication, point
addition and subtraction, point validation, scalar reduction); this
module composes them exactly as RFC 9382 §3.3 and §4 say, with the
ciphersuite SPAKE2-edwards25519-SHA256-HKDF-HMAC:

    pA = x*P + w*M              (side A, the device)
    pB = y*P + w*N              (side B, the node)
    K  = h*x*(pB - w*N) = h*y*(pA - w*M)          h = 8
    TT = len(A)||A || len(B)||B || len(pA)||pA || len(pB)||pB
         || len(K)||K || len(w)||w                (len: u64 little-endian)
    Ke || Ka   = SHA256(TT)
    KcA || KcB = HKDF(salt=nil, ikm=Ka, info="ConfirmationKeys"||AAD, 32)
    cA = HMAC(KcA, TT)          cB = HMAC(KcB, TT)

Points are the 32-byte RFC 8032 encodings; a received point must be
canonical, of prime order (not small order, not the identity) -- libsodium's
C{crypto_core_ed25519_is_valid_point} -- or the exchange is refused.
"""

import functools
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as sodium
from nacl.exceptions import RuntimeError as SodiumError

#: Order of the prime-order subgroup (RFC 8032 "L"; RFC 9382 "p").
ORDER = 2**252 + 27742317777372353535851937790883648493
#: Cofactor of edwards25519.
COFACTOR = 8
#: RFC 9382 §6, edwards25519: the points from the seeds
#: "edwards25519 point generation seed (M)" and "... (N)".
M = bytes.fromhex("d048032c6ea0b6d697ddc2e86bda85a33adac920f1bf18e1b0c6d166a5cecdaf")
N = bytes.fromhex("d3bfb518f44f3430f29d0c92af503865a1ed3281dc69b35dd868ba85f886c4ab")
POINT_SIZE = 32
CONFIRM_SIZE = 32
SCALAR_SIZE = 32


class InvalidElement(ValueError):
    """A received element is not a canonical point of prime order."""


def _le(number: int) -> bytes:
    return number.to_bytes(SCALAR_SIZE, "little")


def _framed(*parts: bytes) -> bytes:
    return b"".join(len(part).to_bytes(8, "little") + part for part in parts)


def password_scalar(secret: bytes, label: bytes) -> int:
    """
    w: HKDF-SHA256(secret, salt empty, info C{label}, 64 bytes) read as a
    little-endian integer, reduced mod L (the 64 bytes make the bias
    negligible, RFC 9382 §3.2).
    """
    wide = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=label).derive(secret)
    return int.from_bytes(wide, "little") % ORDER


def random_scalar() -> int:
    """A uniform non-zero scalar mod L from the OS CSPRNG."""
    while True:
        scalar = int.from_bytes(os.urandom(64), "little") % ORDER
        if scalar:
            return scalar


def valid_point(encoded: bytes) -> bool:
    """Whether C{encoded} is a canonical 32-byte encoding of a point of order L."""
    return (
        isinstance(encoded, bytes) and len(encoded) == POINT_SIZE and sodium.crypto_core_ed25519_is_valid_point(encoded)
    )


@functools.lru_cache(maxsize=16)
def _blinding(w: int, blind: bytes) -> bytes:
    # w*M and w*N are the same for every exchange with one password (the
    # PSK, the current PIN): kept, they halve the node's cost per request.
    return sodium.crypto_scalarmult_ed25519_noclamp(_le(w), blind)


def _share(scalar: int, w: int, blind: bytes) -> bytes:
    return sodium.crypto_core_ed25519_add(
        sodium.crypto_scalarmult_ed25519_base_noclamp(_le(scalar)), _blinding(w, blind)
    )


def _shared_element(scalar: int, w: int, received: bytes, blind: bytes):
    """K = h*scalar*(received - w*blind), or None if that is the identity."""
    if not valid_point(received):
        raise InvalidElement("not a canonical edwards25519 point of prime order")
    unblinded = sodium.crypto_core_ed25519_sub(received, _blinding(w, blind))
    try:
        # libsodium refuses the identity (as input or as result): K would
        # be the identity, which only a party that knows w can bring about.
        return sodium.crypto_scalarmult_ed25519_noclamp(_le(COFACTOR * scalar % ORDER), unblinded)
    except SodiumError:
        return None


def transcript(id_a: bytes, id_b: bytes, p_a: bytes, p_b: bytes, k: bytes, w: int) -> bytes:
    """TT of RFC 9382 §3.3 (w big-endian, padded to 32 bytes)."""
    return _framed(id_a, id_b, p_a, p_b, k, w.to_bytes(SCALAR_SIZE, "big"))


def key_schedule(tt: bytes, aad: bytes = b""):
    """
    RFC 9382 §4: (Ke, cA, cB) from the transcript and the associated data.
    """
    digest = hashlib.sha256(tt).digest()
    ke, ka = digest[:16], digest[16:]
    kc = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ConfirmationKeys" + aad).derive(ka)
    kca, kcb = kc[:16], kc[16:]
    return ke, hmac.new(kca, tt, hashlib.sha256).digest(), hmac.new(kcb, tt, hashlib.sha256).digest()


class _Side:
    """One side of one exchange: its scalar, its share, the peer's share."""

    blind = own_blind = None

    def __init__(self, w: int, id_a: bytes, id_b: bytes, aad: bytes, scalar: int = None):
        self.w = w
        self.id_a, self.id_b, self.aad = id_a, id_b, aad
        self._scalar = scalar if scalar is not None else random_scalar()
        self.share = _share(self._scalar, w, self.own_blind)

    def _confirmations(self, received: bytes):
        """(cA, cB), or None when K is the identity (treat as a failed exchange)."""
        k = _shared_element(self._scalar, self.w, received, self.blind)
        if k is None:
            return None
        p_a, p_b = self._order(self.share, received)
        _, c_a, c_b = key_schedule(transcript(self.id_a, self.id_b, p_a, p_b, k, self.w), self.aad)
        return c_a, c_b


class SideA(_Side):
    """The device: sends pA first, proves the key first (cA)."""

    own_blind, blind = M, N

    @staticmethod
    def _order(own, received):
        return own, received

    def finish(self, p_b: bytes):
        """
        (cA to send, cB to expect) from the node's pB.

        @raise InvalidElement: pB is not a valid point, or K is the identity.
        """
        confirmations = self._confirmations(p_b)
        if confirmations is None:
            raise InvalidElement("the shared element is the identity")
        return confirmations


class SideB(_Side):
    """The node: answers pA with pB, checks cA, then proves the key (cB)."""

    own_blind, blind = N, M

    @staticmethod
    def _order(own, received):
        return received, own

    def finish(self, p_a: bytes):
        """
        (cA to expect, cB to send) from the device's pA; if K is the
        identity, two random values (the exchange then fails like a wrong
        secret, so that case cannot be told apart from any other guess).

        @raise InvalidElement: pA is not a valid point.
        """
        confirmations = self._confirmations(p_a)
        if confirmations is None:
            return os.urandom(CONFIRM_SIZE), os.urandom(CONFIRM_SIZE)
        return confirmations
