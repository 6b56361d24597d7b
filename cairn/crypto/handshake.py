"""
The Noise XX handshake with cairn's identity binding.

    -> e
    <- e, ee, s, es      payload: {"identity": ed25519 pub, "sig": signature}
    -> s, se             payload: {"identity": ed25519 pub, "sig": signature}

Protocol name C{Noise_XX_25519_ChaChaPoly_SHA256}; prologue C{b"cairn"}
followed by the protocol version (one byte) and the 16-byte session id of
the HandshakeInit (L{handshake_prologue}), so that a handshake whose
version byte or session id was changed on the way fails instead of
completing under values the two ends do not share.
Each side signs C{b"cairn-noise-static:" || its Noise static public key}
with its Ed25519 identity key; the other side checks that signature
against the Noise static key the handshake authenticated. The first
Noise message carries an empty payload.

The Noise state machine is L{cairn.crypto.noise_xx} (over C{cryptography};
its docstring says why it is not noiseprotocol's any more).

Costs kept off the per-handshake path (the bytes sent are unchanged):

  - L{identity_payload} is computed once per L{Identity}: Ed25519
    signatures are deterministic, so re-signing the same static key gave
    the same 64 bytes every time (about 50 us with the key conversion).
  - The Noise static key pair object (an X25519 key parsed from bytes,
    L{noise_static_key}) is built once per identity and given to every
    handshake; the handshake only reads it.
  - L{check_identity_payload} remembers its outcome (the CBOR decoding,
    about 6 us, and the Ed25519 verification, about 38 us) for the last
    few thousand distinct (payload, static key) pairs: it is a pure
    function of those bytes, so a peer that reconnects with the same
    static key is checked against the same outcome without recomputing it.
"""

import functools

import attr
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cairn.crypto.identity import Identity, verify
from cairn.crypto.noise_xx import XXState
from cairn.wire import cbor
from cairn.wire.constants import (
    NOISE_PROLOGUE,
    PROTOCOL_VERSION,
    SESSION_ID_SIZE,
    STATIC_BINDING_PREFIX,
)


class HandshakeError(Exception):
    """The handshake cannot complete (bad Noise message, bad identity proof)."""


@attr.s(frozen=True, slots=True, repr=False)
class HandshakeResult:
    """
    What a finished handshake yields. Keys never show in the repr.

    Slotted: every session keeps its own for its life (issue 19: ~90 bytes
    less each than with an instance dict).
    """

    remote_identity: bytes = attr.ib()
    handshake_hash: bytes = attr.ib()
    #: The Split() key for initiator-to-responder, then responder-to-initiator.
    key_i2r: bytes = attr.ib()
    key_r2i: bytes = attr.ib()
    initiator: bool = attr.ib()

    @property
    def send_key(self) -> bytes:
        return self.key_i2r if self.initiator else self.key_r2i

    @property
    def recv_key(self) -> bytes:
        return self.key_r2i if self.initiator else self.key_i2r

    def __repr__(self):
        return f"<HandshakeResult initiator={self.initiator}>"


def _make_identity_payload(identity: Identity) -> bytes:
    static = identity.noise_static_public()
    return cbor.dumps(
        {"identity": identity.public_key, "sig": identity.sign(STATIC_BINDING_PREFIX + static)}
    )


def identity_payload(identity: Identity) -> bytes:
    """The CBOR payload of Noise messages 2 and 3 for C{identity} (computed once per identity)."""
    return identity.memo("cairn.handshake.identity_payload", lambda: _make_identity_payload(identity))


@functools.lru_cache(maxsize=4096)
def _binding_verifies(payload: bytes, remote_static: bytes):
    """
    What C{payload} proves for C{remote_static}: the 32-byte identity key,
    or the reason it proves nothing (a C{str}). Remembered per (payload,
    static key): both are bytes and the outcome a pure function of them.
    """
    try:
        body = cbor.loads(payload)
    except cbor.CBORError as e:
        return f"identity payload: {e}"
    if not isinstance(body, dict):
        return "identity payload is not a map"
    ident, sig = body.get("identity"), body.get("sig")
    if not (isinstance(ident, bytes) and len(ident) == 32):
        return "identity payload: 'identity' must be 32 bytes"
    if not (isinstance(sig, bytes) and len(sig) == 64):
        return "identity payload: 'sig' must be 64 bytes"
    if not verify(ident, STATIC_BINDING_PREFIX + remote_static, sig):
        return "identity signature does not match the Noise static key"
    return ident


def check_identity_payload(payload: bytes, remote_static: bytes) -> bytes:
    """
    Verify a peer's identity payload against the Noise static key it used.

    @return: the peer's 32-byte Ed25519 identity key.
    @raise HandshakeError: malformed payload or a signature that fails.
    """
    outcome = _binding_verifies(bytes(payload), bytes(remote_static))
    if isinstance(outcome, str):
        raise HandshakeError(outcome)
    return outcome


