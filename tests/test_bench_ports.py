"""
C{bench._ports.free_port}: a port handed to one caller is not handed to
another (in this process or any other of the user's) while reserved.
"""

import os
import time

from twisted.trial import unittest

from bench import _ports


class FreePortTests(unittest.TestCase):
    def setUp(self):
        self.patch(_ports, "RESERVATIONS", os.path.abspath(self.mktemp()))
        if _ports._ephemeral_start() <= 10100:
            raise unittest.SkipTest("no room below the ephemeral range: the kernel picks the port")

    def drawing(self, *ports):
        """Make free_port draw C{ports} in turn (ports free on this machine right now)."""
        drawn = iter(ports)
        self.patch(_ports.random, "randrange", lambda lo, hi: next(drawn))

    def spare(self, count):
        """C{count} distinct ports below the ephemeral range, free right now."""
        found = set()
        while len(found) < count:
            found.add(_ports.free_port())
        for port in found:
            os.unlink(os.path.join(_ports.RESERVATIONS, str(port)))
        return sorted(found)

    def test_same_port_not_handed_twice(self):
        """A port drawn again while reserved is passed over."""
        first, second = self.spare(2)
        self.drawing(first, first, second)
        self.assertEqual([_ports.free_port(), _ports.free_port()], [first, second])

    def test_reserved_by_another_process(self):
        """A reservation another process made (its file) is honoured."""
        first, second = self.spare(2)
        os.makedirs(_ports.RESERVATIONS, exist_ok=True)
        open(os.path.join(_ports.RESERVATIONS, str(first)), "w").close()
        self.drawing(first, second)
        self.assertEqual(_ports.free_port(), second)

    def test_old_reservation_taken_over(self):
        """A reservation older than HOLD no longer holds the port."""
        (port,) = self.spare(1)
        os.makedirs(_ports.RESERVATIONS, exist_ok=True)
        path = os.path.join(_ports.RESERVATIONS, str(port))
        open(path, "w").close()
        old = time.time() - _ports.HOLD - 1
        os.utime(path, (old, old))
        self.drawing(port)
        self.assertEqual(_ports.free_port(), port)
        self.assertGreater(os.stat(path).st_mtime, old + 1)

    def test_old_reservations_tidied(self):
        """A process's first call removes reservations older than HOLD, and keeps the others."""
        os.makedirs(_ports.RESERVATIONS, exist_ok=True)
        old, young = (os.path.join(_ports.RESERVATIONS, name) for name in ("1", "2"))
        for path in (old, young):
            open(path, "w").close()
        then = time.time() - _ports.HOLD - 1
        os.utime(old, (then, then))
        self.patch(_ports, "_tidied", [])
        _ports.free_port()
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(young))
