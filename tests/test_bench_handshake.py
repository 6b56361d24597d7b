"""
Smoke tests of the handshake bench's tools: one transport alone, the
callgrind child run natively, and the profile read by piece. Nothing here
asserts a speed.
"""

import os

from twisted.trial import unittest

from tests.test_bench import RunsBench


class HandshakeToolsTests(RunsBench, unittest.TestCase):
    timeout = 120

    def test_one_transport(self):
        """--transport tcp measures TCP alone."""
        d = self.run_bench("bench.handshake", "--count", "4", "--bare-count", "10", "--transport", "tcp")

        def check(output):
            self.assertIn("handshake: cairn over TCP ", output)
            self.assertNotIn("WebSocket", output)

        return d.addCallback(check)

    def test_instructions_child_runs_every_case(self):
        """bench.handshake_instructions' measured process (run natively here) completes each case."""
        d = None
        for transport in ("tcp", "websocket", "bare"):
            run = lambda _=None, t=transport: self.run_bench(  # noqa: E731
                "bench.handshake_instructions", "--child", t, "3"
            )
            d = run() if d is None else d.addCallback(run)
        return d

    def test_instructions_parses_callgrind_total(self):
        """The callgrind total is read from valgrind's summary line."""
        import subprocess

        from bench import _common, handshake_instructions

        def fake_run(argv, capture_output, text):
            self.assertEqual(argv[-3:], ["--child", "tcp", "10"])
            return subprocess.CompletedProcess(argv, 0, "", "==1== Events    : Ir\n==1== Collected : 654321\n")

        self.patch(_common.subprocess, "run", fake_run)
        self.assertEqual(handshake_instructions._instructions("tcp", 10), 654321)

    def test_pieces_of_a_node_profile(self):
        """A profile of the node over WebSocket is read by piece, with shares and microseconds."""
        profile = os.path.abspath(self.mktemp())
        d = self.run_bench(
            "bench.handshake",
            "--count",
            "4",
            "--bare-count",
            "10",
            "--transport",
            "websocket",
            env={"CAIRN_BENCH_SERVER_PROFILE": profile},
        )
        d.addCallback(lambda _: self.run_bench("bench.handshake_pieces", profile, "5", "--cpu-us", "1000"))

        def check(output):
            lines = output.splitlines()
            self.assertTrue(lines[0].startswith("reactor: all socket and timer work"))
            self.assertIn("100.0%", lines[0])
            self.assertTrue(any(line.startswith("WebSocket: HTTP upgrade") for line in lines), output)
            self.assertTrue(any(line.startswith("HandshakeInit in") for line in lines), output)

        return d.addCallback(check)
