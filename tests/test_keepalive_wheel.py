"""The keepalive wheel (cairn/session/keepalive.py): one timer for every session's ticks."""

from twisted.internet import task
from twisted.trial import unittest

from cairn.session.keepalive import SLOTS, KeepaliveWheel


class Ticking:
    """A stand-in session: records its tick times, reschedules itself every C{interval}."""

    def __init__(self, wheel, interval, clock):
        self.wheel, self.interval, self.clock = wheel, interval, clock
        self.ticks = []
        self._keepalive = wheel.add(self, interval)

    def _keepalive_tick(self):
        self.ticks.append(self.clock.seconds())
        self._keepalive = self.wheel.add(self, self.interval)


class KeepaliveWheelTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.wheel = KeepaliveWheel(self.clock)

    def test_whole_intervals_are_exact(self):
        """Attached at a slot boundary, a session ticks exactly every interval."""
        s = Ticking(self.wheel, 30.0, self.clock)
        for _ in range(4):
            self.clock.advance(30.0)
        self.assertEqual(s.ticks, [30.0, 60.0, 90.0, 120.0])

    def test_first_tick_at_most_one_slot_early_then_every_interval(self):
        """Attached between slots: the first tick is rounded down by less than a slot, never late."""
        self.clock.advance(0.5)
        s = Ticking(self.wheel, 30.0, self.clock)
        self.clock.pump([0.01] * 12_100)
        grain = 30.0 / SLOTS
        first = s.ticks[0]
        self.assertLessEqual(first, 30.5)
        self.assertGreater(first, 30.5 - grain)
        gaps = [b - a for a, b in zip(s.ticks, s.ticks[1:])]
        self.assertEqual(len(gaps), 3)
        for gap in gaps:
            self.assertLess(abs(gap - 30.0), 0.011)  # the pump's step

    def test_one_delayed_call_for_many_sessions(self):
        sessions = [Ticking(self.wheel, 30.0, self.clock) for _ in range(3)]
        self.clock.advance(7.3)
        sessions += [Ticking(self.wheel, 30.0, self.clock) for _ in range(3)]
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.wheel), 6)
        self.clock.advance(30.0)
        self.assertEqual([len(s.ticks) for s in sessions], [1] * 6)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_removed_session_does_not_tick(self):
        a = Ticking(self.wheel, 30.0, self.clock)
        b = Ticking(self.wheel, 30.0, self.clock)
        self.wheel.remove(a, a._keepalive)
        self.clock.advance(30.0)
        self.assertEqual((a.ticks, b.ticks), ([], [30.0]))
        self.wheel.remove(b, b._keepalive)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(30.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_earlier_slot_left_after_a_tick_is_kept(self):
        """After a tick reschedules sessions far ahead, the wheel still wakes for a nearer slot."""
        long = Ticking(self.wheel, 30.0, self.clock)
        self.clock.advance(10.0)
        short = Ticking(self.wheel, 25.0, self.clock)  # due at 35
        self.clock.advance(20.0)  # long ticks at 30 and moves to 60
        self.assertEqual(long.ticks, [30.0])
        self.clock.advance(5.0)
        self.assertEqual(short.ticks, [35.0])

    def test_session_stopped_during_the_pass_is_not_ticked(self):
        """A session removed by another's tick in the same pass is skipped (it would be rescheduled)."""
        a = Ticking(self.wheel, 30.0, self.clock)
        b = Ticking(self.wheel, 30.0, self.clock)
        original = a._keepalive_tick

        def tick_and_stop_b():
            original()
            self.wheel.remove(b, b._keepalive)
            b._keepalive = None

        a._keepalive_tick = tick_and_stop_b
        self.clock.advance(30.0)
        self.assertEqual((a.ticks, b.ticks), ([30.0], []))
        self.assertEqual(len(self.wheel), 1)

    def test_a_failing_tick_does_not_stop_the_others(self):
        class Broken(Ticking):
            def _keepalive_tick(self):
                raise RuntimeError("boom")

        Broken(self.wheel, 30.0, self.clock)
        fine = Ticking(self.wheel, 30.0, self.clock)
        self.clock.advance(30.0)
        self.assertEqual(fine.ticks, [30.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(30.0)
        self.assertEqual(fine.ticks, [30.0, 60.0])
