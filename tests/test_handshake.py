"""
Tests for L{cairn.crypto.handshake}: the Noise XX handshake and the
identity binding carried in messages 2 and 3.
"""

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection
from twisted.python.monkey import MonkeyPatcher
from twisted.trial import unittest

from cairn.crypto import handshake, noise_xx
from cairn.crypto.handshake import HandshakeError, HandshakeResult, NoiseHandshake
from cairn.crypto.identity import Identity
from cairn.wire import cbor
from cairn.wire.constants import STATIC_BINDING_PREFIX

FAST = settings(max_examples=200, deadline=None, database=None)

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)
MALLORY = Identity.from_seed(b"\x03" * 32)
SID = bytes(range(0xA0, 0xB0))

# Low-order Curve25519 points (the all-zero point and its kin), RFC 7748 / cr.yp.to.
LOW_ORDER_POINTS = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def run_handshake(init_identity=ALICE, resp_identity=BOB):
    """Run all three messages; return (initiator, responder, [msg1, msg2, msg3])."""
    i = NoiseHandshake(init_identity, initiator=True, session_id=SID)
    r = NoiseHandshake(resp_identity, initiator=False, session_id=SID)
    m1 = i.write_init()
    r.read_init(m1)
    m2 = r.write_response()
    i.read_response(m2)
    m3 = i.write_final()
    r.read_final(m3)
    return i, r, [m1, m2, m3]


def raw_noise(initiator, prologue=b"cairn\x01" + SID):
    """A plain noiseprotocol connection, for crafting messages the module would not write."""
    conn = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_SHA256")
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, MALLORY.noise_static_private())
    conn.start_handshake()
    return conn


def forged_payload(claimed, signer, static_of):
    """An identity payload claiming C{claimed}, signed by C{signer} over C{static_of}'s Noise key."""
    return cbor.dumps(
        {
            "identity": claimed.public_key,
            "sig": signer.sign(STATIC_BINDING_PREFIX + static_of.noise_static_public()),
        }
    )


