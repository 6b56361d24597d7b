"""
C{cairn-server status|peers|pending|approve|reject|revoke|mailbox|relay|sync|config}
and the device commands' exit statuses, against a real C{twistd -n cairn}
logging JSON at the default level.
"""

import io
import json
import os
import sys

from twisted.internet import defer, protocol, reactor, threads, utils
from twisted.trial import unittest

from cairn.cli import _parser, admin
from cairn.cli.api import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_USAGE
from cairn.cli.output import duration, size, table
from tests._harness import eventually
from tests.test_twistd import REPO, start_twistd

TOKEN = "admin-test-token-not-in-any-output"
PSK = "a long enough pre-shared key for the admin tests"


def _admin(argv, environ):
    """Run one admin command in a thread (its HTTP client blocks); fires with (status, out, err)."""
    args = _parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()

    def call():
        status = admin.run(args, environ, out, err)
        return status, out.getvalue(), err.getvalue()

    return threads.deferToThread(call)


class _Device(protocol.ProcessProtocol):
    """A device command run in the background: C{waiting} fires once it waits for the operator."""

    def __init__(self):
        self.err = ""
        self.waiting = defer.Deferred()
        self.ended = defer.Deferred()

    def errReceived(self, data):
        self.err += data.decode()
        if "waiting for the operator" in self.err and not self.waiting.called:
            self.waiting.callback(None)

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class OutputTests(unittest.TestCase):
    """The human forms of tables, ages and sizes."""

    def test_table(self):
        """Columns are aligned under upper-case headers; no rows gives the empty text."""
        self.assertEqual(table(("a", "bb"), [("xyz", 1), ("q", None)]), "A    BB\nxyz  1\nq    -")
        self.assertEqual(table(("a",), [], "(none)"), "(none)")

    def test_duration_and_size(self):
        """Ages show their two largest units; sizes a 1000-based unit."""
        self.assertEqual([duration(5), duration(3725), duration(90061), duration(None)], ["5s", "1h 2m", "1d 1h", "-"])
        self.assertEqual([size(999), size(1500), size(2_000_000)], ["999 B", "1.5 kB", "2.0 MB"])


class HostNameWarningTests(unittest.TestCase):
    """`pair --link` warns when the node's links name the machine's host name."""

    def warning(self, **values):
        settings = [{"name": name, "value": value} for name, value in values.items()]

        class Node:
            def get(self, path):
                return {"settings": settings}

        self.patch(admin, "connect", lambda environ, url=None: Node())
        return admin.host_name_warning({})

    def test_wildcard_without_public_addresses(self):
        """No CAIRN_PUBLIC_ADDRESSES and a listener on every interface: a warning naming the variable."""
        text = self.warning(public_addresses=[], listen="tcp:7400", ws_listen=None)
        self.assertIn("CAIRN_PUBLIC_ADDRESSES", text)

    def test_no_warning(self):
        """Public addresses set, or listeners on one interface: no warning."""
        self.assertIsNone(self.warning(public_addresses=["tcp:host=a:port=1"], listen="tcp:7400"))
        self.assertIsNone(self.warning(public_addresses=[], listen="tcp:7400:interface=127.0.0.1", ws_listen=None))

    def test_node_unreachable(self):
        """When the node cannot be asked, nothing is said (pair reported its own error)."""

        def refuse(environ, url=None):
            raise admin.AdminError("down", EXIT_UNREACHABLE)

        self.patch(admin, "connect", refuse)
        self.assertIsNone(admin.host_name_warning({}))


