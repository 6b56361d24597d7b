"""
One relay circuit as the node holds it (L{cairn.relay.service}): its two
ends, its state, the flow-control allowance of each end and, for an
attached circuit (docs/protocol.md §25.8), its tokens, connections and
L{cairn.relay.splice.Splice}.
"""

from collections import Counter

import attr

from cairn.relay.messages import WINDOW


@attr.s(eq=False)
class Circuit:
    """One circuit: ends C{a} (requester) and C{b} (target), each a node-side session."""

    circuit_id = attr.ib()
    a = attr.ib()
    b = attr.ib()
    req = attr.ib()
    state = attr.ib(default="offered")
    timer = attr.ib(default=None)
    #: Bytes each end may still send (by session), at most WINDOW.
    allowance = attr.ib(factory=dict)
    #: Bytes forwarded from each end (by session).
    forwarded = attr.ib(factory=Counter)
    #: Bytes from each end waiting for its sender's rate limit (by session).
    queued = attr.ib(factory=Counter)
    opened_at = attr.ib(default=None)
    #: Attachment tokens by end (session): offered to the target, then to
    #: the requester once the target attaches too (§25.8). Empty: RelayData.
    tokens = attr.ib(factory=dict)
    #: The connections attached so far: end -> (transport, rest) or None while handed off.
    attached = attr.ib(factory=dict)
    #: The L{Splice} once both ends are attached.
    splice = attr.ib(default=None)

    @property
    def mode(self) -> str:
        """C{attached} (its own connections, §25.8) or C{session} (RelayData)."""
        return "attached" if self.tokens and self.state != "offered" else "session"

    def other(self, session):
        return self.b if session is self.a else self.a

    def in_flight(self, session) -> int:
        """Bytes sent by C{session}'s end and not yet credited by the other end (queued ones included)."""
        return WINDOW - self.allowance.get(session, WINDOW)
