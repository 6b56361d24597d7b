"""
Faults of a deployment of several real cairn nodes on a 3-server NATS
JetStream cluster (issue 15), each under load and each checked the same
way: every message a sender got a ForwardAck for is delivered, none is
held twice, and no recipient's application is given one twice.

- C{kill -9} of the cairn node holding the recipients' sessions (mailbox
  recipients, sync subscribers): their clients (C{cairn.client} with both
  addresses) move to the other node and get everything there, the sync
  subscribers every update once, in order;
- C{kill -9} of the JetStream leader of the mailbox stream;
- a partition between one cairn node and NATS (its NATS connections
  dropped by the proxies it reaches NATS through): it answers
  STORAGE_ERROR, never a false ForwardAck, and serves again once healed.
"""

import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected, uuid7
from cairn.sync import client as sync
from cairn.sync.client import PublishRejected
from cairn.wire.constants import ForwardStatus, SyncStatus
from tests import _jetstream
from tests._cluster import start_deployment
from tests._harness import Conditions, eventually
from tests.test_cluster_nodes import count_deliveries

#: Seconds a sender waits before trying a refused message again (its own
#: back-off, as a device would; nothing is timed by it).
RETRY = 0.05


class Recipient:
    """A device receiving messages: what its application got and what came over the wire."""

    def __init__(self, deployment, conditions, failover=False):
        self.client = deployment.client(failover)
        self.moved = []  # sessions that replaced one a node no longer knew (failover)
        self.client.on_session_replaced = lambda old, new: conditions.changed(self.moved.append(new))
        self.received = []  # message ids, as the application got them
        self.deliveries = []  # (message id, seq) of every ForwardDeliver entry, redeliveries included
        mailbox.set_inbox(self.client.peer, lambda sender, mid, data: conditions.changed(self.received.append(mid)))
        count_deliveries(self.client, self.deliveries)

    @property
    def peer_id(self):
        return self.client.peer_id


class Load:
    """
    Senders forwarding to recipients with a few requests in flight each; a
    message refused with STORAGE_ERROR is sent again with the same id until
    it is acknowledged (STORED or DUPLICATE), as a device does.
    """

    def __init__(self, conditions, recipients, per_loop):
        self.conditions = conditions
        self.recipients = recipients
        self.per_loop = per_loop
        self.acked = {}  # message id -> recipient peer id
        self.refused = 0
        self.running = True

    @defer.inlineCallbacks
    def loop(self, session, offset):
        for i in range(self.per_loop):
            if not self.running:
                return
            recipient = self.recipients[(offset + i) % len(self.recipients)].peer_id
            mid = uuid7()
            while True:
                try:
                    yield eventually(mailbox.forward(session, recipient, b"%d:%d" % (offset, i), mid), 60)
                    break
                except ForwardRejected as e:
                    if e.code != ForwardStatus.STORAGE_ERROR:
                        raise
                    self.refused += 1
                    self.conditions.changed()
                    yield task.deferLater(reactor, RETRY, lambda: None)
            self.acked[mid] = recipient
            self.conditions.changed()

    def start(self, sessions, loops=4):
        return defer.gatherResults(
            [self.loop(s, n * loops + k) for n, s in enumerate(sessions) for k in range(loops)], consumeErrors=True
        )


