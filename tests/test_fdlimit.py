"""
The node's descriptor limit at start-up (cairn/fdlimit.py): raised as far
as the process may, and said in one line.
"""

import resource

from twisted.logger import Logger, eventAsText
from twisted.trial import unittest

from cairn import fdlimit

NOFILE = resource.RLIMIT_NOFILE


class FakeLimits:
    """getrlimit/setrlimit over a (soft, hard) pair, refusing a raised hard limit unless privileged."""

    def __init__(self, soft, hard, privileged):
        self.limits = (soft, hard)
        self.privileged = privileged
        self.calls = []

    def get(self, kind):
        assert kind == NOFILE
        return self.limits

    def set(self, kind, limits):
        assert kind == NOFILE
        self.calls.append(limits)
        soft, hard = limits
        if soft > hard or (hard > self.limits[1] and not self.privileged):
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits

    def raise_limit(self, ceiling=1_048_576):
        return fdlimit.raise_limit(self.get, self.set, ceiling=lambda: ceiling)


class RaiseLimitTests(unittest.TestCase):
    def test_privileged_raises_both_to_nr_open(self):
        """A process that may raise its hard limit raises both limits to fs.nr_open."""
        fake = FakeLimits(1024, 4096, privileged=True)
        raised = fake.raise_limit()
        self.assertEqual(fake.limits, (1_048_576, 1_048_576))
        self.assertEqual((raised.before, raised.after), ((1024, 4096), (1_048_576, 1_048_576)))
        self.assertEqual(
            raised.line(),
            "file descriptors: RLIMIT_NOFILE raised from soft 1024, hard 4096 to soft 1048576, "
            "hard 1048576 (both raised to the kernel's fs.nr_open)",
        )

    def test_unprivileged_raises_soft_to_hard(self):
        """Without privilege the hard limit stays and the soft limit goes up to it."""
        fake = FakeLimits(1024, 4096, privileged=False)
        raised = fake.raise_limit()
        self.assertEqual(fake.limits, (4096, 4096))
        self.assertIn("raised from soft 1024, hard 4096 to soft 4096, hard 4096", raised.line())
        self.assertIn("raising that needs privilege", raised.line())

    def test_already_at_hard_limit(self):
        """Soft already at an unraisable hard limit: nothing changes, and the line says so."""
        fake = FakeLimits(4096, 4096, privileged=False)
        raised = fake.raise_limit()
        self.assertEqual(fake.limits, (4096, 4096))
        self.assertEqual(
            raised.line(),
            "file descriptors: RLIMIT_NOFILE soft 4096, hard 4096 (soft already at the hard limit; "
            "raising it needs privilege)",
        )

    def test_never_lowers(self):
        """A hard limit above fs.nr_open (or an unknown ceiling) is left alone: never lowered."""
        fake = FakeLimits(2_000_000, 2_000_000, privileged=True)
        fake.raise_limit()
        self.assertEqual(fake.limits, (2_000_000, 2_000_000))
        self.assertEqual(fake.calls, [])
        fake = FakeLimits(1024, 8192, privileged=True)
        fake.raise_limit(ceiling=None)
        self.assertEqual(fake.limits, (8192, 8192))

    def test_soft_refused(self):
        """A refused raise of the soft limit is said, not raised."""
        fake = FakeLimits(1024, 4096, privileged=False)

        def refuse(kind, limits):
            raise OSError("no")

        raised = fdlimit.raise_limit(fake.get, refuse, ceiling=lambda: 4096)
        self.assertEqual(raised.after, (1024, 4096))
        self.assertIn("refused", raised.line())

    def test_kernel_ceiling(self):
        """fs.nr_open is read from its file; an unreadable one is None."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("1048576\n")
        self.assertEqual(fdlimit.kernel_ceiling(path), 1_048_576)
        self.assertIsNone(fdlimit.kernel_ceiling(path + ".missing"))

    def test_one_log_line(self):
        """raise_and_say logs exactly one line."""
        events = []
        fake = FakeLimits(1024, 4096, privileged=False)
        raised = fdlimit.raise_and_say(Logger(observer=events.append), getrlimit=fake.get, setrlimit=fake.set)
        [event] = events
        self.assertEqual(eventAsText(event, includeTimestamp=False, includeSystem=False), raised.line())
        self.assertNotIn("\n", raised.line())
