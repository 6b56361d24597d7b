"""
The topic figures of L{cairn.cluster.sync.JetStreamSyncStore}, derived
rather than counted.

Several nodes write and remove a topic's updates. Retention only ever
removes a prefix of a topic (the scans go in stream order, which is seq
order within a topic, and stop at the first update they keep), so a
topic's held updates are exactly those above its floor, and the floor
says everything about a removal: whoever made it, however often it is
reported. Each node therefore keeps, per topic, the size of every update
above the floor that it knows of (read at start, stored here, or seen by
its watch) in a L{TopicLog}, and answers count and bytes from it. A
removal reported twice (by two nodes removing the same range, or by this
node and its watch) raises the floor once; an update learnt of after a
floor above it is not counted. A delta ("5 updates, 300 bytes fewer")
could not be made exact so: two nodes removing the same range would
subtract it twice.

Memory: one 8-byte slot per held update (an C{array}); a topic's log is
dropped from the front as its floor rises.
"""

from array import array

import attr

from cairn.sync.interfaces import Topic

_UNKNOWN = -1


class TopicLog:
    """One topic: its head, its floor, and the sizes of the updates above the floor this node knows of."""

    __slots__ = ("head", "floor", "count", "bytes", "_sizes")

    def __init__(self):
        self.head = self.floor = self.count = self.bytes = 0
        self._sizes = array("q")  # slot i: the update at seq floor + 1 + i (_UNKNOWN: not known here yet)

    def add(self, seq, size):
        """An update at C{seq} of C{size} bytes is stored (idempotent; ignored at or below the floor)."""
        self.head = max(self.head, seq)
        if seq <= self.floor:
            return  # removed already (a removal seen before the write's own report)
        i = seq - self.floor - 1
        if i >= len(self._sizes):
            self._sizes.extend([_UNKNOWN] * (i + 1 - len(self._sizes)))
        if self._sizes[i] == _UNKNOWN:
            self._sizes[i] = size
            self.count += 1
            self.bytes += size

    def cut(self, floor):
        """Every update at or below C{floor} is removed (idempotent; a floor never goes down)."""
        if floor <= self.floor:
            return
        k = min(floor - self.floor, len(self._sizes))
        for size in self._sizes[:k]:
            if size != _UNKNOWN:
                self.count -= 1
                self.bytes -= size
        del self._sizes[:k]
        self.floor = floor
        self.head = max(self.head, floor)

    def topic(self):
        return Topic(self.head, self.floor, self.count, self.bytes)


@attr.s(auto_attribs=True)
class Changes:
    """What a call stored and removed, to apply to the figures: C{(topic, seq, size)} added, {topic: floor}."""

    added: list = attr.ib(factory=list)
    floors: dict = attr.ib(factory=dict)

    def add(self, topic, seq, size):
        self.added.append((topic, seq, size))

    def cut(self, topic, floor):
        self.floors[topic] = max(floor, self.floors.get(topic, 0))


class DerivedFigures:
    """
    The topic figures of a L{cairn.cluster.sync.JetStreamSyncStore} (a
    mixin, on the reactor thread: it needs L{cairn.sync.store.SyncFigures}'
    C{_apply}).
    """

    def _init_figures(self):
        self._logs = {}  # topic -> TopicLog

    def _merge(self, changes):
        """Apply C{changes} (a L{Changes}) to the figures."""
        names = apply(self._logs, changes)
        self._apply(({name: self._logs[name].topic() for name in names}, {}))


def apply(logs, changes):
    """Apply C{changes} to C{logs} ({topic: L{TopicLog}}, added to); returns the topics changed."""
    names = set()
    for name, seq, size in changes.added:
        logs.setdefault(name, TopicLog()).add(seq, size)
        names.add(name)
    for name, floor in changes.floors.items():
        logs.setdefault(name, TopicLog()).cut(floor)
        names.add(name)
    return names
