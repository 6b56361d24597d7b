"""
A ForwardRequest naming a recipient the trust store's mirror does not
know waits for L{ITrustStore.catch_up} (a store shared with other nodes
reads the bucket: docs/scaling.md, "Pairing on any node"), and its
session's later requests wait behind it (L{cairn.session.guards.hold}:
whatever service they are for, at most L{HELD_MAX}); other sessions do
not. Driven with a memory trust store whose catch-up the test fires.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import uuid7
from cairn.session.errors import SessionClosed
from cairn.session.guards import HELD_MAX
from cairn.wire.constants import CloseCode, ForwardStatus, MessageType
from tests._harness import closed, eventually
from tests.test_mailbox import MailboxHarness


class CatchUpTests(MailboxHarness, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.asked = []
        self.unsure = set()  # what the catch-up says it could not check
        self.gate = defer.Deferred()
        self.reached = defer.Deferred()
        self.trust.catch_up = self.catch_up
        self.addCleanup(lambda: self.gate.called or self.gate.callback(None))  # before the stop
        self.arrived = 0  # requests that reached the node (held or not)
        for type_code in (MessageType.FORWARD_REQUEST, MessageType.PEER_KEY_REQUEST):
            self.count(type_code)

    def count(self, type_code):
        inner = self.server.handler_for(type_code)

        def counted(session, body):
            self.arrived += 1
            inner(session, body)
            self.conditions.changed()

        self.server.register_handler(type_code, counted)

    def catch_up(self, peer_ids):
        """The read: fires when the test opens the gate (which may pair the peers meanwhile)."""
        self.asked.append(sorted(peer_ids))
        if not self.reached.called:
            reactor.callLater(0, self.reached.callback, None)  # once the service has taken the Deferred
        d = defer.Deferred()
        self.gate.addCallback(lambda _: d.callback(frozenset(self.unsure.intersection(peer_ids))))
        return d

    @defer.inlineCallbacks
    def senders(self):
        """Alice and Dave (paired, online), Bob (not known: paired elsewhere), Carol (paired)."""
        alice, _ = self.peer()
        dave, _ = self.peer()
        bob, bob_box = self.peer(paired=False)
        carol, _ = self.peer()
        a = yield self.connect(alice)
        d = yield self.connect(dave)
        keys = mailbox.mailbox(alice.peer)._keys
        keys[bob.peer_id] = bob.peer.identity.public_key
        keys[carol.peer_id] = carol.peer.identity.public_key
        mailbox.mailbox(dave.peer)._keys[carol.peer_id] = carol.peer.identity.public_key
        return a, d, bob, bob_box, carol

    def pair(self, client):
        self.successResultOf(self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0))

    def send_alone(self, session, to, payload):
        """A ForwardRequest of one entry, sent at once (the library client holds a small batch while one is out)."""
        return self.forward_raw(session, {"to": to, "id": uuid7(), "payload": payload})

    @defer.inlineCallbacks
    def test_waits_and_keeps_the_session_order(self):
        """
        Alice's forward to Bob waits for the catch-up, her next requests (to
        Carol, known, a PeerKeyRequest, and Bob again) wait behind it; Dave's
        is stored meanwhile. Once Bob is found all of Alice's are answered,
        in order.
        """
        a, d, bob, bob_box, carol = yield self.senders()
        erin, _ = self.peer()  # paired, her key not yet known to Alice
        first = self.send_alone(a, bob.peer_id, b"one")
        yield eventually(self.reached)  # the node holds it: what follows is another request
        second = self.send_alone(a, carol.peer_id, b"two")
        key = mailbox.mailbox(a.local).peer_key(a, erin.peer_id)
        third = self.send_alone(a, bob.peer_id, b"three")
        yield eventually(self.until(lambda: self.arrived == 4))
        other = yield eventually(mailbox.forward(d, carol.peer_id, b"not held up"))
        self.assertFalse(other.duplicate)
        self.assertEqual(self.asked, [[bob.peer_id]])
        for waiting in (first, second, key, third):
            self.assertNoResult(waiting)
        self.assertEqual(self.mailbox.requests, 2)  # Alice's first and Dave's: the rest are held
        self.pair(bob)
        self.gate.callback(None)
        statuses = yield eventually(defer.gatherResults([first, second, third]))
        self.assertEqual(statuses, [ForwardStatus.STORED] * 3)
        self.assertEqual((yield eventually(key)), erin.peer.identity.public_key)
        self.assertEqual(self.asked, [[bob.peer_id]])  # the third found Bob known
        held = yield self.store.fetch(bob.peer_id, 0, 10)
        self.assertEqual([m.payload for m in held], [b"one", b"three"])

    @defer.inlineCallbacks
    def test_still_unknown_is_not_paired(self):
        """The catch-up found nothing: NOT_PAIRED, as without it."""
        from cairn.mailbox.client import ForwardRejected

        a, d, bob, bob_box, carol = yield self.senders()
        first = mailbox.forward(a, bob.peer_id, b"one")
        self.gate.callback(None)
        failure = yield self.assertFailure(eventually(first), ForwardRejected)
        self.assertEqual(failure.code, ForwardStatus.NOT_PAIRED)

    @defer.inlineCallbacks
    def test_unsure_is_a_storage_error(self):
        """
        The catch-up could not check Bob (the store's shared data out of
        reach): STORAGE_ERROR, which the sender sends again, not NOT_PAIRED;
        Carol's entry in the same request is stored.
        """
        a, d, bob, bob_box, carol = yield self.senders()
        self.unsure.add(bob.peer_id)
        to_bob = self.send_alone(a, bob.peer_id, b"one")
        to_carol = self.send_alone(a, carol.peer_id, b"two")
        self.gate.callback(None)
        statuses = yield eventually(defer.gatherResults([to_bob, to_carol]))
        self.assertEqual(statuses, [ForwardStatus.STORAGE_ERROR, ForwardStatus.STORED])
        self.assertEqual(self.mailbox.statuses["STORAGE_ERROR"], 1)

    @defer.inlineCallbacks
    def test_stop_waits_for_the_request_that_waits(self):
        """
        A stop while a request waits fires only once it is stored and
        answered; the requests held behind it go unanswered, as any request
        that reaches a stopped service (their sender resends them).
        """
        a, d, bob, bob_box, carol = yield self.senders()
        first = self.send_alone(a, bob.peer_id, b"one")
        yield eventually(self.reached)
        second = self.send_alone(a, carol.peer_id, b"two")
        yield eventually(self.until(lambda: self.arrived == 2))
        stopped = self.mailbox.stop()
        self.assertNoResult(stopped)
        self.pair(bob)
        self.gate.callback(None)
        yield eventually(stopped)
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 1)
        self.assertNotIn(carol.peer_id, self.store.depths())
        self.assertEqual((yield eventually(first)), ForwardStatus.STORED)
        self.assertNoResult(second)
        second.cancel()
        self.failureResultOf(second, defer.CancelledError)

    @defer.inlineCallbacks
    def test_a_flood_behind_a_wait_is_bounded(self):
        """
        While one request waits, the session's next HELD_MAX requests are
        held; one more closes the session LIMIT_REACHED (they were held
        without a bound before).
        """
        a, d, bob, bob_box, carol = yield self.senders()
        sends = [self.send_alone(a, bob.peer_id, b"one")]
        yield eventually(self.reached)
        sends += [self.send_alone(a, carol.peer_id, b"%d" % i) for i in range(HELD_MAX)]
        yield eventually(self.until(lambda: self.arrived == HELD_MAX + 1))
        self.assertIsNone(a.closed)
        sends.append(self.send_alone(a, carol.peer_id, b"one too many"))
        ended = yield closed(a)
        self.assertEqual(ended.code, CloseCode.LIMIT_REACHED)
        self.gate.callback(None)
        answered = yield defer.DeferredList(sends, consumeErrors=True)
        outcomes = {(ok, type(result.value) if not ok else None) for ok, result in answered}
        self.assertEqual(outcomes, {(False, SessionClosed)})  # none stored, none answered
        self.assertNotIn(carol.peer_id, self.store.depths())
        other = yield eventually(mailbox.forward(d, carol.peer_id, b"others are served"))
        self.assertFalse(other.duplicate)
