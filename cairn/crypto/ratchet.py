"""
The Double Ratchet that protects every Data body after the Noise handshake.

This wraps Syndace's C{doubleratchet} package (1.x) with cairn's fixed
parameters; docs/protocol.md ("Double Ratchet") specifies every byte so
that an implementation in another language can interoperate:

  - DH ratchet: X25519 (RFC 7748), 32-byte raw private and public keys.
  - Root chain KDF: HKDF-SHA-256, salt = root key, ikm = DH output,
    info = C{b"cairn-ratchet-root"}, 64 bytes -> new root key || chain key.
  - Message chain KDF: HMAC-SHA-256 keyed with the chain key, one HMAC per
    byte of the constant C{b"\\x02\\x01"}. The library keeps the first
    output as the next chain key, so the message key is HMAC(ck, 0x01) and
    the next chain key HMAC(ck, 0x02), as the Signal specification
    recommends.
  - AEAD: HKDF-SHA-256(salt = 32 zero bytes, ikm = message key,
    info = C{b"cairn-ratchet-aead"}, 80 bytes) -> AES-256 key || HMAC key ||
    IV; AES-256-CBC with PKCS#7 padding, then HMAC-SHA-256 over
    associated data || ciphertext appended in full (32 bytes).
  - Associated data: caller's ad || ratchet pub (32) || u32be pn || u32be n.
  - At most 1000 message keys are derived ahead for one incoming message and
    at most 1000 skipped keys are kept (oldest evicted first).

Seeding: L{derive_seed} turns the handshake hash and the two Noise
transport keys into the shared secret and the responder's first ratchet
key pair, so no extra round trip is needed. The initiator is Signal's
"Alice" (it may encrypt at once); the responder is "Bob" and cannot encrypt
until it has decrypted the initiator's first ratchet message, which is why
the session layer has the initiator send a ratchet message with an empty
plaintext on channel 0 with the session's first channel (docs/protocol.md
§9.5).

Driving the library synchronously: its API is C{async}, but every coroutine
in it only awaits other coroutines that do pure computation (hashing, AES,
X25519 through C{cryptography}); nothing ever yields to an event loop.
cairn runs on Twisted with no asyncio loop, and wrapping each call in
C{Deferred.fromCoroutine} would make encryption look asynchronous to the
session code for no benefit (and would let two calls interleave on one
ratchet). So L{_run} steps the coroutine once with C{send(None)}: a
finished coroutine raises C{StopIteration} carrying the result. If a
future library version ever really suspends, L{_run} raises
C{RuntimeError} instead of silently returning garbage.

Key generation is injectable for test vectors: every fresh ratchet private
key comes from the module attribute L{generate_private_key} (looked up at
call time), which tests may replace (e.g. with trial's C{self.patch}).

Performance: the library is kept as it is; cairn works around its costly
spots only through the hooks it offers (its abstract methods, the
C{copy.deepcopy} protocol), so every byte on the wire is what the library
itself would produce (the vectors in docs/protocol.md section 11.9 check
this). What the library does and what cairn changes:

  - X25519 key objects. The library keeps the own ratchet private key as raw
    bytes and calls C{_derive_pub(priv)} on every encrypt (to fill in the
    header) and C{_perform_diffie_hellman(priv, pub)} on every DH step; the
    stock Curve25519 class re-parses the bytes with
    C{X25519PrivateKey.from_private_bytes} each time, which costs a full
    scalar multiplication (OpenSSL derives the public key on load), about
    21 us. L{_DHRatchet} keeps, per ratchet, the parsed key object and its
    public key for the current own private key (a one-entry cache keyed by
    those private bytes: it never holds more than the key the state itself
    holds, so nothing outlives a ratchet step). A freshly generated key is
    cached as generated (C{X25519PrivateKey.generate()}, no re-parse). So an
    encrypt costs no X25519 operation at all, and a DH ratchet step costs
    one key generation and two exchanges, where the library alone did six
    scalar multiplications.
  - Ratchet start. L{derive_seed} already parses the responder's initial
    private key to compute its public key; the key object rides along in
    the L{RatchetSeed} (not part of its value) and L{Ratchet.start_responder}
    hands it to the new DH ratchet, which would otherwise parse it again.
    The initiator's start is one generation and one exchange.
  - C{copy.deepcopy}. The library deep-copies its whole DH ratchet state on
    every decrypt, so that a failed decrypt leaves the state unchanged.
    Generic deep copy walks every attribute through the memo machinery
    (about 15 us). L{_DHRatchet.__deepcopy__} does the same copy knowing the
    shapes involved: the DH ratchet, its C{SymmetricKeyRatchet} and its
    C{KDFChain}s are the only mutable objects (they are rebound or advanced
    in place by a decrypt); everything they hold is immutable (bytes, ints,
    None, classes, the cached key tuple) and is shared. Any attribute of
    another type (a future library version) still goes through
    C{copy.deepcopy}, so the copy is never shallower than the library's.
  - Message-chain KDF and AEAD. The library's recommended classes look up
    a crypto provider, a hash object and a backend for every HMAC, HKDF
    and AES call. L{_MessageChainKDF.derive} and L{_AEAD} compute the same
    construction (docs/protocol.md sections 11.4, 11.5) directly with
    C{cryptography}; tests check them against the library's classes byte
    for byte. The AEAD also compares the tag in constant time, as section
    11.5 requires (the library uses C{!=}). HMACs use C{cryptography}'s
    HMAC, never the standard library's C{hmac.digest}, which releases the
    GIL on every call: in a process with a runnable thread (the node's
    database pool) each such call can wait a thread switch interval.
  - Warnings. The library warns when a DH step leaves more than the
    threshold of keys behind; cairn silences that one warning. Setting up
    C{warnings.catch_warnings} costs about 5 us, so L{Ratchet.decrypt} does
    it only when the header's C{pn} exceeds the threshold, the only case in
    which the warning can be raised.
"""

