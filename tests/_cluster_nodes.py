"""
Several cairn nodes in this process (L{make_node}) on one real NATS
server (L{tests._nats}), sharing one identity key (CAIRN_IDENTITY_FILE),
each with its own name and data directory: the in-process half of the
multi-node tests (the real-twistd half lives with the cluster fault tests).
"""

import os

from twisted.internet import defer, reactor, task

from cairn.client import Client
from cairn.crypto.identity import Identity
from cairn.pairing import client as pairing
from cairn.pairing.interfaces import PAIRED
from cairn.service import make_node
from tests._harness import drop_all, eventually, track_connections
from tests._nats import start_nats, start_nats_cluster
from tests.test_service import config_for

PSK = "a long pre-shared key for the multi-node tests"
TOKEN = "a management token for the multi-node tests"
LOOPBACK = "tcp:0:interface=127.0.0.1"


class NodesMixin:
    """C{self.nodes}: started nodes C{n1}, C{n2}, ...; C{self.address(i)}: node i's TCP address."""

    timeout = 120
    #: Further settings of every node (e.g. mgmt_listen=LOOPBACK).
    node_settings = {}

    def setUp(self):
        self.connections = []
        self.nodes = []

    def tearDown(self):
        return drop_all(self.connections)

    #: Run on a 3-server NATS cluster with R3 (else one server, R1).
    nats_cluster = False

    @defer.inlineCallbacks
    def start_nodes(self, count=2, **settings):
        if self.nats_cluster:
            cluster = yield start_nats_cluster(self)
            self.nats_urls, self.replicas = tuple(cluster.urls), 3
        else:
            server = yield start_nats(self)
            self.nats_urls, self.replicas = (server.url,), 1
        secrets = os.path.abspath(self.mktemp())
        os.makedirs(secrets)
        self.key_file = os.path.join(secrets, "identity.key")
        with open(self.key_file, "wb") as f:
            f.write(bytes(Identity.generate().signing_key))
        os.chmod(self.key_file, 0o600)
        for i in range(count):
            yield self.start_node(f"n{i + 1}", **settings)
        return self.nodes

    @defer.inlineCallbacks
    def start_node(self, name, **settings):
        options = dict(
            psk=PSK,
            cluster_nats=self.nats_urls,
            cluster_replicas=self.replicas,
            node_name=name,
            identity_file=self.key_file,
        )
        options.update(self.node_settings, **settings)
        node = make_node(config_for(os.path.abspath(self.mktemp()), **options), reactor)
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        node.ports = yield eventually(node.ready, 60)
        self.nodes.append(node)
        return node

    def address(self, index):
        return f"tcp:host=127.0.0.1:port={self.nodes[index].ports['tcp'].getHost().port}"

    def client(self):
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        return client

    @defer.inlineCallbacks
    def paired(self, client, index):
        """
        C{client} connected to node C{index} and paired (PSK), once every
        node's trust mirror knows it (their watches brought the pairing);
        fires with its session.
        """
        session = yield eventually(client.connect(self.address(index)))
        yield eventually(pairing.pair_psk(session, PSK))
        yield defer.gatherResults([self.state_on(node, client.peer_id, PAIRED) for node in self.nodes])
        return session

    def state_on(self, node, peer_id, state):
        """Fires once C{node}'s trust mirror has C{peer_id} in C{state} (a node alone: at once)."""
        if not hasattr(node.pairing.trust, "watch"):
            return defer.succeed(None)  # the node's own store: written before the pairing was confirmed
        d = defer.Deferred()

        def seen(changed, record):
            if changed == peer_id and record is not None and record.state == state and not d.called:
                d.callback(None)

        node.pairing.trust.watch(seen)
        found = []
        node.pairing.trust.get(peer_id).addCallback(found.append)  # the in-memory mirror: fires at once
        if found and found[0] is not None and found[0].state == state:
            return defer.succeed(None)
        return eventually(d, 20)

    @defer.inlineCallbacks
    def api_get(self, index, path):
        """The body of C{GET path} on node C{index}'s management API (asserting a 200)."""
        import treq
        from twisted.web.client import HTTPConnectionPool

        port = self.nodes[index].ports["management"].getHost().port
        response = yield eventually(
            treq.get(
                f"http://127.0.0.1:{port}{path}",
                headers={"Authorization": f"Bearer {TOKEN}"},
                pool=HTTPConnectionPool(reactor, persistent=False),
            )
        )
        body = yield response.content()
        self.assertEqual(response.code, 200, body)
        return body

    def without_recheck(self):
        """Stop every node's periodic re-check: what arrives now came by a watch or the bus."""
        for node in self.nodes:
            for service in (node.mailbox, node.sync):
                if service._rechecker is not None and service._rechecker.running:
                    service._rechecker.stop()
