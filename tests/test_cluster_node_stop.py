"""
A clean stop (SIGTERM) of a real cairn node of a deployment while the
devices on it are forwarding: the stop meets JetStream publishes in
flight. Each sender (C{cairn.client} with both nodes' addresses) moves
to the other node by itself; a forward the stop cut off is sent again
there with the same message id, as a device does. Every message
acknowledged is delivered once, none twice, and nothing that was never
acknowledged arrives (the kill -9 cases are L{tests.test_cluster_node_faults}).
"""

import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected, uuid7
from cairn.session.errors import SessionClosed
from cairn.wire.constants import ForwardStatus
from tests._cluster import start_deployment
from tests._harness import eventually
from tests.test_cluster_node_faults import RETRY, FaultMixin, Load, Recipient


class MovingLoad(Load):
    """L{Load} whose senders follow their client to its next session when a node stops under them."""

    def __init__(self, conditions, recipients, per_loop, clients):
        Load.__init__(self, conditions, recipients, per_loop)
        self.clients = clients  # session -> its client
        self.cut_off = 0  # forwards ended by their session's end, sent again

    @defer.inlineCallbacks
    def loop(self, session, offset):
        client = self.clients[session]
        for i in range(self.per_loop):
            recipient = self.recipients[(offset + i) % len(self.recipients)].peer_id
            mid = uuid7()
            while True:
                current = client.current(session)
                if current.closed is not None:
                    # Ended (Close 9 at the other node): its successor is about to be made.
                    yield self.conditions.until(lambda: client.current(session).closed is None, 60)
                    continue
                try:
                    yield eventually(mailbox.forward(current, recipient, b"%d:%d" % (offset, i), mid), 60)
                    break
                except SessionClosed:
                    self.cut_off += 1
                except ForwardRejected as e:
                    if e.code != ForwardStatus.STORAGE_ERROR:
                        raise
                    self.refused += 1
                yield task.deferLater(reactor, RETRY, lambda: None)
            self.acked[mid] = recipient
            self.conditions.changed()


class NodeStopTests(FaultMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_sigterm_node_holding_senders(self):
        """SIGTERM of the node the senders forward through, under load: they move on; 0 lost, 0 twice."""
        deployment = yield start_deployment(self)
        node1, node2 = deployment.nodes
        recipients = [Recipient(deployment, self.conditions) for _ in range(2)]
        for r in recipients:
            yield deployment.paired(r.client, node2)
        clients, sessions = {}, []
        for _ in range(2):
            client = deployment.client(failover=True)
            client.on_session_replaced = lambda old, new: self.conditions.changed()
            session = yield deployment.paired(client, [node1, node2])
            clients[session] = client
            sessions.append(session)
        yield deployment.known(node1, *(r.peer_id for r in recipients))
        load = MovingLoad(self.conditions, recipients, per_loop=60, clients=clients)
        running = load.start(sessions)

        yield self.conditions.until(lambda: len(load.acked) >= 100, 60)
        yield node1.kill(signal.SIGTERM)
        stopped_at = len(load.acked)
        yield eventually(running, 180)
        self.assertEqual(len(load.acked), 2 * 4 * 60)
        self.assertLess(stopped_at, len(load.acked), "the load went on after the stop")
        for session, client in clients.items():
            self.assertIsNot(client.current(session), session, "the sender did not move to node 2")
        yield self.all_delivered(load, recipients)
        for node in (node1, node2):
            self.assertNotIn("Traceback", node.log)
        self.assertIn("saved 2 session(s) for resume", node1.log)
        self.assertGreater(load.cut_off, 0, "no forward was in flight at the stop")