class CompleteHandshakeTests(unittest.TestCase):
    """A handshake between two honest identities."""

    def test_equal_hash_and_crossed_keys(self):
        """Both sides get the same handshake hash and mirror-image direction keys."""
        i, r, _ = run_handshake()
        ri, rr = i.result(), r.result()
        self.assertEqual(ri.handshake_hash, rr.handshake_hash)
        self.assertEqual(len(ri.handshake_hash), 32)
        self.assertEqual(ri.key_i2r, rr.key_i2r)
        self.assertEqual(ri.key_r2i, rr.key_r2i)
        self.assertNotEqual(ri.key_i2r, ri.key_r2i)
        self.assertEqual(ri.send_key, rr.recv_key)
        self.assertEqual(ri.recv_key, rr.send_key)
        self.assertEqual(ri.send_key, ri.key_i2r)
        self.assertEqual(rr.send_key, rr.key_r2i)
        self.assertTrue(ri.initiator)
        self.assertFalse(rr.initiator)
        for key in (ri.key_i2r, ri.key_r2i):
            self.assertEqual(len(key), 32)
            self.assertIsInstance(key, bytes)

    def test_learn_each_other(self):
        """Each side learns the other's Ed25519 identity key."""
        i, r, _ = run_handshake()
        self.assertEqual(i.result().remote_identity, BOB.public_key)
        self.assertEqual(r.result().remote_identity, ALICE.public_key)

    def test_keys_work_for_aead(self):
        """The initiator's send key seals what the responder's receive key opens."""
        i, r, _ = run_handshake()
        ct = ChaCha20Poly1305(i.result().send_key).encrypt(bytes(12), b"hi", b"ad")
        self.assertEqual(ChaCha20Poly1305(r.result().recv_key).decrypt(bytes(12), ct, b"ad"), b"hi")

    def test_fresh_keys_each_time(self):
        """Two handshakes between the same identities yield different hashes and keys."""
        a, _, _ = run_handshake()
        b, _, _ = run_handshake()
        self.assertNotEqual(a.result().handshake_hash, b.result().handshake_hash)
        self.assertNotEqual(a.result().key_i2r, b.result().key_i2r)

    def test_message_sizes(self):
        """Message 1 is a bare 32-byte ephemeral key; messages 2 and 3 carry encrypted static keys."""
        _, _, (m1, m2, m3) = run_handshake()
        self.assertEqual(len(m1), 32)
        payload = len(handshake.identity_payload(BOB))
        # e (32) + encrypted s (32 + 16) + encrypted payload (+16)
        self.assertEqual(len(m2), 32 + 48 + payload + 16)
        self.assertEqual(len(m3), 48 + payload + 16)
        for m in (m1, m2, m3):
            self.assertIsInstance(m, bytes)

    def test_pinned_ephemerals_are_deterministic(self):
        """With pinned ephemeral keys the three messages and the keys are reproducible."""

        def run():
            i = NoiseHandshake(ALICE, True, ephemeral_private=b"\x11" * 32, session_id=SID)
            r = NoiseHandshake(BOB, False, ephemeral_private=b"\x22" * 32, session_id=SID)
            m1 = i.write_init()
            r.read_init(m1)
            m2 = r.write_response()
            i.read_response(m2)
            m3 = i.write_final()
            r.read_final(m3)
            return (m1, m2, m3, i.result().key_i2r, i.result().handshake_hash)

        self.assertEqual(run(), run())
        # noiseprotocol warns whenever an ephemeral key is pinned.
        self.flushWarnings()

    def test_interoperates_with_plain_noise(self):
        """A plain noiseprotocol responder with prologue "cairn" completes the XX handshake with the initiator."""
        i = NoiseHandshake(ALICE, initiator=True, session_id=SID)
        conn = raw_noise(initiator=False)
        conn.read_message(i.write_init())
        i.read_response(bytes(conn.write_message(handshake.identity_payload(MALLORY))))
        payload = bytes(conn.read_message(i.write_final()))
        self.assertEqual(i.result().remote_identity, MALLORY.public_key)
        self.assertEqual(bytes(conn.get_handshake_hash()), i.result().handshake_hash)
        body = cbor.loads(payload)
        self.assertEqual(body["identity"], ALICE.public_key)

    def test_other_prologue_fails(self):
        """A peer using a prologue other than "cairn" fails the handshake with HandshakeError."""
        i = NoiseHandshake(ALICE, initiator=True, session_id=SID)
        conn = raw_noise(initiator=False, prologue=b"cairm")
        conn.read_message(i.write_init())
        m2 = bytes(conn.write_message(handshake.identity_payload(MALLORY)))
        self.assertRaises(HandshakeError, i.read_response, m2)


class TamperTests(unittest.TestCase):
    """Handshake messages altered in transit."""

    def test_tampered_message_2(self):
        """Flipping any byte of message 2 makes read_response raise HandshakeError."""
        _, _, msgs = run_handshake()
        for pos in range(len(msgs[1])):
            i = NoiseHandshake(ALICE, True, session_id=SID)
            r = NoiseHandshake(BOB, False, session_id=SID)
            r.read_init(i.write_init())
            m2 = bytearray(r.write_response())
            m2[pos] ^= 0x01
            self.assertRaises(HandshakeError, i.read_response, bytes(m2))

    def test_tampered_message_3(self):
        """Flipping any byte of message 3 makes read_final raise HandshakeError."""
        _, _, msgs = run_handshake()
        for pos in range(len(msgs[2])):
            i = NoiseHandshake(ALICE, True, session_id=SID)
            r = NoiseHandshake(BOB, False, session_id=SID)
            r.read_init(i.write_init())
            i.read_response(r.write_response())
            m3 = bytearray(i.write_final())
            m3[pos] ^= 0x80
            self.assertRaises(HandshakeError, r.read_final, bytes(m3))

    def test_truncated_or_extended(self):
        """Message 2 or 3 cut short or with a byte appended raises HandshakeError."""
        for change in (lambda m: m[:-1], lambda m: m + b"\x00", lambda m: m[:32], lambda m: b""):
            i = NoiseHandshake(ALICE, True, session_id=SID)
            r = NoiseHandshake(BOB, False, session_id=SID)
            r.read_init(i.write_init())
            self.assertRaises(HandshakeError, i.read_response, change(r.write_response()))

            i = NoiseHandshake(ALICE, True, session_id=SID)
            r = NoiseHandshake(BOB, False, session_id=SID)
            r.read_init(i.write_init())
            i.read_response(r.write_response())
            self.assertRaises(HandshakeError, r.read_final, change(i.write_final()))

    def test_message_from_other_handshake(self):
        """Message 2 from a different handshake raises HandshakeError."""
        i = NoiseHandshake(ALICE, True, session_id=SID)
        i.write_init()
        other_i = NoiseHandshake(ALICE, True, session_id=SID)
        r = NoiseHandshake(BOB, False, session_id=SID)
        r.read_init(other_i.write_init())
        self.assertRaises(HandshakeError, i.read_response, r.write_response())


