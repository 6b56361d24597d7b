"""
The Double Ratchet that protects every Data body after the Noise handshake.

docs/protocol.md section 11 specifies it (parameters, seeding, state,
vectors) and section 11.10 notes how this implementation is built. This
module is the API the session layer uses: the wire form of a ratchet
message (a CBOR map with C{pub}, C{pn}, C{n}, C{ct}, checked strictly
here), and L{Ratchet}, one end of a conversation, with its persisted form;
it starts from the seed derived from the handshake
(L{cairn.crypto.ratchet_seed}). The state machine itself is
L{cairn.crypto.ratchet_state}, written directly over C{cryptography}
instead of driving the C{doubleratchet} library (its module docstring says
why; tests/test_ratchet.py keeps checking it against the library).

Key generation is injectable for test vectors: every fresh ratchet private
key comes from the module attribute L{generate_private_key} (looked up at
call time), which tests may replace (e.g. with trial's C{self.patch}).
"""

import json
import os
from collections.abc import Callable
from typing import Any

from nacl.bindings import crypto_box_keypair, crypto_scalarmult_base

from cairn.crypto.ratchet_primitives import (
    AEAD_INFO,
    AES_BLOCK,
    MESSAGE_CHAIN_CONSTANT,
    ROOT_INFO,
    TAG_LEN,
    RatchetFailure,
)
from cairn.crypto.ratchet_seed import _KEY_LEN, RatchetSeed
from cairn.crypto.ratchet_state import (
    DOS_PROTECTION_THRESHOLD,
    MAX_SKIPPED_MESSAGE_KEYS,
    RatchetState,
)

__all__ = [
    "RatchetError",
    "Ratchet",
    "generate_private_key",
    "make_spare_keys",
    "spare_keys_wanted",
    "SPARE_KEYS",
    "ROOT_INFO",
    "AEAD_INFO",
    "MESSAGE_CHAIN_CONSTANT",
    "DOS_PROTECTION_THRESHOLD",
    "MAX_SKIPPED_MESSAGE_KEYS",
]

_U32_MAX = 2**32 - 1
_WIRE_KEYS = frozenset(("pub", "pn", "n", "ct"))
_STATE_FORMAT = "cairn-ratchet-state-v1"


class RatchetError(Exception):
    """Message cannot be decrypted or is malformed (reason in str)."""


def _default_generate_private_key() -> bytes:
    """A fresh random X25519 private key, 32 raw bytes."""
    return crypto_box_keypair()[1]


def _key_pair() -> tuple[bytes, bytes]:
    """
    A fresh X25519 key pair, (private, public), from libsodium.

    Raw bytes, no key objects: libsodium's fixed-base multiplication makes
    the public key in about half the time of C{cryptography}'s
    C{X25519PrivateKey.generate()} (17 against 35 us here; 231,000 against
    463,000 instructions under callgrind with the public bytes), and bytes
    are all the ratchet keeps (issue 19).
    """
    pub, priv = crypto_box_keypair()
    return priv, pub


#: Source of every fresh ratchet private key (32 raw bytes). Tests replace it
#: to pin keys and obtain deterministic vectors; production leaves it alone.
generate_private_key: Callable[[], bytes] = _default_generate_private_key

#: Most spare ratchet keys kept ready, for the whole process (see L{make_spare_keys}).
SPARE_KEYS = 4

#: Ratchet keys generated ahead of the DH steps that will use them, as
#: (private bytes, public bytes); each is handed out once. Not per session: an
#: idle session holds none.
_spare: list[tuple[bytes, bytes]] = []


def _forget_spare_keys() -> None:
    # A forked child must not use a key its parent may use too.
    del _spare[:]


os.register_at_fork(after_in_child=_forget_spare_keys)


def spare_keys_wanted() -> bool:
    """Whether L{make_spare_keys} has anything to do (one length check)."""
    return len(_spare) < SPARE_KEYS and generate_private_key is _default_generate_private_key


