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
