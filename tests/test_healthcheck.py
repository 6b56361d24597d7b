"""
The image's health check (docker/Dockerfile's C{HEALTHCHECK}, run as
Docker runs it: a process, its exit status): healthy only when the
node's C{/health} says C{"status": "ok"} -- a node cut off from NATS
answers 200 "degraded" -- and asked over https when the management
listener is C{ssl:}.
"""

import os
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from cairn.healthcheck import health_url
from cairn.service import make_node
from tests._harness import eventually
from tests._nats import free_port
from tests.test_deploy import _healthcheck
from tests.test_mgmt_tls import self_signed
from tests.test_service import config_for
from tests.test_twistd import REPO, start_twistd


def run_healthcheck(data_dir, mgmt_listen):
    """Run the HEALTHCHECK's command as Docker would, for a node listening on C{mgmt_listen}: (exit status, output)."""
    argv = _healthcheck()
    env = {name: value for name, value in os.environ.items() if not name.startswith("CAIRN_")}
    env.update(PYTHONPATH=REPO, CAIRN_DATA_DIR=data_dir, CAIRN_MGMT_LISTEN=mgmt_listen)
    d = utils.getProcessOutputAndValue(sys.executable, argv[1:], env=env, path=REPO)
    return eventually(d, 30).addCallback(lambda result: (result[2], (result[0] + result[1]).decode()))


class HealthURLTests(unittest.TestCase):
    def test_follows_the_listener(self):
        """The URL comes from CAIRN_MGMT_LISTEN (https for ssl:), or CAIRN_MGMT_URL if set."""
        base = {"CAIRN_DATA_DIR": os.path.abspath(self.mktemp())}
        cases = [
            ("tcp:9090", "http://127.0.0.1:9090/health"),
            (r"tcp:9090:interface=\:\:1", "http://[::1]:9090/health"),
            ("ssl:9443:privateKey=/data/k.pem:certKey=/data/c.pem", "https://127.0.0.1:9443/health"),
        ]
        for listen, url in cases:
            self.assertEqual(health_url({**base, "CAIRN_MGMT_LISTEN": listen}), url)
        environ = {**base, "CAIRN_MGMT_LISTEN": "tcp:9090", "CAIRN_MGMT_URL": "https://node.example:9090/"}
        self.assertEqual(health_url(environ), "https://node.example:9090/health")


class HealthcheckTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_tls_listener_healthy(self):
        """With an ssl: management listener the check asks over https, and a healthy node passes it."""
        data_dir = os.path.abspath(self.mktemp())
        certs = os.path.abspath(self.mktemp())
        os.makedirs(certs)
        key, cert = self_signed(certs)
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        node = make_node(config_for(data_dir, mgmt_listen=listen, mgmt_token="a token for the check"), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        ports = yield eventually(node.ready)
        port = ports["management"].getHost().port
        code, output = yield run_healthcheck(data_dir, listen.replace("ssl:0:", f"ssl:{port}:"))
        self.assertEqual((code, output.startswith("ok: cairn-server ")), (0, True), output)

    @defer.inlineCallbacks
    def test_degraded_node_unhealthy(self):
        """A node cut off from NATS answers /health 200 "degraded": the check fails, saying why, in one line."""
        data_dir = os.path.abspath(self.mktemp())
        mgmt = f"tcp:{free_port()}:interface=127.0.0.1"
        proc = start_twistd(
            data_dir,
            CAIRN_CLUSTER_NATS=f"nats://127.0.0.1:{free_port()}",  # nothing listens there
            CAIRN_CLUSTER_REPLICAS="1",
            CAIRN_MGMT_LISTEN=mgmt,
            CAIRN_MGMT_TOKEN="a token for the check",
        )
        proc.listening.addErrback(lambda _: None)  # never: the stores are not ready (killed below)

        def kill():
            if not proc.ended.called:
                proc.transport.signalProcess("KILL")
                return proc.ended

        self.addCleanup(kill)
        yield eventually(proc.wait_for("unreachable"), 60)
        code, output = yield run_healthcheck(data_dir, mgmt)
        self.assertEqual(code, 1, output)
        self.assertTrue(output.startswith("unhealthy: degraded: NATS unreachable ("), output)
        self.assertEqual(output.count("\n"), 1, output)
        self.assertNotIn("Traceback", output)

    @defer.inlineCallbacks
    def test_nothing_listening(self):
        """No node at the address: the check fails with one line, no traceback."""
        data_dir = os.path.abspath(self.mktemp())
        code, output = yield run_healthcheck(data_dir, f"tcp:{free_port()}:interface=127.0.0.1")
        self.assertEqual(code, 1, output)
        self.assertTrue(output.startswith("unhealthy: no answer at http://127.0.0.1:"), output)
        self.assertEqual(output.count("\n"), 1, output)
