"""Tests for L{cairn.logs}: level, JSON lines, the start-up summary, twistd's observer."""

import io
import json

from twisted.logger import Logger, LogLevel, PredicateResult, formatEvent
from twisted.python import log as legacy
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from cairn import logs
from cairn.config import Config
from tests._harness import observe_logs


def _event(level=LogLevel.info, fmt="hello {who}", **fields):
    return {"log_level": level, "log_format": fmt, "log_namespace": "test", "log_time": 0.0, **fields}


class LevelTests(unittest.TestCase):
    """CAIRN_LOG_LEVEL keeps events at its level and above."""

    def test_info_drops_debug(self):
        """At info, debug events are dropped and info, warn pass."""
        keep = logs.LevelPredicate("info")
        self.assertEqual(keep(_event(LogLevel.debug)), PredicateResult.no)
        self.assertEqual(keep(_event(LogLevel.info)), PredicateResult.maybe)
        self.assertEqual(keep(_event(LogLevel.warn)), PredicateResult.maybe)

    def test_error_drops_warn(self):
        """At error, warnings are dropped too."""
        self.assertEqual(logs.LevelPredicate("error")(_event(LogLevel.warn)), PredicateResult.no)

    def test_listener_noise_is_debug(self):
        """Twisted's 'Starting factory' and port lines count as debug."""
        keep = logs.LevelPredicate("info")
        self.assertEqual(keep(_event(fmt="Starting factory {factory!r}", factory=object())), PredicateResult.no)
        self.assertEqual(keep(_event(fmt="{log_text}", log_text="Site starting on 9090")), PredicateResult.no)
        self.assertEqual(keep(_event(fmt="{log_text}", log_text="(TCP Port 9090 Closed)")), PredicateResult.no)
        verbose = logs.LevelPredicate("debug")
        self.assertEqual(verbose(_event(fmt="Starting factory {factory!r}")), PredicateResult.maybe)

    def test_legacy_event(self):
        """A legacy log.msg line about a port is filtered as debug, others pass."""
        seen = []
        observer = logs.make_observer(seen.append, None, "info", "text")
        observe_logs(self, observer)
        legacy.msg("StreamFactory starting on 7400")
        legacy.msg("something else")
        self.assertEqual([e.get("log_text") or e["message"][0] for e in seen], ["something else"])


class JSONTests(unittest.TestCase):
    """CAIRN_LOG_FORMAT=json writes one JSON object a line."""

    def test_line(self):
        """A line holds time, level, namespace, the message and the fields it names, and nothing else."""
        line = logs.json_line(_event(who="world", secret_payload=b"x"))
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(
            record,
            {"time": "1970-01-01T00:00:00.000000+0000", "level": "info", "namespace": "test",
             "message": "hello world", "who": "world"},
        )

    def test_observer(self):
        """The observer writes JSON lines, filtered by level."""
        out = io.StringIO()
        observer = logs.make_observer(None, out, "warn", "json")
        log = Logger(observer=observer, namespace="cairn.test")
        log.info("quiet")
        log.warn("loud {n}", n=3)
        (line,) = out.getvalue().splitlines()
        self.assertEqual(json.loads(line)["message"], "loud 3")
        self.assertEqual(json.loads(line)["n"], 3)

    def test_failure(self):
        """A logged failure carries its traceback in one JSON string."""
        out = io.StringIO()
        log = Logger(observer=logs.make_observer(None, out, "info", "json"))
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("boom")
        (line,) = out.getvalue().splitlines()
        self.assertIn("ZeroDivisionError", json.loads(line)["failure"])


