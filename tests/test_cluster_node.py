"""
A whole node on NATS JetStream: the plain install imports nothing of
nats, a real C{twistd -n cairn} with C{CAIRN_CLUSTER_NATS} keeps its
mailbox in JetStream across a restart, and a node started while NATS is
unreachable says so on C{/health} and starts serving once NATS is up.
"""

import json
import os
import sys

import treq
from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cairn.client import Client
from cairn.mailbox import client as mailbox
from tests import _nats, test_mailbox_node
from tests._harness import Conditions, drop_all, eventually, track_connections
from tests._nats import NatsServer, free_port, start_nats
from tests.test_twistd import REPO, kill_at_end, paired_by_psk, start_twistd

PSK = "a long pre-shared key for the jetstream node tests"


class PlainInstallTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_nats_import_without_cluster(self):
        """With CAIRN_CLUSTER_NATS unset, importing cairn.service and building a node imports nothing of nats."""
        script = (
            "import sys\n"
            "from twisted.internet import reactor\n"
            "import cairn.service\n"
            "from tests.test_service import config_for\n"
            f"node = cairn.service.make_node(config_for({os.path.abspath(self.mktemp())!r}), reactor)\n"
            "assert node.storage == 'sqlite', node.storage\n"
            "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
        env["PYTHONPATH"] = REPO
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, ["-c", script], env=env, path=REPO)
        self.assertEqual((code, out.strip()), (0, b"[]"), err)


class StartupCheckTests(unittest.TestCase):
    def test_unreadable_creds_file(self):
        """An unreadable CAIRN_CLUSTER_CREDS_FILE stops start-up with one line naming it (and not its content)."""
        from cairn.service import StartupError, make_node
        from tests.test_service import config_for

        config = config_for(
            os.path.abspath(self.mktemp()),
            cluster_nats=("nats://127.0.0.1:4222",),
            cluster_creds_file="/nonexistent/cairn.creds",
        )
        with self.assertRaises(StartupError) as caught:
            make_node(config, reactor)
        message = str(caught.exception)
        self.assertTrue(message.startswith("cairn: CAIRN_CLUSTER_CREDS_FILE: cannot read"), message)
        self.assertNotIn("\n", message)

    def test_unusable_tls_ca(self):
        """A CAIRN_CLUSTER_TLS_CA that is missing or holds no certificate stops start-up with one line naming it."""
        from cairn.service import StartupError, make_node
        from tests.test_service import config_for

        empty = os.path.abspath(self.mktemp())
        open(empty, "w").close()
        for path, why in (("/nonexistent/ca.pem", "No such file"), (empty, "NO_CERTIFICATE_OR_CRL_FOUND")):
            config = config_for(
                os.path.abspath(self.mktemp()), cluster_nats=("tls://127.0.0.1:4222",), cluster_tls_ca=path
            )
            with self.assertRaises(StartupError) as caught:
                make_node(config, reactor)
            message = str(caught.exception)
            self.assertTrue(message.startswith("cairn: CAIRN_CLUSTER_TLS_CA: cannot use"), message)
            self.assertIn(why, message)
            self.assertNotIn("\n", message)

    def test_creds_file_without_nkeys(self):
        """A credentials file without nkeys installed stops start-up with one line naming the extra."""
        from cairn.service import StartupError, make_node
        from tests.test_service import config_for

        creds = os.path.abspath(self.mktemp())
        with open(creds, "w") as f:
            f.write("a NATS credentials file\n")
        config = config_for(
            os.path.abspath(self.mktemp()), cluster_nats=("nats://127.0.0.1:4222",), cluster_creds_file=creds
        )
        self.patch(sys, "modules", dict(sys.modules, nkeys=None))  # `import nkeys` raises ImportError
        with self.assertRaises(StartupError) as caught:
            make_node(config, reactor)
        message = str(caught.exception)
        self.assertIn("nkeys is not installed", message)
        self.assertIn("cairn-server[cluster]", message)
        self.assertNotIn("\n", message)

    def test_cluster_extra_has_nkeys(self):
        """The [cluster] extra installs nats-py with nkeys, which a credentials file (the node unit's default) needs."""
        import configparser

        setup = configparser.ConfigParser()
        setup.read(os.path.join(REPO, "setup.cfg"))
        requirements = [line for line in setup["options.extras_require"]["cluster"].splitlines() if line.strip()]
        nats = [line for line in requirements if line.startswith("nats-py")]
        self.assertEqual(len(nats), 1, requirements)
        self.assertIn("[nkeys]", nats[0])


class NoMemoryStorage(_nats.Account):
    """An account whose JetStream may store nothing in memory: the presence bucket cannot be made."""

    def config(self):
        return super().config().replace("jetstream: {", "jetstream: { max_mem: 0,")


class FailedStartTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_failed_start_exits_with_status_1(self):
        """A twistd node whose stores cannot load logs why and exits with status 1 (so systemd restarts it), not 0."""
        account = NoMemoryStorage(max_file=64 * 2**20)
        server = NatsServer(os.path.abspath(self.mktemp()), account=account)
        self.addCleanup(server.kill)
        yield server.start()
        proc = start_twistd(os.path.abspath(self.mktemp()), CAIRN_CLUSTER_NATS=server.url, CAIRN_CLUSTER_REPLICAS="1")
        self.addCleanup(kill_at_end, proc)
        proc.listening.addErrback(lambda _: None)  # it never listens
        status = yield eventually(proc.ended, 60)
        log = "".join(proc.output)
        self.assertIn("cairn node could not start", log)
        self.assertIn("Server Shut Down.", log)  # twistd's own clean-up ran first
        self.assertEqual(status, (1, None), log)


class TwistdJetStreamTests(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.connections = []
        self.data_dir = os.path.abspath(self.mktemp())

    def tearDown(self):
        return drop_all(self.connections)

    def client(self):
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        return client

    def twistd(self, url, **settings):
        proc = start_twistd(
            self.data_dir, CAIRN_PSK=PSK, CAIRN_CLUSTER_NATS=url, CAIRN_CLUSTER_REPLICAS="1", **settings
        )
        self.addCleanup(kill_at_end, proc)
        return proc

    def paired(self, client, address):
        return paired_by_psk(client, address, PSK)

    @defer.inlineCallbacks
    def test_mailbox_survives_restart_on_jetstream(self):
        """twistd -n cairn on JetStream acks forwards, and after SIGTERM a new process delivers them all, in order."""
        server = yield start_nats(self)
        proc = self.twistd(server.url)
        ports = yield eventually(proc.listening, 60)
        self.assertIn("(storage: jetstream)", "".join(proc.output))
        address = f"tcp:host=127.0.0.1:port={ports['tcp']}"
        alice, bob = self.client(), self.client()
        received, conditions = [], Conditions()
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: conditions.changed(received.append(data)))
        b = yield self.paired(bob, address)
        b.close()
        a = yield self.paired(alice, address)
        yield defer.gatherResults([eventually(mailbox.forward(a, bob.peer_id, b"%d" % i)) for i in range(20)])
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 30)

        proc = self.twistd(server.url)
        ports = yield eventually(proc.listening, 60)
        yield eventually(bob.connect(f"tcp:host=127.0.0.1:port={ports['tcp']}"))
        yield conditions.until(lambda: len(received) == 20, 30)
        self.assertEqual(received, [b"%d" % i for i in range(20)])
        self.assertNotIn("Traceback", "".join(proc.output))
        # Nothing needs SQLite on JetStream: no database file was created.
        from cairn.db import DB_FILE_NAME

        self.assertEqual([f for f in os.listdir(self.data_dir) if f.startswith(DB_FILE_NAME)], [])

    @defer.inlineCallbacks
    def test_unreachable_nats_at_start(self):
        """
        NATS down at start: one line per retry, /health degraded with the
        reason, no traceback; then it serves. The URL's password is in no
        log line (the retry's names the servers).
        """
        server = NatsServer(os.path.abspath(self.mktemp()))
        self.addCleanup(server.kill)
        mgmt = free_port()
        password = "a-nats-password-for-this-test"  # a server without authorization takes it too
        proc = self.twistd(
            server.url.replace("nats://", f"nats://cairn:{password}@"),
            CAIRN_MGMT_LISTEN=f"tcp:{mgmt}:interface=127.0.0.1",
            CAIRN_MGMT_TOKEN="a management token for this test",
        )
        yield eventually(proc.wait_for("unreachable", 2), 60)
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield treq.get(f"http://127.0.0.1:{mgmt}/health", pool=pool)
        health = json.loads((yield response.content()))
        self.assertEqual((health["status"], health["storage"]), ("degraded", "jetstream"))
        self.assertIn("NATS unreachable", health["reason"])

        yield server.start()
        ports = yield eventually(proc.listening, 60)
        response = yield treq.get(f"http://127.0.0.1:{mgmt}/health", pool=pool)
        health = json.loads((yield response.content()))
        self.assertEqual((health["status"], health["storage"]), ("ok", "jetstream"))
        session = yield self.paired(self.client(), f"tcp:host=127.0.0.1:port={ports['tcp']}")
        self.assertIsNotNone(session)
        self.assertNotIn("Traceback", "".join(proc.output))
        self.assertIn("unreachable", "".join(proc.output))
        self.assertNotIn(password, "".join(proc.output))


class JetStreamKillTests(test_mailbox_node.KillTests):
    """kill -9 of a twistd node whose mailbox is on JetStream, under load: the same guarantees as on SQLite."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.nats = yield start_nats(self)
        self.node_settings = {"CAIRN_CLUSTER_NATS": self.nats.url, "CAIRN_CLUSTER_REPLICAS": "1"}

    @defer.inlineCallbacks
    def test_kill_9_loses_nothing_acknowledged(self):
        """After SIGKILL under load, every acknowledged message is delivered exactly once (state on JetStream)."""
        yield super().test_kill_9_loses_nothing_acknowledged()
        streams = os.path.join(self.nats.directory, "js", "jetstream", "$G", "streams")
        self.assertIn("cairn_mbox", os.listdir(streams))
