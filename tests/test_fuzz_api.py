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
#: The run's own bound (bench/schemathesis_run.py --deadline), well inside
#: trial's 120 s: on a machine too loaded to finish, the run stops its
#: children and fails with a [deadline] line instead of being cut off.
DEADLINE = 90
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
        # Without the token every operation stops at the token check before
        # its parameters or body are read: the coverage phase's variations
        # would reach no other code there (routing's answers to them do not
        # depend on the token, and the run with it covers them).
        argv = [sys.executable, "-m", "bench.schemathesis_run", "--max-examples", "2", "--phases", "examples,coverage"]
        argv += ["--unauthenticated-phases", "examples", "--deadline", str(DEADLINE)]
        process = reactor.spawnProcess(proc, sys.executable, argv, env=dict(os.environ, PYTHONPATH=REPO), path=REPO)
        self.addCleanup(lambda: proc.ended.called or process.signalProcess("KILL"))
        code = yield eventually(proc.ended, DEADLINE + 15)
        output = b"".join(proc.output).decode("utf-8", "replace")
        self.assertEqual(code, 0, output[-4000:])
        self.assertIn("[with token] exit 0", output)
        self.assertIn("[without token] exit 0", output)
        self.assertRegex(output, r"\[401 check\] \d+ protected operations, 3 requests each: 0 failures")
        self.assertIn("[node log] 0 tracebacks", output)
