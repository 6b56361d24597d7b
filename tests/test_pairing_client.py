"""
The client pairing API against nodes that misbehave (scripted handlers
instead of a PairingService), over TCP and WebSocket.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from cairn.pairing.client import PairingRejected, pair_link, pair_pin, pair_psk, request_approval, unpair
from cairn.pairing.codes import InvalidCode, Link
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode, MessageType, PairRejectCode
from tests._harness import ScenarioMixin, closed, eventually
from tests._pairing_harness import PairingScenarioMixin

PIN = "7K3M-Q9TZ"


class LyingNodeMixin(ScenarioMixin):
    """A node whose PairRequest handler is scripted by each test."""

    def answer(self, *replies):
        """Answer every PairRequest with C{replies} ((type, body) pairs)."""
        self.requests = []

        def handle(session, body):
            self.requests.append(body)
            for type_code, reply in replies:
                session.send(type_code, reply)

        self.server.register_handler(MessageType.PAIR_REQUEST, handle)

    @defer.inlineCallbacks
    def rejected(self, d, code):
        error = yield self.assertFailure(eventually(d), PairingRejected)
        self.assertEqual(error.code, code, error.reason)
        return error

    @defer.inlineCallbacks
    def test_wrong_server_proof(self):
        """A PairConfirm whose PSK proof is wrong fails with BAD_PROOF and the client closes the session."""
        self.answer((MessageType.PAIR_CONFIRM, {"method": "psk", "already_paired": False, "proof": bytes(32)}))
        session = yield self.connect()
        ended = closed(self.server_session(session))
        yield self.rejected(pair_psk(session, "k"), PairRejectCode.BAD_PROOF)
        self.assertEqual((yield ended).code, CloseCode.NOT_PAIRED)

    @defer.inlineCallbacks
    def test_psk_confirm_without_proof(self):
        """A PSK PairConfirm without proof is refused even when it claims the peer is already paired."""
        self.answer((MessageType.PAIR_CONFIRM, {"method": "psk", "already_paired": True}))
        session = yield self.connect()
        yield self.rejected(pair_psk(session, "k"), PairRejectCode.BAD_PROOF)

    @defer.inlineCallbacks
    def test_pin_confirm_without_proof_refused(self):
        """A fake node's PIN PairConfirm without key confirmation fails pair_pin(), even marked already paired."""
        for already in (False, True):
            self.answer((MessageType.PAIR_CONFIRM, {"method": "pin", "already_paired": already}))
            session = yield self.connect()
            ended = closed(self.server_session(session))
            yield self.rejected(pair_pin(session, PIN), PairRejectCode.BAD_PROOF)
            self.assertEqual((yield ended).code, CloseCode.NOT_PAIRED)
            self.assertIsNone(session.local.pinning.pins.get(self.address))

    @defer.inlineCallbacks
    def test_confirm_for_other_method(self):
        """A PairConfirm naming another method than the request's is a failure (MALFORMED)."""
        self.answer((MessageType.PAIR_CONFIRM, {"method": "approval"}))
        session = yield self.connect()
        yield self.rejected(pair_psk(session, "k"), PairRejectCode.MALFORMED)

    @defer.inlineCallbacks
    def test_bad_challenge(self):
        """A PairChallenge whose SPAKE2 share is not a group element fails the PIN pairing with MALFORMED."""
        self.answer((MessageType.PAIR_CHALLENGE, {"method": "pin", "pake": b"\xff" * 32}))
        session = yield self.connect()
        yield self.rejected(pair_pin(session, PIN), PairRejectCode.MALFORMED)
        self.assertIsNone(session.closed)

    @defer.inlineCallbacks
    def test_unknown_reject_code(self):
        """A PairReject code unknown to this version is passed on as a plain int."""
        self.answer((MessageType.PAIR_REJECT, {"code": 99, "reason": "new", "method": "psk"}))
        session = yield self.connect()
        error = yield self.assertFailure(eventually(pair_psk(session, "k")), PairingRejected)
        self.assertEqual((error.code, error.reason), (99, "new"))

    @defer.inlineCallbacks
    def test_malformed_reject(self):
        """An unreadable PairReject still fails the pairing, as MALFORMED."""
        self.answer((MessageType.PAIR_REJECT, ["not", "a", "map"]))
        session = yield self.connect()
        yield self.rejected(pair_psk(session, "k"), PairRejectCode.MALFORMED)

    @defer.inlineCallbacks
    def test_one_pairing_per_session(self):
        """A second pairing on a session with one in progress fails at once; cancelling frees the session."""
        self.answer()
        session = yield self.connect()
        first = request_approval(session)
        yield self.assertFailure(pair_psk(session, "k"), RuntimeError)
        first.cancel()
        yield self.assertFailure(first, defer.CancelledError)
        self.answer(
            (MessageType.PAIR_CHALLENGE, {"method": "approval"}), (MessageType.PAIR_CONFIRM, {"method": "approval"})
        )
        pending = []
        result = yield eventually(request_approval(session, on_pending=lambda: pending.append(1)))
        self.assertEqual((result.method, pending), ("approval", [1]))

    @defer.inlineCallbacks
    def test_pending_approval_reject_keeps_waiting(self):
        """A PairReject PENDING_APPROVAL during an approval request counts as pending, not as a failure."""
        self.answer(
            (
                MessageType.PAIR_REJECT,
                {"code": PairRejectCode.PENDING_APPROVAL, "reason": "wait", "method": "approval"},
            ),
            (MessageType.PAIR_CONFIRM, {"method": "approval"}),
        )
        session = yield self.connect()
        pending = []
        result = yield eventually(request_approval(session, on_pending=lambda: pending.append(1)))
        self.assertEqual((result.method, pending), ("approval", [1]))

    @defer.inlineCallbacks
    def test_session_closed_while_waiting(self):
        """A pairing in progress fails with the session's SessionClosed when the session ends."""
        self.answer()
        session = yield self.connect()
        d = request_approval(session)
        self.server_session(session).close(CloseCode.GOING_AWAY, "bye")
        error = yield self.assertFailure(eventually(d), SessionClosed)
        self.assertEqual(error.code, CloseCode.GOING_AWAY)

    @defer.inlineCallbacks
    def test_unpair_closed_otherwise(self):
        """unpair() fails with SessionClosed if the node closes with another code than PAIRING_REVOKED."""
        self.server.register_handler(MessageType.PAIR_REVOKE, lambda s, body: s.close(CloseCode.INTERNAL, "no"))
        session = yield self.connect()
        error = yield self.assertFailure(eventually(unpair(session)), SessionClosed)
        self.assertEqual(error.code, CloseCode.INTERNAL)

    @defer.inlineCallbacks
    def test_bad_pin_refused_locally(self):
        """An unreadable PIN fails at once and nothing is sent."""
        self.answer()
        session = yield self.connect()
        yield self.assertFailure(pair_pin(session, "ABCD-U000"), InvalidCode)
        self.assertEqual(self.requests, [])

    def test_bad_link_refused_locally(self):
        """A string that is not a pairing link fails at once."""
        return self.assertFailure(pair_link(self.make_client(), "https://example.org/"), InvalidCode)

    def test_link_without_address(self):
        """A link without addresses fails with ValueError."""
        uri = Link(self.server.peer_id, (), bytes(16), 5).to_uri()
        return self.assertFailure(pair_link(self.make_client(), uri), ValueError)


class LyingNodeTCPTests(LyingNodeMixin, unittest.TestCase):
    websocket = False


class LyingNodeWebSocketTests(LyingNodeMixin, unittest.TestCase):
    websocket = True


class _Refuse(Protocol):
    def connectionMade(self):
        self.transport.abortConnection()


class LinkFallbackTests(PairingScenarioMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_next_address_after_failure(self):
        """pair_link dials the link's addresses in order and pairs through the first that works."""
        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(_Refuse))
        dead = f"tcp:host=127.0.0.1:port={port.getHost().port}"
        yield port.stopListening()  # now nothing listens there
        self.link_addresses = (dead, self.address)
        uri = self.pairing.create_link()["link"]
        session, result = yield eventually(pair_link(self.make_client(), uri))
        # The dial that failed never had a transport: nothing to wait for.
        self.connections[:] = [c for c in self.connections if c.transport is not None]
        self.assertEqual(result.method, "link")
        self.assertTrue(self.trust.is_paired(session.local.peer_id))
