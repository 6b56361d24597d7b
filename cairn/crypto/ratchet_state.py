"""
The Double Ratchet state machine, computed directly with C{cryptography}.

docs/protocol.md section 11 specifies every step; this module is that text
in code. cairn used to drive Syndace's C{doubleratchet} package (1.x) with
cairn's parameters. It is replaced here because its structure, not its
cryptography, was the cost of a 1 KiB Data message (issue 19): every call
is a coroutine chain through four layers of objects, every decrypt deep-
copies the whole DH ratchet state so that a failure can be rolled back,
every KDF and AEAD call looks up a crypto provider and a backend, and
every message builds header and message objects that are converted to and
from cairn's wire dict. Here a decrypt computes the new values in local
variables and stores them only once the message has authenticated, so
nothing needs copying; a state is one object with slots.

What is kept, and checked by tests/test_ratchet.py against the library
itself (which stays a test dependency for that purpose): the bytes of every
message (the vectors of docs/protocol.md section 11.9), the interoperation
with a library-driven peer in both directions across DH steps, out of
order and with skipped keys, and the persisted state, which is the
library's own JSON form (a state saved by one loads in the other). The
Signal-specification behaviours are the library's: at most
L{DOS_PROTECTION_THRESHOLD} keys are derived ahead for one message (more
is an error, except for the previous chain at a DH step, whose keys are
then not derived), at most L{MAX_SKIPPED_MESSAGE_KEYS} skipped keys are
kept (oldest evicted first), a replay is refused, and a failed decrypt
leaves the state as it was.

The KDFs and the message AEAD it calls (sections 11.4 to 11.6) are in
L{cairn.crypto.ratchet_primitives}.
"""

import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from nacl.bindings import crypto_scalarmult_base

from cairn.crypto.dh import x25519
from cairn.crypto.ratchet_primitives import (
    RatchetFailure,
    aead_decrypt,
    aead_encrypt,
    kdf_chain,
    kdf_root,
)

#: Section 11.6's u32be pn || u32be n (L{full_ad}'s tail).
_PN_N = struct.Struct(">II")

DOS_PROTECTION_THRESHOLD = 1000
MAX_SKIPPED_MESSAGE_KEYS = 1000
_VERSION = "1.0.0"

#: A fresh own ratchet key pair: (private bytes, public bytes). Supplied by
#: the caller.
KeySource = Callable[[], tuple[bytes, bytes]]


def _dh(own_priv: bytes, other_pub: bytes) -> bytes:
    """
    X25519 of raw keys with libsodium (L{cairn.crypto.dh.x25519}).

    Raw bytes in and out, no key objects: C{cryptography}'s X25519 keys
    cost a parse per public key (about 3 us), and a private key parsed from
    bytes computes its public key (a whole scalar multiplication, about
    32 us) whether or not it is wanted; under callgrind libsodium's
    exchange is also about 367,000 instructions against OpenSSL's 527,000
    (issue 19). An all-zero result (a small-order key) is refused (section
    11.1): libsodium refuses it, and C{x25519} checks it again itself.
    """
    try:
        return x25519(own_priv, other_pub)
    except ValueError as e:
        raise RatchetFailure("invalid message: %s" % (e,)) from e


