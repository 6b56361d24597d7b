"""
Impostor nodes (issue 21 items 1-3): a fake node with its own identity,
answering at the address a device dials, gets nothing it can test PSK
guesses against offline, cannot make PIN pairing succeed without the PIN,
and is refused outright once the device has pinned the real node.
"""

import json
import os
import stat

from nacl import bindings
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.pairing import pake, proofs
from cairn.pairing.client import PairingRejected, pair_pin, pair_psk, request_approval
from cairn.pins import FilePins, MemoryPins, NodeMismatch, PinStoreError
from cairn.session.peer import Peer
from cairn.transport.tcp import StreamFactory
from cairn.wire.constants import CloseCode, MessageType, PairRejectCode
from tests._harness import SETTINGS, ScenarioMixin, closed, eventually, track_connections
from tests._pairing_harness import PSK, PairingScenarioMixin

#: A dictionary an attacker would try (the real PSK is among them).
CANDIDATES = ["my-shared-key", "password", "correct horse battery staple", PSK, "hunter2"]


class ImpostorMixin(ScenarioMixin):
    """The harness's node plays the impostor: scripted pairing handlers, no PairingService."""

    def setUp(self):
        d = super().setUp()

        def script(_):
            self.received = []  # (type, body) of every pairing message the impostor got
            self.guess_w = proofs.psk_scalar("the impostor's guess")
            self.y = pake.random_scalar()
            for type_code in (MessageType.PAIR_REQUEST, MessageType.PAIR_RESPONSE):
                self.server.register_handler(type_code, self._handler(type_code))

        return d.addCallback(script)

    def _handler(self, type_code):
        def handle(session, body):
            self.received.append((type_code, body))
            method = body.get("method")
            if type_code == MessageType.PAIR_REQUEST:
                if method == "pin" and self.proofless:
                    session.send(MessageType.PAIR_CONFIRM, {"method": "pin", "already_paired": True})
                    return
                # pB built with the one guess the impostor commits to.
                side = pake.SideB(self.guess_w, b"", b"", b"", scalar=self.y)
                session.send(MessageType.PAIR_CHALLENGE, {"method": method, "pake": side.share})
            else:
                # Pretend success; it cannot produce the right confirmation.
                session.send(
                    MessageType.PAIR_CONFIRM, {"method": method, "already_paired": False, "confirm": os.urandom(32)}
                )

        return handle

    proofless = False

    def offline_matches(self, session):
        """The candidates an impostor can confirm offline from what it received (the v1 attack)."""
        requests = [b for t, b in self.received if t == MessageType.PAIR_REQUEST]
        responses = [b for t, b in self.received if t == MessageType.PAIR_RESPONSE]
        p_a, c_a = requests[0]["pake"], responses[0]["confirm"]
        id_a, id_b = session.local.identity.public_key, session.remote_identity
        h = session.result.handshake_hash
        p_b = pake.SideB(self.guess_w, b"", b"", b"", scalar=self.y).share
        matches = []
        for candidate in CANDIDATES:
            w = proofs.psk_scalar(candidate)
            k = pake._shared_element(self.y, w, p_a, pake.M)
            if k is None:
                continue
            _, expected_a, _ = pake.key_schedule(pake.transcript(id_a, id_b, p_a, p_b, k, w), h)
            if expected_a == c_a:
                matches.append(candidate)
        return matches

    @defer.inlineCallbacks
    def test_psk_impostor_learns_nothing_testable(self):
        """
        Against an impostor node the device sends only pA and cA, from which
        no PSK candidate (the real one included) can be confirmed offline,
        and the device fails at key confirmation, closing the session.
        """
        session = yield self.connect()
        ended = closed(self.server_session(session))
        error = yield self.assertFailure(eventually(pair_psk(session, PSK, name="laptop")), PairingRejected)
        self.assertEqual(error.code, PairRejectCode.BAD_PROOF)
        self.assertEqual((yield ended).code, CloseCode.NOT_PAIRED)
        self.assertEqual([t for t, _ in self.received], [MessageType.PAIR_REQUEST, MessageType.PAIR_RESPONSE])
        request = self.received[0][1]
        self.assertEqual(sorted(request), ["method", "name", "pake"])  # no v1 "proof"
        self.assertEqual(self.offline_matches(session), [])
        self.assertIsNone(session.local.pinning.pins.get(self.address))

    @defer.inlineCallbacks
    def test_psk_one_online_guess(self):
        """The only guess an impostor can check is the one it built into pB: one online guess per connection."""
        self.guess_w = proofs.psk_scalar(PSK)  # the impostor happened to guess right
        session = yield self.connect()
        yield self.assertFailure(eventually(pair_psk(session, PSK)), PairingRejected)
        self.assertEqual(self.offline_matches(session), [PSK])

    @defer.inlineCallbacks
    def test_pin_proofless_confirm_fails(self):
        """A fake node answering a PIN request with PairConfirm already_paired and no proof fails pair_pin()."""
        self.proofless = True
        session = yield self.connect()
        error = yield self.assertFailure(eventually(pair_pin(session, "7K3M-Q9TZ")), PairingRejected)
        self.assertEqual(error.code, PairRejectCode.BAD_PROOF)
        self.assertIsNone(session.local.pinning.pins.get(self.address))

    @defer.inlineCallbacks
    def test_pin_impostor_fails_at_confirmation(self):
        """A fake node that runs the exchange without the PIN fails the device at key confirmation."""
        session = yield self.connect()
        error = yield self.assertFailure(eventually(pair_pin(session, "7K3M-Q9TZ")), PairingRejected)
        self.assertEqual(error.code, PairRejectCode.BAD_PROOF)

    @defer.inlineCallbacks
    def test_expected_peer_id_refused_before_sending(self):
        """With expect_peer_id naming another node, the device fails with NodeMismatch and sends no PairRequest."""
        expected = Identity.generate().peer_id
        session = yield self.connect()
        ended = closed(session)
        error = yield self.assertFailure(pair_psk(session, PSK, expect_peer_id=expected), NodeMismatch)
        self.assertEqual((error.expected, error.actual), (expected, self.server.peer_id))
        self.assertIn(expected, str(error))
        self.assertIn(self.server.peer_id, str(error))
        yield ended
        self.assertEqual(self.received, [])


