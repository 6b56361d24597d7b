"""
L{cairn.cluster.sync_figures}: a topic's figures derived from its floor
and the sizes of the updates above it, whatever order and however often
stores and removals are reported.
"""

from twisted.trial import unittest

from cairn.cluster.sync_figures import Changes, TopicLog, apply
from cairn.sync.interfaces import Topic


class TopicLogTests(unittest.TestCase):
    def test_add_and_cut(self):
        """Updates count once each; a cut drops those at or below the floor."""
        log = TopicLog()
        for seq, size in ((1, 3), (2, 2), (3, 4), (2, 2)):
            log.add(seq, size)
        self.assertEqual(log.topic(), Topic(3, 0, 3, 9))
        log.cut(2)
        self.assertEqual(log.topic(), Topic(3, 2, 1, 4))

    def test_a_removal_told_twice_counts_once(self):
        """The same floor (or a lower one) again changes nothing."""
        log = TopicLog()
        for seq in (1, 2, 3):
            log.add(seq, 10)
        for floor in (2, 2, 1):
            log.cut(floor)
        self.assertEqual(log.topic(), Topic(3, 2, 1, 10))

    def test_added_after_its_removal_is_not_counted(self):
        """An update whose own report comes after a floor above it stays uncounted; the head follows the floor."""
        log = TopicLog()
        log.add(1, 5)
        log.cut(3)
        self.assertEqual(log.topic(), Topic(3, 3, 0, 0))
        log.add(2, 5)
        log.add(3, 5)
        log.add(4, 7)
        self.assertEqual(log.topic(), Topic(4, 3, 1, 7))

    def test_out_of_order(self):
        """Updates reported out of order (another node's before this node's own) count once each."""
        log = TopicLog()
        log.add(3, 1)
        log.add(1, 2)
        log.cut(1)
        log.add(2, 4)
        self.assertEqual(log.topic(), Topic(3, 1, 2, 5))
        log.cut(3)
        self.assertEqual(log.topic(), Topic(3, 3, 0, 0))

    def test_changes(self):
        """L{apply} adds before it cuts, and names the topics it changed."""
        changes, logs = Changes(), {}
        changes.add("a", 1, 2)
        changes.add("a", 2, 3)
        changes.cut("a", 1)
        changes.cut("a", 0)
        changes.cut("b", 4)
        self.assertEqual(apply(logs, changes), {"a", "b"})
        self.assertEqual({n: log.topic() for n, log in logs.items()}, {"a": Topic(2, 1, 1, 3), "b": Topic(4, 4, 0, 0)})
