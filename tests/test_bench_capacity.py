"""
Smoke tests of the capacity bench: each scenario runs with a handful of
sessions in a subprocess and prints its figures. Nothing here asserts a
speed or a size.
"""

from twisted.trial import unittest

from tests.test_bench import RunsBench


class CapacityBenchTests(RunsBench, unittest.TestCase):
    timeout = 120

    def run_bench(self, *args):
        """Run C{python -m bench.capacity args} from the repository root; fire with its stdout."""
        return RunsBench.run_bench(self, "bench.capacity", *args)

    def assertLines(self, output, *expected):
        for text in expected:
            self.assertIn(text, output)

    def test_idle(self):
        """The idle scenario opens every session and reports RSS, keepalive CPU, memory by type and the heap."""
        d = self.run_bench(
            "idle", "--sessions", "4", "--keepalive", "0.2", "--window", "0.5", "--types", "--heap", "--floor", "none"
        )
        return d.addCallback(
            self.assertLines,
            "idle: 4 of 4 sessions opened",
            "idle: node holds 4 sessions, 4 attached (2 tcp, 2 websocket)",
            "bytes per session",
            "idle: keepalive CPU on the node",
            "idle: at the end 4 attached on the node (0 closed in the window), 4 on the clients (0 ended)",
            "objects tracked by the garbage collector",
            "heap (glibc mallinfo2), growth: RSS",
            "pymalloc (objects up to 512 B), growth: arenas",
            "s after the trim:",
        )

    def test_idle_floor(self):
        """
        The idle scenario measures each bare floor (Twisted, asyncio, Twisted with immediate writes) on the
        same connections first, and prints cairn's figure against each and each at 100,000 sessions.
        """
        d = self.run_bench(
            "idle", "--sessions", "4", "--keepalive", "0.2", "--window", "0.5",
            "--floor", "twisted,asyncio,twisted-direct",
        )

        def check(output):
            self.assertLines(
                output,
                "floor (bare Twisted, 57 B a message): 4 of 4 connections in",
                "floor (bare asyncio, 57 B a message): 4 of 4 connections in",
                "floor (bare Twisted, immediate writes, 57 B a message): 4 of 4 connections in",
                "idle: 4 of 4 sessions opened",
                "idle: cairn / floor (bare Twisted) per keepalive handled: ",
                "idle: cairn / floor (bare asyncio) per keepalive handled: ",
                "  the floor alone at 100,000 connections, 2.00 messages each per 30 s (6,667 handled a second): ",
            )
            # Each floor counted the messages both ways (the figures themselves are not asserted).
            for line in output.splitlines():
                if line.startswith("floor ("):
                    handled = int(line.split(" messages handled (")[0].rsplit("; ", 1)[1].replace(",", ""))
                    self.assertGreater(handled, 0, line)

        return d.addCallback(check)

    def test_idle_node_keepalive(self):
        """--node-keepalive: the node ticks less often than its clients (here never in the window): it only receives."""
        d = self.run_bench(
            "idle", "--sessions", "4", "--keepalive", "0.2", "--node-keepalive", "3600", "--window", "0.5",
            "--floor", "twisted",
        )
        return d.addCallback(
            self.assertLines,
            "keepalive every 0.2 s, the node's every 3600 s;",
            "idle: keepalive CPU on the node",
            " keepalives handled (0 sent, ",
            "  the floor alone at 100,000 connections, 1.00 messages each per 30 s (",
            "idle: at the end 4 attached on the node (0 closed in the window), 4 on the clients (0 ended)",
        )

    def test_idle_hold_and_storm(self):
        """Held sessions from several source addresses, a bystander's round trips, and a storm among them."""
        d = self.run_bench(
            "idle", "--sessions", "6", "--keepalive", "0.5", "--window", "0.3", "--hold", "1",
            "--storm", "4", "--messages", "2", "--per-address", "2", "--bystander-every", "0.1",
        )
        return d.addCallback(
            self.assertLines,
            "clients bound to 127.0.0.2, 127.0.0.3, 127.0.0.4)",
            "idle: 6 of 6 sessions opened",
            "idle: node holds 6 sessions, 6 attached (3 tcp, 3 websocket)",
            "idle: held 1 s; bystander mailbox round trip (",
            "storm: 4 sessions dropped at once",
            "storm: 4 of 4 sessions resumed",
            "storm: 8 of 8 queued mailbox messages delivered (0 lost)",
            "storm: node 0 sessions closed during it, 8 attached after",
            "storm: bystander mailbox round trip during the storm (",
            "storm: the sessions resume like cairn.client's automatic resume",
            "    node: reactor late p50",
            "    bench (bystander): reactor late p50",
        )

    def test_storm(self):
        """The storm resumes every session and delivers every queued message and Data."""
        d = self.run_bench("storm", "--sessions", "4", "--messages", "2", "--lockstep")
        return d.addCallback(
            self.assertLines,
            "storm: the sessions resume all at once",
            "storm: 4 sessions opened",
            "storm: 4 of 4 sessions resumed",
            "storm: all 8 of 8 queued mailbox messages delivered",
            "storm: all 4 of 4 queued Data received by the node",
        )

    def test_flood(self):
        """The flood reports handshakes per second and the served ratio of the established sessions."""
        d = self.run_bench(
            "flood", "--sessions", "4", "--rate", "20", "--seconds", "0.5", "--before", "0.5", "--after", "0.2",
            "--concurrency", "4", "--per-source", "100",
        )
        return d.addCallback(
            self.assertLines,
            "handshakes/s completed by the flooding process",
            "flood: before:",
            "flood: during:",
            "flood: served during / before = ",
        )

    def test_churn(self):
        """The churn scenario runs its handshake-and-drop cycles and reports sessions held and RSS."""
        d = self.run_bench("churn", "--cycles", "6", "--concurrency", "2", "--legacy")
        return d.addCallback(
            self.assertLines,
            "churn: 6 cycles in",
            "node holds 6 sessions",
            "bytes per session held",
        )
