"""
Smoke tests of the benches: each runs with tiny counts in a subprocess and
prints its ratio lines. Nothing here asserts a speed.
"""

import os
import sys

from twisted.internet import utils
from twisted.trial import unittest

from bench._common import LOCAL_ENDPOINT, node_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HANDSHAKE_LINES = (
    "handshake: cairn over TCP ",
    "(target >= 0.7)",
    "handshake: cairn over WebSocket ",
)
DATA_LINES = (
    "data: cairn over TCP ",
    "bare Twisted TCP",
    "ChaCha20-Poly1305 seal+open",
    "data echo: cairn over TCP ",
    "data: cairn over WebSocket ",
    "bare autobahn WebSocket",
    "data echo: cairn over WebSocket ",
)


class RunsBench:
    """For the bench tests: run a bench module as a process, as a user would."""

    def run_bench(self, module, *args, env=None):
        """Run C{python -m module args} from the repository root; fire with its stdout (stderr must be empty)."""
        d = utils.getProcessOutputAndValue(
            sys.executable, ["-m", module, *args], env={**os.environ, **(env or {})}, path=REPO_ROOT
        )

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            self.assertEqual(err, b"", err.decode("utf-8", "replace"))  # the whole of it, not a shortened repr
            return out.decode("utf-8")

        return d.addCallback(check)


class BenchTests(RunsBench, unittest.TestCase):
    timeout = 60

    def assertRatioLines(self, output, expected):
        for text in expected:
            lines = [line for line in output.splitlines() if text in line]
            self.assertTrue(lines, f"no line with {text!r} in:\n{output}")
            if text.startswith(("handshake:", "data:", "data echo:")):
                self.assertIn("ratio X/Y = ", lines[0])

    def test_pairing_prints_ratio(self):
        """The pairing bench prints the node's CPU per PSK PairRequest against a bare handshake."""
        d = self.run_bench("bench.pairing", "--quick")
        return d.addCallback(lambda output: self.assertIn("ratio PairRequest/handshake = ", output))

    def test_handshake_prints_ratios(self):
        """The handshake bench prints its TCP and WebSocket ratios against bare noiseprotocol."""
        d = self.run_bench("bench.handshake", "--quick", "--count", "8", "--bare-count", "20")
        return d.addCallback(self.assertRatioLines, HANDSHAKE_LINES)

    def test_data_prints_ratios(self):
        """The data bench prints one-way and echo ratios for both transports."""
        d = self.run_bench(
            "bench.data", "--quick", "--messages", "100", "--roundtrips", "10", "--aead-count", "100"
        )
        return d.addCallback(self.assertRatioLines, DATA_LINES)

    def test_run_prints_every_ratio(self):
        """C{bench.run} runs both benches and prints all their ratio lines."""
        d = self.run_bench(
            "bench.run", "--quick", "--handshakes", "8", "--messages", "100", "--roundtrips", "10"
        )
        return d.addCallback(self.assertRatioLines, HANDSHAKE_LINES + DATA_LINES)

    def test_breakdown_prints_both_sections(self):
        """The breakdown prints the per-handshake and per-message costs."""
        d = self.run_bench("bench.breakdown", "--quick")

        def check(output):
            self.assertIn("== per handshake ==", output)
            self.assertIn("== per 1 KiB Data message ==", output)
            self.assertIn("ping-pong", output)

        return d.addCallback(check)

    def test_instructions_child_runs_every_case(self):
        """bench.instructions' measured process (run natively here) completes each transport and pattern."""
        d = None
        for transport in ("tcp", "websocket", "bare_tcp"):
            for pattern in ("one-way", "echo"):
                args = ("--child", transport, pattern, "5")
                run = lambda _=None, a=args: self.run_bench("bench.instructions", *a)  # noqa: E731
                d = run() if d is None else d.addCallback(run)
        return d

    def test_instructions_parses_callgrind_total(self):
        """The callgrind total is read from valgrind's summary line."""
        import subprocess

        from bench import _common, instructions

        def fake_run(argv, capture_output, text):
            out = argv[2].split("=", 1)[1]
            self.assertTrue(out.endswith("callgrind.out"))
            return subprocess.CompletedProcess(argv, 0, "", "==1== Events    : Ir\n==1== Collected : 123456\n")

        self.patch(_common.subprocess, "run", fake_run)
        self.assertEqual(instructions._instructions("tcp", "one-way", 10), 123456)


class NodeConfigTests(unittest.TestCase):
    def test_loopback_listeners(self):
        """The bench node listens on 127.0.0.1 port 0 for TCP and WebSocket, nothing else."""
        config = node_config(self.mktemp())
        self.assertEqual(config.listen, LOCAL_ENDPOINT)
        self.assertEqual(config.ws_listen, LOCAL_ENDPOINT)
        self.assertIsNone(config.mgmt_listen)
        self.assertIn("interface=127.0.0.1", LOCAL_ENDPOINT)


class ServerProcessTests(unittest.TestCase):
    def test_no_answer_is_reported(self):
        """A bench server that exits without its ports is a ServerError naming the exit code (was an AttributeError)."""
        import subprocess

        from bench._common import ServerError, ServerProcess

        server = ServerProcess(timeout=30.0)
        server._process = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.exit(3)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        with self.assertRaises(ServerError) as raised:
            server._read()
        self.assertIn("exit code 3", str(raised.exception))

    def test_bare_child_runs_autobahn_as_shipped(self):
        """
        The anchors' child serves the bare servers with cairn's autobahn
        patches absent (it imports no cairn module); the node's child has
        them. (The anchor was served next to the node before: 40 % faster
        than autobahn as shipped.)
        """
        from bench._common import ServerProcess

        for bare, names in ((True, {"bare_tcp", "bare_websocket"}), (False, {"tcp", "websocket"})):
            server = ServerProcess(timeout=60.0, bare=bare)
            self.addCleanup(server.stop)
            ports = server.start()
            self.assertEqual(set(ports), names)
            server._process.stdin.write(b"cpu\n")
            server._process.stdin.flush()
            self.assertIn("cpu", server._read())

    def test_bare_child_with_the_patches_refused(self):
        """A bare child reporting cairn's patches in it is an error, not a silently faster anchor."""
        import subprocess

        from bench._common import ServerError, ServerProcess

        real = subprocess.Popen
        line = '{"bare_tcp": 1, "bare_websocket": 2, "autobahn_patched": true}'
        child = [sys.executable, "-c", f"print({line!r}); import sys; sys.stdin.read()"]
        self.patch(subprocess, "Popen", lambda argv, **kwargs: real(child, **kwargs))
        server = ServerProcess(timeout=30.0, bare=True)
        with self.assertRaises(ServerError) as raised:
            server.start()
        self.assertIn("patches", str(raised.exception))
        self.assertIsNone(server._process)