import copy
import hmac
import json
import struct
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attr
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC as _HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.padding import PKCS7
from doubleratchet import aead as _dr_aead
from doubleratchet import diffie_hellman_ratchet as _dr_dh
from doubleratchet.double_ratchet import DoubleRatchet as _DoubleRatchet
from doubleratchet.kdf_chain import KDFChain as _KDFChain
from doubleratchet.recommended import HashFunction, aead_aes_hmac, kdf_hkdf, kdf_separate_hmacs
from doubleratchet.recommended.diffie_hellman_ratchet_curve25519 import (
    DiffieHellmanRatchet as _Curve25519DHRatchet,
)
from doubleratchet.symmetric_key_ratchet import SymmetricKeyRatchet as _SymmetricKeyRatchet
from doubleratchet.types import EncryptedMessage, Header

from cairn.crypto.dh import check_shared

__all__ = [
    "RatchetError",
    "RatchetSeed",
    "Ratchet",
    "derive_seed",
    "session_ad",
    "generate_private_key",
    "SEED_INFO",
    "ROOT_INFO",
    "AEAD_INFO",
    "MESSAGE_CHAIN_CONSTANT",
    "DOS_PROTECTION_THRESHOLD",
    "MAX_SKIPPED_MESSAGE_KEYS",
    "seed_okm",
    "seed_from_okm",
]

SEED_INFO = b"cairn-ratchet-seed-v1"
ROOT_INFO = b"cairn-ratchet-root"
AEAD_INFO = b"cairn-ratchet-aead"
#: One HMAC input byte per output: first the next chain key (kept by the
#: library's KDF chain), then the message key. b"\x02\x01" gives Signal's
#: assignment, message key = HMAC(ck, 0x01), next chain key = HMAC(ck, 0x02).
MESSAGE_CHAIN_CONSTANT = b"\x02\x01"
DOS_PROTECTION_THRESHOLD = 1000
MAX_SKIPPED_MESSAGE_KEYS = 1000

_U32_MAX = 2**32 - 1
_KEY_LEN = 32
_TAG_LEN = 32  # HMAC-SHA-256, not truncated
_HASH_LEN = 32
_ZERO_SALT = b"\x00" * _HASH_LEN
_SHA256 = hashes.SHA256()
_AES_BLOCK = 16
_WIRE_KEYS = frozenset(("pub", "pn", "n", "ct"))
_STATE_FORMAT = "cairn-ratchet-state-v1"

_T = TypeVar("_T")


