"""
What a removal of L{cairn.cluster.mailbox_removal.Removal} did remove when
it failed. Its tombstones are separate writes, and at JetStream's storage
limit some of a call's may be stored and others refused (three nodes at an
R3 account's limit, the servers' usage figures lagging the release:
docs/scaling.md "Sizing"). The stored ones removed their messages all the
same; counted out only on success, they stayed in the recipient's depth
until the node restarted (the call's retry finds them removed and counts
nothing), and their receipts were not owed; the same for one whose write
went unanswered and was stored all the same (L{MaybeRemoved}), and for a
call that failed after its tombstones, in what it writes or reads next
(L{PartRemovals._after_removals}, L{PartRemovals._depth_changes}). A
mixin, so that each module stays small.
"""

import collections

from cairn.cluster import direct as D
from cairn.cluster.common import is_message, one_line, recipient_of
from cairn.cluster.mailbox_alone import MAYBE, unknown_outcome
from cairn.mailbox.interfaces import PartlyRemoved


class RemovedInPart(PartlyRemoved):
    """L{PartlyRemoved} as raised on the NATS loop; C{removed} is what L{Removal._removed} counts out."""

    def __init__(self, why, removed):
        super().__init__(why, removed[0])
        self.removed = removed


class PartRemovals:
    """
    What a removal removed, counted out of the depths (L{_depth_changes}),
    also when it failed after removing some of its messages or all of them
    (L{RemovedInPart}).
    """

    async def _unfinished(self, error, receipts, last, counted):
        """On the NATS loop: the L{RemovedInPart} of a call whose write failed with C{error} after C{counted}."""
        return RemovedInPart(one_line(error), (receipts, await self._depth_changes(self._uncount(counted)), last))

    async def _after_removals(self, step, receipts, last, counted):
        """
        Await C{step}, what a removal call writes after its tombstones
        (an expiry's deletions, a purge's consumed marks): its failure is
        the L{RemovedInPart} of C{counted}, which the tombstones removed
        (the call failed with it plainly, and its retry found them removed:
        counted out nowhere until a restart).
        """
        try:
            await step
        except Exception as e:
            raise await self._unfinished(e, receipts, last, counted) from None

    async def _depth_changes(self, removed):
        """{recipient: (messages removed, bytes removed, new oldest stored_at)} for L{_removed}."""
        out = {}
        for held in removed:
            recipient = recipient_of(held)
            count, size, _ = out.get(recipient, (0, 0, None))
            out[recipient] = (count + 1, size + len(held.data or b""), None)
        for recipient, (count, size, _) in list(out.items()):
            # The oldest stored_at of what remains (only reported: GET /mailbox, metrics).
            depth, fetched = self._depths.get(recipient), self._fetched.get(recipient)
            if depth is None or depth.messages <= count:
                continue  # none left (one stored meanwhile keeps its own, L{_removed})
            if fetched:
                # Handed out in order, from the oldest: the first still held is it.
                first = [fetched.first()]
            elif (ahead := self._ahead.first(recipient, self._acked_upto.get(recipient, 0))) is not None:
                first = [ahead]  # read ahead, next after what is removed: no read behind the removals
            else:
                # Just above what is known removed: the first few items hold
                # it, and none lies past the newest message known stored for
                # the recipient (every message a depth counts is known: this
                # node's writes, the watch's, the start-up load's). The depth
                # read above is the reactor's and lags behind the removals
                # made here: in a drain it still counted messages already
                # removed, and the read walked every tombstone of the
                # recipient to the stream's end, eight at a time (0.77
                # requests and ~9 tombstones parsed per message delivered:
                # docs/scaling.md, "Receipted: the depth's read").
                start = self._acked_upto.get(recipient, 0) + 1
                newest = max(self._newest.get(recipient, 0), self._loaded_upto)
                subject = self._subject("mbox", recipient, ">")
                try:
                    first = await self._read(start, 1, subject, 0, is_message, batch=8, upto=newest)
                except Exception:
                    first = []  # only reported: the cached one stays (L{_removed}), the removal made counts
            out[recipient] = (count, size, float(first[0].headers[D.STORED]) if first else None)
        return out

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
    counted out) or after (L{seen}), also while a later write of the
    message is in flight (the retry's, refused since the earlier one
    landed: it counted nothing, and the message stayed counted for good).
    Told apart from a later removal's by its C{Cairn-At}; a plain
    tombstone (a purge of what the peer sent itself) has none and is not
    followed. On the NATS loop.
    """

    def __init__(self):
        #: message seq -> (its tombstone's Cairn-At, the tombstone once the watch read it meanwhile, else None)
        #: while the call writing it has not taken its answer.
        self.writing = {}
        self._stamps = collections.OrderedDict()  # message seq -> {Cairn-At}: unanswered, not read yet

    def begun(self, seq, headers):
        """The tombstone (C{headers}) of message C{seq} is being written."""
        self.writing[seq] = (headers.get(D.AT), None)

    def seen(self, tombstone):
        """This store's C{tombstone} (a L{D.Held}) is read: whether its unanswered removal counts now."""
        try:
            removed = int(tombstone.headers.get(D.EXPECT_LAST) or 0)
        except ValueError:
            return False
        at = tombstone.headers.get(D.AT)
        earlier = at is not None and at in self._stamps.get(removed, ())
        if removed in self.writing and not (earlier and at != self.writing[removed][0]):
            # Its write's, or (at the same Cairn-At) an earlier one's: the write's answer tells (L{answered}).
            self.writing[removed] = (self.writing[removed][0], tombstone)
            return False
        if earlier:
            # An earlier write, failed unanswered, stored after all -- also while a new write of the
            # message is in flight, which it makes refused: that one's refusal counts nothing (it
            # stayed counted for good).
            del self._stamps[removed]
        return earlier

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
        (The writes a cancelled call had confirmed are not counted out:
        the cancellation comes only as the connection closes,
        L{cairn.cluster.connection.JetStream.close}, and nothing reads the
        figures after it.)
        """
        for seq in seqs:
            at, read = self.writing.pop(seq, (None, None))
            if at is None:
                continue  # answered (or a plain tombstone)
            if read is not None and read.headers.get(D.AT) == at:
                self._stamps.pop(seq, None)
                count_out(read)  # this write's, or an earlier one's at the same Cairn-At: one of them
            else:
                self._stamp(seq, at)

    def answered(self, seq, headers=None, error=None):
        """
        The write of the tombstone (C{headers}) of message C{seq} is
        answered, or failed with C{error}: the tombstone's seq if it failed
        unanswered and the watch has read it already, or was refused while
        the watch read an earlier write of it at the same C{Cairn-At}
        (that one's removal is the call's), else None.
        """
        _, read = self.writing.pop(seq, (None, None))
        if error is None:
            # Stored: an earlier write of this store for the message was not (one tombstone removes
            # it), and this one, counted by its call, must not be taken for that one's at the same Cairn-At.
            self._stamps.pop(seq, None)
            return None
        if headers.get(D.AT) is None:
            return None
        if not unknown_outcome(error):
            if read is not None and read.headers.get(D.AT) in self._stamps.get(seq, ()):
                # Refused (not stored), so what the watch read while it was in flight is an earlier
                # write's at the same Cairn-At, failed unanswered and stored all the same (L{seen}).
                del self._stamps[seq]
                return read.seq
            return None
        if read is not None and read.headers.get(D.AT) == headers[D.AT]:
            self._stamps.pop(seq, None)
            return read.seq
        self._stamp(seq, headers[D.AT])
        return None

    def _stamp(self, seq, at):
        # Every such write of the message is kept: any one of them may be the one stored.
        self._stamps.setdefault(seq, set()).add(at)
        while len(self._stamps) > MAYBE:
            self._stamps.popitem(last=False)