def make_spare_keys() -> None:
    """
    Generate ratchet keys ahead of need, up to L{SPARE_KEYS} for the process.

    A DH ratchet step (docs/protocol.md section 11.8) makes a fresh key
    pair when a message with a new peer key arrives; in a conversation
    that changes direction with every message (a request and its
    response) that is one X25519 key generation, about 17 us, between a
    message's arrival and its answer. Nothing fixes when GENERATE_DH()
    runs, so the session layer calls this once its writes are out, while
    it waits for the peer (L{cairn.session.channels}), and the next DH
    step takes a key made here instead (same bytes on the wire: the key is
    as random as one made on the spot, and each is used once). Nothing is
    made while L{generate_private_key} is replaced (the vector tests pin
    every key through it).
    """
    while len(_spare) < SPARE_KEYS and generate_private_key is _default_generate_private_key:
        # The public key too: the first message after the DH step needs it.
        _spare.append(_key_pair())


def _fresh_key() -> tuple[bytes, bytes]:
    """A new own ratchet key pair, through the L{generate_private_key} hook."""
    hook = generate_private_key
    if hook is _default_generate_private_key:
        if _spare:
            return _spare.pop()
        return _key_pair()
    priv = hook()
    if not isinstance(priv, bytes) or len(priv) != _KEY_LEN:
        raise RuntimeError("generate_private_key must return 32 bytes")
    return priv, crypto_scalarmult_base(priv)


# ---------------------------------------------------------------------------
# Wire form


def _parse_message(message: Any) -> tuple[bytes, int, int, bytes]:
    """Validate the wire dict strictly; return (pub, pn, n, ct)."""
    if not isinstance(message, dict):
        raise RatchetError("ratchet message must be a map, not %s" % (type(message).__name__,))
    if message.keys() != _WIRE_KEYS:
        keys = set(message)
        missing = sorted(_WIRE_KEYS - keys)
        extra = sorted(repr(k) for k in keys - _WIRE_KEYS)
        raise RatchetError(
            "ratchet message keys must be exactly pub, pn, n, ct (missing: %s; unexpected: %s)"
            % (", ".join(missing) or "none", ", ".join(extra) or "none")
        )
    return _check_parts(message["pub"], message["pn"], message["n"], message["ct"])


def _check_parts(pub: Any, pn: Any, n: Any, ct: Any) -> tuple[bytes, int, int, bytes]:
    """The values of a ratchet message checked as L{_parse_message} does."""
    if not isinstance(pub, bytes) or len(pub) != _KEY_LEN:
        raise RatchetError("ratchet message 'pub' must be 32 bytes")
    if type(pn) is not int or not 0 <= pn <= _U32_MAX:  # (a bool is not an int here)
        raise RatchetError("ratchet message 'pn' must be an integer in 0..2**32-1")
    if type(n) is not int or not 0 <= n <= _U32_MAX:
        raise RatchetError("ratchet message 'n' must be an integer in 0..2**32-1")
    if not isinstance(ct, bytes):
        raise RatchetError("ratchet message 'ct' must be bytes")
    body = len(ct) - TAG_LEN
    if body < AES_BLOCK or body % AES_BLOCK:
        raise RatchetError(
            "ratchet message 'ct' must be a positive multiple of 16 bytes plus a 32-byte tag"
        )
    return pub, pn, n, ct