class RatchetError(Exception):
    """Message cannot be decrypted or is malformed (reason in str)."""


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """
    Run a coroutine that never suspends to completion, synchronously.

    @raise RuntimeError: the coroutine tried to suspend (it is closed first).
    """
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(
        "doubleratchet coroutine suspended; it cannot be driven synchronously"
    )


def _default_generate_private_key() -> bytes:
    """A fresh random X25519 private key, 32 raw bytes."""
    return X25519PrivateKey.generate().private_bytes(
        encoding=serialization.Encoding.Raw,
        format=serialization.PrivateFormat.Raw,
        encryption_algorithm=serialization.NoEncryption(),
    )


#: Source of every fresh ratchet private key (32 raw bytes). Tests replace it
#: to pin keys and obtain deterministic vectors; production leaves it alone.
generate_private_key: Callable[[], bytes] = _default_generate_private_key


# ---------------------------------------------------------------------------
# Library parameterisation

#: A parsed own ratchet key: (private bytes, key object, public bytes or None).
_KeyEntry = tuple[bytes, X25519PrivateKey, bytes | None]

#: Types whose values a state copy shares with the original: they cannot
#: change. (Classes are shared too, as copy.deepcopy does.)
_IMMUTABLE = frozenset((bytes, int, bool, str, float, type(None)))

#: The responder's initial key, parsed by derive_seed, while start_responder
#: runs (see _DHRatchet._entry). A plain global is enough: the entry is only
#: used if its private bytes equal the ones asked for, so a concurrent
#: start in another thread can cost a re-parse, never a wrong key.
_handoff: _KeyEntry | None = None


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    # cryptography's HMAC, not the standard library's hmac.digest: the latter
    # releases the GIL on every call, which costs a thread switch interval
    # (milliseconds) whenever another thread (a database pool) is runnable.
    mac = _HMAC(key, _SHA256)
    mac.update(data)
    return mac.finalize()


def _same_key(a: bytes, b: bytes) -> bool:
    return a is b or hmac.compare_digest(a, b)


def _copy_state(obj: Any, memo: dict) -> Any:
    """
    A deep copy of a library state object (DH ratchet, symmetric-key
    ratchet, KDF chain): a copy of its attribute dict in which the nested
    state objects are copied the same way and immutable values are shared.
    """
    new = object.__new__(type(obj))
    memo[id(obj)] = new
    attrs = vars(obj).copy()
    for name, value in attrs.items():
        kind = type(value)
        if kind in _IMMUTABLE or name == "_cairn_key" or isinstance(value, type):
            continue  # shared; the key tuple holds bytes and immutable key objects
        if kind in _STATE_TYPES or isinstance(value, _STATE_TYPES):
            attrs[name] = _copy_state(value, memo)
        else:
            attrs[name] = copy.deepcopy(value, memo)
    new.__dict__ = attrs
    return new


class _DHRatchet(_Curve25519DHRatchet):
    """
    X25519 DH ratchet: key generation through the module hook, the current
    own key kept parsed, and a copy that knows the state's shape.

    The library declares C{_generate_priv}, C{_derive_pub} and
    C{_perform_diffie_hellman} as static methods but always calls them on
    the instance (C{self._derive_pub(...)}), so here they are ordinary
    methods with access to the per-instance key cache.
    """

    #: The own ratchet key last parsed or generated (see the module docstring).
    _cairn_key: _KeyEntry | None = None

    def _generate_priv(self) -> bytes:  # type: ignore[override]
        hook = generate_private_key
        if hook is _default_generate_private_key:
            key = X25519PrivateKey.generate()
            priv = key.private_bytes_raw()
            self._cairn_key = (priv, key, None)
            return priv
        priv = hook()
        if not isinstance(priv, bytes) or len(priv) != _KEY_LEN:
            raise RuntimeError("generate_private_key must return 32 bytes")
        return priv

    def _entry(self, priv: bytes) -> _KeyEntry:
        """The parsed key for C{priv}, parsing it only if it is not the cached one."""
        entry = self._cairn_key
        if entry is not None and _same_key(entry[0], priv):
            return entry
        entry = _handoff
        if entry is None or not _same_key(entry[0], priv):
            entry = (priv, X25519PrivateKey.from_private_bytes(priv), None)
        self._cairn_key = entry
        return entry

    def _derive_pub(self, priv: bytes) -> bytes:  # type: ignore[override]
        entry = self._entry(priv)
        pub = entry[2]
        if pub is None:
            pub = entry[1].public_key().public_bytes_raw()
            self._cairn_key = (entry[0], entry[1], pub)
        return pub

    def _perform_diffie_hellman(self, own_priv: bytes, other_pub: bytes) -> bytes:  # type: ignore[override]
        # An all-zero result (a small-order key) is refused (§11.1):
        # cryptography raises ValueError for it, and check_shared does not
        # rely on that. Both are in _LIBRARY_ERRORS: the message is rejected.
        return check_shared(self._entry(own_priv)[1].exchange(X25519PublicKey.from_public_bytes(other_pub)))

    def __deepcopy__(self, memo: dict) -> "_DHRatchet":
        return _copy_state(self, memo)  # type: ignore[no-any-return]