class IdentityBindingTests(unittest.TestCase):
    """The signature binding an identity key to the Noise static key."""

    def _forging(self, payload, step):
        """Call C{step} with identity_payload patched to return C{payload}."""
        patcher = MonkeyPatcher((handshake, "identity_payload", lambda identity: payload))
        return patcher.runWithPatches(step)

    def _responder_sends(self, payload):
        """Run message 1 and 2 with the responder's identity payload replaced."""
        i = NoiseHandshake(ALICE, True, session_id=SID)
        r = NoiseHandshake(MALLORY, False, session_id=SID)
        r.read_init(i.write_init())
        m2 = self._forging(payload, r.write_response)
        return i, m2

    def _initiator_sends(self, payload):
        """Run messages 1 to 3 with the initiator's identity payload replaced."""
        i = NoiseHandshake(MALLORY, True, session_id=SID)
        r = NoiseHandshake(BOB, False, session_id=SID)
        r.read_init(i.write_init())
        i.read_response(r.write_response())
        m3 = self._forging(payload, i.write_final)
        return r, m3

    def test_claimed_identity_signed_by_other_key_in_message_2(self):
        """A responder claiming Bob's identity but signing with its own key is refused."""
        i, m2 = self._responder_sends(forged_payload(BOB, MALLORY, MALLORY))
        self.assertRaises(HandshakeError, i.read_response, m2)
        self.assertRaises(HandshakeError, i.result)

    def test_claimed_identity_signed_by_other_key_in_message_3(self):
        """An initiator claiming Alice's identity but signing with its own key is refused."""
        r, m3 = self._initiator_sends(forged_payload(ALICE, MALLORY, MALLORY))
        self.assertRaises(HandshakeError, r.read_final, m3)
        self.assertRaises(HandshakeError, r.result)

    def test_replayed_identity_payload_in_message_2(self):
        """Bob's genuine identity payload replayed over another Noise static key is refused."""
        i, m2 = self._responder_sends(forged_payload(BOB, BOB, BOB))
        self.assertRaises(HandshakeError, i.read_response, m2)

    def test_replayed_identity_payload_in_message_3(self):
        """Alice's genuine identity payload replayed over another Noise static key is refused."""
        r, m3 = self._initiator_sends(forged_payload(ALICE, ALICE, ALICE))
        self.assertRaises(HandshakeError, r.read_final, m3)

    def test_signature_over_wrong_prefix(self):
        """A signature over the static key without the "cairn-noise-static:" prefix is refused."""
        payload = cbor.dumps(
            {
                "identity": MALLORY.public_key,
                "sig": MALLORY.sign(MALLORY.noise_static_public()),
            }
        )
        i, m2 = self._responder_sends(payload)
        self.assertRaises(HandshakeError, i.read_response, m2)

    def test_consistent_forgery_control(self):
        """The patched path itself works: a correct payload built the same way is accepted."""
        i, m2 = self._responder_sends(forged_payload(MALLORY, MALLORY, MALLORY))
        i.read_response(m2)
        i.write_final()
        self.assertEqual(i.result().remote_identity, MALLORY.public_key)

    def test_malformed_identity_payloads(self):
        """Identity payloads of the wrong shape raise HandshakeError in both directions."""
        good = cbor.loads(handshake.identity_payload(MALLORY))
        payloads = [
            b"",
            b"\xff",
            cbor.dumps([good["identity"], good["sig"]]),
            cbor.dumps({"identity": good["identity"]}),
            cbor.dumps({"sig": good["sig"]}),
            cbor.dumps({"identity": good["identity"][:31], "sig": good["sig"]}),
            cbor.dumps({"identity": good["identity"], "sig": good["sig"][:63]}),
            cbor.dumps({"identity": good["identity"].hex(), "sig": good["sig"]}),
            cbor.dumps(good) + b"\x00",
            b"\xc1\x00",
        ]
        for payload in payloads:
            i, m2 = self._responder_sends(payload)
            self.assertRaises(HandshakeError, i.read_response, m2)
            r, m3 = self._initiator_sends(payload)
            self.assertRaises(HandshakeError, r.read_final, m3)