class NoNodeTests(unittest.TestCase):
    """Failures before any node answers: one line on stderr and a distinct status."""

    @defer.inlineCallbacks
    def test_node_not_running(self):
        """Nothing listening at the management address: status 3 and one line saying so."""
        environ = {"CAIRN_MGMT_TOKEN": TOKEN, "CAIRN_MGMT_URL": "http://127.0.0.1:1"}
        status, out, err = yield _admin(["status"], environ)
        self.assertEqual(status, EXIT_UNREACHABLE)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("not running", err)

    @defer.inlineCallbacks
    def test_no_token(self):
        """No token anywhere and no node to wake: status 3 (nothing answers) before any token is needed."""
        environ = {"CAIRN_DATA_DIR": self.mktemp(), "CAIRN_MGMT_URL": "http://127.0.0.1:1"}
        status, _, err = yield _admin(["peers"], environ)
        self.assertEqual(status, EXIT_UNREACHABLE, err)

    @defer.inlineCallbacks
    def test_token_file_missing(self):
        """--token-file naming no file: status 4, naming the file."""
        environ = {"CAIRN_MGMT_URL": "http://127.0.0.1:1"}
        status, _, err = yield _admin(["peers", "--token-file", "/nonexistent/token"], environ)
        self.assertEqual(status, EXIT_AUTH)
        self.assertIn("/nonexistent/token", err)

    def test_usage_error(self):
        """A missing PEER is argparse's usage error, status 2."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, _parser().parse_args, ["approve"])
        self.assertEqual(error.code, EXIT_USAGE)


class RealNodeTests(unittest.TestCase):
    """One node serves every command in turn (start-up is the slow part)."""

    @defer.inlineCallbacks
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.proc = start_twistd(
            self.data_dir,
            expected=("tcp", "websocket", "management"),
            CAIRN_MGMT_LISTEN="tcp:0:interface=127.0.0.1",
            CAIRN_MGMT_TOKEN=TOKEN,
            CAIRN_PSK=PSK,
            CAIRN_LOG_FORMAT="json",
        )
        self.ports = yield eventually(self.proc.listening, 60)
        self.environ = {
            "CAIRN_DATA_DIR": self.data_dir,
            "CAIRN_MGMT_LISTEN": f"tcp:{self.ports['management']}:interface=127.0.0.1",
            "CAIRN_MGMT_TOKEN": TOKEN,
        }
        self.server = f"tcp:host=127.0.0.1:port={self.ports['tcp']}"

    @defer.inlineCallbacks
    def tearDown(self):
        if not self.proc.ended.called:
            self.proc.transport.signalProcess("TERM")
            yield eventually(self.proc.ended, 60)
        log = "".join(self.proc.output)
        self.assertNotIn("Traceback", log)
        self.assertNotIn(TOKEN, log)
        self.assertNotIn(PSK, log)

    def device(self, *argv, psk=False):
        """Run C{cairn-mailbox ARGV} as a device would; fires with (out, err, status)."""
        env = dict(os.environ, PYTHONPATH=REPO)
        if psk:
            env["CAIRN_PSK"] = PSK
        return utils.getProcessOutputAndValue(
            sys.executable, ["-m", "cairn.cli.mailbox", *argv], env=env, path=REPO
        ).addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))

    @defer.inlineCallbacks
    def admin(self, *argv, status=0, **extra):
        """Run an admin command; check its status; fire with its stdout."""
        code, out, err = yield _admin(list(argv), {**self.environ, **extra})
        self.assertEqual(code, status, (argv, out, err))
        if status:
            self.assertEqual(err.count("\n"), 1, err)
        return out

    @defer.inlineCallbacks
    def test_operator_session(self):
        """Every admin command answers with a table or JSON and a reliable status; device CLIs exit conventionally."""
        phone = os.path.join(self.data_dir, "..", "phone.key")
        laptop = os.path.join(self.data_dir, "..", "laptop.key")

        # Device CLI conventions.
        out, err, code = yield self.device("--help")
        self.assertEqual((code, err), (0, ""))
        self.assertNotIn("cairn-mailbox: 0", out)
        out, err, code = yield self.device("--identity", phone)
        self.assertEqual(code, 2)
        self.assertNotIn("cairn-mailbox: 2", err)
        self.assertIn("usage:", err)

        relay = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "cairn.cli.relay", "--help"], env=dict(os.environ, PYTHONPATH=REPO), path=REPO
        )
        self.assertEqual((relay[1], relay[2]), (b"", 0))
        self.assertNotIn(b"cairn-relay: 0", relay[0])
        self.assertIn(b"--name", relay[0])

        # An unpaired device's receive is an error, not "nothing waiting".
        out, err, code = yield self.device("--identity", laptop, "--server", self.server, "receive", "--wait", "0.1")
        self.assertEqual((code, out), (1, ""), err)
        self.assertIn("not paired", err)
        laptop_id = (yield self.device("--identity", laptop, "--server", self.server, "whoami"))[0].strip()
        # The laptop asks the operator to approve it, and waits (in the background).
        asking = _Device()
        env = dict(os.environ, PYTHONPATH=REPO)
        argv = ["-m", "cairn.cli.mailbox", "--identity", laptop, "--server", self.server, "--approval", "whoami"]
        reactor.spawnProcess(asking, sys.executable, [sys.executable, *argv], env=env, path=REPO)
        yield eventually(asking.waiting, 30)

        # A device pairs with --psk under the --name it chose.
        out, err, code = yield self.device(
            "--identity", phone, "--server", self.server, "--psk", "--name", "pixel", "whoami", psk=True
        )
        self.assertEqual(code, 0, err)
        phone_id = out.strip()
        out, err, code = yield self.device("--identity", phone, "--server", self.server, "send", phone_id, "hello")
        self.assertEqual(code, 0, err)

        status = yield self.admin("status")
        self.assertIn(": ok, up ", status)
        self.assertIn("1 paired (0 online), 1 pending", status)
        self.assertIn("mailbox    1 messages", status)
        data = json.loads((yield self.admin("status", "--json")))
        self.assertEqual(data["peers"], {"paired": 1, "online": 0, "pending": 1})
        self.assertEqual(data["listeners"]["management"], f"127.0.0.1:{self.ports['management']}")

        peers = json.loads((yield self.admin("peers", "--json")))
        self.assertEqual([(p["peer_id"], p["name"], p["queued"]) for p in peers], [(phone_id, "pixel", 1)])
        table_text = yield self.admin("peers")
        self.assertIn("pixel", table_text)
        self.assertIn("offline", table_text)

        pending = yield self.admin("pending")
        self.assertIn(laptop_id, pending)
        self.assertIn(laptop_id, (yield self.admin("approve", laptop_id)))
        self.assertEqual((yield eventually(asking.ended, 30)), 0, asking.err)
        self.assertIn("approved by node", asking.err)
        yield self.admin("approve", laptop_id, status=EXIT_NOT_FOUND)
        self.assertEqual(json.loads((yield self.admin("pending", "--json"))), [])
        yield self.admin("reject", laptop_id, status=EXIT_NOT_FOUND)

        box = yield self.admin("mailbox", phone_id)
        self.assertIn("messages   1", box)
        self.assertIn(phone_id, (yield self.admin("mailbox")))
        yield self.admin("relay")
        yield self.admin("sync")

        settings = json.loads((yield self.admin("config", "--json")))
        by_name = {row["variable"]: row for row in settings}
        self.assertEqual(by_name["CAIRN_PSK"]["value"], "<redacted>")
        self.assertEqual(by_name["CAIRN_PSK"]["source"], "env")
        self.assertEqual(by_name["CAIRN_MAX_PAYLOAD"]["source"], "default")
        self.assertEqual(by_name["CAIRN_LOG_FORMAT"]["value"], "json")
        text = yield self.admin("config")
        self.assertNotIn(PSK, text)
        self.assertNotIn(TOKEN, text)

        # Revoked: the device is told so; the operator sees it gone.
        self.assertIn(phone_id, (yield self.admin("revoke", phone_id)))
        yield self.admin("revoke", phone_id, status=EXIT_NOT_FOUND)
        out, err, code = yield self.device("--identity", phone, "--server", self.server, "receive", "--wait", "0.1")
        self.assertEqual(code, 1, err)
        self.assertIn("not paired", err)

        yield self.admin("peers", status=EXIT_AUTH, CAIRN_MGMT_TOKEN="wrong")

        # The whole log is JSON lines at info level and above, with no
        # "Starting factory" noise and no debug access-log lines.
        lines = "".join(self.proc.output).splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        self.assertTrue(records)
        self.assertEqual({r["level"] for r in records} - {"info", "warn"}, set(), records)
        self.assertFalse([r for r in records if "Starting factory" in r["message"]])
        self.assertFalse([r for r in records if "GET /" in r["message"]])
        self.assertTrue([r for r in records if r["message"].startswith("cairn 0") and "CAIRN_PSK" in r["message"]])

    @defer.inlineCallbacks
    def test_cairn_server_command(self):
        """`cairn-server status` as a process exits 0 and prints the status; a wrong token exits 4."""
        env = dict(os.environ, PYTHONPATH=REPO, **self.environ)
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "cairn.cli", "status"], env=env, path=REPO
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"ok, up", out)
        env["CAIRN_MGMT_TOKEN"] = "wrong"
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "cairn.cli", "peers"], env=env, path=REPO
        )
        self.assertEqual((code, out), (EXIT_AUTH, b""))
        self.assertEqual(err.count(b"\n"), 1)
