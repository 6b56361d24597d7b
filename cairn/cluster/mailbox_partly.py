"""
What a removal of L{cairn.cluster.mailbox_removal.Removal} did remove when
it failed. Its tombstones are separate writes, and at JetStream's storage
limit some of a call's may be stored and others refused (three nodes at an
R3 account's limit, the servers' usage figures lagging the release:
docs/scaling.md "Sizing"). The stored ones removed their messages all the
same; counted out only on success, they stayed in the recipient's depth
until the node restarted (the call's retry finds them removed and counts
nothing), and their receipts were not owed; the same for one whose write
went unanswered and was stored all the same (L{MaybeRemoved}). A mixin,
so that each module stays small.
"""

import collections

from cairn.cluster import direct as D
from cairn.cluster.common import one_line
from cairn.cluster.mailbox_alone import MAYBE, unknown_outcome
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


class MaybeRemoved:
    """
    This store's tombstones whose write failed without an answer (no
    PubAck in time, or a new leader elected meanwhile), or was never
    awaited (the call ended first): JetStream may have stored them all
    the same, and then their messages are removed, which the service's
    retry of the acknowledgement does not find, so nothing counted them
    out: the recipient's node kept them in its depth for good (2 and 12
    in two untraced runs of C{tests/test_cluster_node_faults.py}'s leader
    kill; the tests here show the mechanism). Such a tombstone counts its
    message out once the watch reads it: before the failure (L{answered}
    gives its seq, and the removal counts as made; L{ended} has it
    counted out) or after (L{seen}). Told apart from a later removal's by
    its C{Cairn-At}; a plain tombstone (a purge of what the peer sent
    itself) has none and is not followed. On the NATS loop.
    """

    def __init__(self):
        #: message seq -> (its tombstone's Cairn-At, the tombstone once the watch read it meanwhile, else None)
        #: while the call writing it has not taken its answer.
        self.writing = {}
        self._stamps = collections.OrderedDict()  # message seq -> Cairn-At: unanswered, not read yet

    def begun(self, seq, headers):
        """The tombstone (C{headers}) of message C{seq} is being written."""
        self.writing[seq] = (headers.get(D.AT), None)

    def seen(self, tombstone):
        """This store's C{tombstone} (a L{D.Held}) is read: whether its unanswered removal counts now."""
        try:
            removed = int(tombstone.headers.get(D.EXPECT_LAST) or 0)
        except ValueError:
            return False
        if removed in self.writing:
            self.writing[removed] = (self.writing[removed][0], tombstone)
        elif self._stamps and self._stamps.get(removed, self) == tombstone.headers.get(D.AT):
            del self._stamps[removed]
            return True
        return False

    def ended(self, seqs, count_out):
        """
        The call writing the tombstones of messages C{seqs} ended. It may
        end before it awaits every write -- a publish raising at once
        (nats-py's outbound buffer full while reconnecting, its connection
        closed), a cancellation at the node's stop -- and then each write
        it did not await is one whose outcome is unknown, as for a write
        unanswered (L{answered}): C{count_out(tombstone)} is called for
        those the watch read already (nothing counted them: the call
        failed), and the watch counts out the others once it reads them.
        """
        for seq in seqs:
            at, read = self.writing.pop(seq, (None, None))
            if at is None:
                continue  # answered (or a plain tombstone)
            if read is not None and read.headers.get(D.AT) == at:
                self._stamps.pop(seq, None)
                count_out(read)
            else:
                self._stamp(seq, at)

    def answered(self, seq, headers=None, error=None):
        """
        The write of the tombstone (C{headers}) of message C{seq} is
        answered, or failed with C{error}: the tombstone's seq if it failed
        unanswered and the watch has read it already, else None.
        """
        _, read = self.writing.pop(seq, (None, None))
        if error is None:
            # Stored: an earlier write of this store for the message was not (one tombstone removes
            # it), and this one, counted by its call, must not be taken for that one's at the same Cairn-At.
            self._stamps.pop(seq, None)
            return None
        if not unknown_outcome(error) or headers.get(D.AT) is None:
            return None
        if read is not None and read.headers.get(D.AT) == headers[D.AT]:
            self._stamps.pop(seq, None)
            return read.seq
        self._stamp(seq, headers[D.AT])
        return None

    def _stamp(self, seq, at):
        self._stamps[seq] = at
        while len(self._stamps) > MAYBE:
            self._stamps.popitem(last=False)
