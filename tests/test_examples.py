"""
examples/README.md run as printed against a real node: each C{sh} block's
lines in order in a fresh directory, each C{text} block's lines expected in
the output of the block before it (C{Qm…} stands for a peer id).

Substitutions, by plain string replacement, as in L{tests.test_walkthrough}:
C{.venv/bin/python} becomes C{sys.executable} (with C{PYTHONPATH} the
checkout), C{examples/} the checkout's examples directory, and the node's
address the test node's; the node line itself is replaced by
L{start_twistd} with the C{CAIRN_PSK} the C{export} line made.
"""

import os
import re
import shlex
import sys

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests._harness import eventually
from tests.test_twistd import REPO, kill_at_end, start_twistd
from tests.test_walkthrough import ASSIGNMENT, README_ADDRESS, Background

EXAMPLES = os.path.join(REPO, "examples")
PEER_ID = r"Qm[1-9A-HJ-NP-Za-km-z]{44}"


def blocks(text):
    """[(kind, [lines])] of the fenced code blocks of C{text}."""
    return [(kind, body.strip("\n").splitlines()) for kind, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S)]


class ExamplesTests(unittest.TestCase):
    timeout = 180

    def substitute(self, line):
        python = shlex.quote(sys.executable)
        line = line.replace(".venv/bin/python ", f"{python} ")
        line = line.replace(" examples/", f" {shlex.quote(EXAMPLES)}/")
        return line.replace(README_ADDRESS, self.server) if self.server else line

    @defer.inlineCallbacks
    def shell(self, line):
        from twisted.internet import utils

        out, err, code = yield utils.getProcessOutputAndValue("/bin/sh", ["-c", line], env=self.env, path=self.home)
        self.assertEqual(code, 0, f"{line}\n{out.decode()}{err.decode()}")
        return out.decode()

    @defer.inlineCallbacks
    def run_block(self, lines):
        """Run one sh block; fires with everything it printed (background commands' output once they ended)."""
        output, background = "", []
        for printed in lines:
            line = self.substitute(printed)
            if "twistd" in printed:
                self.assertTrue(self.env.get("CAIRN_PSK"), "the PSK is exported before the node starts")
                self.node = start_twistd(self.data_dir, CAIRN_PSK=self.env["CAIRN_PSK"])
                self.addCleanup(kill_at_end, self.node)
                ports = yield eventually(self.node.listening, 60)
                self.server = f"tcp:host=127.0.0.1:port={ports['tcp']}"
                continue
            self.assertNotIn(README_ADDRESS, line, "a command ran before the node line")
            if line.endswith("&"):
                proc = Background()
                argv = ["/bin/sh", "-c", "exec " + line[:-1]]
                reactor.spawnProcess(proc, "/bin/sh", argv, env=self.env, path=self.home)
                self.addCleanup(kill_at_end, proc)
                yield eventually(proc.first_line, 60)
                background.append(proc)
                continue
            assignment = ASSIGNMENT.match(line)
            if assignment:
                name = assignment.group(1)
                self.env[name] = yield self.shell(f'set -e\n{line}\nprintf %s "${name}"')
            else:
                output += yield self.shell(line)
        for proc in background:
            code, text = yield eventually(proc.ended, 60)
            self.assertEqual(code, 0, text)
            output += text
        return output

    @defer.inlineCallbacks
    def test_examples_as_printed(self):
        """Every example of examples/README.md runs as printed and prints what the README shows."""
        with open(os.path.join(EXAMPLES, "README.md"), encoding="utf-8") as f:
            found = blocks(f.read())
        self.data_dir = os.path.abspath(self.mktemp())
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.env = dict(os.environ, PYTHONPATH=REPO)
        self.env.pop("CAIRN_PSK", None)
        self.server, self.node = None, None
        checked, output = 0, ""
        for kind, lines in found:
            if kind == "sh":
                output = yield self.run_block(lines)
            elif kind == "text":
                for expected in lines:
                    pattern = re.escape(expected).replace(re.escape("Qm…"), PEER_ID)
                    self.assertRegex(output, "(?m)^" + pattern + "$")
                checked += 1
        self.assertEqual(checked, 3)
        self.assertIsNotNone(self.node)
        for name in ("mailbox_chat.py", "sync_subscriber.py", "relay_echo.py"):
            self.assertTrue(any(name in " ".join(lines) for _, lines in found), name)
        self.node.transport.signalProcess("TERM")
        yield eventually(self.node.ended, 60)
        self.assertNotIn("Traceback", "".join(self.node.output))