class SummaryTests(unittest.TestCase):
    """The start-up summary shows the effective settings, secrets redacted."""

    def summary(self, config, origin=None):
        events = []
        logs.summary(config, origin, Logger(observer=events.append))
        return events

    def test_secrets_redacted(self):
        """A set PSK and token are shown as redacted, with their source."""
        config = Config(psk="very secret psk", mgmt_token="tok-secret", public_addresses=("tcp:host=a:port=1",))
        (event,) = self.summary(config, {"psk": "env", "mgmt_token": "env"})
        text = formatEvent(event)
        self.assertNotIn("very secret psk", text)
        self.assertNotIn("tok-secret", text)
        self.assertRegex(text, r"CAIRN_PSK +<redacted>  \(env\)")
        self.assertIn("CAIRN_LISTEN", text)

    def test_generated_token_named_not_shown(self):
        """Without a configured token the management token is shown as generated, with its file, never as none."""
        from cairn import config_report

        config = Config(data_dir="/srv/cairn")
        text = formatEvent(self.summary(config)[0])
        self.assertRegex(text, r"CAIRN_MGMT_TOKEN +<generated: /srv/cairn/mgmt.token>  \(default\)")
        rows = {row["name"]: row for row in config_report.settings(config)}
        self.assertEqual(rows["mgmt_token"]["value"], "<generated: /srv/cairn/mgmt.token>")
        # No management API, no token: none.
        rows = {row["name"]: row for row in config_report.settings(Config(mgmt_listen=None))}
        self.assertIsNone(rows["mgmt_token"]["value"])

    def test_signal_server_token_not_shown(self):
        """A ?token= in a CAIRN_SIGNAL_SERVERS URL is in neither the summary, the settings nor the config's repr."""
        from cairn import config_report

        config = Config(signal_servers=("wss://sig.example/a?token=hunter2",))
        text = formatEvent(self.summary(config)[0])
        self.assertNotIn("hunter2", text)
        self.assertIn("wss://sig.example/a?<redacted>", text)
        rows = {row["name"]: row for row in config_report.settings(config)}
        self.assertEqual(rows["signal_servers"]["value"], ["wss://sig.example/a?<redacted>"])
        self.assertNotIn("hunter2", repr(config))
        self.assertEqual(config.signal_servers, ("wss://sig.example/a?token=hunter2",))

    def test_host_name_warning(self):
        """Without CAIRN_PUBLIC_ADDRESSES and with a wildcard listener, a warning names the host."""
        events = self.summary(Config())
        self.assertEqual(events[-1]["log_level"], LogLevel.warn)
        self.assertIn("CAIRN_PUBLIC_ADDRESSES", events[-1]["log_format"])

    def test_no_warning_on_loopback(self):
        """Listeners on one interface are advertised on it: no warning."""
        config = Config(listen="tcp:7400:interface=127.0.0.1", ws_listen=None)
        self.assertEqual(len(self.summary(config)), 1)


class TwistdTests(unittest.TestCase):
    """Under twistd, the plugin chooses the log observer unless --logger was given."""

    def test_plugin_sets_logger(self):
        """`twistd cairn` names cairn.logs.twistd_observer as twistd's logger."""
        self.patch(logs, "_pending", {})
        self.patch(__import__("os"), "environ", {"CAIRN_LOG_LEVEL": "warn"})
        options = ServerOptions()
        options.parseOptions(["--nodaemon", "cairn"])
        self.assertIs(options["logger"], logs.twistd_observer)
        self.assertEqual(logs._pending["level"], "warn")

    def test_explicit_logger_kept(self):
        """An operator's own --logger is left alone."""
        self.patch(logs, "_pending", {})
        self.patch(__import__("os"), "environ", {})
        options = ServerOptions()
        options.parseOptions(["--nodaemon", "--logger=twisted.logger.textFileLogObserver", "cairn"])
        self.assertEqual(options["logger"].__name__, "textFileLogObserver")
        self.assertEqual(logs._pending, {})


class JournalTests(unittest.TestCase):
    """Under systemd, whose journald stamps each line, text lines leave out their own time stamp."""

    def stream(self):
        out = open(self.mktemp(), "w")
        self.addCleanup(out.close)
        status = __import__("os").fstat(out.fileno())
        return out, f"{status.st_dev}:{status.st_ino}"

    def test_journal_stream(self):
        """JOURNAL_STREAM naming the output's device and inode: the journal; anything else: not."""
        out, value = self.stream()
        self.assertTrue(logs.journal_stream(out, {"JOURNAL_STREAM": value}))
        other, elsewhere = self.stream()
        for environ in ({}, {"JOURNAL_STREAM": elsewhere}, {"JOURNAL_STREAM": "x:y"}, {"JOURNAL_STREAM": "12"}):
            self.assertFalse(logs.journal_stream(out, environ), environ)
        self.assertFalse(logs.journal_stream(io.StringIO(), {"JOURNAL_STREAM": value}))  # no descriptor
        self.assertFalse(logs.journal_stream(None, {"JOURNAL_STREAM": value}))

    def test_line_without_time(self):
        """The line is Twisted's text line less its time stamp."""
        self.assertEqual(logs.journal_line(_event(who="you", log_time=1e9)), "[test#info] hello you\n")
        self.assertIsNone(logs.journal_line({}))

    def test_twistd_observer_under_systemd(self):
        """twistd --nodaemon writing to the journal: lines without the time stamp, still filtered by level."""
        out, value = self.stream()
        self.patch(logs, "_pending", {})
        self.patch(__import__("os"), "environ", {"CAIRN_LOG_LEVEL": "info", "JOURNAL_STREAM": value})
        self.patch(__import__("sys"), "stdout", out)
        options = ServerOptions()
        options.parseOptions(["--nodaemon", "cairn"])
        observer = logs.twistd_observer()
        observer(_event(who="journald"))
        observer(_event(LogLevel.debug, who="nobody"))
        out.flush()
        with open(out.name) as f:
            self.assertEqual(f.read(), "[test#info] hello journald\n")
