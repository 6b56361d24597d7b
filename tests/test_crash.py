"""
C{kill -9} of a real C{twistd -n cairn} under mailbox and sync load, with
the checks of L{bench.crash}, killed at event-driven points: after a
given number of new acknowledgements in the round.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from bench.crash import Harness

#: New acknowledgements (forwards and publishes) before each kill.
KILL_AFTER = (150, 40, 300)


class CrashRounds:
    timeout = 300

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)

    def kill_point(self, round_):
        """Fires once the round has seen its share of new acknowledgements."""
        ledger = self.harness.ledger
        start = len(ledger.acked) + len(ledger.update_seqs)
        wanted = KILL_AFTER[round_ - 1]
        return self.harness.until(
            lambda: len(ledger.acked) + len(ledger.update_seqs) >= start + wanted, 60, f"{wanted} acks"
        )

    def _cleanup(self):
        node = self.harness.node
        if node is not None and not node.ended.called:
            return node.kill()


class CrashTests(CrashRounds, unittest.TestCase):
    @defer.inlineCallbacks
    def test_kill_9_three_times(self):
        """After each of three SIGKILLs nothing acknowledged is lost or stored twice, cursors hold, the DB is intact."""
        self.harness = Harness(reactor, self.data_dir, senders=2, publishers=2, kill_point=self.kill_point)
        self.addCleanup(self._cleanup)
        yield self.harness.run(len(KILL_AFTER))
        ledger = self.harness.ledger
        self.assertEqual(ledger.problems, [])
        self.assertEqual(ledger.integrity, ["ok"] * (len(KILL_AFTER) + 1))
        self.assertGreaterEqual(len(ledger.acked), 150)
        self.assertGreater(len(ledger.update_seqs), 0)
        self.assertEqual(ledger.lost_messages(), set())
        self.assertEqual(ledger.duplicate_messages(), [])
        self.assertEqual(ledger.lost_updates(), set())
        self.assertEqual(ledger.duplicate_updates(), [])
        self.assertEqual(self.harness.rounds, len(KILL_AFTER) + 1)
        self.assertEqual(set(ledger.cursors), {"notes", "photos"})


class CleanRestartCrashTests(CrashRounds, unittest.TestCase):
    """The same rounds with SIGTERM and resuming clients (C{bench.crash --mode clean})."""

    @defer.inlineCallbacks
    def test_sigterm_three_times(self):
        """After each of three SIGTERMs under load every request is answered, every session resumes, nothing is lost."""
        from bench.crash_clean import CleanHarness

        self.harness = CleanHarness(reactor, self.data_dir, senders=2, publishers=2, kill_point=self.kill_point)
        self.addCleanup(self._cleanup)
        yield self.harness.run(len(KILL_AFTER))
        ledger = self.harness.ledger
        self.assertEqual(ledger.problems, [])
        self.assertEqual(self.harness.errors, {})
        self.assertEqual(self.harness._waiting(), 0)
        self.assertEqual([s["resumed"] for s in self.harness.stops], [6] * len(KILL_AFTER))
        self.assertEqual(ledger.lost_messages(), set())
        self.assertEqual(ledger.lost_updates(), set())
        self.assertEqual(ledger.duplicate_messages(), [])
        self.assertEqual(ledger.retried, 0)
