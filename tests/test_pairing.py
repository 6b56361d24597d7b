"""
Pairing end to end: real clients against the node on loopback, each
scenario run over TCP and over WebSocket.
"""

from twisted.internet import defer
from twisted.logger import formatEvent
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.pairing import pake, proofs
from cairn.pairing.client import (
    PairingRejected,
    ServerMismatch,
    pair_link,
    pair_pin,
    pair_psk,
    request_approval,
    unpair,
)
from cairn.pairing.codes import Link, parse_link
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED
from cairn.session.guards import paired_only
from cairn.wire.constants import CloseCode, MessageType, PairRejectCode
from tests._harness import closed, eventually, observe_logs
from tests._pairing_harness import PairingScenarioMixin, Replies

CUSTOM = 0xF0AA


def pairing_log(test):
    """The pairing service's log lines, as text, from now on; and a Deferred of the first 'pending approval'."""
    lines, pending = [], defer.Deferred()

    def observe(event):
        if event.get("log_namespace") == "cairn.pairing.service":
            lines.append(formatEvent(event))
            if "pending approval" in lines[-1] and not pending.called:
                pending.callback(lines[-1])

    observe_logs(test, observe)
    return lines, pending


class PairingMixin(PairingScenarioMixin):
    @defer.inlineCallbacks
    def rejected(self, d, code):
        """Wait for C{d} to fail with L{PairingRejected} carrying C{code}."""
        error = yield self.assertFailure(eventually(d), PairingRejected)
        self.assertEqual(error.code, code, error.reason)
        return error

    def wrong_pin(self, pin):
        """A valid PIN that differs from C{pin}."""
        return "ZZZZ-ZZZZ" if pin != "ZZZZ-ZZZZ" else "0000-0000"

    # PSK

    @defer.inlineCallbacks
    def test_psk_pairs(self):
        """A client proving the node's PSK is paired, under the name it gave, and the node proves the PSK back."""
        session = yield self.connect()
        result = yield eventually(pair_psk(session, self.psk, name="laptop"))
        self.assertEqual((result.peer_id, result.method, result.already_paired), (self.server.peer_id, "psk", False))
        record = yield self.trust.get(session.local.peer_id)
        self.assertEqual((record.state, record.method, record.name), (PAIRED, "psk", "laptop"))
        self.assertTrue(self.pairing.connected(session.local.peer_id))

    @defer.inlineCallbacks
    def test_psk_again_is_idempotent(self):
        """A paired peer repeating the PSK request gets PairConfirm again, marked already paired."""
        session = yield self.connect()
        yield eventually(pair_psk(session, self.psk))
        result = yield eventually(pair_psk(session, self.psk))
        self.assertTrue(result.already_paired)

    @defer.inlineCallbacks
    def test_wrong_psk_rejected(self):
        """A wrong PSK is refused with BAD_PROOF and the peer stays unpaired."""
        session = yield self.connect()
        yield self.rejected(pair_psk(session, "not the key"), PairRejectCode.BAD_PROOF)
        self.assertFalse(self.trust.is_paired(session.local.peer_id))
        self.assertIsNone(session.closed)

    @defer.inlineCallbacks
    def test_psk_confirmation_replayed_on_another_session(self):
        """A key confirmation made on one session is refused with BAD_PROOF on another."""
        client = self.make_client()
        first = yield self.connect(client)
        second = yield self.connect(client)
        replies = Replies(client.peer)
        confirms = []
        for session in (first, second):
            side = pake.SideA(
                proofs.psk_scalar(self.psk),
                client.peer.identity.public_key,
                session.remote_identity,
                session.result.handshake_hash,
            )
            reply = replies.next()
            session.send(MessageType.PAIR_REQUEST, {"method": "psk", "pake": side.share})
            type_code, body = yield reply
            self.assertEqual(type_code, MessageType.PAIR_CHALLENGE)
            confirms.append(side.finish(body["pake"])[0])
        reply = replies.next()
        second.send(MessageType.PAIR_RESPONSE, {"method": "psk", "confirm": confirms[0]})
        type_code, body = yield reply
        self.assertEqual((type_code, body["code"]), (MessageType.PAIR_REJECT, PairRejectCode.BAD_PROOF))
        self.assertFalse(self.trust.is_paired(client.peer_id))

    @defer.inlineCallbacks
    def test_version_one_requests_refused(self):
        """A PairRequest of the removed v1 PSK or PIN exchange gets UNSUPPORTED_VERSION and pairs nothing."""
        client = self.make_client()
        session = yield self.connect(client)
        replies = Replies(client.peer)
        for body in ({"method": "psk", "proof": bytes(32)}, {"method": "pin", "spake2": b"A" + bytes(32)}):
            reply = replies.next()
            session.send(MessageType.PAIR_REQUEST, body)
            type_code, answer = yield reply
            self.assertEqual(
                (type_code, answer["code"], answer["method"]),
                (MessageType.PAIR_REJECT, PairRejectCode.UNSUPPORTED_VERSION, body["method"]),
            )
        self.assertFalse(self.trust.is_paired(client.peer_id))

    @defer.inlineCallbacks
    def test_psk_nfc_normalised(self):
        """A PSK typed in another Unicode normal form (NFD) pairs with the node's NFC one."""
        import unicodedata

        self.pairing.rotate_psk("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, a long shared key")
        session = yield self.connect()
        decomposed = unicodedata.normalize("NFD", "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, a long shared key")
        result = yield eventually(pair_psk(session, decomposed))
        self.assertEqual(result.method, "psk")

    # PIN

    @defer.inlineCallbacks
    def test_pin_pairs(self):
        """A client typing the node's PIN (in any accepted spelling) is paired through SPAKE2."""
        pin = self.pairing.create_pin()["pin"]
        session = yield self.connect()
        result = yield eventually(pair_pin(session, " " + pin.lower().replace("-", " "), name="phone"))
        self.assertEqual(result.method, "pin")
        record = yield self.trust.get(session.local.peer_id)
        self.assertEqual((record.state, record.method, record.name), (PAIRED, "pin", "phone"))

    @defer.inlineCallbacks
    def test_wrong_pin_rejected(self):
        """A wrong PIN is refused with BAD_PROOF, the session stays open and the peer unpaired."""
        pin = self.pairing.create_pin()["pin"]
        session = yield self.connect()
        yield self.rejected(pair_pin(session, self.wrong_pin(pin)), PairRejectCode.BAD_PROOF)
        self.assertFalse(self.trust.is_paired(session.local.peer_id))
        self.assertIsNone(session.closed)

    @defer.inlineCallbacks
    def test_expired_pin(self):
        """A PIN used after its 5 minutes is refused with EXPIRED."""
        pin = self.pairing.create_pin()["pin"]
        self.clock.advance(301)
        session = yield self.connect()
        yield self.rejected(pair_pin(session, pin), PairRejectCode.EXPIRED)

    @defer.inlineCallbacks
    def test_pin_single_use(self):
        """A PIN pairs one peer only; a second peer using it gets ALREADY_USED."""
        pin = self.pairing.create_pin()["pin"]
        first = yield self.connect()
        yield eventually(pair_pin(first, pin))
        second = yield self.connect()
        yield self.rejected(pair_pin(second, pin), PairRejectCode.ALREADY_USED)
        self.assertFalse(self.trust.is_paired(second.local.peer_id))

    @defer.inlineCallbacks
    def test_pin_burned_after_three_failures(self):
        """After 3 wrong guesses the PIN is invalid: even the right one gets EXPIRED."""
        pin = self.pairing.create_pin()["pin"]
        for _ in range(3):
            session = yield self.connect()  # one failed exchange per session
            yield self.rejected(pair_pin(session, self.wrong_pin(pin)), PairRejectCode.BAD_PROOF)
        self.assertEqual(self.pairing.pairing_status()["pin"]["burned"], 1)
        other = yield self.connect()
        error = yield self.rejected(pair_pin(other, pin), PairRejectCode.EXPIRED)
        self.assertIn("3 failed attempts", error.reason)

    @defer.inlineCallbacks
    def test_new_pin_replaces_old(self):
        """Creating a PIN invalidates the previous one."""
        old = self.pairing.create_pin()["pin"]
        new = self.pairing.create_pin()["pin"]
        if old != new:
            session = yield self.connect()
            yield self.rejected(pair_pin(session, old), PairRejectCode.BAD_PROOF)
        session = yield self.connect()
        yield eventually(pair_pin(session, new))

    # Links

    @defer.inlineCallbacks
    def test_link_pairs(self):
        """A client given only the link dials the node, checks its id and is paired."""
        created = self.pairing.create_link()
        self.assertEqual(created["expires_at"], 3600)
        client = self.make_client()
        server_side = self.wait_for_session()
        session, result = yield eventually(pair_link(client, created["link"], name="tablet"))
        yield server_side
        self.assertEqual((result.peer_id, result.method), (self.server.peer_id, "link"))
        record = yield self.trust.get(client.peer_id)
        self.assertEqual((record.state, record.method, record.name), (PAIRED, "link", "tablet"))
        self.assertIsNone(session.closed)

    @defer.inlineCallbacks
    def test_link_naming_another_node_refused(self):
        """A link whose peer id is not the answering node's is refused by the client before any proof is sent."""
        link = parse_link(self.pairing.create_link()["link"])
        forged = Link(Identity.generate().peer_id, link.addresses, link.secret, link.expires_at)
        client = self.make_client()
        server_side = self.wait_for_session()
        error = yield self.assertFailure(eventually(pair_link(client, forged.to_uri())), ServerMismatch)
        self.assertEqual(error.actual, self.server.peer_id)
        server_session = yield server_side
        yield closed(server_session)
        self.assertFalse(self.trust.is_paired(client.peer_id))
        self.assertFalse(self.pairing.links.get(proofs.link_id(link.secret)).used)

    @defer.inlineCallbacks
    def test_expired_link(self):
        """A link used after its hour is refused with EXPIRED (and the client closes its session)."""
        uri = self.pairing.create_link()["link"]
        self.clock.advance(3601)
        yield self.rejected(pair_link(self.make_client(), uri), PairRejectCode.EXPIRED)

    @defer.inlineCallbacks
    def test_used_link(self):
        """A link pairs one peer only; a second use gets ALREADY_USED."""
        uri = self.pairing.create_link()["link"]
        yield eventually(pair_link(self.make_client(), uri))
        yield self.rejected(pair_link(self.make_client(), uri), PairRejectCode.ALREADY_USED)

    # Operator approval

    @defer.inlineCallbacks
    def test_unknown_peer_not_pending(self):
        """A peer that connects without asking to pair is not filed as a pending request."""
        session = yield self.connect()
        self.assertEqual((yield self.trust.list(PENDING)), [])
        self.assertFalse(self.trust.is_paired(session.local.peer_id))

    @defer.inlineCallbacks
    def test_psk_pairing_not_logged_pending(self):
        """A peer that pairs by PSK in its session is logged as paired, never as pending approval."""
        lines, _ = pairing_log(self)
        session = yield self.connect()
        yield eventually(pair_psk(session, self.psk))
        server_side = self.server_session(session)
        session.close()
        yield closed(server_side)
        self.assertEqual([line for line in lines if "pending" in line], [])
        self.assertEqual(len([line for line in lines if "paired by psk" in line]), 1)

    @defer.inlineCallbacks
    def test_unpaired_peer_leaving_not_pending(self):
        """An unknown peer that only dials in and leaves files no request and logs no 'pending approval' (§20.4.4)."""
        lines, _ = pairing_log(self)
        session = yield self.connect()
        server_side = self.server_session(session)
        session.close()
        yield closed(server_side)
        self.assertEqual([line for line in lines if "pending approval" in line], [])
        self.assertEqual((yield self.trust.list(PENDING)), [])

    @defer.inlineCallbacks
    def test_approval_request_logged_pending(self):
        """A request for approval is logged as pending at once, with the device's name."""
        lines, pending = pairing_log(self)
        session = yield self.connect()
        request_approval(session, name="kitchen tablet").addErrback(lambda f: None)
        line = yield eventually(pending)
        self.assertIn("(kitchen tablet) pending approval", line)
        self.assertIn(f"cairn-server approve {session.local.peer_id}", line)

    @defer.inlineCallbacks
    def test_approval_approved(self):
        """A request for approval is listed with its name; approving it fires the client's Deferred."""
        session = yield self.connect()
        filed = defer.Deferred()
        d = request_approval(session, name="kitchen tablet", on_pending=lambda: filed.callback(None))
        yield eventually(filed)
        [record] = yield self.trust.list(PENDING)
        self.assertEqual((record.peer_id, record.name), (session.local.peer_id, "kitchen tablet"))
        approved = yield self.pairing.approve(session.local.peer_id)
        self.assertEqual(approved.method, "approval")
        result = yield eventually(d)
        self.assertEqual(result.method, "approval")
        self.assertTrue(self.trust.is_paired(session.local.peer_id))

    @defer.inlineCallbacks
    def test_approval_rejected(self):
        """Rejecting a pending request fails the client's Deferred with REJECTED_BY_OPERATOR."""
        session = yield self.connect()
        filed = defer.Deferred()
        d = request_approval(session, on_pending=lambda: filed.callback(None))
        yield eventually(filed)
        yield self.pairing.reject(session.local.peer_id)
        yield self.rejected(d, PairRejectCode.REJECTED_BY_OPERATOR)
        self.assertEqual((yield self.trust.list(PENDING)), [])

    # Unpairing

    @defer.inlineCallbacks
    def test_unpair_by_operator(self):
        """Unpairing revokes trust, closes the peer's session with PAIRING_REVOKED and calls the purge hooks."""
        purged = []
        self.pairing.add_purge_hook(purged.append)
        session = yield self.connect()
        yield eventually(pair_psk(session, self.psk))
        ended = closed(session)
        yield self.pairing.unpair(session.local.peer_id)
        self.assertEqual((yield ended).code, CloseCode.PAIRING_REVOKED)
        self.assertEqual(purged, [session.local.peer_id])
        self.assertEqual((yield self.trust.get(session.local.peer_id)).state, REVOKED)
        self.assertFalse(self.pairing.connected(session.local.peer_id))

    @defer.inlineCallbacks
    def test_unpair_by_peer(self):
        """A paired peer's PairRevoke revokes it, purges and ends its session with PAIRING_REVOKED."""
        purged = []
        self.pairing.add_purge_hook(purged.append)
        session = yield self.connect()
        yield eventually(pair_psk(session, self.psk))
        yield eventually(unpair(session))
        self.assertEqual(session.closed.code, CloseCode.PAIRING_REVOKED)
        self.assertEqual(purged, [session.local.peer_id])
        self.assertFalse(self.trust.is_paired(session.local.peer_id))

    @defer.inlineCallbacks
    def test_revoked_peer_cannot_use_psk(self):
        """A revoked peer is refused the PSK (REJECTED_BY_OPERATOR) but may come back with a PIN."""
        client = self.make_client()
        session = yield self.connect(client)
        yield eventually(pair_psk(session, self.psk))
        yield self.pairing.unpair(client.peer_id)
        session = yield self.connect(client)
        yield self.rejected(pair_psk(session, self.psk), PairRejectCode.REJECTED_BY_OPERATOR)
        self.assertEqual((yield self.trust.list(PENDING)), [])
        pin = self.pairing.create_pin()["pin"]
        yield eventually(pair_pin(session, pin))
        self.assertTrue(self.trust.is_paired(client.peer_id))

    # Rate limiting

    @defer.inlineCallbacks
    def test_rate_limited_per_source(self):
        """After 5 failures from one address even the right PSK gets RATE_LIMITED, until 10 minutes pass."""
        for _ in range(5):
            session = yield self.connect()
            yield self.rejected(pair_psk(session, "wrong"), PairRejectCode.BAD_PROOF)
        other = yield self.connect()  # another peer, same address
        yield self.rejected(pair_psk(other, self.psk), PairRejectCode.RATE_LIMITED)
        self.clock.advance(601)
        yield eventually(pair_psk(other, self.psk))

    # Restricted sessions

    @defer.inlineCallbacks
    def test_paired_only_handler(self):
        """A paired_only handler serves a paired peer and closes an unpaired one's session with NOT_PAIRED."""
        served = []
        self.server.register_handler(CUSTOM, paired_only(self.trust, lambda s, body: served.append(body)))
        paired = yield self.connect()
        yield eventually(pair_psk(paired, self.psk))
        stranger = yield self.connect()
        ended = closed(stranger)
        stranger.send(CUSTOM, {"n": 1})
        self.assertEqual((yield ended).code, CloseCode.NOT_PAIRED)
        done = Replies(paired.local)  # any round trip after the custom message proves it was handled
        reply = done.next()
        paired.send(CUSTOM, {"n": 2})
        paired.send(MessageType.PAIR_REQUEST, {"method": "approval"})
        yield reply
        self.assertEqual(served, [{"n": 2}])

    @defer.inlineCallbacks
    def test_malformed_request_keeps_session(self):
        """A malformed PairRequest gets PairReject MALFORMED and the same session can then pair."""
        client = self.make_client()
        session = yield self.connect(client)
        replies = Replies(client.peer)
        reply = replies.next()
        session.send(MessageType.PAIR_REQUEST, {"method": "psk", "pake": b"short"})
        type_code, body = yield reply
        self.assertEqual(
            (type_code, body["code"], body["method"]), (MessageType.PAIR_REJECT, PairRejectCode.MALFORMED, "")
        )
        yield eventually(pair_psk(session, self.psk))


class PairingTCPTests(PairingMixin, unittest.TestCase):
    websocket = False


class PairingWebSocketTests(PairingMixin, unittest.TestCase):
    websocket = True


class PairingSQLiteTests(PairingScenarioMixin, unittest.TestCase):
    """The same flows with the SQLite trust store behind the service."""

    sqlite = True

    @defer.inlineCallbacks
    def test_psk_then_unpair_persisted(self):
        """Pairing and unpairing through the SQLite store are visible to a fresh store on the same database."""
        from cairn.pairing.trust import SQLiteTrustStore

        session = yield self.connect()
        yield eventually(pair_psk(session, self.psk, name="desk"))
        fresh = SQLiteTrustStore(self.trust.db)
        yield fresh.start()
        self.assertTrue(fresh.is_paired(session.local.peer_id))
        yield self.pairing.unpair(session.local.peer_id)
        fresh = SQLiteTrustStore(self.trust.db)
        yield fresh.start()
        self.assertEqual((yield fresh.get(session.local.peer_id)).state, REVOKED)