def _wire(pub: bytes, pn: int, n: int, ct: bytes) -> dict[str, Any]:
    return {"pub": pub, "pn": pn, "n": n, "ct": ct}


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

    __slots__ = ("_state",)

    def __init__(self, state: RatchetState) -> None:
        self._state = state

    def __repr__(self) -> str:
        return "<Ratchet sending_chain_length=%d>" % (self._state.send_n,)

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
        try:
            state = RatchetState.initiator(seed.shared_secret, seed.responder_public, _fresh_key)
        except RatchetFailure as e:
            raise RatchetError(str(e)) from None
        return cls(state), _wire(*state.encrypt(plaintext, ad, _fresh_key))

    @classmethod
    def start_responder(
        cls, seed: RatchetSeed, message: dict[str, Any], ad: bytes
    ) -> tuple["Ratchet", bytes]:
        """
        Start as the handshake responder (Signal's Bob) from the initiator's first message.

        @return: the ratchet and the message's plaintext.
        @raise RatchetError: the message is malformed or does not decrypt.
        """
        _check_bytes("ad", ad)
        pub, pn, n, ct = _parse_message(message)
        own = (seed.responder_private, seed.responder_public)
        try:
            # Signal's RatchetInitBob then the DH step for this message's key
            # (section 11.8, "Responder start"), then steps 3-7 of RECEIVE.
            state = RatchetState.responder(seed.shared_secret, own, pub, _fresh_key)
            plaintext = state.decrypt(pub, pn, n, ct, ad)
        except RatchetFailure as e:
            raise RatchetError(str(e)) from None
        return cls(state), plaintext

    def encrypt(self, plaintext: bytes, ad: bytes) -> dict[str, Any]:
        """Encrypt the next message; return it in wire form."""
        return _wire(*self.encrypt_parts(plaintext, ad))

    def encrypt_parts(self, plaintext: bytes, ad: bytes) -> tuple[bytes, int, int, bytes]:
        """L{encrypt}, as the wire form's values: C{(pub, pn, n, ct)}."""
        if type(plaintext) is not bytes or type(ad) is not bytes:
            _check_bytes("plaintext", plaintext)
            _check_bytes("ad", ad)
        if self._state.send_n >= _U32_MAX:
            raise RatchetError("sending chain exhausted (2**32-1 messages)")
        try:
            return self._state.encrypt(plaintext, ad, _fresh_key)
        except RatchetFailure as e:  # the own-key step's DH (section 11.1's check)
            raise RatchetError(str(e)) from None

    def decrypt(self, message: dict[str, Any], ad: bytes) -> bytes:
        """
        Decrypt a message in wire form.

        @raise RatchetError: malformed, replayed, too far ahead, or fails
            authentication. The ratchet state is unchanged in that case.
        """
        _check_bytes("ad", ad)
        pub, pn, n, ct = _parse_message(message)
        try:
            return self._state.decrypt(pub, pn, n, ct, ad)
        except RatchetFailure as e:
            raise RatchetError(str(e)) from None

    def decrypt_parts(self, pub: Any, pn: Any, n: Any, ct: Any, ad: bytes) -> bytes:
        """
        L{decrypt} of a message given as its wire form's values (as
        L{cairn.wire.cbor.loads_data} reads them), checked the same way.

        @raise RatchetError: as L{decrypt}.
        """
        if type(ad) is not bytes:
            _check_bytes("ad", ad)
        # L{_check_parts}' checks written in for the values of a well-formed
        # message (a call fewer per Data, issue 19); any other values go
        # through it, which raises as before.
        body = len(ct) - TAG_LEN if type(ct) is bytes else 0
        if not (
            type(pub) is bytes
            and len(pub) == _KEY_LEN
            and type(pn) is int
            and 0 <= pn <= _U32_MAX
            and type(n) is int
            and 0 <= n <= _U32_MAX
            and body >= AES_BLOCK
            and not body % AES_BLOCK
        ):
            pub, pn, n, ct = _check_parts(pub, pn, n, ct)
        try:
            return self._state.decrypt(pub, pn, n, ct, ad)
        except RatchetFailure as e:
            raise RatchetError(str(e)) from None

    def to_json(self) -> str:
        """
        Serialise the whole state (including private keys and skipped
        message keys -- treat it as secret) for session persistence. The
        inner C{state} is the C{doubleratchet} library's own JSON form;
        C{step_owed} is what that form has no place for (section 11.8's
        own-key step not taken yet).
        """
        return json.dumps(
            {"format": _STATE_FORMAT, "state": self._state.to_model(), "step_owed": self._state.step_owed},
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
            state = RatchetState.from_model(outer["state"])
            owed = outer.get("step_owed", False)  # absent: saved before own-key steps were deferred
            if type(owed) is not bool:
                raise ValueError("step_owed must be true or false")
            state.step_owed = owed
        except Exception as e:
            raise RatchetError("cannot restore ratchet state: %s" % (e,)) from e
        return cls(state)
