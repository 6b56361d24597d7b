"""
The management API's supporting pieces: token resolution and checking,
the metrics registry, and the exposed-listener warning.
"""

import os
import stat

from prometheus_client.core import GaugeMetricFamily
from twisted.internet import task
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial import unittest

from cairn import __version__
from cairn.config import Config, ConfigError
from cairn.crypto.identity import Identity
from cairn.management.app import warn_if_exposed
from cairn.management.metrics import CONTENT_TYPE, Metrics
from cairn.management.token import TOKEN_FILE_NAME, check_bearer, resolve_token
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED, PeerRecord
from cairn.session.peer import Peer


class Captured:
    """A Logger whose events are kept, to check what was (not) said."""

    def __init__(self):
        self.events = []
        self.log = Logger(observer=self.events.append)

    def text(self):
        return "\n".join(formatEvent(e) + " " + repr(e) for e in self.events)

    def levels(self):
        return [e["log_level"] for e in self.events]


class ResolveTokenTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = self.mktemp()
        self.logs = Captured()

    def test_env_token(self):
        """CAIRN_MGMT_TOKEN is used as is, its source logged but never its value."""
        config = Config.from_env({"CAIRN_DATA_DIR": self.data_dir, "CAIRN_MGMT_TOKEN": "your-secret-token"})
        self.assertEqual(resolve_token(config, self.logs.log), "your-secret-token")
        self.assertIn("CAIRN_MGMT_TOKEN", self.logs.text())
        self.assertNotIn("your-secret-token", self.logs.text())
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, TOKEN_FILE_NAME)))

    def test_token_file_via_from_env(self):
        """CAIRN_MGMT_TOKEN_FILE read by Config.from_env gives its stripped contents."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("  from-a-file-token-123456  \n")
        config = Config.from_env({"CAIRN_DATA_DIR": self.data_dir, "CAIRN_MGMT_TOKEN_FILE": path})
        self.assertEqual(resolve_token(config, self.logs.log), "from-a-file-token-123456")
        self.assertIn("CAIRN_MGMT_TOKEN_FILE", self.logs.text())
        self.assertNotIn("from-a-file-token-123456", self.logs.text())

    def test_token_file_direct_config(self):
        """A Config built directly with mgmt_token_file has the file read by resolve_token."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("direct-file-token-abcdefgh\n")
        config = Config(data_dir=self.data_dir, mgmt_token_file=path)
        self.assertEqual(resolve_token(config, self.logs.log), "direct-file-token-abcdefgh")
        self.assertNotIn("direct-file-token-abcdefgh", self.logs.text())

    def test_token_file_missing_or_empty(self):
        """An unreadable or empty CAIRN_MGMT_TOKEN_FILE is a ConfigError naming the variable."""
        missing = Config(data_dir=self.data_dir, mgmt_token_file=self.mktemp())
        error = self.assertRaises(ConfigError, resolve_token, missing, self.logs.log)
        self.assertEqual(error.variable, "CAIRN_MGMT_TOKEN_FILE")
        empty = self.mktemp()
        open(empty, "w").close()
        error = self.assertRaises(ConfigError, resolve_token, Config(data_dir=self.data_dir, mgmt_token_file=empty),
                                  self.logs.log)
        self.assertIn("is empty", str(error))

    def test_generated_private_and_reused(self):
        """Without a configured token one is generated into <data_dir>/mgmt.token (0600) and reused."""
        config = Config(data_dir=self.data_dir)
        token = resolve_token(config, self.logs.log)
        path = os.path.join(self.data_dir, TOKEN_FILE_NAME)
        self.assertGreaterEqual(len(token), 40)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(f.read().strip(), token)
        self.assertEqual(resolve_token(config, self.logs.log), token)
        self.assertIn(path, self.logs.text())
        self.assertNotIn(token, self.logs.text())
        self.assertEqual(self.logs.levels(), [LogLevel.info, LogLevel.info])

    def test_generated_tokens_differ(self):
        """Two data directories get two different generated tokens."""
        other = self.mktemp()
        self.assertNotEqual(
            resolve_token(Config(data_dir=self.data_dir), self.logs.log),
            resolve_token(Config(data_dir=other), self.logs.log),
        )

    def test_loose_permissions_warned(self):
        """A token file readable by others is still used, with a warning naming the path only."""
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, TOKEN_FILE_NAME)
        with open(path, "w") as f:
            f.write("an-existing-token-1234567890\n")
        os.chmod(path, 0o644)
        self.assertEqual(resolve_token(Config(data_dir=self.data_dir), self.logs.log), "an-existing-token-1234567890")
        self.assertIn(LogLevel.warn, self.logs.levels())
        self.assertNotIn("an-existing-token-1234567890", self.logs.text())

    def test_empty_file_regenerated(self):
        """An empty mgmt.token is replaced by a new token file, mode 0600."""
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, TOKEN_FILE_NAME)
        open(path, "w").close()
        token = resolve_token(Config(data_dir=self.data_dir), self.logs.log)
        self.assertTrue(token)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_symlink_not_followed(self):
        """A dangling symlink at mgmt.token is not written through."""
        os.makedirs(self.data_dir)
        target = os.path.abspath(self.mktemp())
        os.symlink(target, os.path.join(self.data_dir, TOKEN_FILE_NAME))
        error = self.assertRaises(ConfigError, resolve_token, Config(data_dir=self.data_dir), self.logs.log)
        self.assertEqual(error.variable, "CAIRN_DATA_DIR")
        self.assertIn(TOKEN_FILE_NAME, str(error))
        self.assertFalse(os.path.exists(target))

    def test_short_token_warned(self):
        """A configured token under 16 characters draws a warning."""
        resolve_token(Config(data_dir=self.data_dir, mgmt_token="short"), self.logs.log)
        self.assertIn(LogLevel.warn, self.logs.levels())
        self.assertNotIn("short'", self.logs.text())


