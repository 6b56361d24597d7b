"""
Pairing without sockets: the documented test vectors, PIN and link
formats, the failure limiter, message schemas, QR output, and the
node's pairing service driven with stand-in sessions.
"""

import os
import re
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.logger import formatEvent
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.crypto.handshake import HandshakeResult
from cairn.crypto.identity import Identity
from cairn.mailbox.interfaces import StoreFull
from cairn.pairing import books, codes, messages, pake, proofs, qr
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED, IPairingService, UnknownPeer
from cairn.pairing.ratelimit import FailureLimiter
from cairn.pairing.service import PairingService, source_of
from cairn.pairing.trust import MemoryTrustStore
from cairn.session.guards import paired_only
from cairn.session.peer import Peer
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode, MessageType, PairRejectCode
from cairn.wire.schema import BodyError
from tests._harness import observe_logs

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")
PSK = "the node's pre-shared key for unit tests"


def doc_vectors():
    """{name: {field: bytes}} of the ```vector blocks in docs/protocol.md."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    vectors = {}
    for name, block in re.findall(r"```vector (\S+)\n(.*?)```", text, re.S):
        fields = {}
        for line in block.strip().splitlines():
            key, value = line.split()
            fields[key] = bytes.fromhex(value)
        vectors[name] = fields
    return vectors


class PinTests(unittest.TestCase):
    def test_new_pin(self):
        """A new PIN is 8 Crockford characters, and fresh each time."""
        pins = {codes.new_pin() for _ in range(200)}
        self.assertEqual(len(pins), 200)
        for pin in pins:
            self.assertEqual(len(pin), 8)
            self.assertTrue(set(pin) <= set(codes.CROCKFORD))

    def test_format(self):
        """A PIN is shown as XXXX-XXXX."""
        self.assertEqual(codes.format_pin("ABCD1234"), "ABCD-1234")

    def test_normalize(self):
        """Case, I/L/O look-alikes, hyphens and spaces are forgiven."""
        for typed in ("abcd-1234", "ABCD1234", " ab cd 12 34 ", "ABCD-l234", "ABCD-I234", "abcd--1234"):
            self.assertEqual(codes.normalize_pin(typed), "ABCD1234")
        self.assertEqual(codes.normalize_pin("oooo-OOOO"), "00000000")

    def test_normalize_refuses(self):
        """Wrong lengths and letters outside the alphabet (U) are refused."""
        for typed in ("ABCD-123", "ABCD-12345", "ABCD-U234", "", "ABCD*234", None, "ABCD-12\u00df"):
            self.assertRaises(codes.InvalidCode, codes.normalize_pin, typed)

    def test_book(self):
        """A new PIN replaces the old one; expiry and the failure budget are enforced on the clock."""
        clock = task.Clock()
        book = books.PinBook(clock, 300, 3)
        self.assertEqual(book.refusal()[0], PairRejectCode.UNKNOWN_CODE)
        pin, expires_at = book.create()
        self.assertEqual(expires_at, 300)
        self.assertIsNone(book.refusal())
        first = book.current.generation
        book.create()
        self.assertEqual(book.refusal(first)[0], PairRejectCode.EXPIRED)
        book.current.failures = 3
        self.assertEqual(book.refusal()[0], PairRejectCode.EXPIRED)
        book.create()
        clock.advance(299)
        self.assertIsNone(book.refusal())
        clock.advance(1)
        self.assertEqual(book.refusal()[0], PairRejectCode.EXPIRED)
        book.current.used = True
        self.assertEqual(book.refusal()[0], PairRejectCode.ALREADY_USED)


class LinkTests(unittest.TestCase):
    ADDRESSES = ("tcp://192.0.2.7:7400", "ws://example.org:7401/?a=b&c=d")

    def test_round_trip(self):
        """A link reads back exactly, its addresses fully percent-encoded."""
        link = codes.Link("QmPeer", self.ADDRESSES, os.urandom(16), 1700000000)
        uri = link.to_uri()
        self.assertTrue(uri.startswith("cairn://pair?v=1&peer=QmPeer&addr=tcp%3A%2F%2F192.0.2.7%3A7400&"))
        self.assertEqual(codes.parse_link(uri), link)

    def test_unknown_parameters_ignored(self):
        """Parameters a reader does not know are ignored."""
        link = codes.Link("QmPeer", self.ADDRESSES, os.urandom(16), 5)
        self.assertEqual(codes.parse_link(link.to_uri() + "&future=1"), link)

    def test_refused(self):
        """Other schemes, versions, missing or doubled fields, short secrets and bad expiries are refused."""
        good = codes.Link("QmPeer", self.ADDRESSES, bytes(16), 5).to_uri()
        bad = [
            good.replace("cairn://", "http://"),
            good.replace("cairn://pair", "cairn://pear"),
            good.replace("v=1", "v=2"),
            good.replace("&peer=QmPeer", ""),
            good + "&peer=QmOther",
            good.replace("exp=5", "exp=soon"),
            good.replace("exp=5", "exp=-5"),
            re.sub(r"secret=[^&]+", "secret=AAAA", good),
            re.sub(r"secret=[^&]+", "secret=%2B%2B%2B", good),
            "cairn://pair?v=1&&",
            42,
        ]
        for uri in bad:
            self.assertRaises(codes.InvalidCode, codes.parse_link, uri)

    def test_repr_hides_secret(self):
        """A link's repr does not show its secret."""
        secret = b"\xab" * 16
        link = codes.Link("QmPeer", (), secret, 5)
        self.assertNotIn("QUFB", repr(link))
        self.assertNotIn(secret.hex(), repr(link))
        self.assertNotIn(codes._b64url(secret), repr(link))

    def test_book(self):
        """Links are looked up by id, expire on the clock, and are forgotten one TTL after expiring."""
        clock = task.Clock()
        book = books.LinkBook(clock, 3600, 3, max_links=2)
        link = book.create("QmPeer", self.ADDRESSES)
        self.assertEqual(link.expires_at, 3600)
        code = book.get(proofs.link_id(link.secret))
        self.assertEqual(code.key, proofs.link_key(link.secret))
        self.assertIsNone(book.refusal(code))
        self.assertEqual(book.refusal(None)[0], PairRejectCode.UNKNOWN_CODE)
        clock.advance(3600)
        self.assertEqual(book.refusal(code)[0], PairRejectCode.EXPIRED)
        clock.advance(3600)
        self.assertIsNone(book.get(proofs.link_id(link.secret)))
        for _ in range(3):
            book.create("QmPeer", ())
        self.assertEqual(len(book), 2)


