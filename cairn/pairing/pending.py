"""
The operator's approval queue, bounded so that throw-away identities
cannot push genuine requests out of it (docs/protocol.md §20.4.4).

Only a peer that sends PairRequest C{approval} is filed: completing a
handshake is not a request. At most C{max_pending} requests are kept, and
at most C{max_per_source} from one source (an IPv4 address or an IPv6 /64,
L{cairn.transport.limits.source_of}). A request over either bound is filed
all the same and the oldest one of the source that has the most is dropped
to make room (over the per-source bound: the oldest of its own source):
a flood from one place only ever evicts its own requests, and a request
from anywhere else is always filed. Each dropped peer is told (PairReject
C{RATE_LIMITED} on its open sessions, by the service); the operator gets one
warning a minute with the count.

Requests loaded from the database at start have no known source: they count
as one source, C{"unknown"}.
"""

from collections import Counter

from twisted.internet import defer
from twisted.logger import Logger

from cairn.pairing.interfaces import PENDING
from cairn.transport.limits import session_source

log = Logger()

#: Defaults (docs/protocol.md §20.6; C{CAIRN_MAX_PENDING_PER_SOURCE}).
MAX_PENDING = 100
MAX_PENDING_PER_SOURCE = 10
#: Seconds between two "pending requests dropped" warnings.
WARN_EVERY = 60.0
UNKNOWN = "unknown"


class PendingQueue:
    """
    Files approval requests in the trust store within the bounds above.

    @param on_evicted: C{(peer_id)}, called for each request dropped.
    """

    def __init__(self, trust, clock, max_pending=MAX_PENDING, max_per_source=MAX_PENDING_PER_SOURCE, on_evicted=None):
        self.trust = trust
        self.clock = clock
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self.on_evicted = on_evicted
        self._sources = {}  # peer_id -> source, for requests filed since start
        self._warned_at = None
        self._unwarned = 0
        #: Requests dropped to make room (for tests and metrics).
        self.evicted = 0

    @defer.inlineCallbacks
    def file(self, session, name: str):
        """File (or update) the request of C{session}'s peer; fires once stored."""
        peer_id = session.remote_peer_id
        record = yield self.trust.get(peer_id)
        if record is None or record.state != PENDING:
            source = session_source(session)
            yield self._make_room(source)
            self._sources[peer_id] = source
        yield self.trust.add_pending(peer_id, session.remote_identity, name, self.clock.seconds())

    @defer.inlineCallbacks
    def _make_room(self, source):
        pending = yield self.trust.list(PENDING)
        live = {r.peer_id for r in pending}
        for peer_id in [p for p in self._sources if p not in live]:
            del self._sources[peer_id]  # approved, rejected or withdrawn since
        by_source = Counter(self._sources.get(r.peer_id, UNKNOWN) for r in pending)
        victims = []
        if by_source[source] >= self.max_per_source:
            victims.append(self._oldest(pending, source))
        elif len(pending) >= self.max_pending:
            largest = max(by_source.items(), key=lambda item: (item[1], item[0] == UNKNOWN))[0]
            victims.append(self._oldest(pending, largest))
        for record in victims:
            yield self._evict(record)

    def _oldest(self, pending, source):
        mine = [r for r in pending if self._sources.get(r.peer_id, UNKNOWN) == source]
        return min(mine, key=lambda r: (r.requested_at or 0, r.peer_id))

    @defer.inlineCallbacks
    def _evict(self, record):
        self._sources.pop(record.peer_id, None)
        yield self.trust.reject(record.peer_id)
        self.evicted += 1
        self._warn(record.peer_id)
        if self.on_evicted is not None:
            self.on_evicted(record.peer_id)

    def _warn(self, peer_id):
        # A flood of requests must not become a flood of log lines.
        self._unwarned += 1
        now = self.clock.seconds()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        log.warn(
            "pending pairing requests at their limits ({total} in all, {per_source} per source): "
            "dropped {count} oldest request(s), the last of {peer_id}",
            total=self.max_pending,
            per_source=self.max_per_source,
            count=self._unwarned,
            peer_id=peer_id,
        )
        self._warned_at, self._unwarned = now, 0
