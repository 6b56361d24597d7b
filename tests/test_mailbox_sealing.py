"""
End-to-end sealing of forwarded payloads (cairn.mailbox.sealing) and the
batch bodies of the forward family (cairn.mailbox.messages).
"""

from twisted.trial import unittest

from cairn.crypto.identity import Identity, peer_id_for
from cairn.mailbox import messages, sealing
from cairn.mailbox.client import uuid7
from cairn.wire.schema import BodyError


class SealingTests(unittest.TestCase):
    def setUp(self):
        self.alice, self.bob, self.carol = Identity.generate(), Identity.generate(), Identity.generate()
        self.mid = uuid7()

    def seal(self, data=b"hello", signed=False, sender=None, recipient=None, mid=None):
        sender, recipient = sender or self.alice, recipient or self.bob
        return sealing.Sealer(sender).seal(recipient.peer_id, recipient.public_key, mid or self.mid, data, signed)

    def test_pair_box_round_trip(self):
        """A pair-box payload opens for the recipient, from the sender, under the id; it starts with 0x02."""
        payload = self.seal()
        self.assertEqual(payload[:1], b"\x02")
        self.assertEqual(payload[1:33], self.alice.public_key)
        self.assertEqual(len(payload), len(b"hello") + sealing.PAIR_OVERHEAD)
        self.assertEqual(sealing.Sealer(self.bob).unseal(self.alice.peer_id, self.mid, payload), b"hello")

    def test_signed_round_trip(self):
        """A signed payload (0x01) opens for the recipient too."""
        payload = self.seal(signed=True)
        self.assertEqual(payload[:1], b"\x01")
        self.assertEqual(sealing.unseal(self.bob, self.alice.peer_id, self.mid, payload), b"hello")

    def test_no_plaintext(self):
        """The data does not appear in either format."""
        secret = b"attack at dawn, attack at dawn"
        for signed in (False, True):
            self.assertNotIn(b"attack", self.seal(secret, signed))

    def test_pair_keys_derived_once(self):
        """A Sealer derives a peer's pair keys once, then reuses them."""
        sealer = sealing.Sealer(self.alice)
        first = sealer.seal(self.bob.peer_id, self.bob.public_key, self.mid, b"a")
        pair = sealer._to[self.bob.public_key]
        sealer.seal(self.bob.peer_id, self.bob.public_key, uuid7(), b"b")
        self.assertIs(sealer._to[self.bob.public_key], pair)
        self.assertEqual(len(sealer._to), 1)
        self.assertEqual(sealing.Sealer(self.bob).unseal(self.alice.peer_id, self.mid, first), b"a")

    def test_known_pair_opens_without_the_peer_id(self):
        """Once a sender's pair is known, its payloads open without computing its peer id again (issue 19)."""
        sealer = sealing.Sealer(self.bob)
        self.assertEqual(sealer.unseal(self.alice.peer_id, self.mid, self.seal(b"a")), b"a")
        mid = uuid7()
        payload = self.seal(b"b", mid=mid)
        self.patch(sealing, "peer_id_for", lambda key: self.fail("peer id computed"))
        self.assertEqual(sealer.unseal(self.alice.peer_id, mid, payload), b"b")

    def test_known_pair_checks_the_sender(self):
        """A payload whose key's pair is known but that the node attributes to another peer is still refused."""
        sealer = sealing.Sealer(self.bob)
        sealer.unseal(self.alice.peer_id, self.mid, self.seal())
        sealer.unseal(self.carol.peer_id, self.mid, self.seal(sender=self.carol))
        for claimed in (self.carol.peer_id, self.bob.peer_id, "Qm" + "Z" * 44):
            with self.assertRaises(sealing.SealError) as caught:
                sealer.unseal(claimed, self.mid, self.seal())
            self.assertEqual(str(caught.exception), "the payload was sealed by another peer than the node says")
        self.assertEqual(sealer.unseal(self.alice.peer_id, self.mid, self.seal()), b"hello")

    def test_deterministic_nonce(self):
        """The same (id, data) seals to the same bytes; other data under the same id gets another nonce."""
        self.assertEqual(self.seal(b"x"), self.seal(b"x"))
        self.assertNotEqual(self.seal(b"x")[33:45], self.seal(b"y")[33:45])

    def assertRefused(self, identity, sender_id, mid, payload):
        self.assertRaises(sealing.SealError, sealing.Sealer(identity).unseal, sender_id, mid, payload)

    def test_other_recipient_cannot_open(self):
        """A third peer cannot open a pair-box payload, even claiming the right sender."""
        self.assertRefused(self.carol, self.alice.peer_id, self.mid, self.seal())

    def test_not_reflected_to_sender(self):
        """A payload from alice to bob does not open at alice as if bob had sent it."""
        self.assertRefused(self.alice, self.bob.peer_id, self.mid, self.seal())

    def test_other_id_refused(self):
        """A payload replayed under another message id does not open."""
        self.assertRefused(self.bob, self.alice.peer_id, uuid7(), self.seal())

    def test_wrong_sender_refused(self):
        """A payload attributed to another sender than its key is refused, in both formats."""
        for signed in (False, True):
            self.assertRefused(self.bob, self.carol.peer_id, self.mid, self.seal(signed=signed))

    def test_substituted_sender_key_refused(self):
        """A node replacing the sender key by carol's (and naming carol) cannot make it open."""
        payload = self.seal()
        forged = payload[:1] + self.carol.public_key + payload[33:]
        self.assertRefused(self.bob, self.carol.peer_id, self.mid, forged)

    def test_tampered_refused(self):
        """A flipped byte of the ciphertext or the nonce is refused."""
        payload = bytearray(self.seal())
        for index in (40, len(payload) - 1):
            tampered = bytearray(payload)
            tampered[index] ^= 1
            self.assertRefused(self.bob, self.alice.peer_id, self.mid, bytes(tampered))

    def test_malformed_refused(self):
        """An unknown format byte, a short payload or an empty one is refused."""
        for payload in (b"\x03" + self.seal()[1:], self.seal()[:40], b""):
            self.assertRefused(self.bob, self.alice.peer_id, self.mid, payload)

    def test_wrong_key_offered(self):
        """Sealing with a key that is not the recipient's is refused."""
        self.assertRaises(
            sealing.SealError,
            sealing.Sealer(self.alice).seal,
            self.bob.peer_id,
            self.carol.public_key,
            self.mid,
            b"x",
        )

    def test_unusable_peer_key(self):
        """A peer key with no X25519 form (all zero) is a SealError, not a crash."""
        zero = bytes(32)
        self.assertRaises(sealing.SealError, sealing.Sealer(self.alice).seal, peer_id_for(zero), zero, self.mid, b"x")
        forged = b"\x02" + zero + bytes(12) + bytes(20)
        self.assertRefused(self.bob, peer_id_for(zero), self.mid, forged)