class CheckBearerTests(unittest.TestCase):
    def test_cases(self):
        """Only 'Bearer <token>' (scheme in any case, str or bytes) with the exact token passes."""
        token = "s3cret-token-value"
        self.assertTrue(check_bearer(b"Bearer s3cret-token-value", token))
        self.assertTrue(check_bearer("Bearer s3cret-token-value", token))
        self.assertTrue(check_bearer(b"BEARER s3cret-token-value", token))
        self.assertTrue(check_bearer(b"  Bearer   s3cret-token-value ", token))
        for bad in [None, b"", b"Bearer", b"Bearer ", b"s3cret-token-value", b"Basic s3cret-token-value",
                    b"Bearer s3cret-token-valu", b"Bearer s3cret-token-value2", b"Bearer S3CRET-TOKEN-VALUE"]:
            self.assertFalse(check_bearer(bad, token), bad)
        self.assertFalse(check_bearer(b"Bearer ", ""))
        self.assertFalse(check_bearer(b"Bearer x", None))


class FakeSession:
    closed = None

    def __init__(self, attached):
        self.attached = attached
        self.remote_peer_id = "x"


class MetricsTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.peer = Peer(Identity.generate(), self.clock)
        self.metrics = Metrics(self.peer, self.clock, started_at=1000.0)

    def text(self):
        return self.metrics.exposition().decode("utf-8")

    def test_core_metrics(self):
        """The registry exports sessions, peers, unknown types, build info and uptime, computed at scrape time."""
        self.peer.sessions[b"a"] = FakeSession(True)
        self.peer.sessions[b"b"] = FakeSession(False)
        self.peer.unknown_type(0xF001)
        self.peer.unknown_type(0xF002)
        self.metrics.set_peer_counts(
            [PeerRecord("a", b"", PAIRED), PeerRecord("b", b"", PAIRED), PeerRecord("c", b"", REVOKED)]
        )
        self.clock.advance(42)
        text = self.text()
        for line in [
            'cairn_sessions{state="attached"} 1.0',
            'cairn_sessions{state="detached"} 1.0',
            'cairn_peers{state="paired"} 2.0',
            'cairn_peers{state="pending"} 0.0',
            'cairn_peers{state="revoked"} 1.0',
            "cairn_unknown_types_total 2.0",
            f'cairn_build_info{{version="{__version__}"}} 1.0',
            "cairn_uptime_seconds 42.0",
            "# TYPE cairn_unknown_types_total counter",
        ]:
            self.assertIn(line + "\n", text)
        self.assertIn("process_", text)  # the standard process collector
        del self.peer.sessions[b"a"]
        self.assertIn('cairn_sessions{state="attached"} 0.0\n', self.text())

    def test_own_registry(self):
        """The node's metrics live in their own registry, not prometheus_client's global one."""
        from prometheus_client import REGISTRY, generate_latest

        self.assertIsNot(self.metrics.registry, REGISTRY)
        self.assertNotIn(b"cairn_sessions", generate_latest(REGISTRY))
        self.assertTrue(CONTENT_TYPE.startswith("text/plain"))

    def test_refresh_peer_counts(self):
        """refresh_peer_counts recounts from an ITrustStore's list()."""
        from twisted.internet.defer import succeed

        class Trust:
            def list(self, state=None):
                return succeed([PeerRecord("a", b"", PENDING)])

        self.successResultOf(self.metrics.refresh_peer_counts(Trust()))
        self.assertEqual(self.metrics.peer_counts, {PENDING: 1, PAIRED: 0, REVOKED: 0})

    def test_service_metrics(self):
        """Services add gauges, labelled gauges, counters and raw collectors, read at each scrape."""
        held = {"n": 3}
        self.metrics.add_gauge("cairn_mailbox_messages", "Messages held.", lambda: held["n"])
        self.metrics.add_gauge("cairn_relay_circuits", "Circuits.", lambda: {"open": 2, ("closing",): 1},
                               labels=["state"])
        self.metrics.add_counter("cairn_sync_updates", "Updates published.", lambda: 7)
        self.metrics.add_collector(lambda: [GaugeMetricFamily("cairn_custom", "Custom.", value=5)])
        held["n"] = 4
        text = self.text()
        for line in [
            "cairn_mailbox_messages 4.0",
            'cairn_relay_circuits{state="open"} 2.0',
            'cairn_relay_circuits{state="closing"} 1.0',
            "cairn_sync_updates_total 7.0",
            "cairn_custom 5.0",
        ]:
            self.assertIn(line + "\n", text)

    def test_failing_collector_isolated(self):
        """A collector that raises is logged and skipped; the other metrics are still exported."""
        self.metrics.add_gauge("cairn_broken", "Broken.", lambda: 1 / 0)
        text = self.text()
        self.assertNotIn("cairn_broken", text)
        self.assertIn("cairn_sessions", text)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_without_process_or_clock(self):
        """Process metrics and uptime are optional."""
        text = Metrics(self.peer, process_metrics=False).exposition().decode()
        self.assertNotIn("process_", text)
        self.assertNotIn("cairn_uptime_seconds", text)
        self.assertIn("cairn_build_info", text)


