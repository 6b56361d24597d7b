"""
What the JetStream stores share: names of the mailbox stream's headers,
small helpers, and the mapping of any failure to reach or use JetStream
to L{StoreFull} (the services answer STORAGE_ERROR to it).
"""

from twisted.internet import defer
from twisted.logger import Logger

from cairn.mailbox.interfaces import StoreFull

log = Logger()

#: Messages read per direct-get page.
PAGE = 256
#: The tombstone's C{Cairn-Kind}; its C{Cairn-Expires} is when the id may be reused.
KIND, DONE = "Cairn-Kind", "done"
#: Which store instance wrote a message (its watch skips its own).
WRITER = "Cairn-Writer"
#: A receipt's: the size in bytes of the message it is about (other writers' watches follow removals).
SIZE = "Cairn-Size"


def _recipient(held):
    return held.subject.split(".")[2]


def _is_message(held):
    return held.headers.get(KIND) is None


def _f(value):
    return repr(float(value))


async def _kv_forget(kv, key):
    from nats.js.errors import KeyNotFoundError

    try:
        await kv.purge(key)
    except KeyNotFoundError:
        pass


def _observe(d):
    observer = defer.Deferred()
    d.addBoth(lambda r: (observer.callback(None), r)[1])
    return observer


def _one_line(error):
    return (str(error).strip() or type(error).__name__).splitlines()[0][:200]


def _storage_error(failure):
    """Any failure to reach or use JetStream as L{StoreFull}, so the service answers STORAGE_ERROR."""
    if failure.check(StoreFull):
        return failure
    error = failure.value
    log.warn("cairn: JetStream store call failed: {why}", why=_one_line(error))
    raise StoreFull(f"JetStream unavailable ({_one_line(error)})")


class StoreCalls:
    """
    What every JetStream store does with its L{cairn.cluster.connection.JetStream}
    (C{self.jet}): name subjects, run a coroutine on the NATS loop (a failure
    becomes L{StoreFull}), and remember it until it ends, so that
    L{flushed} can wait for every call in flight (C{self._pending}, a set).
    """

    def _subject(self, *parts):
        return self.jet.subject(*parts)

    def _run(self, function, *args):
        d = self.jet.run(function, *args).addErrback(_storage_error)
        self._pending.add(d)
        return d.addBoth(lambda r: (self._pending.discard(d), r)[1])

    def flushed(self):
        """A Deferred firing once every call in flight has ended."""
        return defer.DeferredList([_observe(d) for d in list(self._pending)]).addCallback(lambda _: None)
