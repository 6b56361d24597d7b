"""
What a removal of L{cairn.cluster.mailbox_removal.Removal} did remove when
it failed. Its tombstones are separate writes, and at JetStream's storage
limit some of a call's may be stored and others refused (three nodes at an
R3 account's limit, the servers' usage figures lagging the release:
docs/scaling.md "Sizing"). The stored ones removed their messages all the
same; counted out only on success, they stayed in the recipient's depth
until the node restarted (the call's retry finds them removed and counts
nothing), and their receipts were not owed. A mixin, so that each module
stays small.
"""

from cairn.cluster.common import one_line
from cairn.mailbox.interfaces import PartlyRemoved


class RemovedInPart(PartlyRemoved):
    """L{PartlyRemoved} as raised on the NATS loop; C{removed} is what L{Removal._removed} counts out."""

    def __init__(self, why, removed):
        super().__init__(why, removed[0])
        self.removed = removed


class PartRemovals:
    """The failure of a removal that removed some of its messages (L{RemovedInPart})."""

    async def _unfinished(self, error, receipts, last, counted):
        """On the NATS loop: the L{RemovedInPart} of a call whose write failed with C{error} after C{counted}."""
        return RemovedInPart(one_line(error), (receipts, await self._depth_changes(self._uncount(counted)), last))

    def _in_part(self, failure, owed=None):
        """On the reactor: what a failed call removed counts out, its receipts added to C{owed}; the failure goes on."""
        if failure.check(RemovedInPart):
            receipts = self._removed(failure.value.removed)
            if owed is not None:
                owed.extend(receipts)
        return failure

    @staticmethod
    def _owed(failure, owed):
        """An acknowledgement that failed for good: a L{PartlyRemoved} with what its attempts C{owed}, if any."""
        if owed:
            raise PartlyRemoved(failure.getErrorMessage(), owed)
        return failure
