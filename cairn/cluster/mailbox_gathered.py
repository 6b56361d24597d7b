"""
The gathering of L{cairn.cluster.mailbox_removal.Removal}'s acknowledgements:
their tombstones wait up to L{REMOVAL_GATHER} and are written in one burst
(L{Gathering._gathered}), and what an expiry or a purge meanwhile leaves to
them (L{Gathering._left_to_acknowledgements}). A mixin, so that each module
stays small.
"""

import asyncio

from cairn.cluster.common import recipient_of

#: Seconds an acknowledgement's removals wait before they are written,
#: gathering those of every acknowledgement that comes meanwhile (all
#: recipients') into one burst of writes (L{Gathering._gathered}); 0: at once.
REMOVAL_GATHER = 0.025


class Gathering:
    """When the acknowledgements' removals are written, and what other removals leave to them."""

    #: On the NATS loop: the event the acknowledgements gathering now wait for (L{_gathered}).
    _gathering = None

    async def _gathered(self):
        """
        Wait, on the NATS loop, until the acknowledgements' removals gathered
        now are written: L{REMOVAL_GATHER} seconds after the first of them.

        Why: a recipient acknowledges each delivery as it comes, and a
        message for it stored meanwhile was written to the same stream just
        as the previous message's tombstone: traced, the message's write
        (publish to PubAck) took 2.2 ms alone and 3.3-4.2 ms behind a
        tombstone, on most messages (docs/scaling.md, "Cross-node delivery:
        the removals gathered"). Gathered, the tombstones go in one burst
        now and then, and most messages are written with none in the way.

        What it costs: a DELIVERED receipt, and the recipient's depth,
        follow the acknowledgement up to this much later; and a node killed
        meanwhile has not removed what was acknowledged in that time, so
        it is delivered again at the recipient's next session (dropped by
        id, as any redelivery). Nothing is removed before the recipient
        acknowledges it, and a receipt is still told only from its
        tombstone's PubAck (durable). A clean stop waits for them (the
        store's calls in flight, L{flushed}). An expiry or a purge made
        meanwhile waits for them too, so that what was acknowledged is
        DELIVERED (L{_left_to_acknowledgements}).
        """
        if REMOVAL_GATHER <= 0:
            return
        gathering = self._gathering
        if gathering is None:
            gathering = self._gathering = asyncio.Event()
            asyncio.get_running_loop().call_later(REMOVAL_GATHER, self._release_gathered, gathering)
        await gathering.wait()

    def _release_gathered(self, gathering=None):
        """On the NATS loop: the acknowledgements of C{gathering} (default: the one now) write their removals."""
        gathering = gathering or self._gathering
        if gathering is not None:
            if self._gathering is gathering:
                self._gathering = None
            gathering.set()

    async def _left_to_acknowledgements(self, messages):
        """
        Wait, before an expiry or a purge writes its tombstones, for the
        acknowledgements in flight now for the recipients of C{messages};
        the messages, less those an acknowledgement started meanwhile is
        writing.

        Why: an acknowledgement's removals wait up to L{REMOVAL_GATHER}
        before they are written (L{_gathered}); an expiry or a purge that
        wrote meanwhile won the conditional write, and the sender was told
        EXPIRED or EVICTED of a message its recipient had acknowledged
        (issue 15). As in the SQLite store, where an acknowledgement
        submitted first is committed first, the acknowledgement made first
        decides: once it has written its DELIVERED tombstones, the removal
        here finds those messages no longer their subjects' last, and
        writes nothing for them; if it failed, they expire or are evicted
        here. One started later, already gathering, has them too: they are
        left to it (the next sweep expires them if it fails). Across nodes
        nothing is known of the other's acknowledgements: the conditional
        writes decide (docs/scaling.md, "Cross-node delivery: the removals
        gathered").
        """
        recipients = {recipient_of(message) for message in messages}
        waiting = set()
        for recipient in recipients:
            fetched = self._fetched.get(recipient)
            if fetched is not None:
                waiting |= {future for future in fetched.inflight if not future.done()}
            waiting |= {future for future in self._acking.get(recipient, {}).values() if not future.done()}
        if waiting:
            await asyncio.wait(waiting)
        return [m for m in messages if m.seq not in self._acking.get(recipient_of(m), ())]
