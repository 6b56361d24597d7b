"""
Two real C{twistd -n cairn} nodes on one nats-server at its storage limit
(C{max_file_store: 3M}): the node that did not meet the refusal learns of
the released reserve (told on the node bus, or by its poll of the reserve
stream) and refuses growth itself (L{cairn.cluster.reserve}); both serve
again once the mailbox drained.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected
from cairn.wire.constants import ForwardStatus
from tests import test_cluster_full_disk as full_disk
from tests._harness import Conditions
from tests.test_cluster_full_disk import PAYLOAD, _LimitedServer, _OneNodeMixin

#: Seconds within which a node must learn that another released the reserve:
#: its poll (cairn.cluster.reserve.POLL, 1 s) and the reads it makes, with room for a loaded machine.
LEARNED_WITHIN = 30


class TwoNodesAtTheLimitTests(_OneNodeMixin, unittest.TestCase):
    server_class = _LimitedServer
    forward = full_disk.NatsStorageLimitTests.forward

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.second = yield self.deployment.add_node()
        yield self.second.start()
        self.conditions = Conditions()

    @defer.inlineCallbacks
    def health_until(self, node, wanted):
        """Ask C{node}'s /health again after each answer until C{wanted(health)}, for at most L{LEARNED_WITHIN} s."""
        deadline = reactor.seconds() + LEARNED_WITHIN
        while True:
            code, health = yield node.api("GET", "/health")
            if wanted(health):
                return health
            if reactor.seconds() > deadline:
                self.fail(f"{node.name} never got there: {health}")

    @defer.inlineCallbacks
    def test_other_node_refuses_growth(self):
        """Node 1 meets the limit; node 2 refuses forwards itself within the poll's bound; both drain and recover."""
        deployment = self.deployment
        recipient = deployment.client()
        received = []
        mailbox.set_inbox(recipient.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        session = yield deployment.paired(recipient, self.node)
        yield session.close()
        other_sender = yield deployment.paired(deployment.client(), self.second)
        sender = yield deployment.paired(deployment.client(), self.node)
        acked = yield full_disk.forward_until_refused(self, sender, recipient.peer_id)

        health = yield self.health_until(self.second, lambda h: h["cluster"]["reserve"]["full"])
        self.assertEqual(health["status"], "degraded")
        self.assertIn("JetStream's storage limit reached", health["reason"])
        # Told on the node bus (tests/test_cluster_reserve_notice.py), or by its poll had the notice been lost.
        self.assertTrue(
            "met it and told the others" in self.second.log or "another node released the reserve" in self.second.log
        )
        with self.assertRaises(ForwardRejected) as refused:
            yield self.forward(other_sender, recipient.peer_id, os.urandom(PAYLOAD))
        self.assertEqual(refused.exception.code, ForwardStatus.STORAGE_ERROR)

        # The recipient drains at node 1; then node 2 stores again, and both say ok.
        yield deployment.connect(recipient, self.node)
        yield self.conditions.until(lambda: set(acked) <= set(received), 60)
        yield full_disk.forward_until_stored(self, other_sender, recipient.peer_id)
        for node in (self.node, self.second):
            health = yield self.health_until(node, lambda h: h["status"] == "ok")
            self.assertFalse(health["cluster"]["reserve"]["full"])
            self.assertNotIn("Traceback", node.log)
