"""
Several real C{twistd -n cairn} nodes as one server (issue 15): a 3-server
NATS JetStream cluster and two nodes sharing one identity, started by the
test (L{tests._cluster}); devices connect to either node and get what a
single node would have given them.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import uuid7
from cairn.pairing import client as pairing
from cairn.relay import client as relay
from cairn.relay.attached import AttachedCircuit
from cairn.relay.client import CircuitTransport
from cairn.relay.messages import WINDOW
from cairn.sync import client as sync
from cairn.wire.constants import CloseCode, MessageType, ReceiptStatus
from tests._cluster import start_deployment
from tests._harness import Conditions, closed, eventually, next_data


def count_deliveries(client, into):
    """Record (message id, seq) of every ForwardDeliver entry C{client} receives, before its own dedup."""
    inner = client.peer.handler_for(MessageType.FORWARD_DELIVER)

    def counting(session, body):
        into.extend((entry["id"], entry["seq"]) for entry in body["messages"])
        inner(session, body)

    client.peer.register_handler(MessageType.FORWARD_DELIVER, counting)


class DeploymentMixin:
    """Each test: its own 3 NATS servers and 2 real nodes (node1, node2), stopped by PID."""

    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.deployment = yield start_deployment(self)
        self.node1, self.node2 = self.deployment.nodes
        self.conditions = Conditions()


class MailboxAcrossNodesTests(DeploymentMixin, unittest.TestCase):
    def inbox(self, client):
        received = []
        mailbox.set_inbox(client.peer, lambda sender, mid, data: self.conditions.changed(received.append((mid, data))))
        return received

    @defer.inlineCallbacks
    def test_one_identity_everywhere(self):
        """Both nodes answer with the one deployment identity and say which node they are."""
        client = self.deployment.client()
        s1 = yield self.deployment.paired(client, self.node1)
        s2 = yield self.deployment.connect(client, self.node2)
        self.assertEqual({s1.remote_peer_id, s2.remote_peer_id}, {self.deployment.peer_id})
        for node in (self.node1, self.node2):
            code, health = yield node.api("GET", "/health")
            self.assertEqual((code, health["status"], health["storage"]), (200, "ok", "jetstream"))
            self.assertEqual(health["node"], node.name)

    @defer.inlineCallbacks
    def test_forward_to_online_recipient_on_other_node(self):
        """A forward on node 1 to a recipient whose session is on node 2 is delivered at once, once."""
        alice, bob = self.deployment.client(), self.deployment.client()
        received, deliveries = self.inbox(bob), []
        count_deliveries(bob, deliveries)
        yield self.deployment.paired(bob, self.node2)
        a = yield self.deployment.paired(alice, self.node1)
        yield self.deployment.known(self.node1, bob.peer_id)
        sent = [uuid7() for _ in range(20)]
        yield defer.gatherResults(
            [eventually(mailbox.forward(a, bob.peer_id, b"m%d" % i, mid), 30) for i, mid in enumerate(sent)]
        )
        yield self.conditions.until(lambda: len(received) >= 20, 30)
        self.assertEqual(received, [(mid, b"m%d" % i) for i, mid in enumerate(sent)])
        self.assertEqual(len(deliveries), len({mid for mid, _ in deliveries}), "a message was delivered twice")

    @defer.inlineCallbacks
    def test_forward_to_offline_recipient_then_receipts(self):
        """Forwarded on node 1, recipient offline: delivered at its session on node 2; receipts reach the sender."""
        alice, bob = self.deployment.client(), self.deployment.client()
        received = self.inbox(bob)
        receipts = []
        mailbox.set_receipts(alice.peer, lambda event: self.conditions.changed(receipts.append(event)))
        b = yield self.deployment.paired(bob, self.node1)
        b.close()
        a = yield self.deployment.paired(alice, self.node1)
        sent = [uuid7() for _ in range(10)]
        yield defer.gatherResults(
            [eventually(mailbox.forward(a, bob.peer_id, b"m%d" % i, mid), 30) for i, mid in enumerate(sent)]
        )
        a.close()
        yield self.deployment.known(self.node2, bob.peer_id, alice.peer_id)
        yield self.deployment.connect(bob, self.node2)
        yield self.conditions.until(lambda: len(received) >= 10, 30)
        self.assertEqual([mid for mid, _ in received], sent)
        # The sender's next session, on the other node, gets every DELIVERED receipt once.
        yield self.deployment.connect(alice, self.node2)
        yield self.conditions.until(lambda: len(receipts) >= 10, 30)
        self.assertEqual(sorted(r.message_id for r in receipts), sorted(sent))
        self.assertEqual({r.recipient for r in receipts}, {bob.peer_id})

    @defer.inlineCallbacks
    def test_receipts_reach_online_sender_on_other_node(self):
        """Sender online on node 1, recipient on node 2: DELIVERED receipts reach the sender in its session."""
        alice, bob = self.deployment.client(), self.deployment.client()
        received = self.inbox(bob)
        receipts = []
        mailbox.set_receipts(alice.peer, lambda event: self.conditions.changed(receipts.append(event)))
        yield self.deployment.paired(bob, self.node2)
        a = yield self.deployment.paired(alice, self.node1)
        yield self.deployment.known(self.node1, bob.peer_id)
        sent = [uuid7() for _ in range(10)]
        yield defer.gatherResults(
            [eventually(mailbox.forward(a, bob.peer_id, b"m%d" % i, mid), 30) for i, mid in enumerate(sent)]
        )
        yield self.conditions.until(lambda: len(received) >= 10 and len(receipts) >= 10, 30)
        self.assertEqual(sorted(r.message_id for r in receipts), sorted(sent))
        self.assertEqual({r.status for r in receipts}, {ReceiptStatus.DELIVERED})
        self.assertIsNone(a.closed)  # the same session: nothing waited for a next one


class SyncAcrossNodesTests(DeploymentMixin, unittest.TestCase):
    def subscriber(self, session, topics=("notes",)):
        updates = []
        sync.subscribe(
            session, list(topics), lambda topic, seq, sender, data: self.conditions.changed(updates.append((seq, data)))
        )
        return updates

    @defer.inlineCallbacks
    def test_fan_out_and_offline_device(self):
        """Updates published on node 1 reach devices on node 2 at once; one offline catches up in order elsewhere."""
        phone, laptop, tablet = (self.deployment.client() for _ in range(3))
        p = yield self.deployment.paired(phone, self.node1)
        l_ = yield self.deployment.paired(laptop, self.node2)
        t = yield self.deployment.paired(tablet, self.node2)
        yield self.deployment.known(self.node1, phone.peer_id, laptop.peer_id, tablet.peer_id)
        yield self.deployment.known(self.node2, phone.peer_id, laptop.peer_id, tablet.peer_id)
        self.subscriber(p)
        on_laptop = self.subscriber(l_)
        on_tablet = self.subscriber(t)
        seq = yield eventually(sync.sync_publish(p, "notes", b"first"), 30)
        self.assertEqual(seq, 1)
        yield self.conditions.until(lambda: on_laptop and on_tablet, 30)
        self.assertEqual((on_laptop, on_tablet), ([(1, b"first")], [(1, b"first")]))

        # The tablet goes away (its cursor is at 1); 30 updates later it comes back through node 1.
        t.close()
        yield closed(t)
        for i in range(30):
            yield eventually(sync.sync_publish(p, "notes", b"u%d" % i), 30)
        yield self.conditions.until(lambda: len(on_laptop) == 31, 30)
        t = yield self.deployment.connect(tablet, self.node1)
        on_tablet = self.subscriber(t)
        yield self.conditions.until(lambda: len(on_tablet) == 30, 30)
        self.assertEqual(on_tablet, [(i + 2, b"u%d" % i) for i in range(30)])
        self.assertEqual(on_laptop[1:], on_tablet)


class PairingAcrossNodesTests(DeploymentMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_approved_on_one_node_used_on_the_other(self):
        """A request approved through node 1's API: the device's forwards on node 2 are accepted."""
        device, friend = self.deployment.client(), self.deployment.client()
        yield self.deployment.paired(friend, self.node1)
        session = yield self.deployment.connect(device, self.node1)
        pending = defer.Deferred()
        result = pairing.request_approval(session, "a phone", on_pending=lambda: pending.callback(None))
        yield eventually(pending, 30)
        code, listed = yield self.node1.api("GET", "/peers/pending")
        self.assertEqual((code, [r["peer_id"] for r in listed]), (200, [device.peer_id]))
        code, _ = yield self.node1.api("POST", "/peers/approve", {"peer_id": device.peer_id})
        self.assertEqual(code, 200)
        yield eventually(result, 30)

        yield self.deployment.known(self.node2, device.peer_id, friend.peer_id)
        session = yield self.deployment.connect(device, self.node2)
        ack = yield eventually(mailbox.forward(session, friend.peer_id, b"hello from node 2"), 30)
        self.assertIsNotNone(ack)
        code, peers = yield self.node2.api("GET", "/peers")
        self.assertIn(device.peer_id, [p["peer_id"] for p in peers])

    @defer.inlineCallbacks
    def test_request_waiting_on_one_node_approved_through_the_other(self):
        """A request waiting on node 2, approved through node 1's API: the device on node 2 is confirmed."""
        device = self.deployment.client()
        session = yield self.deployment.connect(device, self.node2)
        pending = defer.Deferred()
        result = pairing.request_approval(session, "a tablet", on_pending=lambda: pending.callback(None))
        yield eventually(pending, 30)
        # Node 1 learns of the request through the trust bucket's watch: ask
        # again (after each answer, never on a timer) until it knows it.
        for _ in range(500):
            code, body = yield self.node1.api("POST", "/peers/approve", {"peer_id": device.peer_id})
            if code != 404:
                break
        self.assertEqual(code, 200, body)
        yield eventually(result, 30)
        self.assertIsNone(session.closed)
        friend = self.deployment.client()
        yield self.deployment.paired(friend, self.node2)
        ack = yield eventually(mailbox.forward(session, friend.peer_id, b"paired by node 1"), 30)
        self.assertFalse(ack.duplicate)

    @defer.inlineCallbacks
    def test_revocation_on_one_node_closes_the_session_on_the_other(self):
        """A device on node 2 revoked through node 1's API is disconnected (PAIRING_REVOKED) and refused after."""
        device = self.deployment.client()
        session = yield self.deployment.paired(device, self.node2)
        yield self.deployment.known(self.node1, device.peer_id)
        ended = closed(session)
        code, body = yield self.node1.api("DELETE", f"/peers/{device.peer_id}")
        self.assertEqual((code, body["state"]), (200, "revoked"))
        reason = yield eventually(ended, 30)
        self.assertEqual(reason.code, CloseCode.PAIRING_REVOKED)
        code, peers = yield self.node2.api("GET", "/peers")
        self.assertNotIn(device.peer_id, [p["peer_id"] for p in peers])  # paired peers only
        # A new session may pair again, but the mailbox is for paired peers only.
        again = yield self.deployment.connect(device, self.node2)
        ended = closed(again)
        mailbox.forward(again, self.deployment.peer_id, b"still here?").addErrback(lambda _: None)
        reason = yield eventually(ended, 30)
        self.assertEqual(reason.code, CloseCode.NOT_PAIRED)


