"""Tests for L{cairn.tap} and the C{twistd cairn} plugin."""

import os
import sys
import types

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet import reactor
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from cairn import fdlimit, tap
from cairn.config import Config
from cairn.startup import StartupError


class OptionsTests(unittest.TestCase):
    """Flags are typed at the edge and checked together with the environment."""

    def setUp(self):
        self.patch(os, "environ", {})

    def parse(self, *argv):
        """Parse C{argv} with fresh Options."""
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_no_flags(self):
        """Without flags there are no overrides and the defaults apply."""
        options = self.parse()
        self.assertEqual(options.overrides(), {})
        self.assertEqual(tap.config_from_options(options), Config())

    def test_every_flag(self):
        """Every flag is parsed into its typed Config value."""
        options = self.parse(
            "--data-dir=/srv/cairn",
            "--listen=tcp:17400",
            "--ws-listen",
            "none",
            "--mgmt-listen=tcp:9091:interface=127.0.0.1",
            "--max-payload=64KiB",
            "--keepalive-interval=10s",
            "--keepalive-timeout=1m",
        )
        config = tap.config_from_options(options)
        self.assertEqual(
            (
                config.data_dir,
                config.listen,
                config.ws_listen,
                config.mgmt_listen,
                config.max_payload,
                config.keepalive_interval,
                config.keepalive_timeout,
            ),
            (
                "/srv/cairn",
                "tcp:17400",
                None,
                "tcp:9091:interface=127.0.0.1",
                65536,
                10.0,
                60.0,
            ),
        )

    def test_flag_beats_env(self):
        """A flag overrides its environment variable; other variables still apply."""
        os.environ.update({"CAIRN_MAX_PAYLOAD": "2MB", "CAIRN_LISTEN": "tcp:1"})
        config = tap.config_from_options(self.parse("--max-payload=4096"))
        self.assertEqual((config.max_payload, config.listen), (4096, "tcp:1"))

    def test_bad_flag_values(self):
        """A malformed flag value is a one-line usage error naming the flag."""
        for argv, flag in [
            (["--max-payload=7x"], "--max-payload"),
            (["--keepalive-interval=soon"], "--keepalive-interval"),
            (["--keepalive-timeout", "-1"], "--keepalive-timeout"),
            (["--listen=7400"], "--listen"),
            (["--ws-listen=:1"], "--ws-listen"),
            (["--mgmt-listen="], "--mgmt-listen"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertTrue(str(error).startswith(f"{flag}: "), str(error))
            self.assertNotIn("\n", str(error))

    def test_flag_out_of_range(self):
        """A well-formed flag value out of range is a usage error naming the flag."""
        error = self.assertRaises(usage.UsageError, self.parse, "--max-payload=10")
        self.assertTrue(str(error).startswith("--max-payload: "), str(error))

    def test_flags_in_conflict(self):
        """A keepalive timeout flag not above the interval names the timeout flag."""
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--keepalive-interval=1m",
            "--keepalive-timeout=30s",
        )
        self.assertTrue(str(error).startswith("--keepalive-timeout: "), str(error))

    def test_empty_data_dir(self):
        """An empty --data-dir is a usage error naming the flag."""
        error = self.assertRaises(usage.UsageError, self.parse, "--data-dir=")
        self.assertTrue(str(error).startswith("--data-dir: "), str(error))

    def test_bad_env_while_parsing(self):
        """A bad variable fails option parsing with one line naming it (no usage text: it is no flag)."""
        os.environ["CAIRN_FORWARD_MAX_AGE"] = "7x"
        error = self.assertRaises(StartupError, self.parse)
        self.assertTrue(str(error).startswith("cairn: CAIRN_FORWARD_MAX_AGE: "), str(error))
        self.assertNotIn("\n", str(error))

    def test_env_error_not_blamed_on_flag(self):
        """A bad variable is named even when an unrelated flag is given."""
        os.environ["CAIRN_KEEPALIVE_TIMEOUT"] = "10s"
        error = self.assertRaises(StartupError, self.parse, "--max-payload=2KB")
        self.assertTrue(error.problem.startswith("CAIRN_KEEPALIVE_TIMEOUT: "), str(error))

    def test_help_names_variables(self):
        """The help of each flag names its environment variable and default."""
        text = str(tap.Options())
        for variable in ["CAIRN_DATA_DIR", "CAIRN_LISTEN", "CAIRN_MAX_PAYLOAD"]:
            self.assertIn(variable, text)
        self.assertIn("tcp:7400", text)


class FakeServiceModule:
    """Stand in for C{cairn.service} in C{sys.modules} while a test runs."""

    def __init__(self, test):
        self.calls = []
        module = types.ModuleType("cairn.service")
        module.make_node = self.make_node
        previous = sys.modules.get("cairn.service")
        sys.modules["cairn.service"] = module
        test.addCleanup(self.restore, previous)

    def make_node(self, config, reactor, process=None):
        """Record the call and return an empty service."""
        self.calls.append((config, reactor))
        self.process = process
        return MultiService()

    def restore(self, previous):
        """Put back whatever C{cairn.service} was."""
        if previous is None:
            del sys.modules["cairn.service"]
        else:
            sys.modules["cairn.service"] = previous


class MakeServiceTests(unittest.TestCase):
    """makeService builds the Config and hands it to make_node."""

    def test_make_node_called(self):
        """makeService passes the Config and the global reactor to make_node."""
        self.patch(os, "environ", {"CAIRN_DATA_DIR": "/srv/cairn"})
        fake = FakeServiceModule(self)
        # The descriptor limit is raised first (the node's gauge reads it).
        self.patch(fdlimit, "raise_and_say", lambda: fake.calls.append("nofile"))
        options = tap.Options()
        options.parseOptions(["--listen=none"])
        service = tap.makeService(options)
        self.assertIsInstance(service, MultiService)
        first, (config, given_reactor) = fake.calls
        self.assertEqual(first, "nofile")
        self.assertEqual((config.data_dir, config.listen), ("/srv/cairn", None))
        self.assertIs(given_reactor, reactor)
        self.assertTrue(fake.process.freeze_gc)  # the process is the node's

    def test_bad_env(self):
        """A bad variable makes makeService stop with one line naming it."""
        self.patch(os, "environ", {"CAIRN_MAX_PAYLOAD": "lots"})
        fake = FakeServiceModule(self)
        error = self.assertRaises(StartupError, tap.makeService, tap.Options())
        self.assertTrue(error.problem.startswith("CAIRN_MAX_PAYLOAD: "), str(error))
        self.assertEqual(fake.calls, [])

    def test_secret_not_in_error(self):
        """A usage error from a bad variable does not show a secret."""
        self.patch(
            os,
            "environ",
            {"CAIRN_PSK": "psk-SECRET", "CAIRN_MGMT_ENABLED": "perhaps"},
        )
        error = self.assertRaises(StartupError, tap.makeService, tap.Options())
        self.assertNotIn("SECRET", str(error))


class PluginTests(unittest.TestCase):
    """twistd finds the cairn plugin."""

    def plugin(self):
        """The one IServiceMaker named cairn."""
        [plugin] = [p for p in getPlugins(IServiceMaker) if p.tapname == "cairn"]
        return plugin

    def test_discoverable(self):
        """Exactly one service maker is named cairn, with a description."""
        self.assertIn("relay", self.plugin().description)

    def test_options_and_maker(self):
        """The plugin's options and makeService are those of cairn.tap."""
        plugin = self.plugin()
        self.assertIs(plugin.options, tap.Options)
        self.assertIs(plugin.makeService, tap.makeService)
