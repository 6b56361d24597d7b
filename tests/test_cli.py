"""Tests for L{cairn.cli}, the C{cairn-server} command."""

import io
import os
import sys

from twisted.scripts import twistd
from twisted.trial import unittest

import cairn
from cairn import cli


class MainTests(unittest.TestCase):
    """cairn-server runs the twistd plugin in the foreground."""

    def setUp(self):
        self.patch(os, "environ", {})
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.twistd_argv = []
        self.patch(cli, "_twistd", self.fake_twistd)

    def fake_twistd(self, argv):
        """Record what would be handed to twistd."""
        self.twistd_argv.append(argv)
        return 0

    def test_no_command_runs(self):
        """Without a command, cairn-server runs twistd cairn in the foreground."""
        self.assertEqual(cli.main([]), 0)
        self.assertEqual(self.twistd_argv, [["--nodaemon", "--pidfile=", "cairn"]])

    def test_run_passes_options(self):
        """The words after run are handed to the cairn plugin unchanged."""
        self.assertEqual(cli.main(["run", "--listen", "none", "--max-payload=2KB"]), 0)
        self.assertEqual(
            self.twistd_argv,
            [
                [
                    "--nodaemon",
                    "--pidfile=",
                    "cairn",
                    "--listen",
                    "none",
                    "--max-payload=2KB",
                ]
            ],
        )

    def test_bad_env(self):
        """A bad variable is reported in one line and twistd is not started."""
        os.environ["CAIRN_FORWARD_MAX_AGE"] = "7x"
        self.assertEqual(cli.main(["run"]), 2)
        self.assertEqual(self.twistd_argv, [])
        expected = (
            "cairn-server run: CAIRN_FORWARD_MAX_AGE: '7x' is not a duration "
            "(use e.g. 30s, 15m, 12h, 7d, 2w, or plain seconds)\n"
        )
        self.assertEqual(self.stderr.getvalue(), expected)

    def test_bad_flag(self):
        """A bad flag is reported in one line naming it, and twistd is not started."""
        self.assertEqual(cli.main(["run", "--max-payload=7x"]), 2)
        self.assertEqual(self.twistd_argv, [])
        self.assertIn("--max-payload: ", self.stderr.getvalue())

    def test_version(self):
        """--version prints the package version and exits successfully."""
        error = self.assertRaises(SystemExit, cli.main, ["--version"])
        self.assertEqual(error.code, 0)
        self.assertIn(cairn.__version__, self.stdout.getvalue())

    def test_help_lists_run(self):
        """--help lists the run command."""
        error = self.assertRaises(SystemExit, cli.main, ["--help"])
        self.assertEqual(error.code, 0)
        self.assertIn("run", self.stdout.getvalue())

    def test_run_help(self):
        """run --help shows the plugin's flags and their variables."""
        error = self.assertRaises(SystemExit, cli.main, ["run", "--help"])
        self.assertEqual(error.code, 0)
        self.assertIn("CAIRN_MAX_PAYLOAD", self.stdout.getvalue())
        self.assertEqual(self.twistd_argv, [])

    def test_run_help_lists_every_setting(self):
        """run --help lists every CAIRN_* variable with its default."""
        import attr

        from cairn.config import Config

        self.assertRaises(SystemExit, cli.main, ["run", "--help"])
        text = self.stdout.getvalue()
        for field in attr.fields(Config):
            self.assertIn(Config.variable(field.name), text)
        self.assertRegex(text, r"CAIRN_FORWARD_MAX_AGE +604800s")

    def test_run_version_is_cairns(self):
        """run --version prints cairn's version, not only Twisted's."""
        error = self.assertRaises(SystemExit, cli.main, ["run", "--version"])
        self.assertEqual(error.code, 0)
        self.assertTrue(self.stdout.getvalue().startswith(f"cairn-server {cairn.__version__} (Twisted "))
        self.assertEqual(self.twistd_argv, [])

    def test_unknown_command(self):
        """An unknown command is a usage error."""
        error = self.assertRaises(SystemExit, cli.main, ["frobnicate"])
        self.assertEqual(error.code, 2)


class TwistdTests(unittest.TestCase):
    """The twistd arguments select the cairn plugin in the foreground."""

    def test_twistd_options(self):
        """twistd is configured for the cairn plugin, no daemon and no pid file."""
        self.patch(os, "environ", {})
        configs = []
        self.patch(twistd, "runApp", configs.append)
        self.assertEqual(
            cli._twistd(["--nodaemon", "--pidfile=", "cairn", "--listen=none"]), 0
        )
        [config] = configs
        self.assertEqual(config.subCommand, "cairn")
        self.assertTrue(config["nodaemon"])
        self.assertEqual(config["pidfile"], "")
        self.assertEqual(config.subOptions["listen"], "none")

    def test_twistd_usage_error(self):
        """A twistd usage error is reported in one line with status 2."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(twistd, "runApp", self.fail)
        self.assertEqual(cli._twistd(["--nodaemon", "no-such-plugin"]), 2)
        self.assertIn("Unknown command: no-such-plugin", stderr.getvalue())
        self.assertEqual(len(stderr.getvalue().splitlines()), 1)