class RelayAcrossNodesTests(DeploymentMixin, unittest.TestCase):
    """Circuits between a peer on node 1 and one on node 2 (the requester's node owns the circuit)."""

    def circuit(self, attach):
        return self.deployment.circuit(self.node1, self.node2, attach)

    @defer.inlineCallbacks
    def exchange(self, a, b):
        """Channel data both ways over the circuit."""
        got_channel = defer.Deferred()
        b.on_channel = got_channel.callback
        chat = a.open_channel("chat")
        chat.send(b"from alice on node 1")
        b_chat = yield eventually(got_channel, 30)
        self.assertEqual((yield next_data(b_chat)), b"from alice on node 1")
        reply = next_data(chat)
        b_chat.send(b"from bob on node 2")
        self.assertEqual((yield reply), b"from bob on node 2")

    @defer.inlineCallbacks
    def test_relaydata_round_trip_and_stalled_receiver(self):
        """RelayData across nodes: a round trip; a receiver granting no credit holds the sender to one window."""
        _, _, a, b, _, _ = yield self.circuit(attach=False)
        sender, receiver = a.connection.transport, b.connection.transport
        self.assertIsInstance(sender, CircuitTransport)
        self.assertIsInstance(receiver, CircuitTransport)
        yield self.exchange(a, b)

        got_channel = defer.Deferred()
        b.on_channel = got_channel.callback
        bulk = a.open_channel("bulk")
        bulk.send(b"first")
        b_bulk = yield eventually(got_channel, 30)
        received = []
        b_bulk.on_data = lambda data: self.conditions.changed(data != b"first" and received.append(data))
        granted = sender.credit_granted
        sender.credit_granted = lambda credit: self.conditions.changed(granted(credit))
        receiver.pause_reading()
        total = 64  # 1 MiB: four windows
        for i in range(total):
            bulk.send(i.to_bytes(4, "big") + b"x" * 16384)
        self.assertGreater(sender.pending_bytes, 2 * WINDOW)
        within = total - len(sender.pending)  # what the credit let out
        # What was sent within the credit crosses both nodes; nothing more can.
        yield self.conditions.until(lambda: len(received) >= within, 30)
        self.assertLessEqual(sum(len(m) for m in received), WINDOW)
        self.assertEqual(len(received), within)
        self.assertGreater(sender.pending_bytes, 2 * WINDOW)
        receiver.resume_reading()
        yield self.conditions.until(lambda: len(received) >= total, 60)
        self.assertEqual([int.from_bytes(m[:4], "big") for m in received], list(range(total)))
        self.assertEqual(sender.pending, [])

    @defer.inlineCallbacks
    def test_attached_round_trip(self):
        """Attached across nodes: both ends attach to the owner (node 1's address) and data goes both ways."""
        _, bob, a, b, _, _ = yield self.circuit(attach=True)
        yield self.exchange(a, b)
        [end] = relay.relay_endpoint(bob).circuits.values()
        self.assertIsInstance(end, AttachedCircuit)
        self.assertEqual(end.protocol.transport.getPeer().port, self.node1.ports["tcp"])
