"""
What the operator is told of the errors nats-py reports on a connection
once it is up (its C{error_cb}): an authorization or permissions
violation, a slow consumer, a TLS or connection error while
reconnecting. None of these changes the node's state by itself -- a lost
connection does, through nats-py's C{disconnected_cb} -- so before they
were never seen. Each is now one warning line (L{ErrorsSaid}), the same
fault said at most once per L{ERROR_EVERY} seconds on the node's clock,
with the count of the repeats not shown when it is said again, so that
a storm of them (a slow consumer drops messages by the thousand) cannot
flood the log.

A slow consumer is also told to the subscription's owner (L{Drops}):
nats-py drops what a subscription's pending limits do not hold and says
so only through C{error_cb}, naming the subscription. A watch restarts
from what it applied, the node bus re-checks at once, the relay ends the
circuit whose frame was lost (docs/scaling.md, "Slow consumers").
"""

import collections
import re

from twisted.logger import Logger

log = Logger()

#: Seconds during which the same error is said once (its repeats counted).
ERROR_EVERY = 60.0
#: Errors remembered at most, the oldest forgotten first: a storm of distinct ones stays bounded.
ERRORS_KEPT = 64

#: C{user:password@} in a URL (nats-py puts none in its errors; a library under it might).
_USERINFO = re.compile(r"(?<=//)[^/@\s]*@")


def describe(error):
    """
    One line about a NATS error, without secrets, and the same for every
    repeat of one fault: a slow consumer's is about the subject's first two
    tokens (C{cairn.mbox.>}), not the message's whole subject and the
    subscription's repr that nats-py puts in it.
    """
    subject = getattr(error, "subject", None)
    if type(error).__name__ == "SlowConsumerError" and isinstance(subject, str):
        head = ".".join(subject.split(".")[:2])
        return f"nats: slow consumer, messages dropped on {head}.>"
    text = str(error).strip() or type(error).__name__
    return _USERINFO.sub("<redacted>@", text.splitlines()[0][:200])


class ErrorsSaid:
    """
    The NATS errors said, and when (on C{clock}): L{said} logs an error
    unless the same description was said less than C{every} seconds ago,
    in which case it is counted and the count goes with the next time it
    is said.
    """

    def __init__(self, clock, every=ERROR_EVERY, kept=ERRORS_KEPT):
        self.clock, self.every, self.kept = clock, every, kept
        self._said = collections.OrderedDict()  # description -> [when last said, repeats not shown since]

    def said(self, why):
        """The error C{why} (a L{describe}) happened: whether it was logged now."""
        now = self.clock.seconds()
        seen = self._said.get(why)
        if seen is not None and now - seen[0] < self.every:
            seen[1] += 1
            return False
        self._said.pop(why, None)
        self._said[why] = [now, 0]
        while len(self._said) > self.kept:
            self._said.popitem(last=False)
        if seen is not None and seen[1]:
            log.warn(
                "cairn: NATS error: {why} (and {repeats} more times since it was last said, {ago:.0f} s ago)",
                why=why,
                repeats=seen[1],
                ago=now - seen[0],
            )
        else:
            log.warn("cairn: NATS error: {why}", why=why)
        return True


def _core(subscription):
    """
    The nats-py core subscription that a slow consumer's error names
    (C{error.sub}): a JetStream subscription (and a KV watcher's) wraps
    one in C{_sub}, which stays the same through an ordered consumer's
    resets (nats-py 2.16).
    """
    for _ in range(2):  # a KV watcher, then its JetStream subscription
        inner = getattr(subscription, "_sub", None)
        if inner is None:
            break
        subscription = inner
    return subscription


class Drops:
    """
    The owners of subscriptions that must hear of their dropped messages:
    L{add} a subscription with a handler, and L{dropped} (on the NATS loop,
    from the connection's C{error_cb}) calls the handler of the one a
    C{SlowConsumerError} names, with the error (its C{subject}: the
    dropped message's). Handlers run inside nats-py's read of the socket:
    they must not wait for NATS (they start a task or hand work to the
    reactor), and they are called once per dropped message.
    """

    def __init__(self):
        self._owners = {}  # id(core subscription) -> (it, handler); the object is held, so its id is not reused

    def add(self, subscription, handler):
        core = _core(subscription)
        self._owners[id(core)] = (core, handler)

    def discard(self, subscription):
        self._owners.pop(id(_core(subscription)), None)

    def dropped(self, error):
        """Call the handler of the subscription C{error} names; whether one was called."""
        owner = self._owners.get(id(_core(getattr(error, "sub", None))))
        if owner is None:
            return False
        try:
            owner[1](error)
        except Exception:
            log.failure("cairn: handling messages dropped by a slow consumer failed")
        return True
