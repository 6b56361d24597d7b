"""
README.rst's "Getting started" walkthrough, run as printed against a real
node.

The commands are the literal blocks of that section, read from README.rst
at test time, one shell line each, run in order with C{/bin/sh -c} in a
fresh directory (so C{phone.key} and C{laptop.key} land there). Only these
substitutions are made, by plain string replacement:

 - C{.venv/bin/python} becomes C{sys.executable}, and
   C{.venv/bin/cairn-mailbox} / C{.venv/bin/cairn-relay} become
   C{sys.executable -m cairn.cli.mailbox} / C{-m cairn.cli.relay} (with
   C{PYTHONPATH} set to the checkout), as the package is not installed;
 - C{tcp:host=127.0.0.1:port=7400} becomes the test node's address, and
   C{./cairn-data} a temporary data directory;
 - the README's server line (the one running C{twistd}) is replaced by
   L{start_twistd} on 127.0.0.1 port 0, with the C{CAIRN_PSK} the README's
   preceding C{export} line produced.

A line C{NAME=...} (or C{export NAME=...}) is run by the shell and
C{$NAME} kept for the following lines, as one shell session would. A
line ending in C{&} runs in the background; the test waits for its first
output line (C{listening as ...}) before going on, and for its exit at
the end.
"""

import os
import re
import shlex
import sys

from twisted.internet import defer, protocol, reactor, utils
from twisted.trial import unittest

from tests._harness import eventually
from tests.test_twistd import REPO, start_twistd

README = os.path.join(REPO, "README.rst")
README_ADDRESS = "tcp:host=127.0.0.1:port=7400"
PEER_ID = re.compile(r"^Qm[1-9A-HJ-NP-Za-km-z]{44}$")
ASSIGNMENT = re.compile(r"^(?:export )?([A-Z_][A-Z0-9_]*)=")


def walkthrough_commands(text):
    """The lines of the literal blocks of the "Getting started" section of C{text}."""
    start = text.index("Getting started\n---------------\n")
    end = re.search(r"\n[^\n]+\n-{3,}\n", text[start + 32 :])
    section = text[start : start + 32 + end.start()] if end else text[start:]
    commands, in_block = [], False
    for line in section.splitlines():
        if in_block:
            if line.startswith("    "):
                commands.append(line.strip())
                continue
            if line.strip():
                in_block = False
        if line.rstrip().endswith("::"):
            in_block = True
    return commands


class Background(protocol.ProcessProtocol):
    """A background command: fires C{first_line} with its first output line, C{ended} with (status, output)."""

    def __init__(self):
        self.output = ""
        self.first_line = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data.decode("utf-8", "replace")
        if "\n" in self.output and not self.first_line.called:
            self.first_line.callback(self.output.split("\n", 1)[0])

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.first_line.called:
            self.first_line.errback(RuntimeError("ended without output:\n" + self.output))
        self.ended.callback((reason.value.exitCode, self.output))


class WalkthroughTests(unittest.TestCase):
    timeout = 120

    def _kill(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("KILL")
            return proc.ended.addErrback(lambda f: None)

    def substitute(self, line, server):
        python = shlex.quote(sys.executable)
        line = line.replace(".venv/bin/python ", f"{python} ")
        for name in ("mailbox", "relay"):
            line = line.replace(f".venv/bin/cairn-{name} ", f"{python} -m cairn.cli.{name} ")
        line = line.replace("./cairn-data", shlex.quote(self.data_dir))
        if server is not None:
            line = line.replace(README_ADDRESS, server)
        return line

    @defer.inlineCallbacks
    def shell(self, line):
        out, err, code = yield utils.getProcessOutputAndValue("/bin/sh", ["-c", line], env=self.env, path=self.home)
        self.assertEqual(code, 0, f"{line}\n{err.decode()}")
        return out.decode()

    @defer.inlineCallbacks
    def test_getting_started(self):
        """Every command of README's "Getting started" works as printed and does what the text says."""
        with open(README, encoding="utf-8") as f:
            commands = walkthrough_commands(f.read())
        self.assertGreaterEqual(len(commands), 7, commands)
        self.data_dir = os.path.abspath(self.mktemp())
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.env = dict(os.environ, PYTHONPATH=REPO)
        self.env.pop("CAIRN_PSK", None)
        server, node = None, None
        ran = []  # (README line, output)
        background = []

        for readme_line in commands:
            line = self.substitute(readme_line, server)
            if "twistd" in readme_line:
                self.assertEqual(
                    readme_line, "CAIRN_DATA_DIR=./cairn-data .venv/bin/twistd -n --logfile=cairn.log cairn &"
                )
                self.assertTrue(self.env.get("CAIRN_PSK"), "the PSK is exported before the server starts")
                node = start_twistd(self.data_dir, CAIRN_PSK=self.env["CAIRN_PSK"])
                self.addCleanup(self._kill, node)
                ports = yield eventually(node.listening, 60)
                server = f"tcp:host=127.0.0.1:port={ports['tcp']}"
                continue
            self.assertNotIn(README_ADDRESS, line, "a command ran before the server line")
            if line.endswith("&"):
                proc = Background()
                reactor.spawnProcess(
                    proc, "/bin/sh", ["/bin/sh", "-c", "exec " + line[:-1]], env=self.env, path=self.home
                )
                self.addCleanup(self._kill, proc)
                first = yield eventually(proc.first_line, 30)
                background.append((readme_line, first, proc))
                continue
            assignment = ASSIGNMENT.match(line)
            if assignment:
                name = assignment.group(1)
                # set -e: a failing $(command) fails the step.
                value = yield self.shell(f'set -e\n{line}\nprintf %s "${name}"')
                self.env[name] = value
                ran.append((readme_line, value))
            else:
                ran.append((readme_line, (yield self.shell(line))))

        self.assertIsNotNone(node, "the walkthrough starts a server")
        self.assertEqual(len(self.env["CAIRN_PSK"]), 32)

        # Pairing by PSK: each whoami printed a peer id, and both devices are paired.
        phone, laptop = self.env.get("PHONE", ""), self.env.get("LAPTOP", "")
        self.assertRegex(phone, PEER_ID)
        self.assertRegex(laptop, PEER_ID)
        self.assertNotEqual(phone, laptop)
        self.assertEqual(os.stat(os.path.join(self.home, "phone.key")).st_mode & 0o777, 0o600)

        # A message to the offline laptop, then received when it connects.
        sends = [(line, out) for line, out in ran if "cairn-mailbox" in line and " send " in line]
        self.assertEqual(len(sends), 1)
        send_line, send_out = sends[0]
        text = shlex.split(send_line)[-1]
        self.assertIn("stored on the node as", send_out)
        receives = [out for line, out in ran if "cairn-mailbox" in line and line.endswith(" receive")]
        self.assertEqual(len(receives), 1)
        self.assertIn(f"{phone}: {text}\n", receives[0])

        # The relay circuit: the phone's send printed the echo, the laptop printed the text and exited.
        relays = [(line, out) for line, out in ran if "cairn-relay" in line and " send " in line]
        self.assertEqual(len(relays), 1)
        relay_line, relay_out = relays[0]
        relay_text = shlex.split(relay_line)[-1]
        self.assertEqual(relay_out, relay_text + "\n")
        self.assertEqual(len(background), 1)
        _, first, listener = background[0]
        self.assertEqual(first, f"listening as {laptop}")
        code, output = yield eventually(listener.ended, 30)
        self.assertEqual(code, 0, output)
        self.assertIn(f"{phone}: {relay_text}\n", output)

        node.transport.signalProcess("TERM")
        yield eventually(node.ended, 60)
