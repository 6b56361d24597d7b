"""
Delivery across nodes (issue 15): a peer on node 1 forwards to a
recipient whose session is on node 2 and it is delivered at once;
the receipt flows back to the sender's node; a sync update published on
one node reaches subscribed devices on the other. The periodic re-check
is stopped in these tests, so that only the store watches and the node
bus can have carried what arrives.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.sync import client as sync
from cairn.wire.constants import ReceiptStatus
from tests._cluster_nodes import NodesMixin
from tests._harness import Conditions
from tests.test_cluster_mailbox_recent import B, message, tombstone


class CrossNodeMailboxTests(NodesMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_forward_to_a_recipient_on_another_node(self):
        """Alice on n1 forwards to Bob on n2: Bob gets it while connected, and Alice's receipt reaches her on n1."""
        yield self.start_nodes(2)
        from cairn.cluster.node import RECHECK

        # A node among several re-checks (what bounds a lost wake-up); stopped here.
        self.assertEqual([(n.mailbox.recheck, n.sync.recheck) for n in self.nodes], [(RECHECK, RECHECK)] * 2)
        self.without_recheck()
        alice, bob = self.client(), self.client()
        conditions = Conditions()
        received, receipts = [], []
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: conditions.changed(received.append(data)))
        mailbox.set_receipts(alice.peer, lambda receipt: conditions.changed(receipts.append(receipt)))
        a = yield self.paired(alice, 0)
        yield self.paired(bob, 1)
        result = yield mailbox.forward(a, bob.peer_id, b"across nodes")
        yield conditions.until(lambda: received == [b"across nodes"], 20)
        yield conditions.until(lambda: len(receipts) == 1, 20)
        self.assertEqual((receipts[0].message_id, receipts[0].status), (result.message_id, ReceiptStatus.DELIVERED))


class RecentAheadTests(unittest.SynchronousTestCase):
    """
    L{Recent.ahead} and L{Recent.written}: a message known stored before the
    watch brought it is answered only once nothing unknown can lie before
    it, and the watch's own copy then changes nothing.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from cairn.cluster.mailbox_recent import Recent

        self.recent = Recent(clock=Clock().seconds)
        self.recent.begin(10)

    def test_next_seq_is_taken(self):
        """The very next seq after the watch's: taken, fetched, and not added again by the watch."""
        told = message(11)
        self.assertTrue(self.recent.ahead(told, B))
        self.assertEqual(self.recent.fetch(B, 10, 10, 11), [told])
        self.recent.remove(B, 11)  # acknowledged before the watch got there
        self.recent.seen(told, B, "mbox")
        self.assertEqual(self.recent.fetch(B, 10, 10, 11), [])

    def test_gap_waits(self):
        """A seq with an unknown one before it waits: for this store's own write there, or for the watch."""
        told = message(13)
        self.assertFalse(self.recent.ahead(told, B))
        self.assertIsNone(self.recent.fetch(B, 10, 10, 13))
        self.recent.written(11)  # a tombstone of this store's
        self.assertIsNone(self.recent.fetch(B, 10, 10, 13))
        self.recent.written(12)
        self.assertEqual(self.recent.fetch(B, 10, 10, 13), [told])
        self.assertEqual(self.recent.watched, 13)

    def test_watch_fills_the_gap(self):
        """Another writer's message in the gap comes with the watch, in order, before the told one."""
        other, told = message(11, mid="%032x" % 99), message(12)
        self.assertFalse(self.recent.ahead(told, B))
        self.recent.seen(other, B, "mbox")
        self.assertEqual(self.recent.fetch(B, 10, 10, 12), [other, told])
        self.recent.seen(told, B, "mbox")  # the watch's copy
        self.assertEqual(self.recent.fetch(B, 10, 10, 12), [other, told])

    def test_not_a_message(self):
        """Only messages are told ahead (a tombstone is the watch's, or L{Recent.written})."""
        self.assertFalse(self.recent.ahead(tombstone(11, message(5)), B))
        self.assertEqual(self.recent.watched, 10)


