"""
The management API of a deployment (issue 15): any node's /peers, /mailbox
and /sync show which node each peer is on; /health shows this node and the
cluster; /metrics carries the node's name as a label.
"""

import json

import treq
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cairn.mailbox import client as mailbox
from tests._cluster_nodes import LOOPBACK, TOKEN, NodesMixin
from tests._harness import Conditions, eventually


class DeploymentViewTests(NodesMixin, unittest.TestCase):
    node_settings = {"mgmt_listen": LOOPBACK, "mgmt_token": TOKEN}

    def setUp(self):
        super().setUp()
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    @defer.inlineCallbacks
    def get(self, index, path):
        port = self.nodes[index].ports["management"].getHost().port
        response = yield eventually(
            treq.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, pool=self.pool)
        )
        body = yield response.content()
        self.assertEqual(response.code, 200, body)
        return body

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

        peers = {p["peer_id"]: p for p in json.loads((yield self.get(0, "/peers")))}
        self.assertEqual((peers[bob.peer_id]["node"], peers[bob.peer_id]["nodes"]), ("n2", ["n2"]))
        self.assertEqual(peers[alice.peer_id]["node"], "n1")
        self.assertTrue(peers[bob.peer_id]["connected"])
        self.assertIsNone(peers[bob.peer_id]["transport"])  # not connected to this node
        self.assertEqual(peers[alice.peer_id]["transport"], "tcp")

        for session in list(bob.peer.sessions.values()):
            session.close()
        yield self.seen_by(0, lambda: self.nodes[0].presence.locate(bob.peer_id) is None)
        yield eventually(mailbox.forward(a, bob.peer_id, b"for later"))
        box = json.loads((yield self.get(1, "/mailbox")))
        self.assertEqual(box["node"], "n2")
        self.assertEqual([(p["peer_id"], p["node"]) for p in box["peers"]], [(bob.peer_id, None)])

        health = json.loads((yield self.get(0, "/health")))
        self.assertEqual((health["status"], health["node"]), ("ok", "n1"))
        cluster = health["cluster"]
        self.assertEqual(cluster["nats"], "ok")
        self.assertEqual(set(cluster["nodes"]), {"n1", "n2"})
        self.assertIsNotNone(cluster["leader"])

        metrics = (yield self.get(1, "/metrics")).decode()
        self.assertIn('cairn_sessions{node="n2",state="attached"}', metrics)
