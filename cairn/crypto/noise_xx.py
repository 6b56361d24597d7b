"""
The Noise XX handshake, C{Noise_XX_25519_ChaChaPoly_SHA256} only, written
directly over C{cryptography} (the Noise Protocol Framework, revision 34,
sections 5 and 7.5).

Why not noiseprotocol, which cairn used until issue 19's third handshake
round (the rule is not to hand-write what a well-kept library does): the
library is general (any pattern, DH, cipher, hash, PSK modes), and that
generality is paid per handshake in Python: a protocol object found by
name, a handshake state, a symmetric state and cipher states made through
factories, each token dispatched through several layers, key pairs wrapped
twice, keys copied in and out. Measured on this machine (both sides in one
process, the same pattern, keys, prologue and empty payloads, CPU time,
alternately): noiseprotocol 586-702 us a handshake, this module 367-429 us
(1.6-1.7x fewer), the primitives alone 356-384 us (two X25519 key
generations, six exchanges, the HMACs, seals and hashes): noiseprotocol's
Python was about 45% of its handshake, this module's under a tenth.
Callgrind: 6.48 M against 4.90 M instructions (bench/README.rst, "#19
handshakes, round 3"). X25519, ChaCha20-Poly1305, SHA-256 and HMAC stay
C{cryptography}'s and C{hashlib}'s: only the state machine around them is
written here, about 120 lines of code.

Checked by tests/test_noise_xx.py: the Noise test vector for this protocol
name (cacophony's, as noiseprotocol's own tests carry it), and handshakes
completed both ways with noiseprotocol (kept as a test dependency).
The bytes on the wire are those noiseprotocol wrote: docs/protocol.md's
handshake vectors are unchanged.

One L{XXState} per side per handshake; it holds no reference cycle, so a
finished or abandoned handshake is freed by reference counting.
"""

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
#: Noise's limit on a message, section 3.
MAX_MESSAGE = 65535
DHLEN = 32
TAGLEN = 16

#: The XX pattern: the tokens of messages 1, 2 and 3 (initiator, responder, initiator).
PATTERN = (("e",), ("e", "ee", "s", "es"), ("s", "se"))

_RAW = (Encoding.Raw, PublicFormat.Raw)
_ZERO = bytes(DHLEN)
_sha256 = hashlib.sha256
_hmac = hmac.digest


