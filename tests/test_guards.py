"""
The one error policy of the node's message handlers (cairn.session.guards),
checked family by family on a node built in memory with every service.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.mailbox.service import MailboxService
from cairn.pairing.exchange import PakeMethods
from cairn.pairing.service import PairingService
from cairn.relay.service import RelayService
from cairn.session.errors import ProtocolViolation
from cairn.session.guards import guard, log_only
from cairn.sync.service import SyncService
from cairn.turn.service import TurnService
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.schema import BodyError
from tests.fuzz.targets import InMemoryNode

#: (type code, the class and method that handle it, paired peers only,
#: what a body that is not a map gets: a Close code, or None for an answer).
FAMILIES = [
    (MessageType.FORWARD_REQUEST, MailboxService, "_forward_request", True, CloseCode.BAD_CBOR),
    (MessageType.FORWARD_PURGE, MailboxService, "_forward_purge", True, CloseCode.BAD_CBOR),
    (MessageType.PEER_KEY_REQUEST, MailboxService, "_peer_key", True, CloseCode.BAD_CBOR),
    (MessageType.SYNC_SUBSCRIBE, SyncService, "_subscribe", True, CloseCode.BAD_CBOR),
    (MessageType.SYNC_PUBLISH, SyncService, "_publish", True, CloseCode.BAD_CBOR),
    (MessageType.SYNC_CURSOR, SyncService, "_cursor", True, CloseCode.BAD_CBOR),
    (MessageType.RELAY_REQUEST, TurnService, "_relay_request", True, CloseCode.BAD_CBOR),
    (MessageType.ROUTE_REQUEST, RelayService, "_route_request", False, CloseCode.BAD_CBOR),
    (MessageType.ROUTE_RESPONSE, RelayService, "_route_response", False, CloseCode.BAD_CBOR),
    (MessageType.RELAY_DATA, RelayService, "_relay_data", False, CloseCode.BAD_CBOR),
    (MessageType.RELAY_ACK, RelayService, "_relay_ack", False, CloseCode.BAD_CBOR),
    (MessageType.RELAY_CLOSE, RelayService, "_relay_close", False, CloseCode.BAD_CBOR),
    # Pairing answers a malformed body with a PairReject (§20.5), not a Close.
    (MessageType.PAIR_REQUEST, PairingService, "_pair_request", False, None),
    (MessageType.PAIR_RESPONSE, PakeMethods, "respond", False, None),
    (MessageType.PAIR_REVOKE, PairingService, "_pair_revoke", False, None),
]


class FakeSession:
    """Just enough of a session for a handler: who, and how it was closed."""

    def __init__(self, peer_id):
        self.remote_peer_id = peer_id
        self.session_id = b"\x09" * 16
        self.initiator = False
        self.closed = None
        self.sent = []

    def close(self, code, reason=""):
        self.closed = (code, reason)

    def send(self, type_code, body):
        self.sent.append((type_code, body))

    def send_if_open(self, type_code, body):
        self.send(type_code, body)
        return True


class HandlerPolicyTests(unittest.TestCase):
    """Every family's handlers follow one policy."""

    def _handle(self, type_code, body, paired=True):
        node = InMemoryNode()
        session = FakeSession((node.paired if paired else node.stranger).peer_id)
        node.peer.handler_for(type_code)(session, body)
        return session

    def _code(self, session):
        return None if session.closed is None else session.closed[0]

    def test_malformed_body(self):
        """A body that is not a map closes the session with BAD_CBOR, except pairing's, which is answered."""
        for type_code, _cls, _method, _paired, expected in FAMILIES:
            session = self._handle(type_code, [])
            self.assertEqual(self._code(session), expected, hex(type_code))
            if expected is None:
                self.assertTrue(session.sent, hex(type_code))

    def test_unpaired(self):
        """An unpaired peer's session is closed with NOT_PAIRED by the paired-only families."""
        for type_code, _cls, _method, paired_only, _expected in FAMILIES:
            session = self._handle(type_code, {}, paired=False)
            if paired_only:
                self.assertEqual(self._code(session), CloseCode.NOT_PAIRED, hex(type_code))
            else:
                self.assertNotEqual(self._code(session), CloseCode.NOT_PAIRED, hex(type_code))

    def _broken(self, cls, method, replacement):
        self.patch(cls, method, replacement)

    def test_bug(self):
        """A handler that raises closes only that session with INTERNAL, and the failure is logged."""
        for type_code, cls, method, _paired, _expected in FAMILIES:

            def boom(self, session, body):
                raise RuntimeError("bug")

            self._broken(cls, method, boom)
            session = self._handle(type_code, {})
            self.assertEqual(self._code(session), CloseCode.INTERNAL, hex(type_code))
            self.assertIn("failed on the node", session.closed[1])
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1, hex(type_code))

    def test_failed_deferred(self):
        """A handler whose Deferred fails closes the session with INTERNAL, and the failure is logged."""
        for type_code, cls, method, _paired, _expected in FAMILIES:
            self._broken(cls, method, lambda self, session, body: defer.fail(RuntimeError("bug")))
            session = self._handle(type_code, {})
            self.assertEqual(self._code(session), CloseCode.INTERNAL, hex(type_code))
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1, hex(type_code))

    def test_protocol_violation(self):
        """A ProtocolViolation raised by a handler closes the session with its own code."""
        for type_code, cls, method, _paired, _expected in FAMILIES:

            def violate(self, session, body):
                raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, "no")

            self._broken(cls, method, violate)
            session = self._handle(type_code, {})
            self.assertEqual(session.closed, (CloseCode.UNEXPECTED_MESSAGE, "no"), hex(type_code))


