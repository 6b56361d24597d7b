"""
SPAKE2 (RFC 9382) of PSK and PIN pairing: the constants, the key
schedule against RFC 9382's own vector, the exchanges of docs/protocol.md
§20.8 byte for byte, and the refusal of invalid elements.
"""

import hashlib
import unicodedata

from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.pairing import codes, messages, pake, proofs
from cairn.wire import cbor
from tests.test_pairing_units import doc_vectors

#: RFC 9382 Appendix B, first vector (P-256, A='server', B='client'): only
#: the transcript and what the key schedule makes of it -- group-free, so it
#: checks our key schedule against the RFC itself.
RFC9382_TT = bytes.fromhex(
    "06000000000000007365727665720600000000000000636c69656e74410000000000000004a56fa807caaa53a4d28dbb9853b981"
    "5c61a411118a6fe516a8798434751470f9010153ac33d0d5f2047ffdb1a3e42c9b4e6be662766e1eeb4116988ede5f912c41000000"
    "000000000406557e482bd03097ad0cbaa5df82115460d951e3451962f1eaf4367a420676d09857ccbc522686c83d1852abfa8ed6e4"
    "a1155cf8f1543ceca528afb591a1e0b741000000000000000412af7e89717850671913e6b469ace67bd90a4df8ce45c2af19010175"
    "e37eed69f75897996d539356e2fa6a406d528501f907e04d97515fbe83db277b715d332520000000000000002ee57912099d31560b"
    "3a44b1184b9b4866e904c49d12ac5042c97dca461b1a5f"
)
RFC9382_KE = bytes.fromhex("0e0672dc86f8e45565d338b0540abe69")
RFC9382_CA = bytes.fromhex("58ad4aa88e0b60d5061eb6b5dd93e80d9c4f00d127c65b3b35b1b5281fee38f0")
RFC9382_CB = bytes.fromhex("d3e2e547f1ae04f2dbdbf0fc4b79f8ecff2dff314b5d32fe9fcef2fb26dc459b")

#: Encodings that are not points of order L.
IDENTITY = bytes([1]) + bytes(31)
SMALL_ORDER = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
NON_CANONICAL = bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
NOT_ON_CURVE = b"\xff" * 32


def scalar(v, name) -> int:
    return int.from_bytes(v[name], "little")


def run_exchange(v, w):
    """Both sides of the exchange of vector C{v} with fixed x and y."""
    a = pake.SideA(w, v["id_a"], v["id_b"], v["handshake_hash"], scalar=scalar(v, "x_le"))
    b = pake.SideB(w, v["id_a"], v["id_b"], v["handshake_hash"], scalar=scalar(v, "y_le"))
    return a, b


class ConstantTests(unittest.TestCase):
    def test_m_and_n_from_their_seeds(self):
        """M and N are RFC 9382's: SHA-256 of the seed, hashed again until it is a point of order L."""
        v = doc_vectors()["spake2-constants"]
        for name, point in (("M", pake.M), ("N", pake.N)):
            digest = hashlib.sha256(f"edwards25519 point generation seed ({name})".encode("ascii")).digest()
            while not pake.valid_point(digest):
                digest = hashlib.sha256(digest).digest()
            self.assertEqual(digest, point)
            self.assertEqual(v[name.lower()], point)

    def test_rfc9382_key_schedule(self):
        """The key schedule reproduces RFC 9382's own vector (Ke, cA, cB from TT, empty AAD)."""
        self.assertEqual(pake.key_schedule(RFC9382_TT), (RFC9382_KE, RFC9382_CA, RFC9382_CB))
        v = doc_vectors()["rfc9382-key-schedule"]
        self.assertEqual((v["tt"], v["ke"], v["confirm_a"], v["confirm_b"]), (RFC9382_TT,) + pake.key_schedule(v["tt"]))


