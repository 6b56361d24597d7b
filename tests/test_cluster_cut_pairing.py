"""
A pairing made on one node while another is cut from NATS (real C{twistd
-n cairn} nodes, the cut node reaching NATS through proxies that drop its
connections): the cut node cannot read the trust bucket, so a peer its
mirror does not know is not known to be unpaired there. It answers what a
device tries again -- a forward STORAGE_ERROR, a circuit C{offline} (to
it, or asked by it), the peer's own session Close GOING_AWAY -- never
NOT_PAIRED, which a device takes as final (docs/scaling.md, "Pairing on
any node"); healed, it serves them.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected, uuid7
from cairn.relay import client as relay
from cairn.relay.client import RouteRefused
from cairn.wire.constants import CloseCode, ForwardStatus, RouteStatus
from tests._cluster import start_deployment
from tests._harness import Conditions, closed, eventually


class PairedDuringTheCutTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_not_known_is_not_unpaired(self):
        deployment = yield start_deployment(self, proxied=(1,))
        node1, node2 = deployment.nodes
        alice = deployment.client()
        on_node2 = yield deployment.paired(alice, node2)
        yield deployment.cut(node2)
        yield node2.wait_for("disconnected from NATS", timeout=60)

        carol = deployment.client()  # pairs through node 1 while node 2 is cut off
        conditions, received = Conditions(), []
        mailbox.set_inbox(carol.peer, lambda sender, mid, data: conditions.changed(received.append((sender, data))))
        yield deployment.paired(carol, node1)
        message_id = uuid7()
        # Alice asks node 2 for Carol's key first: "retry", not "not paired".
        refused = yield self.assertFailure(
            eventually(mailbox.forward(on_node2, carol.peer_id, b"welcome", message_id), 60), ForwardRejected
        )
        self.assertEqual((type(refused), refused.code), (ForwardRejected, ForwardStatus.STORAGE_ERROR))
        # With the key known (no key request), the forward itself.
        mailbox.mailbox(alice.peer)._keys[carol.peer_id] = carol.peer.identity.public_key
        refused = yield self.assertFailure(
            eventually(mailbox.forward(on_node2, carol.peer_id, b"welcome", message_id), 60), ForwardRejected
        )
        self.assertEqual(refused.code, ForwardStatus.STORAGE_ERROR)
        self.assertIn("cannot check the recipient's pairing", refused.reason)
        route = yield self.assertFailure(eventually(relay.relay_to(alice, on_node2, carol.peer_id), 60), RouteRefused)
        self.assertEqual(route.status, RouteStatus.OFFLINE)
        # Carol's own session on node 2: its first request that needs pairing.
        carols = yield deployment.connect(carol, node2)
        route = yield self.assertFailure(eventually(relay.relay_to(carol, carols, alice.peer_id), 60), RouteRefused)
        self.assertEqual(route.status, RouteStatus.OFFLINE)  # her circuit: tried again, not given up
        self.assertEqual(route.reason, "the node cannot check this device's pairing now")
        mailbox.forward(carols, alice.peer_id, b"hello back").addErrback(lambda _: None)
        ended = yield closed(carols)
        self.assertEqual(ended.code, CloseCode.GOING_AWAY)
        self.assertIn("cannot check this device's pairing", ended.reason)

        yield deployment.heal(node2)
        yield node2.wait_for("reconnected to NATS", timeout=60)
        sent = yield eventually(mailbox.forward(on_node2, carol.peer_id, b"welcome", message_id), 60)
        self.assertFalse(sent.duplicate)
        yield conditions.until(lambda: received, 60)
        self.assertEqual(received, [(alice.peer_id, b"welcome")])
        self.assertNotIn("Traceback", node2.log)