class GuardTests(unittest.TestCase):
    """The guard itself."""

    def test_held_again_keeps_the_order(self):
        """A held request held again on its turn (a second read) still runs before the requests that came after it."""
        from cairn.session import guards

        class Paired:
            def is_paired(self, peer_id):
                return True

        session, ran = FakeSession("QmPeer"), []
        first, second = defer.Deferred(), defer.Deferred()

        def handler(session, body):
            if body == "b" and not second.called:  # its own read: held again, runs once it is done
                guards.hold(session, second, (lambda session, body: ran.append(body + " read"), body))
                return
            ran.append(body)

        guarded = guards.paired_only(Paired(), handler)
        guards.hold(session, first)
        for body in ("a", "b", "c"):
            guarded(session, body)
        first.callback(None)
        guarded(session, "d")
        second.callback(None)
        self.assertEqual((ran, guards._held), (["a", "b read", "c", "d"], {}))

    def test_stopped(self):
        """Once stopped, a request goes unanswered and the handler does not run."""
        ran = []
        guarded = guard(lambda s, body: ran.append(body), "svc", stopped=lambda: True)
        session = FakeSession("p")
        guarded(session, {})
        self.assertEqual((ran, session.closed), ([], None))

    def test_failure_at_shutdown(self):
        """A step that fails after the stop is logged at info, not answered with a Close."""
        stopped = []
        d = defer.Deferred()
        guarded = guard(lambda s, body: d, "svc", stopped=lambda: bool(stopped))
        session = FakeSession("p")
        guarded(session, {})
        stopped.append(True)
        d.errback(RuntimeError("database closed"))
        self.assertIsNone(session.closed)
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_body_error_in_deferred(self):
        """A BodyError that a Deferred fails with closes the session with BAD_CBOR."""
        guarded = guard(lambda s, body: defer.fail(BodyError("bad")), "svc")
        session = FakeSession("p")
        guarded(session, {})
        self.assertEqual(session.closed, (CloseCode.BAD_CBOR, "bad"))

    def test_client_policy(self):
        """A client's handler logs a bad body or a bug and leaves its session open."""
        session = FakeSession("p")

        def bad(s, body):
            raise BodyError("bad")

        def bug(s, body):
            raise RuntimeError("bug")

        log_only(bad, "client")(session, {})
        log_only(bug, "client")(session, {})
        self.assertIsNone(session.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_policy_failed_hook(self):
        """A client's C{failed} hook hears of a bad body or a bug (to fail what waits); the session stays open."""
        session = FakeSession("p")
        seen = []

        def bad(s, body):
            raise BodyError("bad")

        def bug(s, body):
            raise RuntimeError("bug")

        def failed(s, error):
            seen.append((s, type(error)))

        log_only(bad, "client", failed)(session, {})
        log_only(bug, "client", failed)(session, {})
        log_only(lambda s, body: None, "client", failed)(session, {})
        self.assertEqual(seen, [(session, BodyError), (session, RuntimeError)])
        self.assertIsNone(session.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