class FailureLimiterTests(unittest.TestCase):
    def test_window(self):
        """The limit trips at the fifth failure in the window and lifts as failures age out."""
        clock = task.Clock()
        limiter = FailureLimiter(clock, 5, 600)
        for _ in range(5):
            self.assertFalse(limiter.limited("a"))
            limiter.failed("a")
            clock.advance(10)
        self.assertTrue(limiter.limited("a"))
        self.assertFalse(limiter.limited("b"))
        self.assertEqual(limiter.retry_after("a"), 550)
        clock.advance(550)
        self.assertFalse(limiter.limited("a"))
        self.assertEqual(limiter.retry_after("a"), 0)

    def test_bounded(self):
        """At most max_keys sources (plus the shared overflow bucket) are tracked."""
        limiter = FailureLimiter(task.Clock(), 1, 600, max_keys=3)
        for key in range(10):
            limiter.failed(key)
        self.assertEqual(len(limiter), 4)
        self.assertTrue(limiter.limited(9))
        self.assertTrue(limiter.limited(0))

    def test_full_table_does_not_flush_a_record(self):
        """Failing from many other sources while the table is full neither evicts a limited source nor frees it."""
        clock = task.Clock()
        limiter = FailureLimiter(clock, 2, 600, max_keys=5)
        limiter.failed("attacker")
        limiter.failed("attacker")
        for n in range(100):
            clock.advance(1)
            limiter.failed(f"other-{n}")
        self.assertTrue(limiter.limited("attacker"))
        self.assertTrue(limiter.limited("a fresh source"))  # counted in the full overflow bucket
        clock.advance(600)
        self.assertFalse(limiter.limited("attacker"))
        self.assertFalse(limiter.limited("a fresh source"))
        self.assertLessEqual(len(limiter), 6)

    def test_source_keys(self):
        """IPv4 is its own source, IPv6 counts per /64, an IPv4-mapped address as its IPv4 address."""
        from cairn.pairing.ratelimit import source_key

        self.assertEqual(source_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(source_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(source_key("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::/64")
        self.assertNotEqual(source_key("2001:db8:1:3::1"), source_key("2001:db8:1:2::1"))
        self.assertEqual(source_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(source_key("fe80::1%eth0"), "fe80::/64")
        self.assertEqual(source_key("unix:/tmp/s"), "unix:/tmp/s")


class MessageTests(unittest.TestCase):
    def test_requests(self):
        """Each method's request is read with its fields."""
        self.assertEqual(messages.parse_pair_request({"method": "approval"}).name, "")
        r = messages.parse_pair_request({"method": "pin", "name": "n", "pake": bytes(32), "extra": 1})
        self.assertEqual((r.method, r.name, r.pake), ("pin", "n", bytes(32)))
        self.assertEqual(messages.parse_pair_request({"method": "psk", "pake": bytes(32)}).pake, bytes(32))
        r = messages.parse_pair_request({"method": "link", "link_id": bytes(16), "proof": bytes(32)})
        self.assertEqual((r.link_id, r.proof), (bytes(16), bytes(32)))

    def test_bad_requests(self):
        """Wrong shapes are BodyErrors; an unknown method is UnsupportedMethod."""
        bad = [
            [],
            {"method": 1},
            {"method": "psk"},
            {"method": "psk", "pake": bytes(31)},
            {"method": "psk", "pake": "x" * 32},
            {"method": "pin", "pake": bytes(33)},
            {"method": "link", "link_id": bytes(16)},
            {"method": "approval", "name": "x" * 65},
            {"method": "approval", "name": "evil\x1b[2J"},
            {"method": "approval", "name": 5},
            {"method": "m" * 33},
        ]
        for body in bad:
            self.assertRaises(BodyError, messages.parse_pair_request, body)
        self.assertRaises(messages.UnsupportedMethod, messages.parse_pair_request, {"method": "telepathy"})
        for v1 in ({"method": "psk", "proof": bytes(32)}, {"method": "pin", "spake2": b"A" + bytes(32)}):
            self.assertRaises(messages.UnsupportedVersion, messages.parse_pair_request, v1)

    def test_replies(self):
        """Challenge, confirm and reject bodies are read strictly."""
        self.assertEqual(messages.parse_pair_challenge({"method": "approval"}), ("approval", None))
        self.assertRaises(BodyError, messages.parse_pair_challenge, {"method": "pin", "spake2": b"A" + bytes(32)})
        self.assertEqual(messages.parse_pair_challenge({"method": "psk", "pake": bytes(32)}), ("psk", bytes(32)))
        self.assertEqual(messages.parse_pair_confirm({"method": "psk"}), ("psk", False, None))
        self.assertEqual(
            messages.parse_pair_confirm({"method": "pin", "confirm": bytes(32)}), ("pin", False, bytes(32))
        )
        self.assertEqual(
            messages.parse_pair_confirm({"method": "link", "proof": bytes(32)}), ("link", False, bytes(32))
        )
        self.assertRaises(BodyError, messages.parse_pair_confirm, {"method": "psk", "already_paired": 1})
        self.assertEqual(messages.parse_pair_reject({"code": 9, "reason": "r", "method": "x"}), (9, "r", "x"))
        self.assertRaises(BodyError, messages.parse_pair_reject, {"code": True})
        self.assertEqual(messages.parse_pair_response({"method": "psk", "confirm": bytes(32)}), ("psk", bytes(32)))
        self.assertRaises(BodyError, messages.parse_pair_response, {"method": "link", "confirm": bytes(32)})

    def test_reject_reason_truncated(self):
        """A reject reason is cut to 256 bytes without splitting a character."""
        body = messages.pair_reject(1, "é" * 200)
        self.assertLessEqual(len(body["reason"].encode("utf-8")), 256)
        self.assertEqual(messages.parse_pair_reject(body)[0], 1)


class QRTests(unittest.TestCase):
    TEXT = "cairn://pair?v=1&peer=QmPeer&secret=QEFCQ0RFRkdISUpLTE1OTw&exp=5"

    def test_terminal(self):
        """The terminal form is a square of block characters, two modules per line."""
        lines = qr.qr_terminal(self.TEXT).splitlines()
        self.assertTrue(set("".join(lines)) <= set(" █▀▄"))
        self.assertEqual(len({len(line) for line in lines}), 1)
        self.assertEqual(len(lines), (len(lines[0]) + 1) // 2)

    def test_png(self):
        """The PNG form is a PNG."""
        self.assertTrue(qr.qr_png(self.TEXT).startswith(b"\x89PNG\r\n\x1a\n"))

    def test_svg(self):
        """The SVG form is an SVG document."""
        self.assertIn(b"<svg", qr.qr_svg(self.TEXT))


# The service with stand-in sessions


class FakeSession:
    """Just what the pairing service uses of a server-side Session."""

    def __init__(self, identity=None, host="192.0.2.1", initiator=False):
        self.identity = identity or Identity.generate()
        self.session_id = os.urandom(16)
        self.remote_identity = self.identity.public_key
        self.remote_peer_id = self.identity.peer_id
        self.initiator = initiator
        self.result = HandshakeResult(self.remote_identity, os.urandom(32), bytes(32), bytes(32), initiator)
        tcp = SimpleNamespace(getPeer=lambda: IPv4Address("TCP", host, 40000))
        self.connection = SimpleNamespace(transport=SimpleNamespace(transport=tcp, peer_address=str(tcp.getPeer())))
        self.attached = True
        self.closed = None
        self.sent = []

    def send(self, type_code, body):
        if self.closed is not None:
            raise self.closed
        self.sent.append((type_code, body))
        return len(self.sent)

    def close(self, code=CloseCode.NORMAL, reason=""):
        if self.closed is None:
            self.closed = SessionClosed(code, reason)

    def last(self):
        return self.sent[-1]


class ServiceHarness:
    """A pairing service on a memory trust store, driven with L{FakeSession}s."""

    def setUp(self):
        self.clock = task.Clock()
        self.peer = Peer(Identity.generate(), task.Clock())
        self.trust = MemoryTrustStore()
        self.service = self.make_service()

    def make_service(self, **kwargs):
        kwargs.setdefault("psk", PSK)
        service = PairingService(self.peer, self.trust, self.clock, link_addresses=["tcp:host=h:port=1"], **kwargs)
        service.start()
        return service

    def request(self, session, body):
        self.peer.handler_for(MessageType.PAIR_REQUEST)(session, body)
        return session.last()

    def attach(self, session):
        self.peer.sessions[session.session_id] = session
        self.service.session_established(session)
        return session

    def side(self, session, method="psk", secret=PSK):
        """The device's SPAKE2 side for C{session} (C{secret}: the PSK text or the PIN as shown)."""
        if method == "psk":
            w = proofs.psk_scalar(secret)
        else:
            w = proofs.pin_scalar(codes.normalize_pin(secret).encode("ascii"))
        return pake.SideA(w, session.remote_identity, self.peer.identity.public_key, session.result.handshake_hash)

    def pake_pair(self, session, method="psk", secret=PSK, handler=None):
        """Run a whole PSK/PIN exchange; returns the node's last reply (type, body)."""
        side = self.side(session, method, secret)
        (handler or self.peer.handler_for(MessageType.PAIR_REQUEST))(session, {"method": method, "pake": side.share})
        type_code, challenge = session.last()
        if type_code != MessageType.PAIR_CHALLENGE:
            return type_code, challenge
        confirm, _ = side.finish(challenge["pake"])
        self.peer.handler_for(MessageType.PAIR_RESPONSE)(session, {"method": method, "confirm": confirm})
        return session.last()

    def psk_pair(self, session, psk=PSK):
        return self.pake_pair(session, "psk", psk)


class ServiceTests(ServiceHarness, unittest.TestCase):
    def test_interface(self):
        """The service provides IPairingService."""
        self.assertTrue(verifyObject(IPairingService, self.service))

    def test_source_of(self):
        """The rate-limit key is the transport's host, without the port."""
        self.assertEqual(source_of(FakeSession(host="198.51.100.4")), "198.51.100.4")
        session = FakeSession()
        session.connection = SimpleNamespace(transport=SimpleNamespace(peer_address="tcp:203.0.113.9:1234"))
        self.assertEqual(source_of(session), "tcp:203.0.113.9:1234")

    def test_psk_unavailable(self):
        """Without a PSK the psk method is answered METHOD_UNAVAILABLE."""
        self.peer = Peer(Identity.generate(), task.Clock())
        self.make_service(psk="")
        session = FakeSession()
        type_code, body = self.psk_pair(session)
        self.assertEqual((type_code, body["code"]), (MessageType.PAIR_REJECT, PairRejectCode.METHOD_UNAVAILABLE))

    def test_unknown_method(self):
        """A request naming an unknown method is answered METHOD_UNAVAILABLE."""
        type_code, body = self.request(FakeSession(), {"method": "telepathy"})
        self.assertEqual(body["code"], PairRejectCode.METHOD_UNAVAILABLE)

    def test_response_without_exchange(self):
        """A PairResponse with no PIN exchange in progress is MALFORMED."""
        session = FakeSession()
        self.peer.handler_for(MessageType.PAIR_RESPONSE)(session, {"method": "pin", "confirm": bytes(32)})
        self.assertEqual(session.last()[1]["code"], PairRejectCode.MALFORMED)

    def test_malformed_response_reject_follows_schema(self):
        """A malformed PairResponse's PairReject never echoes a method the schema would refuse."""
        for method in ["x" * 40, 7, "telepathy"]:
            session = FakeSession()
            self.peer.handler_for(MessageType.PAIR_RESPONSE)(session, {"method": method})
            code, reason, echoed = messages.parse_pair_reject(session.last()[1])
            self.assertEqual((code, echoed), (PairRejectCode.MALFORMED, ""))

    def test_invalid_spake2_element(self):
        """A SPAKE2 share that is no prime-order point (bad encoding, small order, identity) is MALFORMED."""
        self.service.create_pin()
        identity = bytes([1]) + bytes(31)
        small_order = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
        for share in (b"\xff" * 32, identity, small_order, bytes(32)):
            session = FakeSession()
            _, body = self.request(session, {"method": "pin", "pake": share})
            self.assertEqual(body["code"], PairRejectCode.MALFORMED)
            self.assertIsNone(session.closed)

    def test_pin_replaced_mid_exchange(self):
        """A PIN replaced between PairRequest and PairResponse makes the response EXPIRED."""
        pin = self.service.create_pin()["pin"]
        session = FakeSession()
        side = self.side(session, "pin", pin)
        _, challenge = self.request(session, {"method": "pin", "pake": side.share})
        client_confirm, _ = side.finish(challenge["pake"])
        self.service.create_pin()
        self.peer.handler_for(MessageType.PAIR_RESPONSE)(session, {"method": "pin", "confirm": client_confirm})
        self.assertEqual(session.last()[1]["code"], PairRejectCode.EXPIRED)
        self.assertFalse(self.trust.is_paired(session.remote_peer_id))

    def test_unknown_link_counts_as_failure(self):
        """Guessing link ids is UNKNOWN_CODE and counts against the source address."""
        for _ in range(5):
            _, body = self.request(FakeSession(), {"method": "link", "link_id": os.urandom(16), "proof": bytes(32)})
            self.assertEqual(body["code"], PairRejectCode.UNKNOWN_CODE)
        session = FakeSession()
        _, body = self.psk_pair(session)
        self.assertEqual(body["code"], PairRejectCode.RATE_LIMITED)
        other = FakeSession(host="192.0.2.2")
        self.assertEqual(self.psk_pair(other)[0], MessageType.PAIR_CONFIRM)

    def test_link_burned(self):
        """A link is burned after 3 wrong proofs."""
        link = codes.parse_link(self.service.create_link()["link"])
        link_id = proofs.link_id(link.secret)
        for _ in range(3):
            _, body = self.request(FakeSession(), {"method": "link", "link_id": link_id, "proof": bytes(32)})
            self.assertEqual(body["code"], PairRejectCode.BAD_PROOF)
        session = FakeSession(host="192.0.2.99")
        proof, _ = proofs.link_proofs(proofs.link_key(link.secret), session.result.handshake_hash)
        _, body = self.request(session, {"method": "link", "link_id": link_id, "proof": proof})
        self.assertEqual(body["code"], PairRejectCode.EXPIRED)

    def test_link_addresses(self):
        """A created link names the node and the configured addresses."""
        created = self.service.create_link()
        link = codes.parse_link(created["link"])
        self.assertEqual((link.peer_id, link.addresses), (self.peer.peer_id, ("tcp://h:1",)))
        self.assertEqual(created["expires_at"], link.expires_at)

    def test_already_paired_idempotent(self):
        """A paired peer's link and approval requests get PairConfirm already_paired without using a code."""
        session = self.attach(FakeSession())
        self.psk_pair(session)
        self.service.create_pin()
        for body in ({"method": "link", "link_id": bytes(16), "proof": bytes(32)}, {"method": "approval"}):
            type_code, reply = self.request(session, body)
            self.assertEqual(
                (type_code, reply["already_paired"], "proof" in reply), (MessageType.PAIR_CONFIRM, True, False)
            )
        self.assertIsNone(self.service.pins.refusal())

    def test_already_paired_psk_and_pin_prove_the_key(self):
        """A paired peer's PSK or PIN request runs the whole exchange: the PairConfirm carries the confirmation."""
        session = self.attach(FakeSession())
        self.psk_pair(session)
        pin = self.service.create_pin()["pin"]
        for method, secret in (("psk", PSK), ("pin", pin)):
            side = self.side(session, method, secret)
            type_code, challenge = self.request(session, {"method": method, "pake": side.share})
            self.assertEqual(type_code, MessageType.PAIR_CHALLENGE)
            confirm, expected = side.finish(challenge["pake"])
            self.peer.handler_for(MessageType.PAIR_RESPONSE)(session, {"method": method, "confirm": confirm})
            type_code, reply = session.last()
            self.assertEqual(
                (type_code, reply["already_paired"], reply["confirm"]), (MessageType.PAIR_CONFIRM, True, expected)
            )

    def test_outbound_sessions_not_pending(self):
        """Sessions the node itself dialled do not create pending requests."""
        self.attach(FakeSession(initiator=True))
        self.assertEqual(self.successResultOf(self.trust.list()), [])

    def test_handshake_alone_files_nothing(self):
        """A session of an unknown peer that sends no PairRequest files no pending request."""
        for _ in range(3):
            self.attach(FakeSession())
        self.assertEqual(self.successResultOf(self.trust.list()), [])

    def approval(self, host="192.0.2.1", name=""):
        session = self.attach(FakeSession(host=host))
        type_code, _ = self.request(session, {"method": "approval", "name": name})
        self.assertEqual(type_code, MessageType.PAIR_CHALLENGE)
        self.clock.advance(1)  # requested_at orders the queue
        return session

    def pending_ids(self):
        return {r.peer_id for r in self.successResultOf(self.trust.list(PENDING))}

    def test_pending_per_source_evicts_oldest(self):
        """Past the per-source bound a new request is filed and the source's oldest is dropped and told so."""
        self.service = self.make_service(max_pending=10, max_pending_per_source=2)
        first, second = self.approval(), self.approval()
        other = self.approval(host="198.51.100.7")
        third = self.approval()
        self.assertEqual(self.pending_ids(), {s.remote_peer_id for s in (second, other, third)})
        self.assertEqual(first.last()[0], MessageType.PAIR_REJECT)
        self.assertEqual(first.last()[1]["code"], PairRejectCode.RATE_LIMITED)
        self.assertEqual(self.service.pending.evicted, 1)

    def test_flood_cannot_lock_out_genuine_request(self):
        """A flood of fresh identities from a few sources leaves a genuine request from elsewhere filed."""
        self.service = self.make_service(max_pending=20, max_pending_per_source=5)
        for i in range(300):
            self.approval(host=f"203.0.113.{i % 4}")
        genuine = self.approval(host="192.0.2.200", name="kitchen tablet")
        for i in range(300):
            self.approval(host=f"203.0.113.{i % 4}")
        pending = self.pending_ids()
        self.assertLessEqual(len(pending), 20)
        self.assertIn(genuine.remote_peer_id, pending)
        record = self.successResultOf(self.service.approve(genuine.remote_peer_id))
        self.assertEqual((record.state, record.name), (PAIRED, "kitchen tablet"))

    def test_pending_total_evicts_from_largest_source(self):
        """Past the total bound the oldest request of the source with the most is dropped."""
        self.service = self.make_service(max_pending=4, max_pending_per_source=3)
        lone = self.approval(host="192.0.2.50")
        crowd = [self.approval(host="192.0.2.60") for _ in range(3)]
        newcomer = self.approval(host="192.0.2.70")
        expected = {s.remote_peer_id for s in [lone, *crowd[1:], newcomer]}
        self.assertEqual(self.pending_ids(), expected)

    def test_ipv6_sources_grouped_by_64(self):
        """Requests from addresses of one IPv6 /64 share one per-source bound."""
        from twisted.internet.address import IPv6Address

        self.service = self.make_service(max_pending=10, max_pending_per_source=2)
        sessions = []
        for i in range(4):
            session = FakeSession()
            tcp = SimpleNamespace(getPeer=lambda i=i: IPv6Address("TCP", f"2001:db8:1:2::{i + 1}", 40000))
            session.connection = SimpleNamespace(transport=SimpleNamespace(transport=tcp, peer_address=""))
            self.attach(session)
            self.request(session, {"method": "approval"})
            self.clock.advance(1)
            sessions.append(session)
        self.assertEqual(self.pending_ids(), {s.remote_peer_id for s in sessions[2:]})

    def test_pending_eviction_warns_once_a_minute(self):
        """A flood of requests past the bounds gives one warning a minute, with the count."""
        from cairn.pairing import pending as pending_module

        warnings = []
        self.patch(pending_module.log, "warn", lambda fmt, **kw: warnings.append(kw))
        self.service = self.make_service(max_pending=1, max_pending_per_source=1)
        self.clock.advance(100)
        for _ in range(6):
            session = self.attach(FakeSession())
            self.request(session, {"method": "approval"})
        self.assertEqual([w["count"] for w in warnings], [1])
        self.clock.advance(61)
        self.request(self.attach(FakeSession()), {"method": "approval"})
        self.assertEqual([w["count"] for w in warnings], [1, 5])

    def test_approve_offline_peer(self):
        """Approving a peer that is not connected pairs it, and its next session is served."""
        session = self.attach(FakeSession())
        self.request(session, {"method": "approval"})
        session.sent.clear()
        self.peer.sessions.pop(session.session_id)
        record = self.successResultOf(self.service.approve(session.remote_peer_id))
        self.assertEqual((record.state, record.method), (PAIRED, "approval"))
        self.assertEqual(session.sent, [])
        self.assertTrue(self.service.require_paired(FakeSession(session.identity)))

    def test_approve_reject_unknown(self):
        """Approving or rejecting a peer without a pending request fails with UnknownPeer."""
        peer_id = Identity.generate().peer_id
        self.failureResultOf(self.service.approve(peer_id), UnknownPeer)
        self.failureResultOf(self.service.reject(peer_id), UnknownPeer)
        self.failureResultOf(self.service.unpair(peer_id), UnknownPeer)

    def test_require_paired(self):
        """require_paired closes an unpaired peer's session with NOT_PAIRED and passes a paired one."""
        stranger = FakeSession()
        self.assertFalse(self.service.require_paired(stranger))
        self.assertEqual(stranger.closed.code, CloseCode.NOT_PAIRED)
        friend = self.attach(FakeSession())
        self.psk_pair(friend)
        self.assertTrue(self.service.require_paired(friend))
        self.assertIsNone(friend.closed)

    def test_paired_only(self):
        """paired_only passes the handler's result through for a paired peer."""
        handler = paired_only(self.trust, lambda s, body: body["x"])
        friend = self.attach(FakeSession())
        self.psk_pair(friend)
        self.assertEqual(handler(friend, {"x": 3}), 3)
        stranger = FakeSession()
        self.assertIsNone(handler(stranger, {"x": 3}))
        self.assertEqual(stranger.closed.code, CloseCode.NOT_PAIRED)

    def gated_trust(self):
        """The trust store's catch_up held until the test fires the returned Deferred."""
        gate = defer.Deferred()
        asked = []

        def catch_up(peer_ids):
            asked.append(list(peer_ids))
            d = defer.Deferred()
            gate.addCallback(lambda _: d.callback(frozenset()))
            return d

        self.patch(self.trust, "catch_up", catch_up)
        return gate, asked

    def test_paired_only_catches_up(self):
        """
        An unknown peer's request waits for the trust store's catch-up (a
        peer paired through another node a moment ago); the session's next
        requests wait behind it; once the peer is found paired they run in
        order.
        """
        gate, asked = self.gated_trust()
        ran = []
        first = paired_only(self.trust, lambda s, body: ran.append(("first", body)))
        second = paired_only(self.trust, lambda s, body: ran.append(("second", body)))
        session = FakeSession()
        first(session, 1)
        second(session, 2)
        first(session, 3)
        self.assertEqual((ran, asked), ([], [[session.remote_peer_id]]))
        self.successResultOf(self.trust.set_paired(session.remote_peer_id, session.remote_identity, "", "psk", 0.0))
        gate.callback(None)
        self.assertEqual(ran, [("first", 1), ("second", 2), ("first", 3)])
        self.assertIsNone(session.closed)
        first(session, 4)  # nothing held now: at once
        self.assertEqual(ran[-1], ("first", 4))

    def test_paired_only_catches_up_on_nothing(self):
        """The catch-up finds the peer not paired: NOT_PAIRED, nothing runs; a session closed meanwhile runs nothing."""
        gate, asked = self.gated_trust()
        ran = []
        handler = paired_only(self.trust, lambda s, body: ran.append(body))
        stranger, gone = FakeSession(), FakeSession()
        handler(stranger, 1)
        handler(stranger, 2)
        handler(gone, 3)
        gone.close(CloseCode.NORMAL)
        gate.callback(None)
        self.assertEqual(ran, [])
        self.assertEqual(stranger.closed.code, CloseCode.NOT_PAIRED)
        self.assertEqual(gone.closed.code, CloseCode.NORMAL)

    def test_paired_only_unsure_is_going_away(self):
        """
        The catch-up could not check the peer (the store's shared data out
        of reach): Close GOING_AWAY (try again later, perhaps another node),
        not NOT_PAIRED (pair first); at once or after a read.
        """
        ran = []
        handler = paired_only(self.trust, lambda s, body: ran.append(body))
        self.patch(self.trust, "catch_up", lambda peer_ids: defer.succeed(frozenset(peer_ids)))
        at_once = FakeSession()
        handler(at_once, 1)
        gate = defer.Deferred()
        self.patch(self.trust, "catch_up", lambda peer_ids: gate.addCallback(lambda _: frozenset(peer_ids)))
        later = FakeSession()
        handler(later, 2)
        handler(later, 3)
        gate.callback(None)
        self.assertEqual(ran, [])
        for session in (at_once, later):
            self.assertEqual(session.closed.code, CloseCode.GOING_AWAY)
            self.assertIn("cannot check this device's pairing", session.closed.reason)

    def test_paired_only_holds_a_bounded_number(self):
        """A session with HELD_MAX requests held while its peer is read is closed LIMIT_REACHED at one more."""
        from cairn.session import guards

        gate, _ = self.gated_trust()
        ran = []
        handler = paired_only(self.trust, lambda s, body: ran.append(body))
        flooding = FakeSession()
        for i in range(guards.HELD_MAX):  # the first waits for the read, the rest behind it
            handler(flooding, i)
        self.assertIsNone(flooding.closed)
        handler(flooding, "one too many")
        self.assertEqual(flooding.closed.code, CloseCode.LIMIT_REACHED)
        gate.callback(None)
        self.assertEqual((ran, guards._held), ([], {}))

    def test_pairing_not_stored(self):
        """
        A store that cannot take the pairing (full disk, JetStream's limit,
        NATS away: StoreFull): the session is closed INTERNAL with a reason
        saying so, one warning logged, no traceback; the peer is not paired.
        """
        from cairn.mailbox.interfaces import StoreFull

        self.patch(self.trust, "set_paired", lambda *args: defer.fail(StoreFull("JetStream unavailable (no room)")))
        events = observe_logs(self)
        session = self.attach(FakeSession())
        self.psk_pair(session)
        self.assertEqual(session.closed.code, CloseCode.INTERNAL)
        self.assertIn("cannot store the pairing", session.closed.reason)
        self.assertFalse(self.trust.is_paired(session.remote_peer_id))
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])
        self.assertTrue(any("not paired: JetStream unavailable" in formatEvent(e) for e in events))

    def test_purge_hook_failure(self):
        """A failing purge hook does not stop the others; the peer stays revoked and unpair() reports the failure."""
        calls = []
        self.service.add_purge_hook(lambda peer_id: 1 / 0)
        self.service.add_purge_hook(lambda peer_id: calls.append(peer_id) or defer.succeed(None))
        session = self.attach(FakeSession())
        self.psk_pair(session)
        self.failureResultOf(self.service.unpair(session.remote_peer_id), ZeroDivisionError)
        self.assertEqual(calls, [session.remote_peer_id])
        self.assertEqual(session.closed.code, CloseCode.PAIRING_REVOKED)
        self.assertEqual(self.successResultOf(self.trust.get(session.remote_peer_id)).state, REVOKED)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_purge_hook_store_full_is_one_line(self):
        """A purge the full store cannot write is logged in one line naming the peer, without a traceback."""
        events = observe_logs(self)
        self.service.add_purge_hook(lambda peer_id: defer.fail(StoreFull("database or disk is full")))
        session = self.attach(FakeSession())
        self.psk_pair(session)
        self.failureResultOf(self.service.unpair(session.remote_peer_id), StoreFull)
        self.assertEqual(self.successResultOf(self.trust.get(session.remote_peer_id)).state, REVOKED)
        self.assertEqual(self.flushLoggedErrors(StoreFull), [])
        [line] = [e for e in events if "database or disk is full" in formatEvent(e)]
        self.assertNotIn("log_failure", line)
        self.assertIn(session.remote_peer_id, formatEvent(line))

    def test_revoke_from_pending_peer(self):
        """PairRevoke from a pending peer withdraws its request and closes the session with PAIRING_REVOKED."""
        session = self.attach(FakeSession())
        self.request(session, {"method": "approval"})
        self.assertEqual(self.successResultOf(self.trust.get(session.remote_peer_id)).state, PENDING)
        self.peer.handler_for(MessageType.PAIR_REVOKE)(session, {})
        self.assertIsNone(self.successResultOf(self.trust.get(session.remote_peer_id)))
        self.assertEqual(session.closed.code, CloseCode.PAIRING_REVOKED)

    def test_store_failure_closes_internal(self):
        """A trust store failure while pairing closes that session with INTERNAL and is logged."""
        self.trust.set_paired = lambda *args: defer.fail(OSError("disk full"))
        session = self.attach(FakeSession())
        type_code, _ = self.psk_pair(session)
        self.assertEqual([t for t, _ in session.sent], [MessageType.PAIR_CHALLENGE])
        self.assertEqual(session.closed.code, CloseCode.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_closed_session_forgets_exchange(self):
        """A session that ends drops its unfinished PIN exchange."""
        self.service.create_pin()
        session = self.attach(FakeSession())
        self.request(session, {"method": "pin", "pake": self.side(session, "pin", "AAAA-AAAA").share})
        self.assertIn(session.session_id, self.service.pake._exchanges)
        session.closed = SessionClosed(0, "")
        self.service.session_closed(session)
        self.assertEqual(self.service.pake._exchanges, {})

    @settings(max_examples=300, deadline=None)
    @given(
        body=st.one_of(
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70) | st.binary(max_size=40),
                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                max_leaves=12,
            ),
            st.fixed_dictionaries(
                {"method": st.sampled_from(["psk", "pin", "link", "approval", "", "PSK"]) | st.integers()},
                optional={
                    "name": st.text(max_size=80) | st.binary(max_size=4) | st.integers(),
                    "proof": st.binary(min_size=30, max_size=34) | st.text(max_size=3),
                    "spake2": st.binary(min_size=32, max_size=34) | st.none(),
                    "pake": st.binary(min_size=31, max_size=33) | st.none(),
                    "link_id": st.binary(min_size=15, max_size=17) | st.none(),
                },
            ),
        )
    )
    def test_malformed_requests(self, body):
        """Any PairRequest body gets exactly one reply, MALFORMED if its schema is broken; the session stays open."""
        self.peer = Peer(Identity.generate(), task.Clock())
        self.trust = MemoryTrustStore()
        self.service = self.make_service()
        self.service.create_pin()
        session = self.attach(FakeSession())
        self.request(session, body)
        self.assertEqual(len(session.sent), 1)
        type_code, reply = session.sent[0]
        try:
            messages.parse_pair_request(body)
        except messages.UnsupportedVersion:
            self.assertEqual(reply["code"], PairRejectCode.UNSUPPORTED_VERSION)
        except messages.UnsupportedMethod:
            self.assertEqual(reply["code"], PairRejectCode.METHOD_UNAVAILABLE)
        except BodyError:
            self.assertEqual((type_code, reply["code"]), (MessageType.PAIR_REJECT, PairRejectCode.MALFORMED))
        self.assertIsNone(session.closed)
        self.assertEqual(self.flushLoggedErrors(), [])


class LastSeenFlushTests(unittest.TestCase):
    """A last-seen write that fails: one line for a full disk, a traceback for anything else."""

    def test_full_disk_is_one_line(self):
        import sqlite3

        from twisted.python.failure import Failure

        from cairn.pairing.service import _flush_failed

        events = observe_logs(self)
        _flush_failed(Failure(sqlite3.OperationalError("database or disk is full")))
        [event] = events
        self.assertEqual(formatEvent(event), "could not write last-seen times: database or disk is full")
        self.assertNotIn("log_failure", event)
        _flush_failed(Failure(KeyError("a bug")))
        self.assertIn("log_failure", events[-1])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
