"""
Full mode announced on the node bus (C{full} and C{room} notices,
L{cairn.cluster.nats_bus}): two nodes in this process on one nats-server
at its storage limit, the second node's poll of the reserve stopped, so
that only the notices can tell it that the first met the limit, and that
the first wrote the ballast again.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected
from cairn.wire.constants import ForwardStatus
from tests import _cluster_nodes
from tests import test_cluster_full_disk as full_disk
from tests._cluster_nodes import NodesMixin
from tests._harness import Conditions, eventually, observe_logs
from tests.test_cluster_full_disk import PAYLOAD, _LimitedServer

#: CAIRN_CLUSTER_RESERVE: what the server's few MiB hold (as in test_cluster_full_disk).
RESERVE = 256 * 1024


def start_limited(testcase):
    """A single JetStream server storing at most a few MiB (L{_LimitedServer}); fires with it."""
    server = _LimitedServer(os.path.abspath(testcase.mktemp()))
    testcase.addCleanup(server.kill)
    return server.start().addCallback(lambda _: server)


class FullModeNoticeTests(NodesMixin, unittest.TestCase):
    timeout = 300
    forward = full_disk.NatsStorageLimitTests.forward

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.patch(_cluster_nodes, "start_nats", start_limited)
        self.conditions = Conditions()
        observe_logs(self, self.conditions.changed)  # full mode entered and left are logged
        yield self.start_nodes(2, cluster_reserve=RESERVE)
        for node in self.nodes:
            node.presence.on_other_node(self.conditions.changed)
        yield self.conditions.until(lambda: all(len(node.presence.nodes()) == 2 for node in self.nodes), 30)
        self.reserves = [node.cluster.reserve for node in self.nodes]
        self.reserves[1].stop()  # no poll on node 2: only a notice can tell it

    @defer.inlineCallbacks
    def test_other_node_told_at_once(self):
        """Node 1 meets the limit: node 2 refuses growth without a poll, and stores again once node 1 has room."""
        one, two = self.reserves
        recipient = self.client()
        received = []
        mailbox.set_inbox(recipient.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        session = yield self.paired(recipient, 0)
        yield session.close()
        other_sender = yield self.paired(self.client(), 1)
        sender = yield self.paired(self.client(), 0)
        acked = yield full_disk.forward_until_refused(self, sender, recipient.peer_id)

        yield self.conditions.until(lambda: two.full, 30)
        self.assertIn("'n1' met it and told the others", two.why)
        self.assertEqual(self.nodes[1].bus.received["full"], 1)
        with self.assertRaises(ForwardRejected) as refused:
            yield self.forward(other_sender, recipient.peer_id, os.urandom(PAYLOAD))
        self.assertEqual(refused.exception.code, ForwardStatus.STORAGE_ERROR)
        metrics = self.nodes[1].metrics.exposition().decode()  # labelled as every metric of a node among several
        self.assertIn(f'cairn_cluster_reserve_bytes{{node="n2"}} {float(RESERVE)}', metrics)
        self.assertIn('cairn_cluster_reserve_full{node="n2"} 1.0', metrics)
        self.assertIn('cairn_cluster_reserve_refused_total{node="n2"} 1.0', metrics)

        # The recipient drains at node 1, which writes the ballast again and says so: node 2 leaves.
        yield eventually(recipient.connect(self.address(0)), 30)
        yield self.conditions.until(lambda: set(acked) <= set(received), 60)
        yield self.conditions.until(lambda: not one.full and not two.full, 60)
        self.assertEqual(self.nodes[1].bus.received["room"], 1)
        yield full_disk.forward_until_stored(self, other_sender, recipient.peer_id)