class FaultMixin:
    timeout = 300

    def setUp(self):
        self.conditions = Conditions()

    def delivered(self, recipients):
        return sum(len(r.received) for r in recipients)

    @defer.inlineCallbacks
    def all_delivered(self, load, recipients):
        """Wait until every acknowledged message reached its recipient; then check nothing came twice."""
        expected = {}
        for mid, peer_id in load.acked.items():
            expected.setdefault(peer_id, set()).add(mid)

        def done():
            return all(expected.get(r.peer_id, set()) <= set(r.received) for r in recipients)

        yield self.conditions.until(done, 120).addErrback(lambda _: None)
        for r in recipients:
            missing = expected.get(r.peer_id, set()) - set(r.received)
            self.assertEqual(missing, set(), f"{len(missing)} acknowledged message(s) lost")
            self.assertEqual(len(r.received), len(set(r.received)), "a message was given to the application twice")
            self.assertEqual(set(r.received), expected.get(r.peer_id, set()), "a message never acknowledged came")
            seqs = {}
            for mid, seq in r.deliveries:
                seqs.setdefault(mid, set()).add(seq)
            self.assertEqual([m for m, s in seqs.items() if len(s) > 1], [], "a message was stored twice")

    @defer.inlineCallbacks
    def emptied(self, *nodes):
        """
        Every node's C{/mailbox} says 0 once all is delivered (asked again
        after each answer, at most 60 s): a write stored but never answered
        at the fault left its node's depth below zero before (mailbox_alone.MaybeStored).
        """
        for node in nodes:
            deadline = reactor.seconds() + 60
            while True:
                code, mailbox = yield node.api("GET", "/mailbox")
                if code == 200 and mailbox["messages"] == 0 and mailbox["bytes"] == 0:
                    break
                if reactor.seconds() > deadline:
                    self.fail(f"{node.name}'s /mailbox never emptied: {mailbox}")


