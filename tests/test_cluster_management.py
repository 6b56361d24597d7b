"""
The management API of a deployment (issue 15): any node's /peers, /mailbox
and /sync show which node each peer is on; /health shows this node and the
cluster; /metrics carries the node's name as a label.
"""

import json
import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.service import make_node
from tests._cluster_nodes import LOOPBACK, PSK, TOKEN, NodesMixin
from tests._harness import Conditions, eventually
from tests.test_service import config_for


class DeploymentViewTests(NodesMixin, unittest.TestCase):
    node_settings = {"mgmt_listen": LOOPBACK, "mgmt_token": TOKEN}

    def seen_by(self, index, predicate):
        """Fires once C{predicate()} holds, re-checked at each change node C{index}'s presence applies."""
        conditions = Conditions()
        presence = self.nodes[index].presence
        applied = presence._apply
        presence._apply = lambda changes: conditions.changed(applied(changes))
        return conditions.until(predicate, 20)

    @defer.inlineCallbacks
    def test_any_node_shows_the_deployment(self):
        """n1's /peers, /mailbox and /sync name n2 for a peer connected there; /health lists both nodes."""
        yield self.start_nodes(2)
        alice, bob = self.client(), self.client()
        a = yield self.paired(alice, 0)
        yield self.paired(bob, 1)
        yield self.seen_by(0, lambda: self.nodes[0].presence.locate(bob.peer_id) == "n2")

        peers = {p["peer_id"]: p for p in json.loads((yield self.api_get(0, "/peers")))}
        self.assertEqual((peers[bob.peer_id]["node"], peers[bob.peer_id]["nodes"]), ("n2", ["n2"]))
        self.assertEqual(peers[alice.peer_id]["node"], "n1")
        self.assertTrue(peers[bob.peer_id]["connected"])
        self.assertIsNone(peers[bob.peer_id]["transport"])  # not connected to this node
        self.assertEqual(peers[alice.peer_id]["transport"], "tcp")

        for session in list(bob.peer.sessions.values()):
            session.close()
        yield self.seen_by(0, lambda: self.nodes[0].presence.locate(bob.peer_id) is None)
        # n2 counts it once its watch of the stream brings it (the ForwardAck came from n1).
        store, counted = self.nodes[1].mailbox.store, Conditions()
        written = store._written_elsewhere
        store._written_elsewhere = lambda *args: counted.changed(written(*args))
        yield eventually(mailbox.forward(a, bob.peer_id, b"for later"))
        yield counted.until(lambda: bob.peer_id in store.depths(), 20)
        box = json.loads((yield self.api_get(1, "/mailbox")))
        self.assertEqual(box["node"], "n2")
        self.assertEqual([(p["peer_id"], p["node"]) for p in box["peers"]], [(bob.peer_id, None)])

        health = json.loads((yield self.api_get(0, "/health")))
        self.assertEqual((health["status"], health["node"]), ("ok", "n1"))
        cluster = health["cluster"]
        self.assertEqual(cluster["nats"], "ok")
        self.assertEqual(set(cluster["nodes"]), {"n1", "n2"})
        self.assertIsNotNone(cluster["leader"])

        metrics = (yield self.api_get(1, "/metrics")).decode()
        self.assertIn('cairn_sessions{node="n2",state="attached"}', metrics)


class SingleNodeViewTests(NodesMixin, unittest.TestCase):
    """A node alone keeps its JSON shapes and series, with the node's name added (LocalPresence)."""

    @defer.inlineCallbacks
    def test_peers_name_this_node(self):
        """/peers: a connected peer is on this node, a disconnected one on none; no cluster, no metrics label."""
        node = make_node(
            config_for(
                os.path.abspath(self.mktemp()), psk=PSK, node_name="solo", mgmt_listen=LOOPBACK, mgmt_token=TOKEN
            ),
            reactor,
        )
        node.startService()
        self.addCleanup(node.stopService)
        node.ports = yield eventually(node.ready, 60)
        self.nodes.append(node)
        here, gone = self.client(), self.client()
        yield self.paired(here, 0)
        session = yield self.paired(gone, 0)
        closed_here = Conditions()
        node.peer.add_observer(type("Closed", (), {"session_closed": lambda _, s: closed_here.changed(None)})())
        session.close()
        yield closed_here.until(lambda: not any(s.remote_peer_id == gone.peer_id for s in node.peer.sessions.values()))
        peers = {p["peer_id"]: p for p in json.loads((yield self.api_get(0, "/peers")))}
        entry = peers[here.peer_id]
        self.assertEqual((entry["node"], entry["nodes"], entry["connected"]), ("solo", ["solo"], True))
        entry = peers[gone.peer_id]
        self.assertEqual((entry["node"], entry["nodes"], entry["connected"]), (None, [], False))
        health = json.loads((yield self.api_get(0, "/health")))
        self.assertEqual(health["node"], "solo")
        self.assertNotIn("cluster", health)
        metrics = (yield self.api_get(0, "/metrics")).decode()
        self.assertIn('cairn_sessions{state="attached"}', metrics)  # one node alone keeps its series