class NoiseError(Exception):
    """A message this state cannot write or read now (turn, size, finished)."""


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The 32-byte public key of C{private}."""
    return private.public_key().public_bytes(*_RAW)


def _hkdf2(chaining_key: bytes, ikm: bytes):
    # Noise's HKDF with two outputs (section 4.3), HMAC-SHA256.
    temp = _hmac(chaining_key, ikm, "sha256")
    first = _hmac(temp, b"\x01", "sha256")
    return first, _hmac(temp, first + b"\x02", "sha256")


class XXState:
    """
    One side's handshake state: the symmetric state (h, ck, k, n) and the
    key pairs, stepped by L{write_message} and L{read_message} in the
    pattern's order.

    @param static: this side's static key pair (given, not copied: one
        object per identity may serve every handshake).
    @param static_public: its 32-byte public key.
    @param ephemeral: pin the ephemeral key (test vectors only).
    """

    __slots__ = (
        "initiator",
        "_h",
        "_ck",
        "_aead",
        "_n",
        "_s",
        "_s_pub",
        "_e",
        "_re",
        "_rs",
        "rs",
        "_turn",
        "_split",
        "__weakref__",
    )

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        static_public: bytes,
        prologue: bytes,
        ephemeral: X25519PrivateKey = None,
    ):
        self.initiator = initiator
        # InitializeSymmetric: the name is exactly HASHLEN bytes, so h is the
        # name itself; then MixHash(prologue).
        self._h = _sha256(PROTOCOL_NAME + prologue).digest()
        self._ck = PROTOCOL_NAME
        self._aead = None
        self._n = 0
        self._s, self._s_pub = static, static_public
        self._e = ephemeral
        # The peer's keys: parsed once each (each is used in two DHs), and
        # its static key's 32 bytes (what the identity proof is checked against).
        self._re = self._rs = self.rs = None
        self._turn = 0
        self._split = None

    @property
    def finished(self) -> bool:
        return self._split is not None

    @property
    def handshake_hash(self) -> bytes:
        return self._h

    def split(self):
        """(initiator-to-responder key, responder-to-initiator key), once finished."""
        if self._split is None:
            raise NoiseError("handshake not finished")
        return self._split

    # The symmetric state (section 5.2)

    def _mix_hash(self, data: bytes) -> None:
        self._h = _sha256(self._h + data).digest()

    def _mix_key(self, ikm: bytes) -> None:
        self._ck, key = _hkdf2(self._ck, ikm)
        self._aead, self._n = ChaCha20Poly1305(key), 0

    def _nonce(self) -> bytes:
        n = self._n
        self._n = n + 1
        return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        aead = self._aead
        ciphertext = plaintext if aead is None else aead.encrypt(self._nonce(), plaintext, self._h)
        self._h = _sha256(self._h + ciphertext).digest()
        return ciphertext

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        aead = self._aead
        plaintext = ciphertext if aead is None else aead.decrypt(self._nonce(), ciphertext, self._h)
        self._h = _sha256(self._h + ciphertext).digest()
        return plaintext

    def _dh(self, token: str) -> bytes:
        # "es": the initiator's e with the responder's s; "se" the other way.
        if token == "ee":
            mine, theirs = self._e, self._re
        elif (token == "es") == self.initiator:
            mine, theirs = self._e, self._rs
        else:
            mine, theirs = self._s, self._re
        shared = mine.exchange(theirs)
        if shared == _ZERO:
            # cryptography's X25519 already refuses it; docs/protocol.md §6.1
            # makes the refusal a MUST, so it does not rest on that alone.
            raise NoiseError("DH output is zero (a small-order key)")
        return shared

    # The handshake state (section 5.3)

    def _tokens(self, writing: bool):
        turn = self._turn
        if self._split is not None or turn > 2 or (turn % 2 == 0) != (writing == self.initiator):
            raise NoiseError("not this side's turn to " + ("write" if writing else "read"))
        self._turn = turn + 1
        return PATTERN[turn]

    def _finish_if_last(self) -> None:
        if self._turn == len(PATTERN):
            self._split = _hkdf2(self._ck, b"")
            self._aead = self._e = self._s = self._re = self._rs = None

    def write_message(self, payload: bytes) -> bytes:
        """The next message of ours, carrying C{payload}."""
        out = []
        for token in self._tokens(writing=True):
            if token == "e":
                if self._e is None:
                    self._e = X25519PrivateKey.generate()
                e_pub = public_bytes(self._e)
                self._mix_hash(e_pub)
                out.append(e_pub)
            elif token == "s":
                out.append(self._encrypt_and_hash(self._s_pub))
            else:
                self._mix_key(self._dh(token))
        out.append(self._encrypt_and_hash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE:
            raise NoiseError("message longer than 65535 bytes")
        self._finish_if_last()
        return message

    def read_message(self, message: bytes) -> bytes:
        """The payload of the peer's next message C{message}."""
        if len(message) > MAX_MESSAGE:
            raise NoiseError("message longer than 65535 bytes")
        at = 0
        for token in self._tokens(writing=False):
            if token == "e":
                re = message[:DHLEN]
                if len(re) != DHLEN:
                    raise NoiseError("message too short")
                self._re = X25519PublicKey.from_public_bytes(re)
                self._mix_hash(re)
                at = DHLEN
            elif token == "s":
                # Cut short, it fails to decrypt (InvalidTag, as with
                # noiseprotocol: the same Close reason as before).
                size = DHLEN + (TAGLEN if self._aead is not None else 0)
                self.rs = self._decrypt_and_hash(message[at : at + size])
                self._rs = X25519PublicKey.from_public_bytes(self.rs)
                at += size
            else:
                self._mix_key(self._dh(token))
        payload = self._decrypt_and_hash(message[at:])
        self._finish_if_last()
        return payload