class WarnIfExposedTests(unittest.TestCase):
    def check(self, description):
        logs = Captured()
        warned = warn_if_exposed(description, logs.log)
        self.assertEqual(warned, LogLevel.warn in logs.levels())
        return warned, logs

    def test_exposed(self):
        """Clear-text TCP not bound to loopback draws a warning naming the endpoint."""
        for description in ["tcp:9090", "tcp:port=9090", "tcp:9090:interface=0.0.0.0",
                            "tcp:9090:interface=192.168.1.10", "tcp6:9090:interface=\\:\\:", "TCP:9090"]:
            warned, logs = self.check(description)
            self.assertTrue(warned, description)
            self.assertIn(description, logs.text())

    def test_loopback_tls_unix_quiet(self):
        """Loopback TCP, TLS and UNIX sockets draw no warning."""
        for description in [
            "tcp:9090:interface=127.0.0.1",
            "tcp:port=9090:interface=127.0.0.2",
            "tcp6:9090:interface=\\:\\:1",
            "tcp:9090:interface=localhost",
            "ssl:9090:privateKey=key.pem:certKey=cert.pem",
            "tls:9090:interface=0.0.0.0",
            "unix:/run/cairn/mgmt.sock",
            None,
        ]:
            warned, logs = self.check(description)
            self.assertFalse(warned, description)
            self.assertEqual(logs.events, [], description)

    def test_unknown_kind_informs(self):
        """An endpoint type whose binding cannot be told (systemd) gets an info line, not a warning."""
        warned, logs = self.check("systemd:domain=INET:index=0")
        self.assertFalse(warned)
        self.assertEqual(logs.levels(), [LogLevel.info])

    def test_intended_exposure_informs(self):
        """With CAIRN_MGMT_EXPOSED=true (the Docker image), an exposed binding is one info line, not a warning."""
        logs = Captured()
        warned = warn_if_exposed("tcp:9090", logs.log, intended=True)
        self.assertFalse(warned)
        self.assertEqual(logs.levels(), [LogLevel.info])
        self.assertIn("CAIRN_MGMT_EXPOSED", logs.text())
