"""
A node serves no channels to a peer it has not paired with: ChannelInit and
Data from an unpaired peer end the session with Close 11 (NOT_PAIRED),
before any ratchet work (docs/protocol.md §10, §12.1).
"""

from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session import channels as channels_mod
from cairn.session.peer import Peer
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import decode
from tests.fuzz.targets import InMemoryNode, sealed_closes

START = {"channel": 0, "dr": {"pub": b"\x09" * 32, "pn": 0, "n": 0, "ct": b"\x00" * 48}}


def send(connection, cipher, type_code, body, seq=2):
    """Seal C{body} as the client would and hand it to the node's connection."""
    sid = connection.session.session_id
    data = cipher.seal(1, type_code, sid, seq, cbor.dumps(body)).to_bytes()
    connection.envelope_received(decode(data, 2**20))


class UnpairedChannelTests(unittest.TestCase):
    def setUp(self):
        self.node = InMemoryNode()
        self.seeds = []
        real = channels_mod.derive_seed
        self.patch(channels_mod, "derive_seed", lambda *a: self.seeds.append(a) or real(*a))

    def assertRefused(self, transport, cipher, session):
        self.assertEqual([c["code"] for c in sealed_closes(transport, cipher)], [CloseCode.NOT_PAIRED])
        self.assertTrue(transport.lost)
        self.assertEqual(session.closed.code, CloseCode.NOT_PAIRED)
        self.assertNotIn(session.session_id, self.node.peer.sessions)
        self.assertEqual(self.seeds, [], "no ratchet work for an unpaired peer")

    def test_channel_init_refused(self):
        """ChannelInit from an unpaired peer closes its session with NOT_PAIRED."""
        connection, transport, cipher = self.node.session(paired=False)
        session = connection.session
        send(connection, cipher, MessageType.CHANNEL_INIT, {"channel": 2, "name": "chat"})
        self.assertRefused(transport, cipher, session)
        self.assertEqual(session.channels, {})

    def test_ratchet_start_refused(self):
        """A ratchet start (Data on channel 0) from an unpaired peer closes its session with NOT_PAIRED, unopened."""
        connection, transport, cipher = self.node.session(paired=False)
        session = connection.session
        send(connection, cipher, MessageType.DATA, START)
        self.assertRefused(transport, cipher, session)

    def test_others_unaffected(self):
        """A paired peer's session is not touched by an unpaired peer's refusal, and may open channels."""
        bystander, b_transport, b_cipher = self.node.session(remote=self.node.bystander)
        connection, transport, cipher = self.node.session(paired=False)
        send(connection, cipher, MessageType.CHANNEL_INIT, {"channel": 2, "name": "chat"})
        self.assertTrue(transport.lost)
        send(bystander, b_cipher, MessageType.CHANNEL_INIT, {"channel": 2, "name": "chat"})
        self.assertIsNone(bystander.session.closed)
        self.assertEqual(sealed_closes(b_transport, b_cipher), [])
        self.assertEqual(bystander.session.channels[2].name, "chat")

    def test_paired_after_pairing(self):
        """Once the peer is paired, the same session may open channels."""
        connection, transport, cipher = self.node.session(paired=False)
        stranger = self.node.stranger
        self.node.trust.set_paired(stranger.peer_id, stranger.public_key, "", "psk", 0.0)
        send(connection, cipher, MessageType.CHANNEL_INIT, {"channel": 2, "name": "chat"})
        self.assertIsNone(connection.session.closed)

    def test_client_peer_allows_channels(self):
        """A peer without a pairing service (a client) lets any session open channels."""
        peer = Peer(Identity.from_seed(b"\x05" * 32), self.node.clock)
        self.assertTrue(peer.channels_allowed(object()))



    def test_gates_asked_directly_or_in_turn(self):
        """One gate is the peer's channels_allowed itself; with two, both are asked in turn, as before."""
        peer = Peer(Identity.from_seed(b"\x05" * 32), self.node.clock)
        asked = []

        class Gate:
            def __init__(self, answer):
                self.answer = answer

            def channels_allowed(self, session):
                asked.append(self)
                return self.answer

        first, second = Gate(True), Gate(False)
        peer.add_observer(object())
        peer.add_observer(first)
        self.assertEqual(peer.channels_allowed, first.channels_allowed)
        self.assertTrue(peer.channels_allowed(object()))
        peer.add_observer(second)
        self.assertFalse(peer.channels_allowed(object()))
        self.assertEqual(asked, [first, first, second])
        first.answer = False
        self.assertFalse(peer.channels_allowed(object()))
        self.assertEqual(asked[-1], first)
