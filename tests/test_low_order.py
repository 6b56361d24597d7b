"""
Every X25519 that cairn performs refuses the all-zero result, i.e. a peer
public key of small order (docs/protocol.md §11.1, §21.8, §23.4, §6):
the ratchet rejects the message, the pair box refuses the peer, the
announcer leaves that peer out, the handshake fails.
"""

import uuid

from twisted.internet import task
from twisted.trial import unittest

from cairn.crypto import dh
from cairn.crypto.identity import Identity
from cairn.crypto.ratchet import Ratchet, RatchetError
from cairn.crypto.ratchet_seed import derive_seed, session_ad
from cairn.mailbox import sealing
from cairn.signaling import announce, announcer
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import decode
from tests.fuzz.targets import InMemoryNode, sealed_closes
from tests.test_handshake import LOW_ORDER_POINTS

SID = bytes(range(16))
SEED = derive_seed(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)


def start_message(pub: bytes) -> dict:
    """A well-formed ratchet start whose ratchet key is C{pub}."""
    return {"pub": pub, "pn": 0, "n": 0, "ct": b"\x00" * 48}


class PrimitiveTests(unittest.TestCase):
    def test_x25519_refuses_low_order(self):
        """x25519() raises LowOrderPoint for every small-order public key."""
        for point in LOW_ORDER_POINTS:
            self.assertRaises(dh.LowOrderPoint, dh.x25519, b"\x11" * 32, point)

    def test_check_shared(self):
        """check_shared refuses 32 zero bytes and passes anything else."""
        self.assertRaises(dh.LowOrderPoint, dh.check_shared, bytes(32))
        self.assertEqual(dh.check_shared(b"\x00" * 31 + b"\x01"), b"\x00" * 31 + b"\x01")

    def test_x25519_agrees(self):
        """x25519() is the ordinary agreement for ordinary keys."""
        a = dh.x25519(ALICE.noise_static_private(), BOB.noise_static_public())
        b = dh.x25519(BOB.noise_static_private(), ALICE.noise_static_public())
        self.assertEqual(a, b)


class RatchetTests(unittest.TestCase):
    def test_start_with_low_order_key(self):
        """A ratchet start whose key is a small-order point is rejected, never started."""
        for point in LOW_ORDER_POINTS:
            self.assertRaises(RatchetError, Ratchet.start_responder, SEED, start_message(point), SID)

    def test_dh_step_with_low_order_key(self):
        """A message announcing a small-order ratchet key is rejected, and the ratchet still works after."""
        ad = session_ad(SID, 2)
        initiator, first = Ratchet.start_initiator(SEED, b"", ad)
        responder, _ = Ratchet.start_responder(SEED, first, ad)
        for point in LOW_ORDER_POINTS:
            self.assertRaises(RatchetError, responder.decrypt, start_message(point), ad)
        self.assertEqual(responder.decrypt(initiator.encrypt(b"still fine", ad), ad), b"still fine")

    def test_library_result_checked(self):
        """Even if the X25519 implementation returned zeros, the DH step refuses them."""
        from cairn.crypto import ratchet_state

        self.patch(dh, "crypto_scalarmult", lambda private, public: bytes(32))
        with self.assertRaises(ratchet_state.RatchetFailure) as caught:
            ratchet_state._dh(b"\x11" * 32, b"\x09" * 32)
        self.assertIsInstance(caught.exception.__cause__, dh.LowOrderPoint)


class SessionTests(unittest.TestCase):
    def test_ratchet_start_with_low_order_key(self):
        """A paired peer's ratchet start with a small-order key ends its session with Close 4."""
        node = InMemoryNode()
        connection, transport, cipher = node.session()
        session = connection.session
        body = cbor.dumps({"channel": 0, "dr": start_message(LOW_ORDER_POINTS[2])})
        sealed = cipher.seal(1, MessageType.DATA, session.session_id, 2, body).to_bytes()
        connection.envelope_received(decode(sealed, 2**20))
        self.assertEqual([c["code"] for c in sealed_closes(transport, cipher)], [CloseCode.DECRYPT_FAILED])
        self.assertEqual(session.closed.code, CloseCode.DECRYPT_FAILED)


class PairBoxTests(unittest.TestCase):
    def test_low_order_peer_refused(self):
        """A peer whose X25519 key is of small order gets no pair box (SealError), so nothing is sealed to it."""
        for point in LOW_ORDER_POINTS:
            self.patch(sealing, "crypto_sign_ed25519_pk_to_curve25519", lambda key, point=point: point)
            sealer = sealing.Sealer(ALICE)
            self.assertRaises(
                sealing.SealError, sealer.seal, BOB.peer_id, BOB.public_key, uuid.uuid4().bytes, b"secret"
            )


class RendezvousTests(unittest.TestCase):
    def test_low_order_peer_refused(self):
        """No rendezvous key is derived with a small-order key; the announcer leaves that peer out."""
        self.patch(announce, "crypto_sign_ed25519_pk_to_curve25519", lambda key: LOW_ORDER_POINTS[3])
        self.assertRaises(dh.LowOrderPoint, announce.rendezvous_key, ALICE, BOB.public_key)
        node = announcer.SignalAnnouncer(ALICE, None, [], lambda: [], lambda: [], 300, clock=task.Clock())
        self.assertEqual(node.rendezvous([BOB.public_key], 0), [])
        self.flushLoggedErrors()
