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
