"""
Group commit over a L{cairn.db.Database}: the SQLite stores (mailbox,
sync) submit their mutations here, and a burst of them costs one fsync.
Mutations that may wait (the mailbox's acknowledgements) are gathered for
a short interval first (L{GroupCommit.gather}).
"""

from twisted.internet import defer
from twisted.python.failure import Failure

#: Groups a L{GroupCommit} lets be written but not yet synced: one being
#: synced and the next; later requests wait and make a bigger group.
MAX_UNSYNCED = 2


class GroupCommit:
    """
    Group commit over a L{Database}: mutations submitted while a commit is
    in flight form the next transaction, so a burst costs one fsync.
    Pipelined: a group is written (L{Database.write}) while the previous
    one is being synced (L{Database.sync}); results are given, in order,
    only once their group is on disk.

    A mutation is C{txn(cursor, *args)} returning C{(result, changes)}.
    C{batch_txn(cursor, calls)} runs one batch and returns an C{(ok, value)}
    per call. Once the batch is committed, C{apply(changes)} runs for every
    success and its Deferred fires with C{result}; failures go through
    C{to_error} first.

    Mutations submitted with L{gather} may wait up to C{gather} seconds on
    C{clock} (an C{IReactorTime}; the database's reactor by default) for
    others to join them: they are queued like any other, but start no
    transaction themselves until their interval is over. Any transaction
    that starts meanwhile (another mutation's, or the previous group's sync
    being done with a L{submit}ted mutation waiting) takes them along, in
    the order they were submitted; L{flushed} writes them at once.

    @ivar commits: transactions committed so far (for tests and benches).
    """

    def __init__(self, db, batch_txn, apply, to_error=lambda error: error, *, clock=None, gather=0.0):
        self.db = db
        self.commits = 0
        self._clock = clock if clock is not None or gather <= 0 else db.reactor
        self._gather = gather
        self._gathering = None  # the IDelayedCall ending the interval, while one runs
        self._due = False  # the queue holds a mutation that must not wait
        self._batch_txn = batch_txn
        self._apply = apply
        self._to_error = to_error
        self._queue = []
        self._busy = False
        self._syncing = 0  # groups written, not yet synced
        self._idle = []

    def submit(self, txn, *args):
        """Queue C{txn(cursor, *args)}; fires with its result once committed."""
        d = defer.Deferred()
        self._queue.append((txn, args, d))
        self._due = True
        self._maybe_flush()
        return d

    def gather(self, txn, *args):
        """
        Queue C{txn(cursor, *args)} to go with whatever else is queued
        within the next C{gather} seconds (at once with no interval); fires
        with its result once committed, as L{submit}.
        """
        if self._gather <= 0:
            return self.submit(txn, *args)
        d = defer.Deferred()
        self._queue.append((txn, args, d))
        if self._gathering is None and not self._due:
            self._gathering = self._clock.callLater(self._gather, self._gathered)
        return d

    def _gathered(self):
        """The interval is over: what was gathered goes in the next transaction."""
        self._gathering = None
        self._release()

    def _release(self):
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        if self._queue:
            self._due = True
            self._maybe_flush()

    def _maybe_flush(self):
        if self._due and not self._busy and self._syncing < MAX_UNSYNCED:
            self._flush()

    def settled(self):
        """
        A Deferred firing once every group written so far is on disk: for a
        read that ran after them (and may show their rows) to wait before
        anyone hears of what it read.
        """
        return self.db.sync() if self._syncing else defer.succeed(None)

    def covered(self):
        """
        Like L{settled}, for a read on another connection
        (L{Database.read}): it may show a group whose write has not been
        reported here yet, so a group being written counts too.
        """
        return self.db.sync() if self._busy or self._syncing else defer.succeed(None)

    def shown_synced(self, read, unsynced=lambda: True):
        """
        C{read} (the Deferred of a read on another connection), firing with
        its rows only once every group they may show is synced
        (L{covered}); at once if C{unsynced()}, asked when the rows come,
        says nothing they show can be unsynced.
        """

        def shown(rows):
            if not unsynced():
                return rows
            return self.covered().addCallback(lambda _: rows)

        return read.addCallback(shown)

    def flushed(self):
        """
        A Deferred firing once every queued mutation has committed (or
        failed); what is being gathered is written now (a clean stop).
        """
        self._release()
        if not self._busy and not self._queue and not self._syncing:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def _flush(self):
        batch, self._queue = self._queue, []
        self._due = False
        if self._gathering is not None:  # everything gathered goes in this one
            self._gathering.cancel()
            self._gathering = None
        self._busy = True
        self.commits += 1
        d = self.db.write(self._batch_txn, [(txn, args) for txn, args, _ in batch])
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _written(self, outcomes, batch):
        self._syncing += 1
        synced = self.db.sync()
        # No longer syncing before the callers hear of it: one that reads
        # at once (L{cairn.dbreads.HotReads}) need not wait for another sync.
        synced.addBoth(self._sync_over)
        synced.addCallbacks(self._committed, self._failed, (outcomes, batch), None, (batch,))
        synced.addBoth(self._synced)
        self._next()

    def _sync_over(self, result):
        self._syncing -= 1
        return result

    def _synced(self, _):
        self._maybe_flush()
        self._maybe_idle()

    def _committed(self, _, outcomes, batch):
        for (_, _, d), (ok, value) in zip(batch, outcomes):
            if ok:
                result, changes = value
                self._apply(changes)
                d.callback(result)
            else:
                d.errback(Failure(self._to_error(value)))

    def _failed(self, failure, batch):
        error = Failure(self._to_error(failure.value))
        for _, _, d in batch:
            d.errback(error)

    def _write_failed(self, failure, batch):
        self._failed(failure, batch)
        self._next()

    def _next(self):
        self._busy = False
        self._maybe_flush()
        self._maybe_idle()

    def _maybe_idle(self):
        if self._busy or self._queue or self._syncing:
            return
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)
