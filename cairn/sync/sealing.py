"""
End-to-end sealing of sync payloads among one person's devices
(docs/protocol.md §24.10).

The node stores and forwards sync payloads without reading them. The
devices of one person share a random 32-byte **group key**; each payload
is sealed under a key derived from it for its topic, with the topic, the
publishing device's peer id and the update id as associated data, so the
node can neither read an update nor present it under another topic,
publisher or id. A group key travels between devices only inside the
mailbox's end-to-end pair box (L{share_key_message}), and a device adopts
a key only from the devices it was told to trust.

Keys live in a L{Keyring}: several keys by their 8-byte id (so a device
can still open updates sealed before a new key was introduced), one of
them current for sealing. L{Keyring.load_or_create} keeps it in a file
created 0600.
"""

import os

import attr
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cairn.crypto.identity import parse_peer_id
from cairn.wire import cbor

#: Format byte of a sealed sync payload.
SEALED = b"\x01"
KEY_SIZE = 32
KEY_ID_SIZE = 8
NONCE_SIZE = 12
#: Header before the ciphertext: format, key id, nonce.
OVERHEAD = 1 + KEY_ID_SIZE + NONCE_SIZE + 16
KEY_ID_LABEL = b"cairn-sync-v1 key id"
TOPIC_LABEL = b"cairn-sync-v1 topic "
AD_LABEL = b"cairn-sync-v1"
#: The first bytes of a mailbox message carrying a group key (then the 32-byte key).
KEY_SHARE_MAGIC = b"\x00cairn-sync-key\x01"


def hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of C{secret}, empty salt."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


class SealError(Exception):
    """A sync payload cannot be opened: unknown key, not sealed, or tampered with."""


def key_id(key: bytes) -> bytes:
    """The 8-byte id of a group key."""
    return hkdf(key, KEY_ID_LABEL, KEY_ID_SIZE)


def topic_key(key: bytes, topic: str) -> bytes:
    """The ChaCha20-Poly1305 key of C{topic} under a group key."""
    return hkdf(key, TOPIC_LABEL + topic.encode("utf-8"))


def associated_data(topic: str, publisher: str, update_id: bytes) -> bytes:
    """What a sealed payload is bound to: the topic, the publisher's peer-id digest and the update id."""
    name = topic.encode("utf-8")
    return AD_LABEL + bytes([len(name)]) + name + parse_peer_id(publisher) + update_id


@attr.s(auto_attribs=True)
class Keyring:
    """Group keys by id; C{current} is the id new payloads are sealed under. C{path}: where it is saved."""

    keys: dict = attr.ib(factory=dict, repr=False)
    current: bytes = None
    path: str = None

    @classmethod
    def generate(cls, path=None) -> "Keyring":
        """A keyring holding one new random group key."""
        ring = cls(path=path)
        ring.add(os.urandom(KEY_SIZE), make_current=True)
        return ring

    @classmethod
    def load_or_create(cls, path: str) -> "Keyring":
        """The keyring saved in C{path}, or a new one saved there (0600)."""
        try:
            with open(path, "rb") as f:
                data = cbor.loads(f.read())
        except FileNotFoundError:
            ring = cls.generate(path)
            ring.save()
            return ring
        try:
            ring = cls(keys=dict(data["keys"]), current=data["current"], path=path)
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path} is not a sync keyring") from None
        if ring.current not in ring.keys or any(len(k) != KEY_SIZE or key_id(k) != i for i, k in ring.keys.items()):
            raise ValueError(f"{path} is not a valid sync keyring")
        return ring

    def save(self) -> None:
        """Write the keyring to C{path} atomically, mode 0600 (nothing when it has no path)."""
        if self.path is None:
            return
        temporary = self.path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cbor.dumps({"current": self.current, "keys": self.keys}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def add(self, key: bytes, make_current: bool = False) -> bytes:
        """Hold C{key} (and seal with it from now on if C{make_current}); returns its id."""
        if len(key) != KEY_SIZE:
            raise ValueError("a sync group key is 32 bytes")
        ident = key_id(key)
        self.keys[ident] = key
        if make_current or self.current is None:
            self.current = ident
        self.save()
        return ident

    def seal(self, topic: str, publisher: str, update_id: bytes, data: bytes, nonce: bytes = None) -> bytes:
        """
        C{data} sealed under the current key for C{topic}, bound to
        C{publisher} and C{update_id}; C{nonce} (random if not given) is
        for test vectors only.
        """
        nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
        aead = ChaCha20Poly1305(topic_key(self.keys[self.current], topic))
        box = aead.encrypt(nonce, data, associated_data(topic, publisher, update_id))
        return SEALED + self.current + nonce + box

    def open(self, topic: str, publisher: str, update_id: bytes, payload: bytes) -> bytes:
        """The data of a sealed payload, checked against its topic, publisher and id; else L{SealError}."""
        if payload[:1] != SEALED or len(payload) < OVERHEAD:
            raise SealError("the payload is not a sealed sync payload")
        key = self.keys.get(payload[1 : 1 + KEY_ID_SIZE])
        if key is None:
            raise SealError("the payload is sealed under a group key this device does not hold")
        nonce = payload[1 + KEY_ID_SIZE : 1 + KEY_ID_SIZE + NONCE_SIZE]
        try:
            aead = ChaCha20Poly1305(topic_key(key, topic))
            return aead.decrypt(
                nonce, payload[1 + KEY_ID_SIZE + NONCE_SIZE :], associated_data(topic, publisher, update_id)
            )
        except InvalidTag:
            raise SealError("the payload does not open for this topic, publisher and id") from None


def share_key_message(key: bytes) -> bytes:
    """The mailbox message that hands C{key} to another device (the mailbox seals it end to end)."""
    return KEY_SHARE_MAGIC + key


def shared_key(data: bytes):
    """The group key carried by a mailbox message, or None if it carries none."""
    if data.startswith(KEY_SHARE_MAGIC) and len(data) == len(KEY_SHARE_MAGIC) + KEY_SIZE:
        return data[len(KEY_SHARE_MAGIC) :]
    return None
