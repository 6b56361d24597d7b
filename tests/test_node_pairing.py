"""
Pairing and the management API against a real C{twistd -n cairn}: the
seed's curl commands, PSK, operator approval, and the PIN and link that
C{cairn-server pair} obtains from the running node.
"""

import json
import os
import shutil
import sys

from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest

from cairn.client import Client
from cairn.pairing import client as pairing
from tests._harness import drop_all, eventually, track_connections
from tests.test_twistd import REPO, start_twistd

TOKEN = "your-secret-token"
PSK = "correct horse battery staple, long enough"


class RealNodePairingTests(unittest.TestCase):
    """One node process serves every scenario in turn (start-up is the slow part)."""

    @defer.inlineCallbacks
    def setUp(self):
        if shutil.which("curl") is None:
            raise unittest.SkipTest("curl is not installed (apt-get install curl)")
        self.data_dir = os.path.abspath(self.mktemp())
        self.proc = start_twistd(
            self.data_dir,
            expected=("tcp", "websocket", "management"),
            CAIRN_MGMT_LISTEN="tcp:0:interface=127.0.0.1",
            CAIRN_MGMT_TOKEN=TOKEN,
            CAIRN_PSK=PSK,
        )
        self.ports = yield eventually(self.proc.listening, 60)
        self.api = f"http://127.0.0.1:{self.ports['management']}"
        self.connections = []

    @defer.inlineCallbacks
    def tearDown(self):
        yield drop_all(self.connections)
        if not self.proc.ended.called:
            self.proc.transport.signalProcess("TERM")
            yield eventually(self.proc.ended, 60)
        self.assertNotIn("Traceback", "".join(self.proc.output))
        self.assertNotIn(TOKEN, "".join(self.proc.output))
        self.assertNotIn(PSK, "".join(self.proc.output))

    def client(self):
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        return client

    def connect(self, client):
        return eventually(client.connect(f"tcp:host=127.0.0.1:port={self.ports['tcp']}"))

    @defer.inlineCallbacks
    def curl(self, *args):
        """Run curl with the seed's arguments (the URL's port is the node's); return (status, body)."""
        args = [a.replace("http://localhost:9090", self.api) for a in args]
        out = yield utils.getProcessOutput("curl", ["-s", "-w", "\\n%{http_code}", *args], env=os.environ)
        body, _, status = out.decode().rpartition("\n")
        return int(status), body

    @defer.inlineCallbacks
    def cairn_server_pair(self, kind, line=0):
        """Run `cairn-server pair --KIND` against the node, as an operator would."""
        env = dict(
            os.environ,
            PYTHONPATH=REPO,
            CAIRN_DATA_DIR=self.data_dir,
            CAIRN_MGMT_TOKEN=TOKEN,
            CAIRN_MGMT_LISTEN=f"tcp:{self.ports['management']}:interface=127.0.0.1",
        )
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "cairn.cli", "pair", f"--{kind}"], env=env, path=REPO
        )
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        if kind == "qr":
            self.assertGreater(len(lines), 20)  # the code itself, drawn in the terminal
        return lines[line]

    @defer.inlineCallbacks
    def test_seed_curl_commands_and_every_pairing_method(self):
        """The seed's curl commands work, and PSK, approval, PIN and link each pair a real client."""
        status, body = yield self.curl("http://localhost:9090/health")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["status"], "ok")
        status, body = yield self.curl("http://localhost:9090/peers")
        self.assertEqual(status, 401)
        status, body = yield self.curl("-H", f"Authorization: Bearer {TOKEN}", "http://localhost:9090/peers")
        self.assertEqual((status, json.loads(body)), (200, []))

        # PSK
        psk_client = self.client()
        session = yield self.connect(psk_client)
        result = yield eventually(pairing.pair_psk(session, PSK, name="laptop"))
        self.assertEqual(result.peer_id, session.remote_peer_id)

        # Operator approval with the seed's POST /peers/approve
        approval_client = self.client()
        session = yield self.connect(approval_client)
        filed = defer.Deferred()
        approved = pairing.request_approval(session, name="phone", on_pending=lambda: filed.callback(None))
        yield eventually(filed)
        status, body = yield self.curl(
            "-X", "POST",
            "-H", f"Authorization: Bearer {TOKEN}",
            "-H", "Content-Type: application/json",
            "-d", json.dumps({"peer_id": approval_client.peer_id}),
            "http://localhost:9090/peers/approve",
        )
        self.assertEqual(status, 200, body)
        yield eventually(approved)

        # PIN printed by `cairn-server pair --pin`
        pin = yield self.cairn_server_pair("pin")
        self.assertRegex(pin, r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")
        pin_client = self.client()
        session = yield self.connect(pin_client)
        yield eventually(pairing.pair_pin(session, pin, name="tablet"))

        # QR code drawn by `cairn-server pair --qr` carries a usable link too
        qr_link = yield self.cairn_server_pair("qr", line=-2)
        self.assertTrue(qr_link.startswith("cairn://pair?"), qr_link)

        # Link printed by `cairn-server pair --link`, used as-is
        link = yield self.cairn_server_pair("link")
        self.assertTrue(link.startswith("cairn://pair?"), link)
        link_client = self.client()
        session, result = yield eventually(pairing.pair_link(link_client, link, name="desktop"))
        self.assertEqual(session.remote_peer_id, result.peer_id)

        status, body = yield self.curl("-H", f"Authorization: Bearer {TOKEN}", "http://localhost:9090/peers")
        peers = {p["peer_id"]: p for p in json.loads(body)}
        expected = {c.peer_id for c in (psk_client, approval_client, pin_client, link_client)}
        self.assertEqual(set(peers), expected)
        self.assertTrue(all(p["connected"] for p in peers.values()))
        self.assertEqual(
            sorted(p["method"] for p in peers.values()), ["approval", "link", "pin", "psk"]
        )