class BadInputTests(unittest.TestCase):
    """Garbage and out-of-order input."""

    def test_nonempty_message_1_payload(self):
        """A first message carrying a payload is refused by read_init."""
        conn = raw_noise(initiator=True)
        m1 = bytes(conn.write_message(b"x"))
        r = NoiseHandshake(BOB, False, session_id=SID)
        self.assertRaises(HandshakeError, r.read_init, m1)

    def test_non_bytes_message(self):
        """A message that is not bytes raises HandshakeError."""
        for value in ("a" * 32, None, 5, [1], bytearray(32)):
            r = NoiseHandshake(BOB, False, session_id=SID)
            self.assertRaises(HandshakeError, r.read_init, value)

    def test_wrong_role(self):
        """An initiator asked to read a first message, or to read before it wrote, raises HandshakeError."""
        _, _, (m1, m2, _) = run_handshake()
        self.assertRaises(HandshakeError, NoiseHandshake(ALICE, True, session_id=SID).read_init, m1)
        self.assertRaises(HandshakeError, NoiseHandshake(ALICE, True, session_id=SID).read_response, m2)

    def test_read_again_after_finish(self):
        """Reading another message after the handshake finished raises HandshakeError."""
        i, r, (_, m2, m3) = run_handshake()
        self.assertRaises(HandshakeError, r.read_final, m3)
        self.assertRaises(HandshakeError, i.read_response, m2)

    def test_responder_read_out_of_order(self):
        """A fresh responder asked for read_final or read_response raises HandshakeError."""
        # Regression (fixed): cairn/crypto/handshake.py read_final()/read_response() (lines
        # ~130-148) do not check the handshake step. On a fresh responder the
        # message is read as Noise message 1 (its tail as a clear payload),
        # then _remote_static() touches self._state.rs, which is still
        # noise's Empty placeholder: AttributeError("'Empty' object has no
        # attribute 'public_bytes'") escapes instead of HandshakeError.
        # connection.py only calls read_final in "await_final", so this is an
        # API-robustness issue rather than one a remote peer can trigger.
        _, _, (m1, m2, m3) = run_handshake()
        for method, message in (("read_final", m3), ("read_final", m1), ("read_response", m2)):
            r = NoiseHandshake(BOB, False, session_id=SID)
            self.assertRaises(HandshakeError, getattr(r, method), message)

    def test_short_message_1(self):
        """A first message shorter than an X25519 key raises HandshakeError."""
        for size in (0, 1, 31):
            r = NoiseHandshake(BOB, False, session_id=SID)
            self.assertRaises(HandshakeError, r.read_init, b"\x09" * size)

    def test_low_order_ephemeral_in_message_1(self):
        """A first message whose ephemeral key is a low-order point ends in HandshakeError, never another exception."""
        # Regression (fixed): cairn/crypto/handshake.py: read_init() accepts an all-zero (or
        # other low-order) ephemeral key, since message 1 does no DH; the
        # following write_response() then performs "ee" and cryptography
        # raises ValueError("Error computing shared key.") out of
        # NoiseHandshake._write, which does not translate it. A peer sending
        # 32 zero bytes thus makes the responder raise ValueError instead of
        # HandshakeError.
        for point in LOW_ORDER_POINTS:
            r = NoiseHandshake(BOB, False, session_id=SID)

            def step(r=r, point=point):
                r.read_init(point)
                r.write_response()

            self.assertRaises(HandshakeError, step)

    def test_low_order_ephemeral_in_message_2(self):
        """A second message whose ephemeral key is a low-order point raises HandshakeError."""
        _, _, (_, m2, _) = run_handshake()
        for point in LOW_ORDER_POINTS:
            i = NoiseHandshake(ALICE, True, session_id=SID)
            i.write_init()
            self.assertRaises(HandshakeError, i.read_response, point + m2[32:])

    def test_result_before_finish(self):
        """result() raises HandshakeError at every step before the handshake is complete."""
        i = NoiseHandshake(ALICE, True, session_id=SID)
        r = NoiseHandshake(BOB, False, session_id=SID)
        self.assertRaises(HandshakeError, i.result)
        self.assertRaises(HandshakeError, r.result)
        r.read_init(i.write_init())
        self.assertRaises(HandshakeError, i.result)
        self.assertRaises(HandshakeError, r.result)
        m2 = r.write_response()
        self.assertRaises(HandshakeError, r.result)
        i.read_response(m2)
        self.assertRaises(HandshakeError, i.result)
        m3 = i.write_final()
        self.assertRaises(HandshakeError, r.result)
        r.read_final(m3)
        i.result()
        r.result()

    def test_result_repr_has_no_keys(self):
        """A HandshakeResult's repr shows neither keys nor the handshake hash."""
        i, r, _ = run_handshake()
        for result in (i.result(), r.result()):
            text = repr(result)
            self.assertIn("HandshakeResult", text)
            for secret in (result.key_i2r, result.key_r2i, result.handshake_hash, result.remote_identity):
                self.assertNotIn(secret.hex(), text)
                self.assertNotIn(repr(secret), text)
                self.assertNotIn(repr(secret)[2:12], text)
            self.assertEqual(str(result), text)

    def test_handshake_result_repr_direct(self):
        """A HandshakeResult built by hand does not show its distinctive key bytes."""
        result = HandshakeResult(b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32, b"\xdd" * 32, True)
        text = repr(result)
        for marker in ("aa", "bb", "cc", "dd", "\\xaa", "\\xcc"):
            self.assertNotIn(marker, text.lower())

    @FAST
    @given(st.binary(max_size=200))
    def test_garbage_read_init(self, data):
        """Arbitrary bytes as message 1 either pass or raise HandshakeError, also at write_response."""
        # Should this ever fail with ValueError, it found the low-order point
        # bug that test_low_order_ephemeral_in_message_1 pins down.
        r = NoiseHandshake(BOB, False, session_id=SID)
        try:
            r.read_init(data)
            r.write_response()
        except HandshakeError:
            pass

    @FAST
    @given(st.binary(max_size=300))
    def test_garbage_read_response(self, data):
        """Arbitrary bytes as message 2 raise HandshakeError."""
        i = NoiseHandshake(ALICE, True, session_id=SID)
        i.write_init()
        self.assertRaises(HandshakeError, i.read_response, data)

    @FAST
    @given(st.binary(max_size=300))
    def test_garbage_read_final(self, data):
        """Arbitrary bytes as message 3 raise HandshakeError."""
        i = NoiseHandshake(ALICE, True, session_id=SID)
        r = NoiseHandshake(BOB, False, session_id=SID)
        r.read_init(i.write_init())
        r.write_response()
        self.assertRaises(HandshakeError, r.read_final, data)

    @FAST
    @given(st.integers(0, 300), st.binary(min_size=1, max_size=4))
    def test_spliced_message_2(self, pos, junk):
        """A genuine message 2 with bytes overwritten anywhere raises HandshakeError."""
        i = NoiseHandshake(ALICE, True, session_id=SID)
        r = NoiseHandshake(BOB, False, session_id=SID)
        r.read_init(i.write_init())
        m2 = bytearray(r.write_response())
        pos %= len(m2)
        original = bytes(m2[pos : pos + len(junk)])
        m2[pos : pos + len(junk)] = junk
        if bytes(m2[pos : pos + len(junk)]) == original and len(junk) == len(original):
            return
        self.assertRaises(HandshakeError, i.read_response, bytes(m2))