class NodeKillTests(FaultMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_kill_9_node_holding_recipients(self):
        """kill -9 of the node holding the recipients under load: they move to the other one; 0 lost, 0 twice."""
        deployment = yield start_deployment(self)
        node1, node2 = deployment.nodes
        # The recipients know both addresses, node 2 first: cairn.client moves them.
        recipients = [Recipient(deployment, self.conditions, failover=True) for _ in range(3)]
        for r in recipients:
            yield deployment.paired(r.client, [node2, node1])
        senders = [deployment.client() for _ in range(2)]
        sessions = []
        for client in senders:
            sessions.append((yield deployment.paired(client, node1)))
        yield deployment.known(node1, *(r.peer_id for r in recipients))
        load = Load(self.conditions, recipients, per_loop=60)
        running = load.start(sessions)

        yield self.conditions.until(lambda: self.delivered(recipients) >= 100, 60)
        yield node2.kill()
        killed_at = len(load.acked)
        # Each resumes at node 2 (refused), then at node 1, which does not know
        # the session (Close 9): a new handshake there replaces it.
        yield self.conditions.until(lambda: all(r.moved for r in recipients), 60)
        for r in recipients:
            self.assertIsNone(r.moved[-1].closed)
        yield eventually(running, 120)
        self.assertEqual(len(load.acked), 2 * 4 * 60)
        self.assertLess(killed_at, len(load.acked), "the load went on after the kill")
        yield self.all_delivered(load, recipients)
        yield self.emptied(node1)
        self.assertNotIn("Traceback", node1.log)

    @defer.inlineCallbacks
    def test_kill_9_node_holding_subscribers(self):
        """kill -9 of the node with the sync subscribers under publishing: each gets every update once, in order."""
        deployment = yield start_deployment(self)
        node1, node2 = deployment.nodes
        devices = [deployment.client(failover=True) for _ in range(2)]
        got = {d.peer_id: [] for d in devices}
        moved = []
        for device in devices:
            session = yield deployment.paired(device, [node2, node1])
            device.on_session_replaced = lambda old, new: self.conditions.changed(moved.append(new))
            sync.subscribe(
                session,
                ["notes"],
                lambda topic, seq, sender, data, into=got[device.peer_id]: self.conditions.changed(
                    into.append((seq, data))
                ),
            )
        phone = deployment.client()
        p = yield deployment.paired(phone, node1)
        yield deployment.known(node1, *(d.peer_id for d in devices))
        yield deployment.known(node2, phone.peer_id)
        committed = []
        total = 200

        @defer.inlineCallbacks
        def publisher():
            for i in range(total):
                update_id = os.urandom(16)
                while True:
                    try:
                        seq = yield eventually(sync.sync_publish(p, "notes", b"u%d" % i, update_id), 60)
                        break
                    except PublishRejected as e:
                        if e.code != SyncStatus.STORAGE_ERROR:
                            raise
                        yield task.deferLater(reactor, RETRY, lambda: None)
                committed.append(seq)
                self.conditions.changed()

        running = publisher()
        yield self.conditions.until(lambda: all(len(g) >= 40 for g in got.values()), 60)
        yield node2.kill()
        killed_at = len(committed)
        yield self.conditions.until(lambda: len(moved) >= len(devices), 60)
        yield eventually(running, 120)
        self.assertEqual(committed, list(range(1, total + 1)))
        self.assertLess(killed_at, total, "the publishing went on after the kill")
        yield self.conditions.until(lambda: all(len(g) >= total for g in got.values()), 120).addErrback(lambda _: None)
        for device in devices:
            self.assertEqual(got[device.peer_id], [(i + 1, b"u%d" % i) for i in range(total)])


class LeaderKillTests(FaultMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def leader_killed(self):
        """
        kill -9 of the mailbox stream's leader under load across nodes;
        fires with the two nodes once every acknowledged message arrived
        once (checked).
        """
        deployment = yield start_deployment(self)
        node1, node2 = deployment.nodes
        recipients = [Recipient(deployment, self.conditions) for _ in range(2)]
        for r in recipients:
            yield deployment.paired(r.client, node2)
        senders = [deployment.client() for _ in range(2)]
        sessions = [(yield deployment.paired(senders[0], node1)), (yield deployment.paired(senders[1], node2))]
        yield deployment.known(node1, *(r.peer_id for r in recipients))
        load = Load(self.conditions, recipients, per_loop=60)
        running = load.start(sessions)

        yield self.conditions.until(lambda: len(load.acked) >= 100, 60)
        jet = yield _jetstream.connect(self, deployment.nats.urls, replicas=3)
        info = yield jet.run(jet.js.stream_info, jet.stream("mbox"))
        yield deployment.nats.by_name(info.cluster.leader).kill()
        killed_at = len(load.acked)
        yield eventually(running, 180)
        self.assertEqual(len(load.acked), 2 * 4 * 60)
        self.assertLess(killed_at, len(load.acked), "the load went on after the kill")
        yield self.all_delivered(load, recipients)
        for node in (node1, node2):
            # While NATS is away a failed store call (StoreFull) is one line.
            self.assertNotIn("Traceback", node.log)
        return node1, node2

    def test_kill_9_jetstream_leader(self):
        """kill -9 of the mailbox stream's leader under load across nodes: 0 acknowledged lost, 0 twice."""
        return self.leader_killed()

    @defer.inlineCallbacks
    def test_depths_after_a_leader_kill(self):
        """The same: once all is delivered, every node's /mailbox says 0."""
        yield self.emptied(*(yield self.leader_killed()))


class PartitionTests(FaultMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_node_cut_from_nats_refuses_then_recovers(self):
        """Node 2 cut from NATS under load: STORAGE_ERROR (no false ack), /health degraded; healed: serves, 0 lost."""
        deployment = yield start_deployment(self, proxied=(1,))
        node1, node2 = deployment.nodes
        recipients = [Recipient(deployment, self.conditions)]
        yield deployment.paired(recipients[0].client, node1)
        sessions = [(yield deployment.paired(deployment.client(), node2))]
        yield deployment.known(node2, recipients[0].peer_id)
        load = Load(self.conditions, recipients, per_loop=80)
        running = load.start(sessions)

        yield self.conditions.until(lambda: len(load.acked) >= 40, 60)
        yield deployment.cut(node2)
        yield node2.wait_for("disconnected from NATS", timeout=60)
        cut_at = len(load.acked)
        yield self.conditions.until(lambda: load.refused >= 20, 60)
        code, health = yield node2.api("GET", "/health")
        self.assertEqual((code, health["status"]), (200, "degraded"), health)
        # Whatever was acknowledged during the cut was stored before it (its PubAck was in flight).
        during = len(load.acked) - cut_at
        self.assertLessEqual(during, 4)

        yield deployment.heal(node2)
        yield node2.wait_for("reconnected to NATS", timeout=60)
        yield eventually(running, 120)
        self.assertEqual(len(load.acked), 4 * 80)
        yield self.all_delivered(load, recipients)
        yield self.emptied(node1, node2)
        code, health = yield node2.api("GET", "/health")
        self.assertEqual((code, health["status"]), (200, "ok"), health)
        self.assertNotIn("Traceback", node2.log)  # a full store (NATS away) is logged in one line
