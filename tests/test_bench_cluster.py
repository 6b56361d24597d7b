"""
Smoke test of C{bench/cluster.py}: a tiny run (2 real nodes, 3 NATS)
prints every figure line. Nothing here asserts a speed.
"""

import os
import sys

from twisted.internet import utils
from twisted.trial import unittest

from tests._nats import nats_server_binary

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LINES = (
    "cross-node delivery latency (20 x 1 KiB, one at a time): p50 ",
    "same-node delivery latency (anchor): p50 ",
    "raw nats-py publish-with-ack + direct get, one at a time, same R3 cluster (anchor): p50 ",
    "(target <= 5 ms); ratio cross/same p50 = ",
    "p50 ratios to the raw anchor: cross ",
    "scaling ratio spread/one = ",
    "relay attached (1.0 MiB, median of 1): across nodes ",
    "relay RelayData (1.0 MiB, median of 1): across nodes ",
    "ceiling for RelayData across nodes: one node's round trip (window's chunks / rate) ",
)


class ClusterBenchTests(unittest.TestCase):
    timeout = 600

    def test_quick_run_prints_every_figure(self):
        """bench.cluster --quick starts and stops its processes and prints latency, scaling and relay lines."""
        nats_server_binary()  # skips without nats-server, except under CI
        d = utils.getProcessOutputAndValue(
            sys.executable, ["-m", "bench.cluster", "--quick"], env=dict(os.environ), path=REPO_ROOT
        )

        def check(result):
            out, err, code = result
            output = out.decode("utf-8")
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            for text in LINES:
                self.assertIn(text, output)
            if os.path.exists(f"/proc/{os.getpid()}/stat"):
                self.assertIn("nodes' CPU for relay RelayData (both nodes, median): across nodes ", output)
                self.assertRegex(
                    output, r"all processes' CPU for relay RelayData \(median, ms/MiB\): across nodes \d+\.\d \(NATS "
                )
            # The single-node circuits are the anchors: they must give a figure.
            for line in output.splitlines():
                if line.startswith("relay "):
                    self.assertRegex(line, r"one node \d+\.\d MiB/s")

        return d.addCallback(check)

    def test_relay_only_with_another_chunk(self):
        """--relay-only skips the enqueue rates; --chunk sets the RelayData circuits' message size."""
        nats_server_binary()
        d = utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "bench.cluster", "--quick", "--relay-only", "--chunk", "32768"],
            env=dict(os.environ),
            path=REPO_ROOT,
        )

        def check(result):
            out, err, code = result
            output = out.decode("utf-8")
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            self.assertNotIn("enqueue (", output)
            self.assertIn("; Data messages of 32,768 B", output)
            self.assertIn("ceiling for RelayData across nodes: ", output)

        return d.addCallback(check)

    def test_another_window(self):
        """
        --window sets W in both nodes and the bench's clients alike: a
        RelayData circuit sends more than the protocol's W ahead and is not
        closed for it.
        """
        nats_server_binary()
        d = utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "bench.cluster", "--quick", "--relay-only", "--window", str(1024 * 1024)],
            env=dict(os.environ),
            path=REPO_ROOT,
        )

        def check(result):
            out, err, code = result
            output = out.decode("utf-8")
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            self.assertRegex(
                output, r"relay RelayData \(1\.0 MiB, median of 1\): across nodes \d+\.\d MiB/s, one node \d"
            )
            self.assertIn("ceiling for RelayData across nodes: ", output)

        return d.addCallback(check)

    def test_window_too_small(self):
        """A --window that cannot hold the bench's Data messages is refused in one line."""
        d = utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "bench.cluster", "--quick", "--window", "1000"],
            env=dict(os.environ),
            path=REPO_ROOT,
        )

        def check(result):
            out, err, code = result
            self.assertEqual(code, 2)
            self.assertIn(b"--window must hold at least four Data messages", err)
            self.assertNotIn(b"Traceback", err)

        return d.addCallback(check)
