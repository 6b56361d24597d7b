"""
The way out of an R3 account's storage limit when the reserve was not
enough (L{cairn.cluster.mailbox_room}): a real C{twistd -n cairn} node as
in L{tests.test_cluster_reserve_r3}, the mailbox filled until refused (the
ballast released), then the account's C{max_file} lowered below what the
mailbox alone holds (a reload of every server): the stuck shape that
JetStream's own overshoot left three nodes in (docs/scaling.md "Sizing"),
made deterministic. Every tombstone is refused there; the acknowledgements
bury their messages, and the deployment drains and stores again by itself.
"""

import os

import attr
from twisted.internet import defer
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.wire.constants import ReceiptStatus
from tests import test_cluster_reserve_r3 as r3
from tests.test_cluster_full_disk import forward_until_stored

MiB = 2**20


class OverTheLimitTests(unittest.TestCase):
    timeout = 600
    reserve = 1 * MiB
    #: Over 2 x the reserve x replicas (6 MiB): the node can leave full mode by draining.
    account_max_file = 16 * MiB
    #: Lowered to this once filled: the mailbox alone (about 13 MiB over the replicas) is over it.
    lowered_max_file = 8 * MiB

    setUp = r3.R3AccountLimitTests.setUp
    forward = r3.R3AccountLimitTests.forward
    filled = r3.R3AccountLimitTests.filled
    health = r3.R3AccountLimitTests.health
    drained = r3.R3AccountLimitTests.drained

    @defer.inlineCallbacks
    def lower_the_limit(self):
        for server in self.nats.servers:
            server.account = attr.evolve(self.account, max_file=self.lowered_max_file)
            with open(os.path.join(server.directory, "nats.conf"), "w") as f:
                f.write(server.config())
            line = yield server.reload()
            self.assertIn("Reloaded server configuration", line)

    @defer.inlineCallbacks
    def test_drained_with_the_mailbox_alone_over_the_limit(self):
        """
        With the ballast released and the mailbox alone over the account's
        limit, the recipient gets every acknowledged message once, the
        mailbox empties, the sender gets every DELIVERED receipt, and the
        node leaves full mode and stores again.
        """
        node = self.node
        recipient, received, sender, acked = yield self.filled()
        health = yield self.health()
        self.assertEqual(health["cluster"]["reserve"], {"bytes": self.reserve, "full": True}, health)
        yield self.lower_the_limit()
        receipts = []
        mailbox.set_receipts(sender.local, lambda event: self.conditions.changed(receipts.append(event)))

        yield self.drained(recipient, received, acked)

        # Every receipt owed reaches the sender, those of buried messages too (written once room allowed).
        yield self.conditions.until(lambda: {r.message_id for r in receipts} >= set(acked), 120).addErrback(
            lambda _: None
        )
        self.assertEqual({r.message_id for r in receipts if r.status == ReceiptStatus.DELIVERED}, set(acked))

        yield forward_until_stored(self, sender, recipient.peer_id, within=120)
        health = yield self.health()
        self.assertEqual(health["status"], "ok", health)
        self.assertIn("removed messages deleted, their receipts recorded", node.log)
        self.assertIn("owed tombstones written", node.log)
        self.assertNotIn("Traceback", node.log)
        self.assertNotIn(self.account.password, node.log)