def noise_static_key(identity: Identity) -> X25519PrivateKey:
    """C{identity}'s Noise static key pair, parsed once per identity (every handshake only reads it)."""
    return identity.memo(
        "cairn.handshake.noise_static_key",
        lambda: X25519PrivateKey.from_private_bytes(identity.noise_static_private()),
    )


def handshake_prologue(version: int, session_id: bytes) -> bytes:
    """
    The Noise prologue of a session: C{b"cairn"} || version (u8) || session id (16 bytes).

    @param version: the version byte of the HandshakeInit.
    @param session_id: the session id of the HandshakeInit.
    """
    if not (isinstance(session_id, bytes) and len(session_id) == SESSION_ID_SIZE):
        raise ValueError("a session id is 16 bytes")
    if not 0 <= version <= 0xFF:
        raise ValueError("a protocol version is one byte")
    return NOISE_PROLOGUE + bytes((version,)) + session_id


class NoiseHandshake:
    """
    One side of the XX handshake, stepped by the session state machine.

    @param session_id: the session id of the HandshakeInit (both sides).
    @param version: the version byte of the HandshakeInit.
    @param ephemeral_private: pin the ephemeral key (test vectors only).
    """

    __slots__ = ("identity", "initiator", "_noise", "_remote_identity", "_steps")

    def __init__(
        self,
        identity: Identity,
        initiator: bool,
        *,
        session_id: bytes,
        version: int = PROTOCOL_VERSION,
        ephemeral_private: bytes = None,
    ):
        self.identity = identity
        self.initiator = initiator
        ephemeral = None if ephemeral_private is None else X25519PrivateKey.from_private_bytes(ephemeral_private)
        self._noise = XXState(
            initiator,
            noise_static_key(identity),
            identity.noise_static_public(),
            handshake_prologue(version, session_id),
            ephemeral,
        )
        self._remote_identity = None
        self._steps = 0

    def _step(self, expected: int) -> None:
        # The XX pattern is fixed: each method may run only at its turn.
        if self._steps != expected:
            raise HandshakeError("handshake message out of order")
        self._steps += 1

    def _write(self, payload: bytes) -> bytes:
        try:
            return self._noise.write_message(payload)
        except Exception as e:
            # The first DH of message 2 fails inside cryptography when the
            # peer's ephemeral key is a low-order point: their fault.
            raise HandshakeError(f"noise: {e.__class__.__name__}") from None

    def _read(self, message: bytes) -> bytes:
        if not isinstance(message, bytes):
            raise HandshakeError("'noise' must be a byte string")
        try:
            return self._noise.read_message(message)
        except Exception as e:
            # cryptography's InvalidTag and ValueError (a key of the wrong
            # size, a low-order point) and NoiseError alike: any failure to
            # read a peer's message is that peer's handshake failing.
            raise HandshakeError(f"noise: {e.__class__.__name__}") from None

    def forget(self) -> None:
        """
        Let the Noise state go now, finished or not (the result, once
        taken, does not need it). The state holds no reference cycle
        (noiseprotocol's objects did, issue 19), so dropping it frees it
        and its key and cipher objects at once.
        """
        self._noise = None

    def _remote_static(self) -> bytes:
        return self._noise.rs

    # Initiator steps
    def write_init(self) -> bytes:
        self._step(0)
        return self._write(b"")

    def read_response(self, message: bytes) -> None:
        self._step(1)
        payload = self._read(message)
        self._remote_identity = check_identity_payload(payload, self._remote_static())

    def write_final(self) -> bytes:
        self._step(2)
        return self._write(identity_payload(self.identity))

    # Responder steps
    def read_init(self, message: bytes) -> None:
        self._step(0)
        payload = self._read(message)
        if payload:
            raise HandshakeError("first handshake message must have an empty payload")

    def write_response(self) -> bytes:
        self._step(1)
        return self._write(identity_payload(self.identity))

    def read_final(self, message: bytes) -> None:
        self._step(2)
        payload = self._read(message)
        self._remote_identity = check_identity_payload(payload, self._remote_static())

    def result(self) -> HandshakeResult:
        """The transport keys and peer identity, once all three messages passed."""
        noise = self._noise
        if noise is None or not noise.finished or self._remote_identity is None:
            raise HandshakeError("handshake not finished")
        k_i2r, k_r2i = noise.split()
        return HandshakeResult(
            remote_identity=self._remote_identity,
            handshake_hash=noise.handshake_hash,
            key_i2r=k_i2r,
            key_r2i=k_r2i,
            initiator=self.initiator,
        )