class BatchBodyTests(unittest.TestCase):
    def delivery(self, seq):
        return {"id": bytes(16), "from": Identity.generate().peer_id, "seq": seq, "stored_at": 1.0, "payload": b"p"}

    def test_deliveries_in_order(self):
        """A ForwardDeliver parses into its deliveries, which must have increasing seqs."""
        parsed = messages.parse_deliveries({"messages": [self.delivery(1), self.delivery(5)]})
        self.assertEqual([d[2] for d in parsed], [1, 5])
        for seqs in ((5, 1), (2, 2)):
            body = {"messages": [self.delivery(s) for s in seqs]}
            self.assertRaises(BodyError, messages.parse_deliveries, body)

    def test_batch_sizes(self):
        """A batch holds 1 to MAX_BATCH entries: an empty or missing array, or a bigger one, is refused."""
        for body in ({"messages": []}, {}, {"messages": "x"}, [], {"messages": [{}] * (messages.MAX_BATCH + 1)}):
            self.assertRaises(BodyError, messages.parse_deliveries, body)
            self.assertRaises(BodyError, messages.request_entries, body)
        self.assertRaises(BodyError, messages.parse_acks, {"acks": []})
        self.assertRaises(BodyError, messages.parse_receipts, {"receipts": []})

    def test_request_entries_need_ids(self):
        """Every ForwardRequest entry needs a 16-byte id; other defects are left to the per-entry checks."""
        good = {"id": bytes(16), "to": "not a peer id", "payload": b""}
        self.assertEqual(messages.request_entries({"messages": [good]}), [good])
        self.assertRaises(BodyError, messages.request_entries, {"messages": [good, {"id": b"short"}]})
        self.assertRaises(BodyError, messages.parse_forward_request, good)

    def test_acks(self):
        """A ForwardAck parses into (id, status, reason) per entry."""
        body = {"acks": [{"id": bytes(16), "status": 0}, {"id": b"\x01" * 16, "status": 4, "reason": "bad"}]}
        self.assertEqual(messages.parse_acks(body), [(bytes(16), 0, ""), (b"\x01" * 16, 4, "bad")])

    def test_purge_upto(self):
        """ForwardPurge's upto is a positive integer, 0 when absent."""
        self.assertEqual(messages.parse_purge_upto({}), 0)
        self.assertEqual(messages.parse_purge_upto({"upto": 7}), 7)
        for bad in (0, -1, 2**63, True, "7"):
            self.assertRaises(BodyError, messages.parse_purge_upto, {"upto": bad})
