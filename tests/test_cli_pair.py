"""
C{cairn-server pair}: finding the running node's API and token.
"""

import os
import re

from twisted.trial import unittest

from cairn.cli.pairing_api import PairCommandError, api_url, find_token, pair
from cairn.config import Config


class ApiUrlTests(unittest.TestCase):
    def test_forms(self):
        """Endpoint descriptions become loopback URLs of the same port and scheme."""
        cases = {
            "tcp:9090:interface=127.0.0.1": "http://127.0.0.1:9090",
            "tcp:9090": "http://127.0.0.1:9090",
            "tcp:port=9191:interface=0.0.0.0": "http://127.0.0.1:9191",
            "tcp6:9090:interface=\\:\\:1": "http://[::1]:9090",
            "ssl:9443:privateKey=k.pem": "https://127.0.0.1:9443",
            "ssl:9443:k.pem": "https://127.0.0.1:9443",
            "tcp:9090:10.0.0.5": "http://10.0.0.5:9090",
        }
        for listen, url in cases.items():
            self.assertEqual(api_url(listen), url, listen)

    def test_docstring_examples(self):
        """Each example in api_url's docstring gives the URL it says (IPv6 colons escaped)."""
        text = " ".join(api_url.__doc__.split())
        examples = {}
        for clause in text.split(";"):
            left, arrow, right = clause.partition(" -> C{")
            if arrow:
                for listen in re.findall(r"C\{([^}]+)\}", left):
                    examples[listen] = right.split("}", 1)[0]
        self.assertIn("tcp:9090:interface=\\:\\:1", examples)
        for listen, url in examples.items():
            self.assertEqual(api_url(listen), url, listen)

    def test_unusable(self):
        """A disabled or non-TCP endpoint asks for --url."""
        for listen in (
            None,
            "unix:/run/cairn.sock",
            "tcp:interface=127.0.0.1",
            "tcp:port=x",
            "tcp:9090:interface=::1",  # unescaped: not the IPv6 loopback but a misread string
        ):
            error = self.assertRaises(PairCommandError, api_url, listen)
            self.assertIn("--url", str(error))


class TokenTests(unittest.TestCase):
    def test_configured_token_wins(self):
        """CAIRN_MGMT_TOKEN is used when set."""
        config = Config.from_env({"CAIRN_MGMT_TOKEN": "s3cret", "CAIRN_DATA_DIR": self.mktemp()})
        self.assertEqual(find_token(config), "s3cret")

    def test_generated_token_file(self):
        """Without a configured token, the node's <data dir>/mgmt.token is read."""
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "mgmt.token"), "w") as f:
            f.write("generated-token\n")
        config = Config.from_env({"CAIRN_DATA_DIR": data_dir})
        self.assertEqual(find_token(config), "generated-token")

    def test_missing_token_names_the_file(self):
        """A missing token file gives a one-line error naming it and the variable."""
        data_dir = self.mktemp()
        config = Config.from_env({"CAIRN_DATA_DIR": data_dir})
        error = str(self.assertRaises(PairCommandError, find_token, config))
        self.assertIn(os.path.join(data_dir, "mgmt.token"), error)
        self.assertIn("CAIRN_MGMT_TOKEN", error)
        self.assertNotIn("\n", error)

    def test_unreachable_node(self):
        """When nothing listens, the error says the API could not be reached and never shows the token."""
        environ = {"CAIRN_MGMT_TOKEN": "do-not-print", "CAIRN_DATA_DIR": self.mktemp()}
        error = str(self.assertRaises(PairCommandError, pair, "pin", environ, "http://127.0.0.1:9"))
        self.assertIn("cannot reach", error)
        self.assertNotIn("do-not-print", error)

    def test_bad_config_reported(self):
        """A bad variable is reported as the configuration error line."""
        error = str(self.assertRaises(PairCommandError, pair, "pin", {"CAIRN_MGMT_ENABLED": "perhaps"}))
        self.assertIn("CAIRN_MGMT_ENABLED", error)


class PskCommandTests(unittest.TestCase):
    def test_commands_report_one_line(self):
        """`cairn-server psk rotate|disable` and `pair --id` fail in one line on stderr when the node is unreachable."""
        import io
        import sys

        from cairn import cli

        for argv in (["psk", "rotate"], ["psk", "disable"], ["pair", "--id"]):
            stderr = io.StringIO()
            self.patch(sys, "stderr", stderr)
            self.patch(os, "environ", {"CAIRN_MGMT_TOKEN": "do-not-print", "CAIRN_DATA_DIR": self.mktemp()})
            self.assertEqual(cli.main([*argv, "--url", "http://127.0.0.1:9"]), 1)
            self.assertEqual(len(stderr.getvalue().splitlines()), 1, stderr.getvalue())
            self.assertIn("cannot reach", stderr.getvalue())
            self.assertNotIn("do-not-print", stderr.getvalue())


class TokenFileTests(unittest.TestCase):
    """`cairn-server pair` and `psk` take --token-file, as the other admin commands do."""

    def setUp(self):
        from cairn.cli import pairing_api

        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write("from-the-file\n")
        self.tokens = []

        def call(url, token, method, path, timeout=10.0, body=None):
            self.tokens.append(token)
            return {}, b'{"node_peer_id": "QmNode", "psk": "new", "expires_at": null}'

        self.patch(pairing_api, "call", call)
        self.patch(os, "environ", {"CAIRN_MGMT_TOKEN": "from-the-environment", "CAIRN_DATA_DIR": self.mktemp()})

    def test_token_from_the_file(self):
        """The file's token is sent, not the environment's."""
        from cairn import cli

        self.assertEqual(cli.main(["pair", "--id", "--url", "http://127.0.0.1:9", "--token-file", self.path]), 0)
        self.assertEqual(cli.main(["psk", "disable", "--url", "http://127.0.0.1:9", "--token-file", self.path]), 0)
        self.assertEqual(set(self.tokens), {"from-the-file"})

    def test_unreadable_file_in_one_line(self):
        """A missing or empty token file: one line naming it, exit status 1."""
        import io
        import sys

        from cairn import cli

        empty = os.path.abspath(self.mktemp())
        open(empty, "w").close()
        for path, why in ((self.path + ".missing", "cannot read the token file"), (empty, "is empty")):
            stderr = io.StringIO()
            self.patch(sys, "stderr", stderr)
            self.assertEqual(cli.main(["pair", "--pin", "--url", "http://127.0.0.1:9", "--token-file", path]), 1)
            self.assertEqual(len(stderr.getvalue().splitlines()), 1, stderr.getvalue())
            self.assertIn(why, stderr.getvalue())
            self.assertIn(path, stderr.getvalue())
        self.assertEqual(self.tokens, [])
