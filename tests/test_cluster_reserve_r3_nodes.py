"""
The storage reserve (L{cairn.cluster.reserve}) with three real C{twistd -n
cairn} nodes on a 3-server R3 NATS cluster whose account has a JetStream
C{max_file} limit (as L{tests.test_cluster_reserve_r3}, with a reserve
sized for three nodes' overshoot): senders on every node forward at once, several forwards in flight
each, until each is refused. Every node enters full mode (its own refusal
or another's C{full} notice); the recipient drains at node 1, every
acknowledged message delivered once and the mailbox empty on every node
(a removal refused in part once left node 1's depth counting hundreds of
removed messages: L{cairn.cluster.mailbox_partly}); then every node leaves
full mode and stores again. The overshoot figures of this shape are
measured in docs/scaling.md "Sizing".
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected, uuid7
from cairn.wire.constants import ForwardStatus
from tests import test_cluster_full_disk as full_disk
from tests._cluster import Deployment
from tests._harness import Conditions, drop_all, eventually
from tests._nats import Account, start_nats_cluster
from tests.test_cluster_full_disk import PAYLOAD, forward_until_stored
from tests.test_cluster_nodes import count_deliveries
from tests.test_cluster_reserve_r3 import REPLICAS

MiB = 2**20
#: Three nodes' senders overshoot an R3 account's limit by up to 3.5 MB a replica before
#: JetStream's first refusal (docs/scaling.md "Sizing"): a 2 MiB reserve then left the
#: mailbox alone over the limit (no drain possible) in 3 runs of 11. The reserve covers
#: that, and the account holds well over 2 x the reserve x replicas, so full mode can end.
RESERVE = 6 * MiB
ACCOUNT_MAX_FILE = 80 * MiB

#: Senders per node, and forwards each keeps in flight (a device's pipelined sends).
SENDERS, LANES = 2, 8
#: Seconds a node's figures may take to settle (its poll, the notices, the drain), asked again after each answer.
SETTLES_WITHIN = 60


class ThreeNodesAtTheAccountLimitTests(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def setUp(self):
        self.account = Account(ACCOUNT_MAX_FILE)
        nats = yield start_nats_cluster(self, account=self.account)
        settings = {"CAIRN_CLUSTER_RESERVE": str(RESERVE)}
        self.deployment = Deployment(self, nats, os.path.abspath(self.mktemp()), REPLICAS, settings)
        self.addCleanup(lambda: drop_all(self.deployment.connections))
        self.nodes = []
        for _ in range(3):  # one at a time: the first sets the layout up
            node = yield self.deployment.add_node()
            yield node.start()
            self.nodes.append(node)
        self.conditions = Conditions()

    forward = full_disk.NatsDiskFullTests.forward  # for forward_until_stored

    @defer.inlineCallbacks
    def api_until(self, node, path, wanted):
        """Ask C{node}'s C{path} again after each answer until C{wanted(answer)}, for at most L{SETTLES_WITHIN} s."""
        deadline = reactor.seconds() + SETTLES_WITHIN
        while True:
            code, answer = yield node.api("GET", path)
            if code == 200 and wanted(answer):
                return answer
            if reactor.seconds() > deadline:
                self.fail(f"{node.name} {path} never got there: {answer}")

    @defer.inlineCallbacks
    def lane(self, session, recipient_id, acked, refused):
        """
        Forward one message after another until one is refused
        (STORAGE_ERROR, checked; kept in C{refused}: a refusal means "send it
        again with its id", not "not stored" -- a write whose answer was
        lost may be stored, and a device's resend is then a duplicate).
        """
        for _ in range(5000):  # the account holds about 2,700
            mid = uuid7()
            try:
                yield eventually(mailbox.forward(session, recipient_id, os.urandom(PAYLOAD), mid), 90)
            except ForwardRejected as e:
                self.assertEqual(e.code, ForwardStatus.STORAGE_ERROR)
                refused.append(mid)
                return
            acked.append(mid)
        self.fail("JetStream never refused")

    @defer.inlineCallbacks
    def test_three_nodes_fill_drain_and_store_again(self):
        """
        Senders on all three nodes at once until refused: every node full;
        the drain delivers every acknowledged message once and empties the
        mailbox on every node; every node leaves full mode and stores again.
        """
        deployment, nodes = self.deployment, self.nodes
        recipient = deployment.client()
        received, deliveries = [], []
        mailbox.set_inbox(recipient.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        count_deliveries(recipient, deliveries)
        session = yield deployment.paired(recipient, nodes[0])
        yield session.close()
        senders = []
        for node in nodes:
            for _ in range(SENDERS):
                senders.append((yield deployment.paired(deployment.client(), node)))
        acked, refused = [], []
        lanes = [self.lane(s, recipient.peer_id, acked, refused) for s in senders for _ in range(LANES)]
        yield defer.gatherResults(lanes)
        self.assertGreater(len(acked), 100)
        for node in nodes:
            health = yield self.api_until(node, "/health", lambda h: h["cluster"]["reserve"]["full"])
            self.assertEqual(health["status"], "degraded", health)

        yield deployment.connect(recipient, nodes[0])
        yield self.conditions.until(lambda: set(acked) <= set(received), 120).addErrback(lambda _: None)
        self.assertEqual(set(acked) - set(received), set(), "acknowledged messages lost")
        self.assertEqual(set(received) - set(acked) - set(refused), set(), "messages never sent delivered")
        self.assertEqual(len(received), len(set(received)), "a message was given to the application twice")
        self.assertEqual(len({mid for mid, _ in deliveries}), len(deliveries), "a message was delivered twice")
        for node in nodes:
            yield self.api_until(node, "/mailbox", lambda m: m["messages"] == 0)

        for node in nodes:
            health = yield self.api_until(node, "/health", lambda h: h["status"] == "ok")
            self.assertFalse(health["cluster"]["reserve"]["full"])
        for i, node in enumerate(nodes):
            yield forward_until_stored(self, senders[SENDERS * i], recipient.peer_id, within=60)
            self.assertNotIn("Traceback", node.log)
            self.assertNotIn(self.account.password, node.log)
