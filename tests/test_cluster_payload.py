"""
The largest payload a node takes (C{CAIRN_MAX_PAYLOAD}) against NATS's
C{max_payload} (1 MiB by default): on a JetStream node a mailbox message
or a sync update is one NATS message, its payload plus subject and
headers. A real nats-server with its default settings and a real
C{twistd -n cairn} on it: at the limit everything fits; above it the
node refuses the server at connection time, in one line.
"""

import json
import os

import treq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cairn.client import Client
from cairn.mailbox import client as mailbox
from cairn.mailbox.messages import DELIVER_OVERHEAD
from cairn.mailbox.sealing import PAIR_OVERHEAD
from cairn.sync import client as sync
from cairn.sync.messages import UPDATE_OVERHEAD
from tests._harness import Conditions, drop_all, eventually, track_connections
from tests._nats import free_port, start_nats
from tests.test_twistd import kill_at_end, paired_by_psk, start_twistd

PSK = "a long pre-shared key for the payload size tests"
#: nats-server's default max_payload (1 MiB).
NATS_DEFAULT = 1024 * 1024


class MaxPayloadTests(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.connections = []
        self.data_dir = os.path.abspath(self.mktemp())

    def tearDown(self):
        return drop_all(self.connections)

    def client(self, max_payload):
        client = Client(reactor, clock=task.Clock(), max_payload=max_payload)
        track_connections(client.peer, self.connections)
        return client

    def twistd(self, url, max_payload, mgmt="0"):
        proc = start_twistd(
            self.data_dir,
            CAIRN_PSK=PSK,
            CAIRN_CLUSTER_NATS=url,
            CAIRN_CLUSTER_REPLICAS="1",
            CAIRN_MAX_PAYLOAD=str(max_payload),
            CAIRN_MGMT_LISTEN=f"tcp:{mgmt}:interface=127.0.0.1",
            CAIRN_MGMT_TOKEN="a-management-token-for-the-payload-tests",
        )
        self.addCleanup(kill_at_end, proc)
        return proc

    def paired(self, client, address):
        return paired_by_psk(client, address, PSK)

    @defer.inlineCallbacks
    def test_largest_payload_fits_nats_default(self):
        """
        With CAIRN_MAX_PAYLOAD at NATS's default max_payload, the largest
        mailbox message and sync update are stored and delivered.
        """
        server = yield start_nats(self)
        proc = self.twistd(server.url, NATS_DEFAULT)
        ports = yield eventually(proc.listening, 60)
        address = f"tcp:host=127.0.0.1:port={ports['tcp']}"
        alice, bob = self.client(NATS_DEFAULT), self.client(NATS_DEFAULT)
        received, conditions = [], Conditions()
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: conditions.changed(received.append(data)))
        yield self.paired(bob, address)
        a = yield self.paired(alice, address)
        # The largest the node takes: its payload once sealed is at the limit.
        largest = os.urandom(NATS_DEFAULT - DELIVER_OVERHEAD - PAIR_OVERHEAD)
        result = yield eventually(mailbox.forward(a, bob.peer_id, largest), 60)
        self.assertFalse(result.duplicate)
        yield conditions.until(lambda: len(received) == 1, 60)
        self.assertEqual(received, [largest])
        sync.use_plaintext(alice.peer)  # the payload as the node stores it, no sealing overhead
        update = os.urandom(NATS_DEFAULT - UPDATE_OVERHEAD)
        seq = yield eventually(sync.sync_publish(a, "notes", update), 60)
        self.assertEqual(seq, 1)
        self.assertNotIn("Traceback", "".join(proc.output))

    @defer.inlineCallbacks
    def test_payload_above_nats_limit_refused(self):
        """
        CAIRN_MAX_PAYLOAD above the server's max_payload: the node says so in
        one line naming both, once (retrying cannot help), and /health is
        degraded with that reason -- rather than answering the largest
        messages STORAGE_ERROR one by one as if JetStream were away.
        """
        server = yield start_nats(self)
        mgmt = free_port()
        proc = self.twistd(server.url, NATS_DEFAULT + 1, mgmt=mgmt)
        proc.listening.addErrback(lambda _: None)  # never: the stores are not ready (killed in cleanup)
        yield eventually(proc.wait_for("is above the NATS server's max_payload"), 60)
        expected = (
            f"cairn: CAIRN_MAX_PAYLOAD ({NATS_DEFAULT + 1}) is above the NATS server's max_payload ({NATS_DEFAULT}):"
            f" lower CAIRN_MAX_PAYLOAD or set max_payload to at least {NATS_DEFAULT + 1} in nats-server.conf"
        )
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield treq.get(f"http://127.0.0.1:{mgmt}/health", pool=pool)
        health = json.loads((yield response.content()))
        self.assertEqual((health["status"], health["storage"]), ("degraded", "jetstream"), health)
        self.assertEqual("cairn: " + health["reason"], expected)
        output = "".join(proc.output)
        self.assertIn(expected + "\n", output)
        self.assertEqual(output.count("CAIRN_MAX_PAYLOAD ("), 1, output)
        self.assertNotIn("Traceback", output)
