"""
Long-term node identity: an Ed25519 key pair and the peer id derived from it.

The peer id is the multihash of the public key -- C{0x12 0x20} (sha2-256,
32 bytes) followed by C{sha256(public_key)} -- written in base58 with the
Bitcoin alphabet.

The key file holds the 32-byte Ed25519 seed and nothing else; it is
created with mode 0600 and never rewritten. The node's Noise static key
is the X25519 form of the same key (libsodium's conversion), so one file
is all a node has to keep; peers never depend on that choice, because the
handshake binds whatever static key is used with a signature.

Everything derived from an identity's key pair is computed once per
L{Identity} and kept on it (L{Identity.memo}): the Ed25519 to X25519
conversion of the public key alone costs about 34 us, and a node uses the
same values for every handshake. Peer ids are cached per public key
(bounded), since the same peers come back.
"""

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import attr
import base58
from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

KEY_FILE_NAME = "identity.key"
_MULTIHASH_PREFIX = b"\x12\x20"


class IdentityError(Exception):
    """The identity key file is unusable (wrong size, unreadable)."""


_T = TypeVar("_T")


def _peer_id(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    digest = hashlib.sha256(public_key).digest()
    return base58.b58encode(_MULTIHASH_PREFIX + digest).decode("ascii")


#: base58 costs about 25 us; every session computes its peer's id.
_cached_peer_id = functools.lru_cache(maxsize=4096)(_peer_id)


def peer_id_for(public_key: bytes) -> str:
    """The base58 multihash peer id of a 32-byte Ed25519 public key."""
    if type(public_key) is bytes:
        return _cached_peer_id(public_key)
    return _peer_id(public_key)


def parse_peer_id(peer_id: str) -> bytes:
    """
    Return the 32-byte digest inside a peer id.

    @raise ValueError: not base58, or not a sha2-256 multihash.
    """
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except Exception:
        raise ValueError("peer id is not base58") from None
    if len(raw) != 34 or raw[:2] != _MULTIHASH_PREFIX:
        raise ValueError("peer id is not a sha2-256 multihash")
    return raw[2:]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether C{signature} is a valid Ed25519 signature of C{message}."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


@attr.s(frozen=True, repr=False)
class Identity:
    """A node's long-term key pair. The repr never shows key material."""

    signing_key: SigningKey = attr.ib()
    #: Values derived from the key pair alone (see L{memo}); not part of
    #: the value of the identity.
    _memos: dict[str, Any] = attr.ib(init=False, factory=dict, eq=False, repr=False)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        return cls(SigningKey(seed))

    def memo(self, name: str, compute: Callable[[], _T]) -> _T:
        """
        C{compute()}, computed once for this identity under C{name}.

        Only for values that depend on nothing but this key pair (signatures
        are deterministic in Ed25519, so a signature qualifies).
        """
        try:
            return self._memos[name]  # type: ignore[no-any-return]
        except KeyError:
            value = self._memos[name] = compute()
            return value

    @property
    def public_key(self) -> bytes:
        return self.memo("public_key", lambda: bytes(self.signing_key.verify_key))

    @property
    def peer_id(self) -> str:
        return self.memo("peer_id", lambda: peer_id_for(self.public_key))

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def noise_static_private(self) -> bytes:
        """The X25519 private key used as the Noise static key."""
        return self.memo(
            "noise_static_private",
            lambda: crypto_sign_ed25519_sk_to_curve25519(bytes(self.signing_key) + self.public_key),
        )

    def noise_static_public(self) -> bytes:
        return self.memo(
            "noise_static_public", lambda: crypto_sign_ed25519_pk_to_curve25519(self.public_key)
        )

    def __repr__(self):
        return f"<Identity {self.peer_id}>"


def load_or_create(directory: str) -> Identity:
    """
    Load the identity in C{directory}, creating it (mode 0600) on first use.

    @raise IdentityError: the file exists but is not a 32-byte seed.
    """
    return load_or_create_file(os.path.join(directory, KEY_FILE_NAME))


def load_or_create_file(path: str) -> Identity:
    """
    Load the identity key file at C{path}, creating it (mode 0600) if absent.

    A new key is written whole to a temporary file beside C{path} and
    linked to C{path} only then (a link never replaces an existing file):
    a process that finds the file -- a second node started on the same
    data directory at the same moment -- reads a whole key, never one half
    written, and exactly one key wins.

    @raise IdentityError: the file exists but is not a 32-byte seed.
    """
    if not os.path.lexists(path):
        identity = Identity.generate()
        directory = os.path.dirname(path) or "."
        fd, temporary = tempfile.mkstemp(prefix=".identity-", dir=directory)  # mode 0600
        try:
            try:
                os.write(fd, bytes(identity.signing_key))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(temporary, path)
        except FileExistsError:
            pass  # made meanwhile by another process: read theirs
        else:
            _fsync_directory(directory)
            return identity
        finally:
            os.unlink(temporary)
    with open(path, "rb") as f:
        seed = f.read()
    if len(seed) != 32:
        raise IdentityError(f"{path} is not a 32-byte Ed25519 seed")
    return Identity.from_seed(seed)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
