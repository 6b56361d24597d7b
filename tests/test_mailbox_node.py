"""
The mailbox of a whole node: a clean restart (make_node, same data
directory), C{kill -9} of a real C{twistd} process under concurrent
load, and the C{cairn-mailbox} command against a real node.
"""

import os
import sqlite3
import sys

from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest

from cairn.client import Client
from cairn.db import DB_FILE_NAME
from cairn.mailbox import client as mailbox
from cairn.mailbox.client import uuid7
from cairn.pairing import client as pairing
from cairn.service import make_node
from tests._harness import Conditions, drop_all, eventually, track_connections
from tests.test_service import config_for
from tests.test_twistd import REPO, start_twistd

PSK = "a long pre-shared key for the mailbox node tests"


class NodeMixin:
    def setUp(self):
        self.connections = []
        self.data_dir = os.path.abspath(self.mktemp())

    def tearDown(self):
        return drop_all(self.connections)

    def client(self):
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        return client

    @defer.inlineCallbacks
    def paired_session(self, client, address):
        session = yield eventually(client.connect(address))
        yield eventually(pairing.pair_psk(session, PSK))
        return session


class RestartTests(NodeMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def start(self):
        node = make_node(config_for(self.data_dir, psk=PSK), reactor)
        node.startService()
        ports = yield node.ready
        return node, f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"

    @defer.inlineCallbacks
    def test_restart_delivers_everything(self):
        """Messages acked before a clean stop are all delivered, in order, by a new node on the same data dir."""
        node, address = yield self.start()
        alice, bob = self.client(), self.client()
        received = []
        conditions = Conditions()
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: conditions.changed(received.append(data)))
        b = yield self.paired_session(bob, address)
        b.close()
        a = yield self.paired_session(alice, address)
        yield defer.gatherResults([eventually(mailbox.forward(a, bob.peer_id, b"%d" % i)) for i in range(20)])
        yield node.stopService()

        node, address = yield self.start()
        self.assertEqual(node.mailbox.stats()["messages"], 20)
        acknowledged = node.mailbox._acknowledged
        node.mailbox._acknowledged = lambda receipts: conditions.changed(acknowledged(receipts))
        yield eventually(bob.connect(address))
        yield conditions.until(lambda: len(received) == 20 and node.mailbox.delivered == 20, 30)
        self.assertEqual(received, [b"%d" % i for i in range(20)])
        yield node.stopService()


class KillTests(NodeMixin, unittest.TestCase):
    timeout = 240
    SENDERS = 4
    PER_SENDER = 400
    #: Extra CAIRN_* settings of the node (the JetStream variant sets its NATS).
    node_settings = {}

    def _kill(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("KILL")
            return proc.ended

    @defer.inlineCallbacks
    def test_kill_9_loses_nothing_acknowledged(self):
        """After SIGKILL under load, every acknowledged message is delivered exactly once; the DB is intact."""
        proc = start_twistd(self.data_dir, CAIRN_PSK=PSK, **self.node_settings)
        self.addCleanup(self._kill, proc)
        ports = yield eventually(proc.listening, 60)
        address = f"tcp:host=127.0.0.1:port={ports['tcp']}"
        bob = self.client()
        b = yield self.paired_session(bob, address)
        b.close()

        acked, sent = set(), {}
        conditions = Conditions()
        senders = []
        running = [True]
        for _ in range(self.SENDERS):
            client = self.client()
            session = yield self.paired_session(client, address)
            senders.append((client, session))

        def run(client, session):
            # Keep a few requests in flight per sender until the node dies.
            def one(i):
                mid = uuid7()
                sent[mid] = client.peer_id
                d = mailbox.forward(session, bob.peer_id, b"%s:%d" % (client.peer_id.encode(), i), mid)
                d.addCallback(lambda result: conditions.changed(acked.add(result.message_id)))
                d.addErrback(lambda f: None)
                return d

            return task.cooperate(one(i) for i in range(self.PER_SENDER) if running[0]).whenDone()

        loads = [run(c, s) for c, s in senders for _ in range(4)]
        yield conditions.until(lambda: len(acked) >= 300, 60)
        proc.transport.signalProcess("KILL")
        running[0] = False  # requests in flight stay unanswered: their sessions only detach
        yield eventually(proc.ended, 30)
        self.assertGreaterEqual(len(acked), 300)
        self.assertEqual(len(loads), self.SENDERS * 4)

        proc = start_twistd(self.data_dir, CAIRN_PSK=PSK, **self.node_settings)
        self.addCleanup(self._kill, proc)
        ports = yield eventually(proc.listening, 60)
        address = f"tcp:host=127.0.0.1:port={ports['tcp']}"
        deliveries = []
        received = set()
        box = mailbox.mailbox(bob.peer)
        box.on_message = lambda sender, mid, data: conditions.changed(received.add(mid))
        inner = bob.peer.handler_for(0x0702)

        def counting(session, body):
            deliveries.extend((entry["id"], entry["seq"]) for entry in body["messages"])
            inner(session, body)

        bob.peer.register_handler(0x0702, counting)
        yield eventually(bob.connect(address))
        yield conditions.until(lambda: acked <= received, 60).addErrback(lambda f: None)
        missing = acked - received
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged message(s) lost")
        seqs = {}
        for mid, seq in deliveries:
            seqs.setdefault(mid, set()).add(seq)
        self.assertEqual([m for m, s in seqs.items() if len(s) > 1], [], "a message was stored twice")
        self.assertTrue(received <= set(sent))
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 60)
        conn = sqlite3.connect(os.path.join(self.data_dir, DB_FILE_NAME))
        try:
            self.assertEqual(conn.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        finally:
            conn.close()


class CommandTests(NodeMixin, unittest.TestCase):
    def _kill(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("KILL")
            return proc.ended

    @defer.inlineCallbacks
    def cli(self, *args):
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "cairn.cli.mailbox", *args],
            env=dict(os.environ, PYTHONPATH=REPO, CAIRN_PSK=PSK),
            path=REPO,
        )
        self.assertEqual(code, 0, err.decode())
        return out.decode()

    @defer.inlineCallbacks
    def test_send_and_receive(self):
        """cairn-mailbox pairs with the PSK, sends a text to a peer, and the peer's receive prints it and exits."""
        proc = start_twistd(self.data_dir, CAIRN_PSK=PSK)
        self.addCleanup(self._kill, proc)
        ports = yield eventually(proc.listening, 60)
        server = f"tcp:host=127.0.0.1:port={ports['tcp']}"
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        alice_key, bob_key = os.path.join(home, "alice.key"), os.path.join(home, "bob.key")
        bob_id = (yield self.cli("--identity", bob_key, "--server", server, "--psk", "whoami")).strip()
        self.assertEqual(os.stat(bob_key).st_mode & 0o777, 0o600)
        out = yield self.cli("--identity", alice_key, "--server", server, "--psk", "send", bob_id, "hi bob")
        self.assertIn("stored", out)
        out = yield self.cli("--identity", bob_key, "--server", server, "receive", "--wait", "1")
        self.assertIn("hi bob", out)
        out = yield self.cli("--identity", bob_key, "--server", server, "receive", "--wait", "0.5")
        self.assertNotIn("hi bob", out)
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 60)
