"""
The management API harness (bench/schemathesis_run.py) with a small
budget: a real node in a child process on 127.0.0.1, schemathesis with
and without the token, and the 401 check of every protected operation.
Skipped when schemathesis (the "fuzz" extra) is not installed.
"""

import os
import shutil
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial import unittest

from tests._harness import eventually

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMATHESIS = shutil.which("schemathesis", path=os.path.dirname(sys.executable))


class _Collect(ProcessProtocol):
    def __init__(self):
        self.output = []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class SchemathesisHarnessTests(unittest.TestCase):
    if SCHEMATHESIS is None:
        skip = "schemathesis is not installed (pip install '.[fuzz]')"

    @defer.inlineCallbacks
    def test_small_budget_finds_nothing(self):
        """A small run finds no failure with or without the token, and every protected operation is 401 without it."""
        proc = _Collect()
        argv = [sys.executable, "-m", "bench.schemathesis_run", "--max-examples", "2", "--phases", "examples,coverage"]
        reactor.spawnProcess(proc, sys.executable, argv, env=dict(os.environ, PYTHONPATH=REPO), path=REPO)
        code = yield eventually(proc.ended, 240)
        output = b"".join(proc.output).decode("utf-8", "replace")
        self.assertEqual(code, 0, output[-4000:])
        self.assertIn("[with token] exit 0", output)
        self.assertIn("[without token] exit 0", output)
        self.assertRegex(output, r"\[401 check\] \d+ protected operations, 3 requests each: 0 failures")
        self.assertIn("[node log] 0 tracebacks", output)