class RatchetState:
    """
    One end's Double Ratchet state (section 11.8): own ratchet key pair,
    the peer's ratchet public key, the root chain, the sending and receiving
    chains (key and length) and the skipped message keys.

    The chain lengths and the root chain's step count are kept only because
    the persisted form records them.
    """

    __slots__ = (
        "own_priv", "own_pub", "other_pub",
        "root_key", "root_n",
        "send_ck", "send_n", "prev_send_n",
        "recv_ck", "recv_n",
        "skipped",
    )

    def __init__(self) -> None:
        self.own_pub: bytes | None = None
        self.recv_ck: bytes | None = None
        self.recv_n: int | None = None
        self.prev_send_n: int | None = None
        #: (ratchet pub, n) -> message key, oldest first; None while empty.
        self.skipped: OrderedDict[tuple[bytes, int], bytes] | None = None

    def _pub(self) -> bytes:
        pub = self.own_pub
        if pub is None:  # a restored state: the persisted form has no public key
            pub = self.own_pub = crypto_scalarmult_base(self.own_priv)
        return pub

    @classmethod
    def initiator(cls, shared_secret: bytes, responder_pub: bytes, fresh: KeySource) -> "RatchetState":
        """Signal's Alice: a fresh key and the sending chain (section 11.8)."""
        self = cls()
        self.own_priv, self.own_pub = fresh()
        self.other_pub = responder_pub
        self.root_n = 0
        self.root_key = shared_secret
        self.send_ck = self.send_n = None
        self._new_sending_chain()
        return self

    @classmethod
    def responder(
        cls,
        shared_secret: bytes,
        own: tuple[bytes, bytes],
        initiator_pub: bytes,
        fresh: KeySource,
    ) -> "RatchetState":
        """Signal's Bob, from the initiator's first ratchet public key."""
        self = cls()
        self.own_priv, self.own_pub = own
        self.other_pub = initiator_pub
        self.root_n = 0
        self.root_key = shared_secret
        self.root_key, self.recv_ck = kdf_root(self.root_key, _dh(self.own_priv, initiator_pub))
        self.root_n = 1
        self.recv_n = 0
        self.own_priv, self.own_pub = fresh()
        self.send_ck = self.send_n = None
        self._new_sending_chain()
        return self

    def _new_sending_chain(self) -> None:
        self.root_key, self.send_ck = kdf_root(self.root_key, _dh(self.own_priv, self.other_pub))
        self.root_n += 1
        self.prev_send_n = self.send_n
        self.send_n = 0

    def encrypt(self, plaintext: bytes, ad: bytes) -> tuple[bytes, int, int, bytes]:
        """The next message: (ratchet pub, pn, n, ciphertext)."""
        pub = self.own_pub or self._pub()
        pn = self.prev_send_n or 0
        n = self.send_n
        self.send_ck, mk = kdf_chain(self.send_ck)
        self.send_n = n + 1
        return pub, pn, n, aead_encrypt(mk, plaintext, ad + pub + _PN_N.pack(pn, n))  # full_ad(), written in

    def decrypt(self, pub: bytes, pn: int, n: int, ct: bytes, ad: bytes, fresh: KeySource) -> bytes:
        """
        Open a message (section 11.8's receive algorithm).

        @raise RatchetFailure: rejected; nothing in the state changed.
        """
        aad = ad + pub + _PN_N.pack(pn, n)  # full_ad(), written in: a call fewer per message
        skipped = self.skipped
        if skipped:
            mk = skipped.get((pub, n))
            if mk is not None:
                plaintext = aead_decrypt(mk, ct, aad)
                del skipped[(pub, n)]
                return plaintext
        if pub == self.other_pub:
            # Same chain: the common case, no DH step.
            ck, nr = self.recv_ck, self.recv_n
            if ck is None:
                raise RatchetFailure("invalid message: no receiving chain")
            if n == nr:  # the next message of the chain (no skipped keys)
                ck, mk = kdf_chain(ck)
                plaintext = aead_decrypt(mk, ct, aad)
                self.recv_ck, self.recv_n = ck, n + 1
                return plaintext
            new_keys = self._skip(ck, nr, pub, n, None)
            if n < nr:
                raise RatchetFailure("duplicate or replayed message")
            if new_keys is None:
                ck, mk = kdf_chain(ck)
            else:
                ck, mk = new_keys.pop()
            plaintext = aead_decrypt(mk, ct, aad)
            self.recv_ck, self.recv_n = ck, n + 1
            if new_keys:
                self._keep(new_keys[0])
            return plaintext
        # A DH ratchet step: finish the old receiving chain up to pn (unless
        # that is more than the threshold: then those keys are given up),
        # derive the new receiving chain, a new own key and sending chain.
        found: list[tuple[bytes, int, bytes]] = []
        if self.recv_ck is not None:
            ahead = pn - self.recv_n
            if 0 < ahead <= DOS_PROTECTION_THRESHOLD:
                ck = self.recv_ck
                for i in range(self.recv_n, pn):
                    ck, mk = kdf_chain(ck)
                    found.append((self.other_pub, i, mk))
        root_key, recv_ck = kdf_root(self.root_key, _dh(self.own_priv, pub))
        new_priv, new_pub = fresh()
        root_key2, send_ck = kdf_root(root_key, _dh(new_priv, pub))
        new_keys = self._skip(recv_ck, 0, pub, n, found)
        if new_keys is None:
            recv_ck, mk = kdf_chain(recv_ck)
        else:
            recv_ck, mk = new_keys.pop()
        plaintext = aead_decrypt(mk, ct, aad)
        # Authenticated: commit.
        self.other_pub = pub
        self.root_key, self.root_n = root_key2, self.root_n + 2
        self.recv_ck, self.recv_n = recv_ck, n + 1
        self.own_priv, self.own_pub = new_priv, new_pub
        self.prev_send_n, self.send_ck, self.send_n = self.send_n, send_ck, 0
        if new_keys and new_keys[0]:
            self._keep(new_keys[0])
        return plaintext

    @staticmethod
    def _skip(ck: bytes, nr: int, pub: bytes, n: int, found: list | None) -> list | None:
        """
        Derive the keys of messages nr..n-1 of this chain (skipped) and of n.

        Returns None when n is the next message and nothing was found
        before (the caller derives it); otherwise [found + skipped keys,
        (chain key after n, key of n)] -- the last entry popped by the caller.
        """
        ahead = n - nr
        if ahead > DOS_PROTECTION_THRESHOLD:
            raise RatchetFailure("too many skipped messages (more than %d)" % (DOS_PROTECTION_THRESHOLD,))
        if ahead <= 0 and not found:
            return None
        keys = list(found) if found else []
        for i in range(nr, n):
            ck, mk = kdf_chain(ck)
            keys.append((pub, i, mk))
        return [keys, kdf_chain(ck)]

    def _keep(self, keys: list[tuple[bytes, int, bytes]]) -> None:
        skipped = self.skipped
        if skipped is None:
            skipped = self.skipped = OrderedDict()
        for pub, i, mk in keys:
            skipped[(pub, i)] = mk
        while len(skipped) > MAX_SKIPPED_MESSAGE_KEYS:
            skipped.popitem(last=False)

    # -- the persisted form: the doubleratchet library's JSON model ---------

    def to_model(self) -> dict[str, Any]:
        """The state in the library's JSON form (bytes as latin-1 text)."""

        def chain(key, length):
            if key is None:
                return None
            return {"key": _text(key), "length": length, "version": _VERSION}

        return {
            "diffie_hellman_ratchet": {
                "other_ratchet_pub": _text(self.other_pub),
                "own_ratchet_priv": _text(self.own_priv),
                "root_chain": chain(self.root_key, self.root_n),
                "symmetric_key_ratchet": {
                    "previous_sending_chain_length": self.prev_send_n,
                    "receiving_chain": chain(self.recv_ck, self.recv_n),
                    "sending_chain": chain(self.send_ck, self.send_n),
                    "version": _VERSION,
                },
                "version": _VERSION,
            },
            "skipped_message_keys": [
                {"ratchet_pub": _text(pub), "index": i, "message_key": _text(mk)}
                for (pub, i), mk in (self.skipped or {}).items()
            ],
            "version": _VERSION,
        }

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> "RatchetState":
        """
        Read L{to_model}'s form (or the library's).

        @raise ValueError, KeyError, TypeError: not such a state.
        """
        dh = model["diffie_hellman_ratchet"]
        sym = dh["symmetric_key_ratchet"]
        self = cls()
        self.own_priv = _key(dh["own_ratchet_priv"])
        self.other_pub = _key(dh["other_ratchet_pub"])
        self.root_key, self.root_n = _chain(dh["root_chain"])
        if sym["sending_chain"] is None:
            raise ValueError("the state has no sending chain")
        self.send_ck, self.send_n = _chain(sym["sending_chain"])
        if sym["receiving_chain"] is not None:
            self.recv_ck, self.recv_n = _chain(sym["receiving_chain"])
        self.prev_send_n = _length(sym["previous_sending_chain_length"], optional=True)
        entries = model["skipped_message_keys"]
        if entries:
            self.skipped = OrderedDict(
                ((_key(e["ratchet_pub"]), _length(e["index"])), _key(e["message_key"])) for e in entries
            )
        return self


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _key(text: Any) -> bytes:
    value = text.encode("latin-1")
    if len(value) != 32:
        raise ValueError("a key must be 32 bytes")
    return value


def _length(value: Any, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is not int or value < 0:
        raise ValueError("a chain length must be a non-negative integer")
    return value


def _chain(chain: Any) -> tuple[bytes, int]:
    return _key(chain["key"]), _length(chain["length"])
