"""
The protocol version and the session id are bound into the Noise handshake
through its prologue (docs/protocol.md §6.1): a handshake whose HandshakeInit
header was rewritten on the way fails with Close 8.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from cairn.crypto.handshake import HandshakeError, NoiseHandshake, handshake_prologue
from cairn.crypto.identity import Identity
from cairn.session.connection import HandshakeFailed
from cairn.session.peer import Peer
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import decode

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)
SID_A = b"\xaa" * 16
SID_B = b"\xbb" * 16


class _Wire:
    peer_address = "test"

    def __init__(self):
        self.sent = []
        self.lost = False

    def write_envelope(self, data):
        self.sent.append(bytes(data))

    def lose(self, abort=False):
        self.lost = True


def _rewrite_sid(data: bytes, sid: bytes) -> bytes:
    """The same envelope under another session id (the header is in clear during the handshake)."""
    return data[:3] + sid + data[19:]


def _exchange(i_identity, i_sid, i_version, r_identity, r_sid, r_version):
    i = NoiseHandshake(i_identity, True, session_id=i_sid, version=i_version)
    r = NoiseHandshake(r_identity, False, session_id=r_sid, version=r_version)
    r.read_init(i.write_init())
    i.read_response(r.write_response())
    r.read_final(i.write_final())
    return i.result(), r.result()


class PrologueTests(unittest.TestCase):
    def test_prologue_bytes(self):
        """The prologue is "cairn", the version byte and the session id."""
        self.assertEqual(handshake_prologue(1, SID_A), b"cairn\x01" + SID_A)
        self.assertRaises(ValueError, handshake_prologue, 1, b"short")
        self.assertRaises(ValueError, handshake_prologue, 256, SID_A)

    def test_same_binding_completes(self):
        """Both ends with the same version and session id agree on the handshake hash."""
        i, r = _exchange(ALICE, SID_A, 1, BOB, SID_A, 1)
        self.assertEqual(i.handshake_hash, r.handshake_hash)

    def test_other_session_id_fails(self):
        """An initiator and a responder holding different session ids cannot finish the handshake."""
        self.assertRaises(HandshakeError, _exchange, ALICE, SID_A, 1, BOB, SID_B, 1)

    def test_other_version_fails(self):
        """An initiator and a responder holding different version bytes cannot finish the handshake."""
        self.assertRaises(HandshakeError, _exchange, ALICE, SID_A, 1, BOB, SID_A, 2)


class SplicedHandshakeTests(unittest.TestCase):
    def test_rewritten_session_id_fails(self):
        """A man in the middle who rewrites the session id both ways makes the initiator close with Close 8."""
        initiator = Peer(ALICE, Clock())
        responder = Peer(BOB, Clock())
        i_conn = initiator.connection(initiator=True, session_id=SID_A)
        r_conn = responder.connection(initiator=False)
        i_wire, r_wire = _Wire(), _Wire()
        failures = []
        i_conn.ready.addErrback(lambda f: failures.append(f.trap(HandshakeFailed) and f.value))
        r_conn.connection_made(r_wire)
        i_conn.connection_made(i_wire)
        r_conn.envelope_received(decode(_rewrite_sid(i_wire.sent.pop(0), SID_B), 2**20))
        response = r_wire.sent.pop(0)
        self.assertEqual(decode(response, 2**20).type, MessageType.HANDSHAKE_RESPONSE)
        i_conn.envelope_received(decode(_rewrite_sid(response, SID_A), 2**20))
        close = decode(i_wire.sent[-1], 2**20)
        self.assertEqual(close.type, MessageType.CLOSE)
        self.assertEqual(cbor.loads(close.payload)["code"], CloseCode.HANDSHAKE_FAILED)
        self.assertTrue(i_wire.lost)
        i_conn.connection_lost(None)
        self.assertEqual([f.code for f in failures], [CloseCode.HANDSHAKE_FAILED])
        self.assertEqual(initiator.sessions, {})