class ToldMessageTests(NodesMixin, unittest.TestCase):
    """
    A message is told to the recipient's node with its PubAck (the node
    bus's C{msg} notice), which delivers it without waiting for its own
    watch of the stream (docs/scaling.md, "The node bus and delivery across
    nodes").
    """

    @defer.inlineCallbacks
    def alice_on_n1_bob_on_n2(self):
        """
        Two nodes (no periodic re-check), Alice paired on n1 and Bob on n2,
        once n1 knows where Bob is (its mirror of the presence bucket).
        Fires with C{(n1, n2, bob, Alice's session, conditions, what Bob received)}.
        """
        yield self.start_nodes(2)
        self.without_recheck()
        n1, n2 = self.nodes
        alice, bob = self.client(), self.client()
        conditions = Conditions()
        received = []
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: conditions.changed(received.append(data)))
        a = yield self.paired(alice, 0)
        yield self.paired(bob, 1)
        presence_apply = n1.presence._apply
        n1.presence._apply = lambda changes: conditions.changed(presence_apply(changes))
        yield conditions.until(lambda: n1.presence.elsewhere(bob.peer_id) == ["n2"], 20)
        return n1, n2, bob, a, conditions, received

    @defer.inlineCallbacks
    def test_delivered_before_the_watch(self):
        """
        With n2's watch held back, Alice's message on n1 still reaches Bob on
        n2 at once, from n1's notice; once the watch catches up, nothing is
        delivered twice, and the depth figure is right again.
        """
        n1, n2, bob, a, conditions, received = yield self.alice_on_n1_bob_on_n2()
        # n2's watch of the mailbox stream is held: what it sees waits here.
        store = n2.mailbox.store
        held = []
        seen, written, removed = store.recent.seen, store._written_elsewhere, store._removed
        store.recent.seen = lambda *args: conditions.changed(held.append((seen, args)))
        store._written_elsewhere = lambda *args: conditions.changed(held.append((written, args)))
        store._removed = lambda result: conditions.changed(removed(result))
        yield mailbox.forward(a, bob.peer_id, b"told")
        yield conditions.until(lambda: received == [b"told"], 20)
        self.assertEqual((n1.mailbox.bus.sent["msg"], n2.mailbox.bus.taken), (1, 1))
        # The watch catches up (its copy of the message and of Bob's acknowledgement);
        # the next message shows that nothing came twice.
        yield conditions.until(lambda: len([f for f, _ in held if f is written]) == 1, 20)
        store.recent.seen, store._written_elsewhere = seen, written
        for function, args in held:
            function(*args)
        yield mailbox.forward(a, bob.peer_id, b"next")
        yield conditions.until(lambda: received[-1:] == [b"next"], 20)
        self.assertEqual(received, [b"told", b"next"])
        yield conditions.until(lambda: bob.peer_id not in store.depths(), 20)

    @defer.inlineCallbacks
    def test_brought_by_the_watch_is_read_once(self):
        """
        A notice of a message n2's watch has already brought is dropped
        unread: n2 decodes the message once (the watch's copy), and its
        sessions are not woken again for it.
        """
        from twisted.internet import reactor

        from cairn.cluster import nats_bus
        from cairn.wire import cbor

        n1, n2, bob, a, conditions, received = yield self.alice_on_n1_bob_on_n2()
        # n2's notices wait until the test lets them go (its watch comes first).
        store, bus = n2.mailbox.store, n2.mailbox.bus
        notices, message = [], bus._message

        def held(*args):  # on n2's NATS loop
            notices.append(args)
            reactor.callFromThread(conditions.changed)

        bus._message = held
        decoded = []

        def loads(data):
            decoded.append(data)
            return cbor.loads(data)

        self.patch(nats_bus, "cbor", type("Counted", (), {"dumps": staticmethod(cbor.dumps), "loads": loads}))
        yield mailbox.forward(a, bob.peer_id, b"once")
        yield conditions.until(lambda: received == [b"once"] and notices, 20)
        # From here on, what n2's bus wakes on its reactor.
        woken, wake = [], bus.notices
        bus.notices = lambda kind, key: wake(kind, key) if woken.append(kind) is None else None

        async def nothing():  # after the notice, on n2's NATS loop
            pass

        store.jet.thread.call(message, *notices[0])
        yield store.jet.run(nothing)
        self.assertEqual((len(decoded), bus.received["msg"], woken), (0, 1, []))
        self.assertEqual(received, [b"once"])


class CrossNodeSyncTests(NodesMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_update_fans_out_to_devices_on_every_node(self):
        """An update published on n1 reaches a device subscribed on n2 (and one on n1) while connected."""
        yield self.start_nodes(2)
        self.without_recheck()
        conditions = Conditions()
        seen = {}
        sessions = {}
        for name, index in (("writer", 0), ("here", 0), ("there", 1)):
            client = self.client()
            sync.use_plaintext(client.peer)
            sessions[name] = yield self.paired(client, index)
            seen[name] = []

        def collect(name):
            return lambda topic, seq, sender, data: conditions.changed(seen[name].append(data))

        # An update stored before they subscribe: each reader's copy of it
        # (replayed at its subscription) proves the subscription in place.
        seed = yield sync.sync_publish(sessions["writer"], "notes", b"seed")
        self.assertIsNotNone(seed)
        for name in ("here", "there"):
            sync.subscribe(sessions[name], ["notes"], collect(name))
            yield conditions.until(lambda name=name: seen[name] == [b"seed"], 20)
        sync.sync_publish(sessions["writer"], "notes", b"from n1")
        yield conditions.until(lambda: seen["there"] == seen["here"] == [b"seed", b"from n1"], 20)


class CrossNodeMailboxR3Tests(CrossNodeMailboxTests):
    """The same on a 3-server NATS cluster, every stream and bucket R3 (reads may reach any replica)."""

    nats_cluster = True
    timeout = 240
