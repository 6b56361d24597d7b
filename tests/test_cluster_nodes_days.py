"""
A device offline for (simulated) days across real nodes (issue 15): two
C{twistd -n cairn} nodes and a 3-server NATS cluster (L{tests._cluster}),
each node's wall clock moved by the test (L{tests._cluster.FakeClock},
libfaketime; the NATS servers keep the real time: the streams have no
server-side age, expiry is the nodes', docs/scaling.md).

Sync updates and mailbox messages go in through node 1 on day 0 and day
4; on day 8 node 1's retention removes day 0's (the default
C{CAIRN_FORWARD_MAX_AGE} of 7 days), node 2 follows those removals while
its own clock is still on day 4, and the devices come back on node 2:
exactly what the single-node suite specifies (L{tests.test_sync}
C{test_retention_sweep_and_reset}, L{tests.test_mailbox}'s expiry): a
SyncReset, then what retention kept; the messages kept; EXPIRED receipts
for the others and DELIVERED for the kept ones at the sender's next session.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import uuid7
from cairn.sync import client as sync
from cairn.wire.constants import ReceiptStatus
from tests._cluster import libfaketime, start_deployment
from tests._harness import Conditions, closed, eventually

DAY = 86400


class OfflineForDaysTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        libfaketime()  # skips (or fails under CI=true) before any process starts
        self.deployment = yield start_deployment(self, clocks=True)
        self.node1, self.node2 = self.deployment.nodes
        self.conditions = Conditions()

    @defer.inlineCallbacks
    def leave(self, *sessions):
        for session in sessions:
            session.close()
            yield closed(session)

    @defer.inlineCallbacks
    def until_api(self, node, path, predicate, what):
        """Ask C{node}'s API again after each answer (never on a timer) until C{predicate(body)} holds."""
        for _ in range(2000):
            code, body = yield node.api("GET", path)
            if code == 200 and predicate(body):
                return body
        raise AssertionError(f"{node.name} {path}: never {what}: {body}")

    @defer.inlineCallbacks
    def test_offline_for_days_across_nodes(self):
        """
        Offline past retention: on node 2 the laptop gets SyncReset then
        what was kept, bob the messages kept, alice EXPIRED and DELIVERED receipts.
        """
        d = self.deployment
        phone, laptop, alice, bob = (d.client() for _ in range(4))
        received, receipts, updates, resets = [], [], [], []
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: self.conditions.changed(received.append((mid, data))))
        mailbox.set_receipts(alice.peer, lambda event: self.conditions.changed(receipts.append(event)))

        def on_laptop(session):
            sync.subscribe(
                session,
                ["notes"],
                lambda topic, seq, sender, data: self.conditions.changed(updates.append((seq, data))),
                on_reset=lambda topic, oldest, reason: self.conditions.changed(resets.append((topic, oldest))),
            )

        # Day 0: everyone pairs; the laptop subscribes, then it and bob go away.
        p = yield d.paired(phone, self.node1)
        a = yield d.paired(alice, self.node1)
        lap = yield d.paired(laptop, self.node2)
        b = yield d.paired(bob, self.node2)
        everyone = (phone.peer_id, laptop.peer_id, alice.peer_id, bob.peer_id)
        yield d.known(self.node1, *everyone)
        yield d.known(self.node2, *everyone)
        on_laptop(lap)
        yield self.until_api(
            self.node1,
            "/sync",
            lambda body: [t["devices"][0]["peer_id"] for t in body["topics"]] == [laptop.peer_id],
            "the laptop's cursor",
        )
        yield self.leave(lap, b)
        old = [uuid7() for _ in range(3)]
        for i, mid in enumerate(old):
            yield eventually(mailbox.forward(a, bob.peer_id, b"old%d" % i, mid), 30)
            yield eventually(sync.sync_publish(p, "notes", b"old%d" % i), 30)
        yield self.leave(p, a)

        # Day 4 on both nodes: more of each, kept by retention on day 8.
        for node in (self.node1, self.node2):
            node.clock.set(4 * DAY)
        p = yield d.connect(phone, self.node1)
        a = yield d.connect(alice, self.node1)
        new = [uuid7() for _ in range(2)]
        for i, mid in enumerate(new):
            yield eventually(mailbox.forward(a, bob.peer_id, b"new%d" % i, mid), 30)
            seq = yield eventually(sync.sync_publish(p, "notes", b"new%d" % i), 30)
            self.assertEqual(seq, 4 + i)
        yield self.leave(p, a)

        # Day 8 on node 1: its sweeps (due since the jump) run at the reactor's
        # next turn and remove day 0's updates and messages.
        self.node1.clock.set(8 * DAY)
        yield self.node1.wait_for("sync: 3 update(s) expired", timeout=90)
        yield self.node1.wait_for("mailbox: 3 message(s) expired", timeout=90)
        # Node 2, still on day 4 (its own sweeps remove nothing), follows node 1's removals.
        body = yield self.until_api(
            self.node2,
            "/sync",
            lambda body: body["topics"][0]["oldest_seq"] == 4,
            "raising the floor to what node 1's retention removed",
        )
        [notes] = body["topics"]
        self.assertEqual((notes["head"], notes["updates"], notes["bytes"]), (5, 2, body["bytes"]))
        self.assertEqual(notes["devices"][0]["behind_retention"], True)

        # Day 8 on node 2 too: the devices come back there.
        self.node2.clock.set(8 * DAY)
        yield d.connect(laptop, self.node2)  # its client subscribes again by itself
        yield self.conditions.until(lambda: len(updates) >= 2, 30)
        self.assertEqual(resets, [("notes", 4)])
        self.assertEqual([seq for seq, _ in updates], [4, 5])

        yield d.connect(bob, self.node2)
        yield self.conditions.until(lambda: len(received) >= 2, 30)
        self.assertEqual([mid for mid, _ in received], new)

        yield d.connect(alice, self.node2)
        yield self.conditions.until(lambda: len(receipts) >= 5, 30)
        self.assertEqual(
            sorted((r.message_id, r.status) for r in receipts),
            sorted([(mid, ReceiptStatus.EXPIRED) for mid in old] + [(mid, ReceiptStatus.DELIVERED) for mid in new]),
        )
        self.assertEqual({r.recipient for r in receipts}, {bob.peer_id})