class VectorTests(unittest.TestCase):
    """The §20.8 vectors are what the code computes."""

    def setUp(self):
        self.vectors = doc_vectors()

    def check_exchange(self, v, w):
        self.assertEqual(v["id_a"], Identity.from_seed(b"\x01" * 32).public_key)
        self.assertEqual(v["id_b"], Identity.from_seed(b"\x02" * 32).public_key)
        self.assertEqual(w.to_bytes(32, "little"), v["w_le"])
        a, b = run_exchange(v, w)
        self.assertEqual((a.share, b.share), (v["pa"], v["pb"]))
        k = pake._shared_element(scalar(v, "x_le"), w, b.share, pake.N)
        self.assertEqual(k, v["k"])
        self.assertEqual(k, pake._shared_element(scalar(v, "y_le"), w, a.share, pake.M))
        tt = pake.transcript(v["id_a"], v["id_b"], v["pa"], v["pb"], k, w)
        self.assertEqual(tt, v["tt"])
        ke, confirm_a, confirm_b = pake.key_schedule(tt, v["handshake_hash"])
        self.assertEqual((ke, confirm_a, confirm_b), (v["ke"], v["confirm_a"], v["confirm_b"]))
        self.assertEqual(a.finish(b.share), (confirm_a, confirm_b))
        self.assertEqual(b.finish(a.share), (confirm_a, confirm_b))

    def test_psk_exchange(self):
        """The whole PSK exchange of §20.8: w, pA, pB, K, TT, Ke, cA, cB and the four bodies."""
        v = self.vectors["spake2-psk"]
        self.assertEqual(v["psk"], b"correct horse battery staple")
        self.check_exchange(v, proofs.psk_scalar(v["psk"].decode("utf-8")))
        self.assertEqual(cbor.dumps({"method": "psk", "name": "laptop", "pake": v["pa"]}), v["request_cbor"])
        self.assertEqual(cbor.dumps({"method": "psk", "pake": v["pb"]}), v["challenge_cbor"])
        self.assertEqual(cbor.dumps({"method": "psk", "confirm": v["confirm_a"]}), v["response_cbor"])
        self.assertEqual(cbor.dumps(messages.pair_confirm("psk", v["confirm_b"])), v["confirm_cbor"])
        self.assertEqual(messages.parse_pair_request(cbor.loads(v["request_cbor"])).pake, v["pa"])

    def test_pin_exchange(self):
        """The whole PIN exchange of §20.8 for PIN 7K3M-Q9TZ."""
        v = self.vectors["spake2-pin"]
        self.assertEqual(v["pw"], codes.normalize_pin("7k3m-q9tz").encode("ascii"))
        self.check_exchange(v, proofs.pin_scalar(v["pw"]))

    def test_link(self):
        """The link id, key and both proofs match the document."""
        v = self.vectors["link"]
        self.assertEqual(proofs.link_id(v["secret"]), v["link_id"])
        key = proofs.link_key(v["secret"])
        self.assertEqual(key, v["key"])
        self.assertEqual(proofs.link_proofs(key, v["handshake_hash"]), (v["client_proof"], v["server_proof"]))
        link = codes.Link("peer", (), v["secret"], 0)
        self.assertIn("secret=QEFCQ0RFRkdISUpLTE1OTw&", link.to_uri())

    def test_psk_nfc(self):
        """A PSK is NFC-normalised before use: its NFD and NFC spellings give the same w."""
        v = self.vectors["psk-nfc"]
        nfd, nfc = v["psk_nfd"].decode("utf-8"), v["psk_nfc"].decode("utf-8")
        self.assertNotEqual(nfd, nfc)
        self.assertEqual(unicodedata.normalize("NFC", nfd), nfc)
        self.assertEqual(proofs.psk_bytes(nfd), v["psk_nfc"])
        self.assertEqual(proofs.psk_scalar(nfd).to_bytes(32, "little"), v["w_le"])
        self.assertEqual(proofs.psk_scalar(nfc), proofs.psk_scalar(nfd))

    def test_all_present(self):
        """The document carries every pairing vector block the suite checks."""
        self.assertLessEqual(
            {"link", "psk-nfc", "rfc9382-key-schedule", "spake2-constants", "spake2-pin", "spake2-psk"},
            set(self.vectors),
        )

    def test_labels_distinct(self):
        """Every derivation label is distinct ASCII."""
        labels = [getattr(proofs, n) for n in dir(proofs) if n.isupper() and isinstance(getattr(proofs, n), bytes)]
        self.assertEqual(len(labels), 6)
        self.assertEqual(len(set(labels)), len(labels))
        for label in labels:
            label.decode("ascii")


class ExchangeTests(unittest.TestCase):
    def sides(self, w_a, w_b, aad_a=b"h" * 32, aad_b=b"h" * 32):
        ids = (b"A" * 32, b"B" * 32)
        return pake.SideA(w_a, *ids, aad_a), pake.SideB(w_b, *ids, aad_b)

    def test_agree(self):
        """Both sides with the same password derive the same confirmations."""
        a, b = self.sides(7, 7)
        self.assertEqual(a.finish(b.share), b.finish(a.share))

    def test_wrong_password(self):
        """Different passwords raise nothing but give confirmations that differ."""
        a, b = self.sides(proofs.psk_scalar("right"), proofs.psk_scalar("wrong"))
        self.assertNotEqual(a.finish(b.share)[0], b.finish(a.share)[0])

    def test_other_session(self):
        """A different handshake hash (another session) gives other confirmations."""
        a, b = self.sides(5, 5, aad_b=b"i" * 32)
        self.assertNotEqual(a.finish(b.share), b.finish(a.share))

    def test_invalid_elements_refused(self):
        """Identity, small-order, non-canonical and off-curve encodings are refused by both sides."""
        for bad in (IDENTITY, SMALL_ORDER, NON_CANONICAL, NOT_ON_CURVE, bytes(32), b"short"):
            a, b = self.sides(3, 3)
            self.assertFalse(pake.valid_point(bad))
            self.assertRaises(pake.InvalidElement, a.finish, bad)
            self.assertRaises(pake.InvalidElement, b.finish, bad)

    def test_unblinded_identity(self):
        """
        A share equal to w*M (K would be the identity) is not an error on
        the node -- it yields a confirmation no one matches -- and aborts the device.
        """
        from nacl import bindings

        w = proofs.psk_scalar("the password")
        a, b = self.sides(w, w)
        w_m = bindings.crypto_scalarmult_ed25519_noclamp(w.to_bytes(32, "little"), pake.M)
        expect, _ = b.finish(w_m)
        self.assertNotEqual(expect, a.finish(b.share)[0])
        w_n = bindings.crypto_scalarmult_ed25519_noclamp(w.to_bytes(32, "little"), pake.N)
        self.assertRaises(pake.InvalidElement, a.finish, w_n)
