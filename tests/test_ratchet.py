"""
Tests for L{cairn.crypto.ratchet}, including the byte-exact test vector
published in the protocol documentation.

The vector is computed twice: by the module under test (with pinned ratchet
private keys) and by an independent re-implementation of every KDF, DH and
AEAD step written directly against C{cryptography} primitives. Both must
equal, value for value, the block between the C{ratchet-vector-begin} and
C{ratchet-vector-end} markers in docs/protocol.md.
"""

import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Iterator

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.trial import unittest

from cairn.crypto import ratchet, ratchet_seed, ratchet_state
from cairn.crypto.ratchet import Ratchet, RatchetError
from cairn.crypto.ratchet_seed import RatchetSeed, derive_seed

AD = b"channel-0 ad"
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


# ---------------------------------------------------------------------------
# Independent primitives (cryptography + hashlib/hmac only)


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _pub(priv: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(priv)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _dh(priv: bytes, pub: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).exchange(
        X25519PublicKey.from_public_bytes(pub)
    )


def _kdf_rk(rk: bytes, dh_out: bytes):
    okm = _hkdf(rk, dh_out, b"cairn-ratchet-root", 64)
    return okm[:32], okm[32:]


def _kdf_ck(ck: bytes):
    """(next chain key, message key), in Signal's assignment of the input bytes."""
    return _hmac(ck, b"\x02"), _hmac(ck, b"\x01")


def _aead_encrypt(mk: bytes, plaintext: bytes, ad_full: bytes, out: dict[str, str], prefix: str) -> bytes:
    okm = _hkdf(b"\x00" * 32, mk, b"cairn-ratchet-aead", 80)
    enc_key, auth_key, iv = okm[:32], okm[32:64], okm[64:]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    body = enc.update(padded) + enc.finalize()
    out[prefix + ".aead_enc_key"] = enc_key.hex()
    out[prefix + ".aead_auth_key"] = auth_key.hex()
    out[prefix + ".aead_iv"] = iv.hex()
    return body + _hmac(auth_key, ad_full + body)


def _ad_full(ad: bytes, pub: bytes, pn: int, n: int) -> bytes:
    return ad + pub + struct.pack(">II", pn, n)


def _show(value) -> str:
    if isinstance(value, int):
        return str(value)
    return value.hex() if value else "(empty)"


# ---------------------------------------------------------------------------
# The vector

V_HANDSHAKE_HASH = bytes(range(0x00, 0x20))
V_KEY_I2R = bytes(range(0x20, 0x40))
V_KEY_R2I = bytes(range(0x40, 0x60))
V_SESSION_ID = bytes(range(0xA0, 0xB0))
#: The channel each message is sent on: the initiator's ratchet start on 0,
#: then the initiator's channel 2 and the responder's channel 1 (§10).
V_CHANNELS = {"I0": 0, "I1": 2, "R0": 1, "I2": 2, "R1": 1}


#: The second block: the same conversation with the initiator's own-key step
#: deferred by one message (D2 on its first chain, D3 after the step).
D_CHANNELS = {"D2": 2, "D3": 2}
D_PLAINTEXTS = {"D2": b"before the own-key step", "D3": b"after the own-key step"}


def v_ad(label: str) -> bytes:
    """The session layer's ad for one message: session id || u32be(channel) (§9.5)."""
    return V_SESSION_ID + struct.pack(">I", {**V_CHANNELS, **D_CHANNELS}[label])

# Ratchet private keys in the order the two ends generate them.
V_A1 = bytes.fromhex("a1" * 32)  # initiator, in start_initiator
V_B1 = bytes.fromhex("b1" * 32)  # responder, in start_responder
V_A2 = bytes.fromhex("a2" * 32)  # initiator, on receiving R0 (DH step)
V_B2 = bytes.fromhex("b2" * 32)  # responder, on receiving I2 (DH step)
V_A3 = bytes.fromhex("a3" * 32)  # initiator, on receiving R1 (DH step)
V_PLAINTEXTS = {
    "I0": b"",
    "I1": b"hello, responder",
    "R0": b"hello, initiator",
    "I2": b"after the DH step",
    "R1": b"second DH step",
}


def independent_vector(deferred: dict[str, str] | None = None) -> dict[str, str]:
    """
    Every value of the vector, computed without cairn or doubleratchet;
    the second block's values go into C{deferred}, if given.
    """
    out: dict[str, str] = {}
    put = lambda name, value, into=out: into.__setitem__(name, _show(value))  # noqa: E731

    put("in.handshake_hash", V_HANDSHAKE_HASH)
    put("in.key_i2r", V_KEY_I2R)
    put("in.key_r2i", V_KEY_R2I)
    put("in.session_id", V_SESSION_ID)
    for name, priv in (("A1", V_A1), ("B1", V_B1), ("A2", V_A2), ("B2", V_B2), ("A3", V_A3)):
        put("in.%s_priv" % name, priv)
    for name, pt in V_PLAINTEXTS.items():
        put("in.%s.channel" % name, V_CHANNELS[name])
        put("in.%s.plaintext" % name, pt)

    okm = _hkdf(V_HANDSHAKE_HASH, V_KEY_I2R + V_KEY_R2I, b"cairn-ratchet-seed-v1", 64)
    sk, b0 = okm[:32], okm[32:]
    put("seed.shared_secret", sk)
    put("seed.responder_private", b0)
    put("seed.responder_public", _pub(b0))
    b0_pub = _pub(b0)
    for name, priv in (("A1", V_A1), ("B1", V_B1), ("A2", V_A2), ("B2", V_B2), ("A3", V_A3)):
        put("%s_pub" % name, _pub(priv))

    def message(label, ck, pub, pn, n, into=out):
        """Encrypt one message from chain key ck; return the next chain key."""
        ck_next, mk = _kdf_ck(ck)
        put(label + ".chain_key", ck, into)
        put(label + ".message_key", mk, into)
        put(label + ".ad", v_ad(label), into)
        ad_full = _ad_full(v_ad(label), pub, pn, n)
        put(label + ".associated_data", ad_full, into)
        ct = _aead_encrypt(mk, {**V_PLAINTEXTS, **D_PLAINTEXTS}[label], ad_full, into, label)
        put(label + ".pub", pub, into)
        put(label + ".pn", pn, into)
        put(label + ".n", n, into)
        put(label + ".ct", ct, into)
        return ck_next

    # Initiator: root step with DH(A1, B0) -> sending chain A1.
    dh = _dh(V_A1, b0_pub)
    put("step1.dh", dh)
    rk, ck_a1 = _kdf_rk(sk, dh)
    put("step1.root_key", rk)
    ck_a1 = message("I0", ck_a1, _pub(V_A1), 0, 0)
    ck_a1 = message("I1", ck_a1, _pub(V_A1), 0, 1)

    # Responder: step 1 again as receiving chain (DH(B0, A1) is the same value),
    # then root step with DH(B1, A1) -> sending chain B1.
    assert _dh(b0, _pub(V_A1)) == dh
    dh = _dh(V_B1, _pub(V_A1))
    put("step2.dh", dh)
    rk, ck_b1 = _kdf_rk(rk, dh)
    put("step2.root_key", rk)
    ck_b1 = message("R0", ck_b1, _pub(V_B1), 0, 0)

    # Initiator receives R0: receiving chain = step 2; new key A2;
    # root step with DH(A2, B1) -> sending chain A2 (pn = 2: I0 and I1).
    dh = _dh(V_A2, _pub(V_B1))
    put("step3.dh", dh)
    rk, ck_a2 = _kdf_rk(rk, dh)
    put("step3.root_key", rk)
    message("I2", ck_a2, _pub(V_A2), 2, 0)
    if deferred is not None:
        # The second block: D2 continues the first chain (A1, n = 2), the
        # step is taken after it, D3 opens the A2 chain (pn = 3).
        for name, pt in D_PLAINTEXTS.items():
            put("in.%s.channel" % name, D_CHANNELS[name], deferred)
            put("in.%s.plaintext" % name, pt, deferred)
        message("D2", ck_a1, _pub(V_A1), 0, 2, deferred)
        message("D3", ck_a2, _pub(V_A2), 3, 0, deferred)

    # Responder receives I2: receiving chain = step 3; new key B2;
    # root step with DH(B2, A2) -> sending chain B2 (pn = 1: R0).
    dh = _dh(V_B2, _pub(V_A2))
    put("step4.dh", dh)
    rk, ck_b2 = _kdf_rk(rk, dh)
    put("step4.root_key", rk)
    message("R1", ck_b2, _pub(V_B2), 1, 0)
    return out


def module_vector(case: unittest.TestCase) -> dict[str, str]:
    """The vector's seed, wire and (via to_json) root/chain-key values as produced by cairn.crypto.ratchet."""
    keys: Iterator[bytes] = iter([V_A1, V_B1, V_A2, V_B2, V_A3])
    case.patch(ratchet, "generate_private_key", lambda: next(keys))
    step_at_once(case)
    out: dict[str, str] = {}
    seed = derive_seed(V_HANDSHAKE_HASH, V_KEY_I2R, V_KEY_R2I)
    out["seed.shared_secret"] = _show(seed.shared_secret)
    out["seed.responder_private"] = _show(seed.responder_private)
    out["seed.responder_public"] = _show(seed.responder_public)

    sent_from: list[bytes] = []  # the chain key of each message sent, in order
    kdf_chain = ratchet_state.kdf_chain
    case.patch(ratchet_state, "kdf_chain", lambda ck: (sent_from.append(ck), kdf_chain(ck))[1])

    def record(label, r, msg, step=None):
        """A message sent by C{r}: its wire fields, chain key and (with C{step}) the root key it follows."""
        for field in ("pub", "pn", "n", "ct"):
            out["%s.%s" % (label, field)] = _show(msg[field])
        out["%s.chain_key" % label] = _show(sent_from[-1])
        if step is not None:
            dh = json.loads(r.to_json())["state"]["diffie_hellman_ratchet"]
            out["%s.root_key" % step] = _show(bytes(map(ord, dh["root_chain"]["key"])))  # library's bytes form
        return msg

    ad = {label: ratchet_seed.session_ad(V_SESSION_ID, channel) for label, channel in V_CHANNELS.items()}
    initiator, i0 = Ratchet.start_initiator(seed, V_PLAINTEXTS["I0"], ad["I0"])
    record("I0", initiator, i0, "step1")
    i1 = record("I1", initiator, initiator.encrypt(V_PLAINTEXTS["I1"], ad["I1"]))
    responder, pt = Ratchet.start_responder(seed, i0, ad["I0"])
    case.assertEqual(pt, V_PLAINTEXTS["I0"])
    case.assertEqual(responder.decrypt(i1, ad["I1"]), V_PLAINTEXTS["I1"])
    r0 = record("R0", responder, responder.encrypt(V_PLAINTEXTS["R0"], ad["R0"]), "step2")
    case.assertEqual(initiator.decrypt(r0, ad["R0"]), V_PLAINTEXTS["R0"])
    i2 = record("I2", initiator, initiator.encrypt(V_PLAINTEXTS["I2"], ad["I2"]), "step3")
    case.assertEqual(responder.decrypt(i2, ad["I2"]), V_PLAINTEXTS["I2"])
    r1 = record("R1", responder, responder.encrypt(V_PLAINTEXTS["R1"], ad["R1"]), "step4")
    case.assertEqual(initiator.decrypt(r1, ad["R1"]), V_PLAINTEXTS["R1"])
    # A3 is owed, made at the initiator's next send (there is none).
    case.assertEqual(list(keys), [V_A3])
    return out


def documented_vector(block: str = "ratchet-vector") -> dict[str, str]:
    """Parse a vector block out of docs/protocol.md."""
    with open(os.path.join(DOCS, "protocol.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"<!-- %s-begin -->(.*?)<!-- %s-end -->" % (block, block), text, re.S)
    if match is None:
        raise AssertionError("no %s block in docs/protocol.md" % (block,))
    values: dict[str, str] = {}
    for line in match.group(1).splitlines():
        line = line.strip()
        m = re.match(r"^([A-Za-z0-9_.]+) = (\S+)$", line)
        if m:
            assert m.group(1) not in values, m.group(1)
            values[m.group(1)] = m.group(2)
    return values


# ---------------------------------------------------------------------------
# Helpers


def _seed() -> RatchetSeed:
    return derive_seed(os.urandom(32), os.urandom(32), os.urandom(32))


def _pair(seed: RatchetSeed = None):
    """A started initiator/responder pair that has exchanged the empty first message."""
    seed = seed or _seed()
    initiator, first = Ratchet.start_initiator(seed, b"", AD)
    responder, pt = Ratchet.start_responder(seed, first, AD)
    assert pt == b""
    return initiator, responder


class StepAtOnce(unittest.TestCase):
    """
    Every own-key step taken at the first send after a new peer key, as in
    Signal's algorithm (section 11.8 with a threshold of 0 messages): the
    tests of DH steps below are about that sequence. The deferred steps of
    the default policy are tested in tests/test_ratchet_steps.py.
    """

    def setUp(self):
        step_at_once(self)


def step_at_once(case: unittest.TestCase) -> None:
    """Make every owed own-key step due at once for the rest of C{case}."""
    case.patch(ratchet_state, "REKEY_MESSAGES", 0)


class VectorTests(unittest.TestCase):
    def test_independent_matches_docs(self):
        """The independently computed vector equals the documented one, value for value."""
        self.assertEqual(independent_vector(), documented_vector())

    def test_module_matches_docs(self):
        """With pinned keys the module produces exactly the documented seed, root and chain keys and messages."""
        documented = documented_vector()
        produced = module_vector(self)
        self.assertEqual(len(produced), 3 + 4 + 5 * 5)
        for name, value in produced.items():
            self.assertEqual((name, value), (name, documented[name]))


class SeedTests(unittest.TestCase):
    def test_seed_matches_hkdf(self):
        """derive_seed equals HKDF-SHA256(salt=h, ikm=k_i2r||k_r2i, info=cairn-ratchet-seed-v1, 64) split 32/32."""
        h, k1, k2 = os.urandom(32), os.urandom(32), os.urandom(32)
        okm = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=h, info=b"cairn-ratchet-seed-v1"
        ).derive(k1 + k2)
        seed = derive_seed(h, k1, k2)
        self.assertEqual(seed.shared_secret, okm[:32])
        self.assertEqual(seed.responder_private, okm[32:])
        self.assertEqual(seed.responder_public, _pub(okm[32:]))

    def test_seed_rejects_bad_lengths(self):
        """derive_seed raises ValueError unless every input is 32 bytes."""
        good = b"\x00" * 32
        for args in ((b"", good, good), (good, good * 2, good), (good, good, "x" * 32)):
            self.assertRaises(ValueError, derive_seed, *args)

    def test_seed_repr_hides_secrets(self):
        """The seed's repr shows neither the shared secret nor the private key."""
        seed = _seed()
        text = repr(seed)
        self.assertNotIn(seed.shared_secret.hex(), text)
        self.assertNotIn(seed.responder_private.hex(), text)


class RoundTripTests(StepAtOnce):
    def test_initiator_to_responder(self):
        """A message encrypted by the initiator decrypts at the responder."""
        initiator, responder = _pair()
        msg = initiator.encrypt(b"ping", AD)
        self.assertEqual(responder.decrypt(msg, AD), b"ping")

    def test_responder_to_initiator(self):
        """A message encrypted by the responder decrypts at the initiator."""
        initiator, responder = _pair()
        msg = responder.encrypt(b"pong", AD)
        self.assertEqual(initiator.decrypt(msg, AD), b"pong")

    def test_first_message_carries_plaintext(self):
        """start_responder returns the plaintext of the initiator's first message."""
        seed = _seed()
        _, first = Ratchet.start_initiator(seed, b"first", AD)
        _, pt = Ratchet.start_responder(seed, first, AD)
        self.assertEqual(pt, b"first")

    def test_wire_shape(self):
        """encrypt returns a dict with exactly pub (32 bytes), pn, n (ints) and ct (bytes)."""
        initiator, _ = _pair()
        msg = initiator.encrypt(b"x" * 17, AD)
        self.assertEqual(set(msg), {"pub", "pn", "n", "ct"})
        self.assertEqual(len(msg["pub"]), 32)
        self.assertEqual((msg["pn"], msg["n"]), (0, 1))
        self.assertEqual(len(msg["ct"]), 32 + 32)

    def test_wrong_seed_fails_start(self):
        """start_responder with a different seed raises RatchetError."""
        _, first = Ratchet.start_initiator(_seed(), b"", AD)
        self.assertRaises(RatchetError, Ratchet.start_responder, _seed(), first, AD)

    def test_many_messages_with_dh_steps(self):
        """Alternating bursts decrypt in order and every change of sender brings a new ratchet public key."""
        initiator, responder = _pair()
        seen_pubs: list[bytes] = []
        sender, receiver = responder, initiator
        for turn in range(12):
            burst = [sender.encrypt(b"turn %d msg %d" % (turn, i), AD) for i in range(1 + turn % 3)]
            self.assertEqual(len({m["pub"] for m in burst}), 1)
            self.assertEqual([m["n"] for m in burst], list(range(len(burst))))
            if turn >= 2:
                # pn is the length of this sender's previous chain.
                self.assertEqual(burst[0]["pn"], 1 + (turn - 2) % 3)
            self.assertNotIn(burst[0]["pub"], seen_pubs)
            seen_pubs.append(burst[0]["pub"])
            for i, m in enumerate(burst):
                self.assertEqual(receiver.decrypt(m, AD), b"turn %d msg %d" % (turn, i))
            sender, receiver = receiver, sender


class OutOfOrderTests(StepAtOnce):
    def test_within_chain(self):
        """Messages of one chain decrypt in any order."""
        initiator, responder = _pair()
        msgs = [initiator.encrypt(b"m%d" % i, AD) for i in range(5)]
        for i in (4, 2, 0, 3, 1):
            self.assertEqual(responder.decrypt(msgs[i], AD), b"m%d" % i)

    def test_across_dh_step(self):
        """Messages from a previous chain still decrypt after a message from the next chain arrived first."""
        initiator, responder = _pair()
        old = [initiator.encrypt(b"old%d" % i, AD) for i in range(3)]
        self.assertEqual(responder.decrypt(old[0], AD), b"old0")
        self.assertEqual(initiator.decrypt(responder.encrypt(b"reply", AD), AD), b"reply")
        new = [initiator.encrypt(b"new%d" % i, AD) for i in range(2)]
        self.assertNotEqual(new[0]["pub"], old[0]["pub"])
        self.assertEqual(new[0]["pn"], 4)  # the empty first message + old0..old2
        self.assertEqual(responder.decrypt(new[1], AD), b"new1")
        self.assertEqual(responder.decrypt(old[2], AD), b"old2")
        self.assertEqual(responder.decrypt(new[0], AD), b"new0")
        self.assertEqual(responder.decrypt(old[1], AD), b"old1")
        self.assertEqual(initiator.decrypt(responder.encrypt(b"again", AD), AD), b"again")

    def test_skip_bound(self):
        """Skipping more than 1000 keys raises RatchetError, exactly 1000 is allowed, and the ratchet keeps working."""
        initiator, responder = _pair()
        msgs = {}
        for _ in range(1002):
            m = initiator.encrypt(b"n", AD)
            msgs[m["n"]] = m
        # The responder has consumed n=0, so n=1002 would need 1001 skipped keys.
        before = responder.to_json()
        e = self.assertRaises(RatchetError, responder.decrypt, msgs[1002], AD)
        self.assertIn("skipped", str(e))
        self.assertEqual(responder.to_json(), before)
        self.assertEqual(responder.decrypt(msgs[1001], AD), b"n")  # skips exactly 1000
        self.assertEqual(responder.decrypt(msgs[1002], AD), b"n")
        self.assertEqual(responder.decrypt(msgs[1], AD), b"n")
        self.assertEqual(responder.decrypt(msgs[1000], AD), b"n")
        self.assertEqual(initiator.decrypt(responder.encrypt(b"ok", AD), AD), b"ok")

    def test_dh_step_past_huge_gap(self):
        """A DH step leaving more than 1000 keys behind is accepted, but that old chain's messages are lost."""
        initiator, responder = _pair()
        lost = [initiator.encrypt(b"lost", AD) for _ in range(1002)]
        self.assertEqual(initiator.decrypt(responder.encrypt(b"r", AD), AD), b"r")
        new = initiator.encrypt(b"new", AD)
        self.assertEqual(new["pn"], 1003)
        self.assertEqual(responder.decrypt(new, AD), b"new")
        self.assertRaises(RatchetError, responder.decrypt, lost[0], AD)
        self.assertRaises(RatchetError, responder.decrypt, lost[-1], AD)
        self.assertEqual(initiator.decrypt(responder.encrypt(b"ok", AD), AD), b"ok")

    def test_skipped_store_evicts_oldest(self):
        """At most 1000 skipped keys are kept; the oldest is dropped first."""
        initiator, responder = _pair()
        msgs = {}
        for _ in range(1003):
            m = initiator.encrypt(b"n", AD)
            msgs[m["n"]] = m
        responder.decrypt(msgs[1001], AD)  # stores keys for n = 1..1000
        responder.decrypt(msgs[1003], AD)  # stores n = 1002, evicting n = 1
        self.assertRaises(RatchetError, responder.decrypt, msgs[1], AD)
        self.assertEqual(responder.decrypt(msgs[2], AD), b"n")
        self.assertEqual(responder.decrypt(msgs[1002], AD), b"n")


class RejectionTests(StepAtOnce):
    def test_replay(self):
        """A message decrypted once fails with RatchetError when delivered again, in order or out of order."""
        initiator, responder = _pair()
        msgs = [initiator.encrypt(b"m%d" % i, AD) for i in range(3)]
        responder.decrypt(msgs[0], AD)
        self.assertRaises(RatchetError, responder.decrypt, msgs[0], AD)
        responder.decrypt(msgs[2], AD)
        responder.decrypt(msgs[1], AD)  # from the skipped-key store
        self.assertRaises(RatchetError, responder.decrypt, msgs[1], AD)
        self.assertRaises(RatchetError, responder.decrypt, msgs[2], AD)

    def test_replay_from_old_chain(self):
        """A replayed message from a chain the receiver has ratcheted past fails and changes nothing."""
        initiator, responder = _pair()
        old = initiator.encrypt(b"old", AD)
        responder.decrypt(old, AD)
        initiator.decrypt(responder.encrypt(b"r", AD), AD)
        responder.decrypt(initiator.encrypt(b"new", AD), AD)
        before = responder.to_json()
        self.assertRaises(RatchetError, responder.decrypt, old, AD)
        self.assertEqual(responder.to_json(), before)

    def _assert_rejected_without_change(self, receiver, bad, ad=AD):
        before = receiver.to_json()
        self.assertRaises(RatchetError, receiver.decrypt, bad, ad)
        self.assertEqual(receiver.to_json(), before)

    def test_tampering(self):
        """Tampered ct, pub, pn, n or ad raise RatchetError, leave the state unchanged, and the real one decrypts."""
        initiator, responder = _pair()
        msg = initiator.encrypt(b"genuine", AD)
        for i in (0, 20, len(msg["ct"]) - 1):
            ct = bytearray(msg["ct"])
            ct[i] ^= 0x01
            self._assert_rejected_without_change(responder, dict(msg, ct=bytes(ct)))
        self._assert_rejected_without_change(responder, dict(msg, n=msg["n"] + 1))
        self._assert_rejected_without_change(responder, dict(msg, pn=msg["pn"] + 1))
        pub = bytearray(msg["pub"])
        pub[0] ^= 0x01
        self._assert_rejected_without_change(responder, dict(msg, pub=bytes(pub)))
        self._assert_rejected_without_change(responder, msg, ad=AD + b"!")
        self._assert_rejected_without_change(responder, msg, ad=b"")
        self.assertEqual(responder.decrypt(msg, AD), b"genuine")

    def test_tampered_first_message(self):
        """start_responder raises RatchetError for a tampered first message or wrong ad."""
        seed = _seed()
        _, first = Ratchet.start_initiator(seed, b"", AD)
        ct = bytearray(first["ct"])
        ct[-1] ^= 0x80
        self.assertRaises(RatchetError, Ratchet.start_responder, seed, dict(first, ct=bytes(ct)), AD)
        self.assertRaises(RatchetError, Ratchet.start_responder, seed, first, b"other")
        self.assertRaises(RatchetError, Ratchet.start_responder, seed, {"pub": first["pub"]}, AD)

    def test_low_order_public_key(self):
        """A ratchet public key whose X25519 output is all zeros raises RatchetError."""
        initiator, responder = _pair()
        msg = initiator.encrypt(b"x", AD)
        for pub in (b"\x00" * 32, b"\x01" + b"\x00" * 31):
            self._assert_rejected_without_change(responder, dict(msg, pub=pub))

    def test_malformed(self):
        """Malformed message dicts raise RatchetError (never another exception) and leave the state unchanged."""
        initiator, responder = _pair()
        msg = initiator.encrypt(b"x", AD)
        bad = [
            None,
            b"bytes",
            [msg["pub"], 0, 0, msg["ct"]],
            {},
            {k: v for k, v in msg.items() if k != "pub"},
            {k: v for k, v in msg.items() if k != "pn"},
            {k: v for k, v in msg.items() if k != "n"},
            {k: v for k, v in msg.items() if k != "ct"},
            dict(msg, extra=1),
            dict(msg, **{"1": 1}),
            {**{k: v for k, v in msg.items() if k != "n"}, 2: msg["n"]},
            dict(msg, pub=msg["pub"][:31]),
            dict(msg, pub=msg["pub"] + b"\x00"),
            dict(msg, pub=bytearray(msg["pub"])),
            dict(msg, pub=msg["pub"].hex()),
            dict(msg, pub=None),
            dict(msg, pn=-1),
            dict(msg, n=-1),
            dict(msg, pn=2**32),
            dict(msg, n=2**32),
            dict(msg, n=2**64),
            dict(msg, n=10**100),
            dict(msg, n=1.0),
            dict(msg, n="1"),
            dict(msg, n=True),
            dict(msg, pn=None),
            dict(msg, ct="00"),
            dict(msg, ct=None),
            dict(msg, ct=b""),
            dict(msg, ct=msg["ct"][:47]),
            dict(msg, ct=msg["ct"][:-1]),
            dict(msg, ct=msg["ct"] + b"\x00"),
            dict(msg, ct=bytearray(msg["ct"])),
        ]
        for b in bad:
            self._assert_rejected_without_change(responder, b)
            self.assertRaises(RatchetError, Ratchet.start_responder, _seed(), b, AD)
        self.assertEqual(responder.decrypt(msg, AD), b"x")

    def test_parts_checked_as_the_wire_form(self):
        """decrypt_parts refuses every bad value with decrypt's error, state unchanged, and opens the rest alike."""

        class Bytes(bytes):
            pass

        initiator, responder = _pair()
        msg = initiator.encrypt(b"x", AD)
        bad = [
            dict(msg, pub=msg["pub"][:31]),
            dict(msg, pub=bytearray(msg["pub"])),
            dict(msg, pub=None),
            dict(msg, pn=-1),
            dict(msg, n=2**32),
            dict(msg, n=True),
            dict(msg, pn=1.0),
            dict(msg, ct=None),
            dict(msg, ct=b""),
            dict(msg, ct=msg["ct"][:47]),
            dict(msg, ct=msg["ct"][:-1]),
            dict(msg, ct=bytearray(msg["ct"])),
        ]
        before = responder.to_json()
        for b in bad:
            with self.assertRaises(RatchetError) as wire:
                responder.decrypt(b, AD)
            with self.assertRaises(RatchetError) as parts:
                responder.decrypt_parts(b["pub"], b["pn"], b["n"], b["ct"], AD)
            self.assertEqual(str(parts.exception), str(wire.exception), b)
            self.assertEqual(responder.to_json(), before)
        # bytes subclasses pass the checks, as in the wire form
        self.assertEqual(responder.decrypt_parts(Bytes(msg["pub"]), msg["pn"], msg["n"], Bytes(msg["ct"]), AD), b"x")
        follow = initiator.encrypt(b"y", AD)
        self.assertEqual(responder.decrypt_parts(follow["pub"], follow["pn"], follow["n"], follow["ct"], AD), b"y")

    def test_huge_n_within_range(self):
        """A well-formed message claiming n = 2**32-1 is refused as too far ahead."""
        initiator, responder = _pair()
        msg = initiator.encrypt(b"x", AD)
        self._assert_rejected_without_change(responder, dict(msg, n=2**32 - 1))
        self.assertEqual(responder.decrypt(msg, AD), b"x")


class PersistenceTests(StepAtOnce):
    def test_json_round_trip_mid_conversation(self):
        """Both ends restored from to_json mid-conversation (with pending skipped keys) carry on as before."""
        initiator, responder = _pair()
        initiator.decrypt(responder.encrypt(b"r0", AD), AD)
        pending = [initiator.encrypt(b"i%d" % i, AD) for i in range(3)]
        responder.decrypt(pending[2], AD)  # leaves two skipped keys
        initiator = Ratchet.from_json(initiator.to_json())
        responder = Ratchet.from_json(json.loads(json.dumps(responder.to_json())))
        self.assertEqual(responder.decrypt(pending[0], AD), b"i0")
        self.assertEqual(responder.decrypt(pending[1], AD), b"i1")
        self.assertEqual(initiator.decrypt(responder.encrypt(b"r1", AD), AD), b"r1")
        self.assertEqual(responder.decrypt(initiator.encrypt(b"i3", AD), AD), b"i3")
        self.assertRaises(RatchetError, responder.decrypt, pending[2], AD)

    def test_restored_copy_is_independent(self):
        """A restored copy decrypts the same next message as the original, so state is fully captured."""
        initiator, responder = _pair()
        copy = Ratchet.from_json(responder.to_json())
        msg = initiator.encrypt(b"same", AD)
        self.assertEqual(responder.decrypt(msg, AD), b"same")
        self.assertEqual(copy.decrypt(msg, AD), b"same")

    def test_from_json_garbage(self):
        """from_json raises RatchetError for text that is not a serialised ratchet."""
        good = json.loads(_pair()[0].to_json())
        for text in ("", "not json", "[]", "{}", json.dumps({"format": "x", "state": good["state"]}),
                     json.dumps(dict(good, state={}))):
            self.assertRaises(RatchetError, Ratchet.from_json, text)


class DefaultKeyTests(unittest.TestCase):
    def test_random_keys_by_default(self):
        """Without a pinned generator two initiators from one seed pick different ratchet keys."""
        seed = _seed()
        _, a = Ratchet.start_initiator(seed, b"", AD)
        _, b = Ratchet.start_initiator(seed, b"", AD)
        self.assertNotEqual(a["pub"], b["pub"])


# ---------------------------------------------------------------------------
# What the direct implementation saves (see cairn/crypto/ratchet_state.py)


class _KeyObjectCounter:
    """Counts the X25519 key objects cryptography makes (generated or parsed) while installed."""

    def __init__(self, case: unittest.TestCase):
        self.count = 0
        for cls, name in (
            (X25519PrivateKey, "generate"),
            (X25519PrivateKey, "from_private_bytes"),
            (X25519PublicKey, "from_public_bytes"),
        ):
            case.patch(cls, name, staticmethod(self._counting(getattr(cls, name))))

    def _counting(self, real):
        def counting(*args):
            self.count += 1
            return real(*args)

        return counting


class KeyObjectTests(StepAtOnce):
    """
    The ratchet's X25519 works on raw bytes (libsodium): no key object is
    made or parsed, which cost a public-key computation per parsed private
    key and a parse per peer key (see cairn/crypto/ratchet_state.py).
    """

    def test_conversation_makes_no_key_objects(self):
        """Encrypting and decrypting, within a chain and across DH steps (fresh keys, spare or not), makes none."""
        self.patch(ratchet, "_spare", [])
        initiator, responder = _pair()
        counter = _KeyObjectCounter(self)
        for i in range(5):
            msg = initiator.encrypt(b"i%d" % i, AD)
            self.assertEqual(responder.decrypt(msg, AD), b"i%d" % i)
        for _ in range(3):
            self.assertEqual(initiator.decrypt(responder.encrypt(b"r", AD), AD), b"r")
            self.assertEqual(responder.decrypt(initiator.encrypt(b"i", AD), AD), b"i")
        ratchet.make_spare_keys()
        self.assertEqual(initiator.decrypt(responder.encrypt(b"r", AD), AD), b"r")
        self.assertEqual(counter.count, 0)

    def test_start_makes_no_key_objects(self):
        """Seeding and starting both ends, from a derived seed or one built by hand, makes none."""
        counter = _KeyObjectCounter(self)
        seed = _seed()
        _, first = Ratchet.start_initiator(seed, b"", AD)
        responder, _ = Ratchet.start_responder(seed, first, AD)
        plain = RatchetSeed(seed.shared_secret, seed.responder_private, seed.responder_public)
        self.assertEqual(plain, seed)
        other, _ = Ratchet.start_responder(plain, first, AD)
        self.assertEqual(counter.count, 0)
        self.assertEqual(json.loads(other.to_json())["state"]["diffie_hellman_ratchet"]["other_ratchet_pub"],
                         json.loads(responder.to_json())["state"]["diffie_hellman_ratchet"]["other_ratchet_pub"])

    def test_seed_public_key(self):
        """The seed's responder public key is X25519(priv, 9), as cryptography computes it."""
        seed = _seed()
        self.assertEqual(seed.responder_public, _pub(seed.responder_private))

    def test_restored_state_makes_no_key_objects(self):
        """A state read back from JSON computes its public key from the private bytes, without a key object."""
        initiator, responder = _pair()
        expected = initiator.encrypt(b"x", AD)["pub"]
        restored = Ratchet.from_json(initiator.to_json())
        counter = _KeyObjectCounter(self)
        for _ in range(3):
            message = restored.encrypt(b"x", AD)
            self.assertEqual(message["pub"], expected)
            self.assertEqual(responder.decrypt(message, AD), b"x")
        self.assertEqual(counter.count, 0)

    def test_pinned_generator_still_used(self):
        """With generate_private_key replaced, ratchet keys come from it."""
        seed = _seed()
        pinned = os.urandom(32)
        self.patch(ratchet, "generate_private_key", lambda: pinned)
        _, first = Ratchet.start_initiator(seed, b"", AD)
        self.assertEqual(first["pub"], _pub(pinned))

    def test_bad_generator_refused(self):
        self.patch(ratchet, "generate_private_key", lambda: b"short")
        self.assertRaises(RuntimeError, Ratchet.start_initiator, _seed(), b"", AD)


class LazyStateTests(StepAtOnce):
    def test_no_skipped_store_until_a_key_is_skipped(self):
        """An in-order conversation never allocates the skipped-key map (per-session memory)."""
        initiator, responder = _pair()
        for _ in range(3):
            responder.decrypt(initiator.encrypt(b"a", AD), AD)
            initiator.decrypt(responder.encrypt(b"b", AD), AD)
        self.assertIsNone(initiator._state.skipped)
        self.assertIsNone(responder._state.skipped)
        initiator.encrypt(b"lost", AD)
        responder.decrypt(initiator.encrypt(b"next", AD), AD)
        self.assertEqual(len(responder._state.skipped), 1)

    def test_failed_decrypt_after_dh_step_leaves_state(self):
        """A rejected message that needed a DH step changes nothing: same key, same state."""
        initiator, responder = _pair()
        self.assertEqual(responder.decrypt(initiator.encrypt(b"genuine", AD), AD), b"genuine")
        pub_before = initiator.encrypt(b"i", AD)["pub"]
        responder.decrypt(initiator.encrypt(b"i2", AD), AD)
        forged = dict(responder.encrypt(b"r", AD), ct=os.urandom(64))
        forged["pub"] = X25519PrivateKey.generate().public_key().public_bytes_raw()
        before = initiator.to_json()
        self.assertRaises(RatchetError, initiator.decrypt, forged, AD)
        self.assertEqual(initiator.to_json(), before)
        self.assertEqual(initiator.encrypt(b"i", AD)["pub"], pub_before)

    def test_no_skip_warning_escapes(self):
        """A DH step past a gap above the threshold emits no warning, whatever pn says."""
        import warnings

        initiator, responder = _pair()
        for _ in range(1002):
            initiator.encrypt(b"lost", AD)
        self.assertEqual(initiator.decrypt(responder.encrypt(b"r", AD), AD), b"r")
        new = initiator.encrypt(b"new", AD)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self.assertEqual(responder.decrypt(new, AD), b"new")

    def test_initiator_refuses_message_on_unstarted_chain(self):
        """A message claiming the seed's responder key (no receiving chain yet) is rejected, not a crash."""
        seed = _seed()
        initiator, first = Ratchet.start_initiator(seed, b"", AD)
        forged = dict(first, pub=seed.responder_public)
        self.assertRaises(RatchetError, initiator.decrypt, forged, AD)


# ---------------------------------------------------------------------------
# Compatibility with the doubleratchet library (python-doubleratchet 1.x),
# which cairn drove until issue 19 and which stays a test dependency: the
# direct implementation must interoperate with it and read its state.


def _library():
    """The library parameterised with cairn's constants (docs/protocol.md section 11)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey as Priv
    from doubleratchet.double_ratchet import DoubleRatchet
    from doubleratchet.recommended import HashFunction, aead_aes_hmac, kdf_hkdf, kdf_separate_hmacs
    from doubleratchet.recommended.diffie_hellman_ratchet_curve25519 import DiffieHellmanRatchet

    class DH(DiffieHellmanRatchet):
        @staticmethod
        def _generate_priv():
            return ratchet.generate_private_key()

        @staticmethod
        def _derive_pub(priv):
            return Priv.from_private_bytes(priv).public_key().public_bytes_raw()

    class Root(kdf_hkdf.KDF):
        @staticmethod
        def _get_hash_function():
            return HashFunction.SHA_256

        @staticmethod
        def _get_info():
            return ratchet.ROOT_INFO

    class Chain(kdf_separate_hmacs.KDF):
        @staticmethod
        def _get_hash_function():
            return HashFunction.SHA_256

    class AEAD(aead_aes_hmac.AEAD):
        @staticmethod
        def _get_hash_function():
            return HashFunction.SHA_256

        @staticmethod
        def _get_info():
            return ratchet.AEAD_INFO

    class Library(DoubleRatchet):
        @staticmethod
        def _build_associated_data(ad, header):
            return ad + header.ratchet_pub + struct.pack(
                ">II", header.previous_sending_chain_length, header.sending_chain_length
            )

    params = dict(
        diffie_hellman_ratchet_class=DH,
        root_chain_kdf=Root,
        message_chain_kdf=Chain,
        message_chain_constant=ratchet.MESSAGE_CHAIN_CONSTANT,
        dos_protection_threshold=ratchet.DOS_PROTECTION_THRESHOLD,
        max_num_skipped_message_keys=ratchet.MAX_SKIPPED_MESSAGE_KEYS,
        aead=AEAD,
    )
    return Library, params, AEAD, Chain


def _run(coro):
    """Step a library coroutine that never suspends to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the library suspended")


class _LibraryEnd:
    """A conversation end driven by the library, with cairn's wire dicts."""

    def __init__(self, state, params):
        self.state, self.params = state, params

    @classmethod
    def initiator(cls, seed, plaintext, ad):
        Library, params, _, _ = _library()
        state, msg = _run(Library.encrypt_initial_message(
            shared_secret=seed.shared_secret, recipient_ratchet_pub=seed.responder_public,
            message=plaintext, associated_data=ad, **params))
        return cls(state, params), cls._wire(msg)

    @classmethod
    def responder(cls, seed, wire, ad):
        Library, params, _, _ = _library()
        state, plain = _run(Library.decrypt_initial_message(
            shared_secret=seed.shared_secret, own_ratchet_priv=seed.responder_private,
            message=cls._message(wire), associated_data=ad, **params))
        return cls(state, params), plain

    @staticmethod
    def _wire(msg):
        h = msg.header
        return {"pub": h.ratchet_pub, "pn": h.previous_sending_chain_length, "n": h.sending_chain_length,
                "ct": msg.ciphertext}

    @staticmethod
    def _message(wire):
        from doubleratchet.types import EncryptedMessage, Header

        return EncryptedMessage(
            header=Header(ratchet_pub=wire["pub"], previous_sending_chain_length=wire["pn"],
                          sending_chain_length=wire["n"]),
            ciphertext=wire["ct"])

    def encrypt(self, plaintext, ad):
        return self._wire(_run(self.state.encrypt_message(plaintext, ad)))

    def decrypt(self, wire, ad):
        return _run(self.state.decrypt_message(self._message(wire), ad))

    def json(self):
        return self.state.json


def _state(end):
    """An end's state in the library's JSON form, whichever end it is."""
    return end.json() if isinstance(end, _LibraryEnd) else json.loads(end.to_json())["state"]


def _converse(case, a, b, rounds=4):
    """Alternate bursts with lost, reordered and late messages between two ends."""
    for r in range(rounds):
        for sender, receiver in ((a, b), (b, a)):
            msgs = [sender.encrypt(b"%d-%d" % (r, i), AD) for i in range(5)]
            order = [3, 0, 4]  # 1 and 2 arrive late, after the next DH step's first message
            for i in order:
                case.assertEqual(receiver.decrypt(msgs[i], AD), b"%d-%d" % (r, i))
            late = msgs[1:3]
            reply = receiver.encrypt(b"reply", AD)
            case.assertEqual(sender.decrypt(reply, AD), b"reply")
            for m, i in zip(late, (1, 2)):
                case.assertEqual(receiver.decrypt(m, AD), b"%d-%d" % (r, i))
            # A replay: RatchetError here, the library's DuplicateMessageException there.
            from doubleratchet.diffie_hellman_ratchet import DuplicateMessageException

            case.assertRaises((RatchetError, DuplicateMessageException), receiver.decrypt, msgs[0], AD)


class LibraryCompatibilityTests(StepAtOnce):
    def test_cairn_initiator_library_responder(self):
        seed = _seed()
        a, first = Ratchet.start_initiator(seed, b"hello", AD)
        b, plain = _LibraryEnd.responder(seed, first, AD)
        self.assertEqual(plain, b"hello")
        _converse(self, a, b)

    def test_library_initiator_cairn_responder(self):
        seed = _seed()
        a, first = _LibraryEnd.initiator(seed, b"hello", AD)
        b, plain = Ratchet.start_responder(seed, first, AD)
        self.assertEqual(plain, b"hello")
        _converse(self, a, b)

    def test_same_bytes_as_library(self):
        """With the same pinned keys both produce the same messages, byte for byte."""
        seed = _seed()
        keys = [os.urandom(32) for _ in range(8)]

        def run(start_i, start_r):
            """The messages, and each sender's state right after each send (its own-key step taken)."""
            it = iter(keys)
            self.patch(ratchet, "generate_private_key", lambda: next(it))
            a, first = start_i(seed, b"one", AD)
            b, _ = start_r(seed, first, AD)
            out, states = [first], [_state(b)]
            for text in (b"two", b"three"):
                for sender, receiver in ((b, a), (a, b)):
                    m = sender.encrypt(text, AD)
                    states.append(_state(sender))
                    receiver.decrypt(m, AD)
                    out.append(m)
            return out, states

        self.assertEqual(run(Ratchet.start_initiator, Ratchet.start_responder),
                         run(_LibraryEnd.initiator, _LibraryEnd.responder))

    def test_state_loads_both_ways(self):
        """A state with skipped keys saved by the library loads here, and ours loads in the library."""
        Library, params, _, _ = _library()
        seed = _seed()
        a, first = _LibraryEnd.initiator(seed, b"", AD)
        b, _ = Ratchet.start_responder(seed, first, AD)
        lost = a.encrypt(b"lost", AD)
        b.decrypt(a.encrypt(b"next", AD), AD)
        text = b.to_json()
        state = json.loads(text)["state"]
        self.assertEqual(len(state["skipped_message_keys"]), 1)
        as_library = _LibraryEnd(Library.from_json(state, **params), params)
        self.assertEqual(as_library.decrypt(lost, AD), b"lost")
        self.assertEqual(json.loads(Ratchet.from_json(text).to_json()), json.loads(text))
        outer = {"format": "cairn-ratchet-state-v1", "state": as_library.json()}
        back = Ratchet.from_json(json.dumps(outer))
        self.assertEqual(a.decrypt(back.encrypt(b"r", AD), AD), b"r")

    def test_message_chain_kdf(self):
        from cairn.crypto.ratchet_state import kdf_chain

        _, _, _, Chain = _library()
        for _ in range(20):
            key = os.urandom(32)
            ck, mk = kdf_chain(key)
            self.assertEqual(ck + mk, _run(Chain.derive(key, b"\x02\x01", 64)))

    def test_aes_cbc_without_cipher_checks(self):
        # The AEAD's AES-CBC contexts skip Cipher.__init__'s checks (issue 19):
        # same bytes as Cipher's, both ways, and AES still refuses a bad key.
        from cairn.crypto.ratchet_primitives import _AESCBC

        for size in (16, 32, 1040):
            key, iv, data = os.urandom(32), os.urandom(16), os.urandom(size)
            ours = _AESCBC(key, iv).encryptor()
            theirs = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            ct = ours.update(data) + ours.finalize()
            self.assertEqual(ct, theirs.update(data) + theirs.finalize())
            back = _AESCBC(key, iv).decryptor()
            self.assertEqual(back.update(ct) + back.finalize(), data)
        self.assertRaises(ValueError, _AESCBC, os.urandom(31), os.urandom(16))

    def test_aes_cbc_through_the_binding(self):
        # The AEAD's AES-CBC (issue 19, round 8): cryptography's binding with
        # the AES and CBC objects made without their constructors, chosen at
        # import because it gives Cipher's bytes; the public path it falls
        # back to gives the same.
        from cairn.crypto import ratchet_primitives as primitives

        self.assertIsNot(primitives._cbc_encrypt, primitives._public_encrypt)
        self.assertIsNot(primitives._cbc_decrypt, primitives._public_decrypt)
        for size in (16, 32, 1040, 4096):
            key, iv, data = os.urandom(32), os.urandom(16), os.urandom(size)
            encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            expected = encryptor.update(data) + encryptor.finalize()
            for encrypt, decrypt in (
                (primitives._cbc_encrypt, primitives._cbc_decrypt),
                (primitives._public_encrypt, primitives._public_decrypt),
            ):
                self.assertEqual(encrypt(key, iv, data), expected)
                self.assertEqual(decrypt(key, iv, expected), data)

    def test_aes_cbc_fallback(self):
        # Without the binding (another cryptography), the public path.
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        from cairn.crypto import ratchet_primitives as primitives

        self.patch(rust_openssl.ciphers, "create_encryption_ctx", None)
        self.assertIsNone(primitives._binding_pair())

    def test_aead_body_not_whole_blocks(self):
        # A body that authenticates but is not whole AES blocks is refused
        # (the binding's update() would keep the rest back).
        from cairn.crypto.ratchet_primitives import _aead_keys, _tag
        from cairn.crypto.ratchet_state import RatchetFailure, aead_decrypt

        key, ad = os.urandom(32), b"ad"
        _, auth_key, _ = _aead_keys(key)
        body = os.urandom(20)
        self.assertRaises(RatchetFailure, aead_decrypt, key, body + _tag(auth_key, ad, body), ad)

    def test_aead(self):
        from cairn.crypto.ratchet_state import RatchetFailure, aead_decrypt, aead_encrypt

        _, _, AEAD, _ = _library()
        for size in (0, 1, 15, 16, 17, 1024):
            key, ad, plain = os.urandom(32), os.urandom(40), os.urandom(size)
            ct = aead_encrypt(key, plain, ad)
            self.assertEqual(ct, _run(AEAD.encrypt(plain, key, ad)))
            self.assertEqual(aead_decrypt(key, ct, ad), plain)
            tampered = ct[:-1] + bytes([ct[-1] ^ 1])
            self.assertRaises(RatchetFailure, aead_decrypt, key, tampered, ad)
        # A body that authenticates but does not unpad is refused, as by the library.
        from doubleratchet import aead as dr_aead

        key, ad = os.urandom(32), b"ad"
        okm = _hkdf(b"\x00" * 32, key, ratchet.AEAD_INFO, 80)
        for last in (b"\x00" * 16, b"\x00" * 15 + b"\x11", b"\x00" * 14 + b"\x01\x02"):
            encryptor = Cipher(algorithms.AES(okm[:32]), modes.CBC(okm[64:])).encryptor()
            body = encryptor.update(last) + encryptor.finalize()
            ct = body + _hmac(okm[32:64], ad + body)
            self.assertRaises(RatchetFailure, aead_decrypt, key, ct, ad)
            self.assertRaises(dr_aead.DecryptionFailedException, _run, AEAD.decrypt(ct, key, ad))
