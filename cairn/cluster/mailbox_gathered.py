"""
The gathering of L{cairn.cluster.mailbox_removal.Removal}'s acknowledgements:
their tombstones wait up to L{REMOVAL_GATHER} and are written in one burst
(L{Gathering._gathered}), and what an expiry or a purge meanwhile leaves to
them: this node's (L{Gathering._left_to_acknowledgements}) and, while
another node may exist, the other nodes' (L{EXPIRY_GRACE},
L{PURGE_GRACE}). A mixin, so that each module stays small.
"""

import asyncio

from twisted.internet import defer, task

from cairn.cluster.common import recipient_of

#: Seconds an acknowledgement's removals wait before they are written,
#: gathering those of every acknowledgement that comes meanwhile (all
#: recipients') into one burst of writes (L{Gathering._gathered}); 0: at once.
REMOVAL_GATHER = 0.025
#: Seconds past its expiry that a message waits, while another node may
#: exist, before an expiry sweep removes it (L{Gathering._expiry_due}): an
#: acknowledgement made on another node up to then has written its
#: tombstone first (its gathering, L{REMOVAL_GATHER}, and its write take
#: milliseconds), so its sender is told DELIVERED, not EXPIRED.
EXPIRY_GRACE = 10.0
#: Seconds a purge waits, while another node may exist, before it reads
#: what it removes (L{Gathering._other_nodes_acknowledged}): the other
#: nodes hear of the revocation (the trust watch, milliseconds), close the
#: peer's sessions, and write the tombstones of what it acknowledged
#: before (its gathering and its write: milliseconds).
PURGE_GRACE = 1.0


class Gathering:
    """When the acknowledgements' removals are written, and what other removals leave to them."""

    #: On the NATS loop: the event the acknowledgements gathering now wait for (L{_gathered}).
    _gathering = None
    #: The clock a purge's grace is waited on (L{_other_nodes_acknowledged}); None: the JetStream's.
    clock = None

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
        nothing is known of the other's acknowledgements: the expiry and
        the purge give them a grace instead (L{_expiry_due},
        L{_other_nodes_acknowledged}), and beyond it the conditional writes
        decide (docs/scaling.md, "The gathering's race, and its p99").
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

    def _expiry_due(self, now):
        """
        The latest expiry time an expiry sweep at C{now} removes: C{now}
        alone, or L{EXPIRY_GRACE} earlier while another node may exist.

        Why: an acknowledgement made on another node is not known here
        (L{_left_to_acknowledgements} waits only for this node's); its
        removals wait up to L{REMOVAL_GATHER} before they are written, and
        an expiry written meanwhile won the conditional write: the sender
        was told EXPIRED of a message its recipient had acknowledged
        (issue 15). An acknowledgement made before the message's expiry, or
        up to the grace less its gathering and write after it, has now
        written first: the sweep finds the message gone. (An expiry is
        then told up to the grace later; it was already up to a sweep
        interval late.)
        """
        return now - EXPIRY_GRACE if self.following else now

    def _other_nodes_acknowledged(self):
        """
        A Deferred firing once a purge may read what it removes: at once
        while this store is alone on the stream, else after L{PURGE_GRACE}
        (on L{clock}; the store's calls in flight include it, so a stop
        waits for the purge).

        Why: as for the expiry (L{_expiry_due}), the other nodes'
        acknowledgements of the purged peer, made before the revocation
        reached them, are gathering there; written first, they are
        DELIVERED, and the purge finds those messages gone.
        """
        if not self.following or PURGE_GRACE <= 0:
            return defer.succeed(None)
        d = task.deferLater(self.clock or self.jet.clock, PURGE_GRACE, lambda: None)
        self._pending.add(d)
        return d.addBoth(lambda result: (self._pending.discard(d), result)[1])
