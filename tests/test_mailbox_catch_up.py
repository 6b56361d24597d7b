"""
A ForwardRequest naming a recipient the trust store's mirror does not
know waits for L{ITrustStore.catch_up} (a store shared with other nodes
reads the bucket: docs/scaling.md, "Pairing on any node"), and its
session's later requests wait behind it; other sessions do not. Driven
with a memory trust store whose catch-up the test fires.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import uuid7
from cairn.wire.constants import ForwardStatus, MessageType
from tests._harness import eventually
from tests.test_mailbox import MailboxHarness


class CatchUpTests(MailboxHarness, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.asked = []
        self.gate = defer.Deferred()
        self.reached = defer.Deferred()
        self.trust.catch_up = self.catch_up
        self.addCleanup(lambda: self.gate.called or self.gate.callback(None))  # before the stop
        inner = self.server.handler_for(MessageType.FORWARD_REQUEST)

        def counted(session, body):
            inner(session, body)
            self.conditions.changed()

        self.server.register_handler(MessageType.FORWARD_REQUEST, counted)

    def catch_up(self, peer_ids):
        """The read: fires when the test opens the gate (which may pair the peers meanwhile)."""
        self.asked.append(sorted(peer_ids))
        if not self.reached.called:
            reactor.callLater(0, self.reached.callback, None)  # once the service has taken the Deferred
        d = defer.Deferred()
        self.gate.addCallback(lambda _: d.callback(None))
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
        Carol, known, and Bob again) wait behind it; Dave's is stored
        meanwhile. Once Bob is found all of Alice's are stored, in order.
        """
        a, d, bob, bob_box, carol = yield self.senders()
        first = self.send_alone(a, bob.peer_id, b"one")
        yield eventually(self.reached)  # the node holds it: what follows is another request
        second = self.send_alone(a, carol.peer_id, b"two")
        third = self.send_alone(a, bob.peer_id, b"three")
        yield eventually(self.until(lambda: self.mailbox.requests == 3))
        other = yield eventually(mailbox.forward(d, carol.peer_id, b"not held up"))
        self.assertFalse(other.duplicate)
        self.assertEqual(self.asked, [[bob.peer_id]])
        for waiting in (first, second, third):
            self.assertNoResult(waiting)
        self.pair(bob)
        self.gate.callback(None)
        statuses = yield eventually(defer.gatherResults([first, second, third]))
        self.assertEqual(statuses, [ForwardStatus.STORED] * 3)
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
    def test_stop_waits_for_the_held_requests(self):
        """A stop while a request waits fires only once it (and what waited behind it) is stored and answered."""
        a, d, bob, bob_box, carol = yield self.senders()
        first = self.send_alone(a, bob.peer_id, b"one")
        yield eventually(self.reached)
        second = self.send_alone(a, carol.peer_id, b"two")
        yield eventually(self.until(lambda: self.mailbox.requests == 2))
        stopped = self.mailbox.stop()
        self.assertNoResult(stopped)
        self.pair(bob)
        self.gate.callback(None)
        yield eventually(stopped)
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 1)
        self.assertEqual(self.store.depths()[carol.peer_id].messages, 1)
        statuses = yield eventually(defer.gatherResults([first, second]))
        self.assertEqual(statuses, [ForwardStatus.STORED] * 2)