class ImpostorTCPTests(ImpostorMixin, unittest.TestCase):
    websocket = False


class ImpostorWebSocketTests(ImpostorMixin, unittest.TestCase):
    websocket = True


class PinningTests(PairingScenarioMixin, unittest.TestCase):
    """The real node, then an impostor taking over its address."""

    @defer.inlineCallbacks
    def take_over_address(self):
        """Stop the real node's listener and listen with an impostor on the same port."""
        impostor = Peer(Identity.generate(), self.server_clock, **SETTINGS)
        track_connections(impostor, self.connections)
        requests = []
        impostor.register_handler(MessageType.PAIR_REQUEST, lambda s, body: requests.append(body))
        yield self.port.stopListening()
        self.port = yield serverFromString(reactor, f"tcp:{self.port_number}:interface=127.0.0.1").listen(
            StreamFactory(impostor)
        )
        return impostor, requests

    @defer.inlineCallbacks
    def test_pinned_node_refused_when_replaced(self):
        """After pairing, a different node at the same address is refused with NodeMismatch naming both ids."""
        client = self.make_client()
        session = yield self.connect(client)
        result = yield eventually(pair_psk(session, self.psk))
        self.assertTrue(result.verified)
        self.assertEqual(client.pins.get(self.address), self.server.peer_id)
        impostor, requests = yield self.take_over_address()
        error = yield self.assertFailure(eventually(client.connect(self.address)), NodeMismatch)
        self.assertEqual((error.expected, error.actual), (self.server.peer_id, impostor.peer_id))
        self.assertIn(self.server.peer_id, str(error))
        self.assertIn(impostor.peer_id, str(error))
        self.assertEqual(requests, [])

    @defer.inlineCallbacks
    def test_pin_checked_by_pairing_too(self):
        """A session to a pinned address whose node differs is refused by pair_psk before anything is sent."""
        client = self.make_client(pins=MemoryPins())
        client.pins.set(self.address, Identity.generate().peer_id)
        session = yield eventually(client._dial(self.address, client.peer.connection(initiator=True)))
        yield self.assertFailure(pair_psk(session, self.psk), NodeMismatch)
        self.assertFalse(self.trust.is_paired(client.peer_id))

    @defer.inlineCallbacks
    def test_connect_expect_peer_id(self):
        """connect(expect_peer_id=...) refuses another node and accepts the right one."""
        client = self.make_client()
        yield self.assertFailure(
            eventually(client.connect(self.address, expect_peer_id=Identity.generate().peer_id)), NodeMismatch
        )
        session = yield eventually(client.connect(self.address, expect_peer_id=self.server.peer_id))
        self.assertEqual(session.remote_peer_id, self.server.peer_id)

    @defer.inlineCallbacks
    def test_approval_verified_only_for_known_node(self):
        """An approval is verified only when the node's peer id was expected; otherwise it is marked unverified."""
        for expect, verified in ((None, False), (self.server.peer_id, True)):
            client = self.make_client()
            session = yield self.connect(client)
            filed = defer.Deferred()
            d = request_approval(session, expect_peer_id=expect, on_pending=lambda filed=filed: filed.callback(None))
            yield eventually(filed)
            yield self.pairing.approve(client.peer_id)
            result = yield eventually(d)
            self.assertEqual(result.verified, verified)
            pinned = client.pins.get(self.address)
            self.assertEqual(pinned, self.server.peer_id if verified else None)


class FilePinsTests(unittest.TestCase):
    def test_round_trip(self):
        """Pins are written 0600 as a JSON object and read back by a new store."""
        path = os.path.join(self.mktemp() + "-dir", "me.key.pins")
        os.makedirs(os.path.dirname(path))
        pins = FilePins(path)
        pins.set("tcp:host=node:port=7400", "QmNode")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(json.load(f), {"tcp:host=node:port=7400": "QmNode"})
        self.assertEqual(FilePins(path).get("tcp:host=node:port=7400"), "QmNode")
        self.assertEqual(os.listdir(os.path.dirname(path)), ["me.key.pins"])

    def test_bad_file(self):
        """An unreadable pin file is a one-line PinStoreError naming the file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[1, 2]")
        error = self.assertRaises(PinStoreError, FilePins, path)
        self.assertIn(path, str(error))


class PakeShareTests(unittest.TestCase):
    def test_share_independent_of_password(self):
        """pA = x*P + w*M is a uniformly distributed point: the same x with two passwords gives unrelated shares."""
        x = pake.random_scalar()
        a1 = pake.SideA(proofs.psk_scalar("one"), b"", b"", b"", scalar=x).share
        a2 = pake.SideA(proofs.psk_scalar("two"), b"", b"", b"", scalar=x).share
        self.assertNotEqual(a1, a2)
        self.assertTrue(bindings.crypto_core_ed25519_is_valid_point(a1))