#: The library's mutable state classes, copied attribute by attribute.
_STATE_TYPES = (_DHRatchet, _SymmetricKeyRatchet, _KDFChain)


class _RootChainKDF(kdf_hkdf.KDF):
    """HKDF-SHA-256, salt = root key, ikm = DH output, info = ROOT_INFO."""

    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return ROOT_INFO


class _MessageChainKDF(kdf_separate_hmacs.KDF):
    """HMAC-SHA-256(chain key, one byte of the constant), concatenated."""

    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @classmethod
    async def derive(cls, key: bytes, data: bytes, length: int) -> bytes:
        # The library's computation without its per-call provider lookups.
        if length != len(data) * _HASH_LEN:
            raise ValueError("the message chain KDF derives 32 bytes per constant byte")
        return b"".join(_hmac_sha256(key, data[i : i + 1]) for i in range(len(data)))


class _AEAD(aead_aes_hmac.AEAD):
    """
    AES-256-CBC + HMAC-SHA-256, keys and IV from HKDF with AEAD_INFO.

    The library's construction (docs/protocol.md section 11.5), computed
    with fewer objects per message, and with the tag compared in constant
    time as the specification requires (the library compares with C{!=}).
    """

    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return AEAD_INFO

    @staticmethod
    def _keys(key: bytes) -> tuple[bytes, bytes, bytes]:
        okm = HKDF(algorithm=_SHA256, length=80, salt=_ZERO_SALT, info=AEAD_INFO).derive(key)
        return okm[:32], okm[32:64], okm[64:]

    @classmethod
    async def encrypt(cls, plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
        enc_key, auth_key, iv = cls._keys(key)
        pad = _AES_BLOCK - len(plaintext) % _AES_BLOCK  # PKCS#7: 1 to 16 bytes
        encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
        body = encryptor.update(plaintext + bytes((pad,)) * pad) + encryptor.finalize()
        return body + _hmac_sha256(auth_key, associated_data + body)

    @classmethod
    async def decrypt(cls, ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
        dec_key, auth_key, iv = cls._keys(key)
        body, tag = ciphertext[:-_TAG_LEN], ciphertext[-_TAG_LEN:]
        if not hmac.compare_digest(_hmac_sha256(auth_key, associated_data + body), tag):
            raise _dr_aead.AuthenticationFailedException("Authentication tags do not match.")
        try:
            decryptor = Cipher(algorithms.AES(dec_key), modes.CBC(iv)).decryptor()
            padded = decryptor.update(body) + decryptor.finalize()
            unpadder = PKCS7(128).unpadder()
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError as e:
            raise _dr_aead.DecryptionFailedException("Decryption failed.") from e


class _CairnDoubleRatchet(_DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        # The header part has a fixed length (40 bytes) at the end, so the
        # pair (ad, header) is recoverable without a length prefix on ad.
        return (
            associated_data
            + header.ratchet_pub
            + struct.pack(
                ">II",
                header.previous_sending_chain_length,
                header.sending_chain_length,
            )
        )


_PARAMETERS: dict[str, Any] = dict(
    diffie_hellman_ratchet_class=_DHRatchet,
    root_chain_kdf=_RootChainKDF,
    message_chain_kdf=_MessageChainKDF,
    message_chain_constant=MESSAGE_CHAIN_CONSTANT,
    dos_protection_threshold=DOS_PROTECTION_THRESHOLD,
    max_num_skipped_message_keys=MAX_SKIPPED_MESSAGE_KEYS,
    aead=_AEAD,
)

# Everything the library raises for a message that must be rejected.
# ValueError comes from cryptography for an X25519 public key whose shared
# secret is all zeros (a low-order point).
_LIBRARY_ERRORS: tuple[type, ...] = (
    _dr_aead.AuthenticationFailedException,
    _dr_aead.DecryptionFailedException,
    _dr_dh.DoSProtectionException,
    _dr_dh.DuplicateMessageException,
    ValueError,
)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _dr_aead.AuthenticationFailedException):
        return "authentication failed (wrong key, ad, or tampered message)"
    if isinstance(exc, _dr_aead.DecryptionFailedException):
        return "decryption failed (bad padding)"
    if isinstance(exc, _dr_dh.DoSProtectionException):
        return "too many skipped messages (more than %d)" % (DOS_PROTECTION_THRESHOLD,)
    if isinstance(exc, _dr_dh.DuplicateMessageException):
        return "duplicate or replayed message"
    return "invalid message: %s" % (exc,)


# The library warns (instead of failing) when a DH step would need more than
# the threshold of skipped keys from the previous chain; it then skips
# deriving them. That behaviour is specified; the warning is noise.
_SKIP_WARNING = r"More than \d+ message keys skipped"


# ---------------------------------------------------------------------------
# Seed


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
    #: The parsed responder key, when derive_seed made it (a cache, not
    #: part of the value: it is left out of comparisons).
    _responder_key: _KeyEntry | None = attr.ib(default=None, init=False, eq=False)

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
    key = X25519PrivateKey.from_private_bytes(private)
    public = key.public_key().public_bytes_raw()
    seed = RatchetSeed(shared_secret=okm[:32], responder_private=private, responder_public=public)
    # The responder's ratchet start needs this key parsed; keep it (frozen
    # class, hence object.__setattr__).
    object.__setattr__(seed, "_responder_key", (private, key, public))
    return seed


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


# ---------------------------------------------------------------------------
# Wire form


def _is_uint32(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _U32_MAX


def _parse_message(message: Any) -> EncryptedMessage:
    """Validate the wire dict strictly and convert it for the library."""
    if not isinstance(message, dict):
        raise RatchetError("ratchet message must be a map, not %s" % (type(message).__name__,))
    keys = set(message)
    if keys != _WIRE_KEYS:
        missing = sorted(_WIRE_KEYS - keys)
        extra = sorted(repr(k) for k in keys - _WIRE_KEYS)
        raise RatchetError(
            "ratchet message keys must be exactly pub, pn, n, ct (missing: %s; unexpected: %s)"
            % (", ".join(missing) or "none", ", ".join(extra) or "none")
        )
    pub, pn, n, ct = message["pub"], message["pn"], message["n"], message["ct"]
    if not isinstance(pub, bytes) or len(pub) != _KEY_LEN:
        raise RatchetError("ratchet message 'pub' must be 32 bytes")
    if not _is_uint32(pn):
        raise RatchetError("ratchet message 'pn' must be an integer in 0..2**32-1")
    if not _is_uint32(n):
        raise RatchetError("ratchet message 'n' must be an integer in 0..2**32-1")
    if not isinstance(ct, bytes):
        raise RatchetError("ratchet message 'ct' must be bytes")
    body = len(ct) - _TAG_LEN
    if body < _AES_BLOCK or body % _AES_BLOCK:
        raise RatchetError(
            "ratchet message 'ct' must be a positive multiple of 16 bytes plus a 32-byte tag"
        )
    return EncryptedMessage(
        header=Header(ratchet_pub=pub, previous_sending_chain_length=pn, sending_chain_length=n),
        ciphertext=ct,
    )


def _wire(message: EncryptedMessage) -> dict[str, Any]:
    return {
        "pub": message.header.ratchet_pub,
        "pn": message.header.previous_sending_chain_length,
        "n": message.header.sending_chain_length,
        "ct": message.ciphertext,
    }


def _check_bytes(name: str, value: Any) -> None:
    if not isinstance(value, bytes):
        raise TypeError("%s must be bytes" % (name,))


# ---------------------------------------------------------------------------
# Ratchet


class Ratchet:
    """
    One end of a Double Ratchet conversation.

    Create it with L{start_initiator} or L{start_responder}, or restore it
    with L{from_json}. Not safe to use from several threads at once.
    """

    def __init__(self, state: _CairnDoubleRatchet) -> None:
        self._state = state

    def __repr__(self) -> str:
        return "<Ratchet sending_chain_length=%d>" % (self._state.sending_chain_length,)

    @classmethod
    def start_initiator(
        cls, seed: RatchetSeed, plaintext: bytes, ad: bytes
    ) -> tuple["Ratchet", dict[str, Any]]:
        """
        Start as the handshake initiator (Signal's Alice) and encrypt the first message.

        @return: the ratchet and the first message in wire form.
        """
        _check_bytes("plaintext", plaintext)
        _check_bytes("ad", ad)
        state, message = _run(
            _CairnDoubleRatchet.encrypt_initial_message(
                shared_secret=seed.shared_secret,
                recipient_ratchet_pub=seed.responder_public,
                message=plaintext,
                associated_data=ad,
                **_PARAMETERS,
            )
        )
        return cls(state), _wire(message)

    @classmethod
    def start_responder(
        cls, seed: RatchetSeed, message: dict[str, Any], ad: bytes
    ) -> tuple["Ratchet", bytes]:
        """
        Start as the handshake responder (Signal's Bob) from the initiator's first message.

        @return: the ratchet and the message's plaintext.
        @raise RatchetError: the message is malformed or does not decrypt.
        """
        global _handoff
        _check_bytes("ad", ad)
        parsed = _parse_message(message)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_SKIP_WARNING)
                _handoff = seed._responder_key
                state, plaintext = _run(
                    _CairnDoubleRatchet.decrypt_initial_message(
                        shared_secret=seed.shared_secret,
                        own_ratchet_priv=seed.responder_private,
                        message=parsed,
                        associated_data=ad,
                        **_PARAMETERS,
                    )
                )
        except _LIBRARY_ERRORS as e:
            raise RatchetError(_describe(e)) from e
        finally:
            _handoff = None
        return cls(state), plaintext

    def encrypt(self, plaintext: bytes, ad: bytes) -> dict[str, Any]:
        """Encrypt the next message; return it in wire form."""
        _check_bytes("plaintext", plaintext)
        _check_bytes("ad", ad)
        if self._state.sending_chain_length >= _U32_MAX:
            raise RatchetError("sending chain exhausted (2**32-1 messages)")
        return _wire(_run(self._state.encrypt_message(plaintext, ad)))

    def decrypt(self, message: dict[str, Any], ad: bytes) -> bytes:
        """
        Decrypt a message in wire form.

        @raise RatchetError: malformed, replayed, too far ahead, or fails
            authentication. The ratchet state is unchanged in that case.
        """
        _check_bytes("ad", ad)
        parsed = _parse_message(message)
        try:
            if parsed.header.previous_sending_chain_length <= DOS_PROTECTION_THRESHOLD:
                # The skip warning needs pn - Nr > threshold: it cannot come.
                return _run(self._state.decrypt_message(parsed, ad))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_SKIP_WARNING)
                return _run(self._state.decrypt_message(parsed, ad))
        except _LIBRARY_ERRORS as e:
            raise RatchetError(_describe(e)) from e

    def to_json(self) -> str:
        """
        Serialise the whole state (including private keys and skipped
        message keys -- treat it as secret) for session persistence.
        """
        return json.dumps(
            {"format": _STATE_FORMAT, "state": self._state.json},
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "Ratchet":
        """
        Restore a ratchet serialised with L{to_json}.

        @raise RatchetError: the text is not a serialised ratchet state.
        """
        try:
            outer = json.loads(text)
            if not isinstance(outer, dict) or outer.get("format") != _STATE_FORMAT:
                raise ValueError("not a %s document" % (_STATE_FORMAT,))
            state = _CairnDoubleRatchet.from_json(outer["state"], **_PARAMETERS)
        except Exception as e:
            raise RatchetError("cannot restore ratchet state: %s" % (e,)) from e
        return cls(state)
