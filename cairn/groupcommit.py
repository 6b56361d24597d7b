"""
Group commit over a L{cairn.db.Database}: the SQLite stores (mailbox,
sync) submit their mutations here, and a burst of them costs one fsync.
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

    @ivar commits: transactions committed so far (for tests and benches).
    """

    def __init__(self, db, batch_txn, apply, to_error=lambda error: error):
        self.db = db
        self.commits = 0
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
        if not self._busy and self._syncing < MAX_UNSYNCED:
            self._flush()
        return d

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

    def flushed(self):
        """A Deferred firing once every queued mutation has committed (or failed)."""
        if not self._busy and not self._queue and not self._syncing:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def _flush(self):
        batch, self._queue = self._queue, []
        self._busy = True
        self.commits += 1
        d = self.db.write(self._batch_txn, [(txn, args) for txn, args, _ in batch])
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _written(self, outcomes, batch):
        self._syncing += 1
        synced = self.db.sync()
        synced.addCallbacks(self._committed, self._failed, (outcomes, batch), None, (batch,))
        synced.addBoth(self._synced)
        self._next()

    def _synced(self, _):
        self._syncing -= 1
        if not self._busy and self._queue and self._syncing < MAX_UNSYNCED:
            self._flush()
        else:
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
        if self._queue and self._syncing < MAX_UNSYNCED:
            self._flush()
        else:
            self._maybe_idle()

    def _maybe_idle(self):
        if self._busy or self._queue or self._syncing:
            return
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)
