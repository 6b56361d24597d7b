"""
L{Answers}: a client's requests awaiting the node's answer, per session
and id (the mailbox's ForwardAck, L{cairn.mailbox.client}; the sync hub's
SyncAck, L{cairn.sync.client}).

An id may be sent again before its first answer (a retry with the same
message or update id, which the node answers DUPLICATE): each request
gets its own Deferred and the answers fire them in the order they were
made. When the session ends, every Deferred still waiting on it fails.
"""

from twisted.internet import defer


class Answers:
    """Deferreds awaiting an answer, C{{(session id, id): [Deferred, ...]}}."""

    def __init__(self):
        self._waiting = {}

    def __len__(self):
        return len(self._waiting)

    def add(self, session_id, request_id) -> defer.Deferred:
        """A new Deferred for a request with C{request_id} on session C{session_id}."""
        d = defer.Deferred()
        self._waiting.setdefault((session_id, request_id), []).append(d)
        return d

    def answered(self, session_id, request_id):
        """The Deferred the answer for C{request_id} is for (the oldest waiting), or None: none waits."""
        key = (session_id, request_id)
        waiting = self._waiting.get(key)
        if not waiting:
            return None
        d = waiting.pop(0)
        if not waiting:
            del self._waiting[key]
        return d

    def session_closed(self, session_id, reason):
        """Fail every Deferred waiting on session C{session_id} with C{reason}."""
        for key in [k for k in self._waiting if k[0] == session_id]:
            for d in self._waiting.pop(key):
                d.errback(reason)
