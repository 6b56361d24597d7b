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

One departure from Signal's algorithm, on the sending side only (section
11.8, "When an own-key step is taken"): a DH ratchet step's second half -- a new own key
and sending chain -- is taken at the next send once the current sending
chain has carried L{REKEY_MESSAGES} messages or is L{REKEY_SECONDS} old,
not at once on every new peer key. A conversation that changes direction
with every message (a request and its answer) otherwise pays two X25519
and a key generation per side and round trip, most of its CPU (issue 19);
a receiver needs nothing new, so a peer that steps at once (the library,
an older cairn) and this one read each other's messages.

The KDFs and the message AEAD it calls (sections 11.4 to 11.6) are in
L{cairn.crypto.ratchet_primitives}.
"""

import struct
import time
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

#: An own-key step owed (a new peer key received) is taken at the next send
#: once the sending chain has carried this many messages...
REKEY_MESSAGES = 64
#: ... or was started this many seconds ago (L{clock}): a conversation
#: slower than one message a second steps at every change of direction,
#: as Signal's algorithm does.
REKEY_SECONDS = 1.0
#: Monotonic seconds; tests replace it.
clock: Callable[[], float] = time.monotonic
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
        "send_ck", "send_n", "prev_send_n", "send_since", "step_owed",
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
        #: Whether a new peer key was received since the last own-key step
        #: (section 11.8): the next one may be taken, and only then.
        self.step_owed = False

    def _pub(self) -> bytes:
        pub = self.own_pub
        if pub is None:  # a restored state: the persisted form has no public key
            pub = self.own_pub = crypto_scalarmult_base(self.own_priv)
        return pub

    @classmethod
    def initiator(cls, shared_secret: bytes, responder_pub: bytes, fresh: KeySource) -> "RatchetState":
        """Signal's Alice: a fresh key and the sending chain (section 11.8)."""
        self = cls()
        self.other_pub = responder_pub
        self.root_n = 0
        self.root_key = shared_secret
        self.send_n = None
        self._own_key_step(fresh())
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
        self.send_n = None
        self._own_key_step(fresh())
        return self

    def _own_key_step(self, own: tuple[bytes, bytes]) -> None:
        """The second half of a DH ratchet step: own key pair C{own} and a new sending chain."""
        root_key, send_ck = kdf_root(self.root_key, _dh(own[0], self.other_pub))
        self.own_priv, self.own_pub = own
        self.root_key, self.send_ck = root_key, send_ck
        self.root_n += 1
        self.prev_send_n = self.send_n
        self.send_n = 0
        self.send_since = clock()
        self.step_owed = False

    def encrypt(self, plaintext: bytes, ad: bytes, fresh: KeySource) -> tuple[bytes, int, int, bytes]:
        """The next message: (ratchet pub, pn, n, ciphertext), after the own-key step if it is due."""
        if self.step_owed and (self.send_n >= REKEY_MESSAGES or clock() - self.send_since >= REKEY_SECONDS):
            self._own_key_step(fresh())
        pub = self.own_pub or self._pub()
        pn = self.prev_send_n or 0
        n = self.send_n
        self.send_ck, mk = kdf_chain(self.send_ck)
        self.send_n = n + 1
        return pub, pn, n, aead_encrypt(mk, plaintext, ad + pub + _PN_N.pack(pn, n))  # full_ad(), written in

    def decrypt(self, pub: bytes, pn: int, n: int, ct: bytes, ad: bytes) -> bytes:
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
        # that is more than the threshold: then those keys are given up) and
        # derive the new receiving chain; the new own key and sending chain
        # come at a later send (L{encrypt}).
        found: list[tuple[bytes, int, bytes]] = []
        if self.recv_ck is not None:
            ahead = pn - self.recv_n
            if 0 < ahead <= DOS_PROTECTION_THRESHOLD:
                ck = self.recv_ck
                for i in range(self.recv_n, pn):
                    ck, mk = kdf_chain(ck)
                    found.append((self.other_pub, i, mk))
        root_key, recv_ck = kdf_root(self.root_key, _dh(self.own_priv, pub))
        new_keys = self._skip(recv_ck, 0, pub, n, found)
        if new_keys is None:
            recv_ck, mk = kdf_chain(recv_ck)
        else:
            recv_ck, mk = new_keys.pop()
        plaintext = aead_decrypt(mk, ct, aad)
        # Authenticated: commit.
        self.other_pub = pub
        self.root_key, self.root_n = root_key, self.root_n + 1
        self.recv_ck, self.recv_n = recv_ck, n + 1
        self.step_owed = True
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
        self.send_since = float("-inf")  # its age is not recorded: old enough for a step owed
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