class CachingTests(unittest.TestCase):
    """What is computed once per identity, or remembered, gives the same bytes and the same verdicts."""

    def test_identity_payload_computed_once(self):
        """identity_payload signs once per identity and returns what a fresh computation gives."""
        identity = Identity.generate()
        calls = []
        real_sign = Identity.sign
        self.patch(Identity, "sign", lambda self, message: calls.append(message) or real_sign(self, message))
        first = handshake.identity_payload(identity)
        self.assertEqual(handshake.identity_payload(identity), first)
        self.assertEqual(len(calls), 1)
        self.assertEqual(first, handshake._make_identity_payload(identity))
        self.assertEqual(
            cbor.loads(first),
            {
                "identity": identity.public_key,
                "sig": real_sign(identity, STATIC_BINDING_PREFIX + identity.noise_static_public()),
            },
        )

    def test_subclass_overrides_still_used(self):
        """An Identity subclass overriding noise_static_public signs what the override returns."""
        other = Identity.generate().noise_static_public()

        class Lying(Identity):
            def noise_static_public(self):
                return other

        liar = Lying.generate()
        payload = cbor.loads(handshake.identity_payload(liar))
        self.assertRaises(
            HandshakeError, handshake.check_identity_payload, handshake.identity_payload(liar),
            Identity(liar.signing_key).noise_static_public(),
        )
        self.assertEqual(handshake.check_identity_payload(handshake.identity_payload(liar), other), liar.public_key)
        self.assertEqual(payload["identity"], liar.public_key)

    def test_static_keypair_shared_and_correct(self):
        """Every handshake of one identity uses one static key pair object, the one its bytes describe."""
        a = NoiseHandshake(ALICE, initiator=True, session_id=SID)
        b = NoiseHandshake(ALICE, initiator=False, session_id=SID)
        s = a._noise._s
        self.assertIs(b._noise._s, s)
        self.assertEqual(noise_xx.public_bytes(s), ALICE.noise_static_public())
        i, r, _ = run_handshake(ALICE, BOB)
        self.assertEqual(r._remote_static(), ALICE.noise_static_public())
        self.assertEqual(i.result().handshake_hash, r.result().handshake_hash)

    def test_payload_seen_before_not_decoded_again(self):
        """A (payload, static key) pair checked before is not decoded or verified again; its outcome is the same."""
        handshake._binding_verifies.cache_clear()
        self.addCleanup(handshake._binding_verifies.cache_clear)
        decoded = []
        real = handshake.cbor.loads
        self.patch(handshake.cbor, "loads", lambda data: decoded.append(data) or real(data))
        payload = handshake.identity_payload(MALLORY)
        static = MALLORY.noise_static_public()
        wrong = ALICE.noise_static_public()
        for _ in range(3):
            self.assertEqual(handshake.check_identity_payload(payload, static), MALLORY.public_key)
            self.assertRaises(HandshakeError, handshake.check_identity_payload, payload, wrong)
            self.assertRaises(HandshakeError, handshake.check_identity_payload, b"\xff", static)
        self.assertEqual(len(decoded), 3)

    def test_verification_remembered(self):
        """A binding is verified once per (identity, static, signature); failures stay failures."""
        handshake._binding_verifies.cache_clear()
        self.addCleanup(handshake._binding_verifies.cache_clear)
        calls = []
        real = handshake.verify
        self.patch(handshake, "verify", lambda *args: calls.append(args) or real(*args))
        payload = handshake.identity_payload(MALLORY)
        static = MALLORY.noise_static_public()
        for _ in range(3):
            self.assertEqual(handshake.check_identity_payload(payload, static), MALLORY.public_key)
        self.assertEqual(len(calls), 1)
        wrong = ALICE.noise_static_public()
        for _ in range(2):
            self.assertRaises(HandshakeError, handshake.check_identity_payload, payload, wrong)
        self.assertEqual(len(calls), 2)
        bad = cbor.loads(payload)
        bad["sig"] = bytes([bad["sig"][0] ^ 1]) + bad["sig"][1:]
        self.assertRaises(HandshakeError, handshake.check_identity_payload, cbor.dumps(bad), static)
        self.assertEqual(handshake.check_identity_payload(payload, static), MALLORY.public_key)
