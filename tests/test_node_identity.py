"""
One identity for several nodes (CAIRN_IDENTITY_FILE) and each node's
name (CAIRN_NODE_NAME): checked at start-up, one line per problem.
"""

import os

from twisted.internet import reactor
from twisted.trial import unittest

from cairn.config import Config, ConfigError
from cairn.crypto.identity import Identity
from cairn.service import StartupError, make_node
from tests.test_service import config_for


class IdentityFileTests(unittest.TestCase):
    def setUp(self):
        self.secrets = os.path.abspath(self.mktemp())
        os.makedirs(self.secrets)
        self.identity = Identity.generate()
        self.path = os.path.join(self.secrets, "identity.key")
        with open(self.path, "wb") as f:
            f.write(bytes(self.identity.signing_key))
        os.chmod(self.path, 0o600)

    def start(self, path=None):
        return make_node(config_for(os.path.abspath(self.mktemp()), identity_file=path or self.path), reactor)

    def problem(self, path=None):
        with self.assertRaises(StartupError) as caught:
            self.start(path)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("cairn: CAIRN_IDENTITY_FILE: "), message)
        return message

    def test_two_nodes_one_identity(self):
        """Two nodes with their own data directories and one key file are one peer; no key is written to either."""
        first, second = self.start(), self.start()
        self.assertEqual(first.peer.peer_id, self.identity.peer_id)
        self.assertEqual(second.peer.peer_id, self.identity.peer_id)
        for node in (first, second):
            self.assertFalse(os.path.exists(os.path.join(node.config.data_dir, "identity.key")))

    def test_missing_file_is_not_created(self):
        """A missing key file stops start-up with one line saying how to make one; nothing is created."""
        missing = os.path.join(self.secrets, "nope.key")
        message = self.problem(missing)
        self.assertIn("does not exist", message)
        self.assertFalse(os.path.exists(missing))

    def test_open_to_others_refused(self):
        """A key file readable by other users is refused, with the chmod that fixes it."""
        os.chmod(self.path, 0o644)
        message = self.problem()
        self.assertIn("chmod 600", message)

    def test_not_a_seed(self):
        """A file that is not a 32-byte seed is one line, without its content."""
        with open(self.path, "wb") as f:
            f.write(b"secret-ish content that is no key")
        message = self.problem()
        self.assertIn("32-byte", message)
        self.assertNotIn("secret-ish", message)

    def test_directory_is_unreadable_as_key(self):
        """A path that cannot be read as a file (a directory) is one line."""
        self.assertIn("cannot read", self.problem(self.secrets))


class NodeNameTests(unittest.TestCase):
    def test_default_is_a_valid_name(self):
        """The default (from the host name) passes the validation."""
        config = Config.from_env({})
        self.assertEqual(Config.from_env({"CAIRN_NODE_NAME": config.node_name}).node_name, config.node_name)

    def test_subject_unsafe_names_refused(self):
        """Names that would break a NATS subject or KV key are refused, naming the variable."""
        for bad in ("a.b", "a b", "*", ">", "-x", "x" * 33, "é"):
            with self.assertRaises(ConfigError) as caught:
                Config.from_env({"CAIRN_NODE_NAME": bad})
            self.assertTrue(str(caught.exception).startswith("CAIRN_NODE_NAME: "), bad)

    def test_node_knows_its_name(self):
        """The node's presence and bus carry its name."""
        node = make_node(config_for(os.path.abspath(self.mktemp()), node_name="node-7"), reactor)
        self.assertEqual((node.presence.node, node.bus.node), ("node-7", "node-7"))
