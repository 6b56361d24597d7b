"""
Bounds on what peers that are not paired can hold on a node.

Anyone can complete a Noise handshake with a fresh identity: until its peer
is paired, a session is worth little to its owner (pairing only) and costs
the node memory (a session, its keys, its resend buffer) and, while
attached, a file descriptor. L{UnpairedSessions} keeps them bounded
(docs/reliability.md, "Unpaired peers"):

  - at most C{max_total} sessions of unpaired peers at once, and at most
    C{max_per_source} from one source (an IPv4 address or an IPv6 /64,
    L{cairn.transport.limits.source_of}); one more makes the node drop the
    oldest idle one -- detached before attached, then least recently
    established or resumed -- with Close 12 (LIMIT_REACHED);
  - while descriptors run short (L{cairn.transport.fds.DescriptorGauge}
    above its high-water mark), a session of an unpaired peer is closed
    with Close 12 as soon as it is established or resumed, keeping what is
    left for paired peers and the management API.

How long they stay resumable once detached, and that they are never saved
for a restart, is the L{cairn.session.peer.Peer}'s business
(C{detached_ttl}, C{snapshot_sessions}).

A session whose peer pairs during it stops counting: sessions are checked
again whenever one is about to be dropped.
"""

from collections import OrderedDict

from twisted.logger import Logger

from cairn.transport.limits import session_source
from cairn.wire.constants import CloseCode

log = Logger()

#: Defaults (C{CAIRN_MAX_UNPAIRED_SESSIONS}, C{CAIRN_MAX_UNPAIRED_PER_SOURCE}).
MAX_UNPAIRED = 1000
MAX_UNPAIRED_PER_SOURCE = 32

EVICTED_REASON = "too many sessions of unpaired peers"
SHORT_REASON = "node is short of file descriptors: paired peers only"


class UnpairedSessions:
    """
    A L{cairn.session.peer.Peer} observer applying the bounds above.

    @param is_paired: C{(peer_id) -> bool}.
    @param gauge: a L{cairn.transport.fds.DescriptorGauge}, or None.
    """

    def __init__(self, peer, is_paired, max_total=MAX_UNPAIRED, max_per_source=MAX_UNPAIRED_PER_SOURCE, gauge=None):
        self.is_paired = is_paired
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.gauge = gauge
        #: session id -> (session, source), oldest event first.
        self._all = OrderedDict()
        #: source -> OrderedDict(session id -> session), oldest event first.
        self._by_source = {}
        #: Sessions dropped over a cap, and refused for want of descriptors.
        self.evicted = 0
        self.refused = 0
        peer.add_observer(self)

    def __len__(self):
        return len(self._all)

    def per_source(self, source) -> int:
        """Tracked sessions of C{source} (for tests)."""
        return len(self._by_source.get(source, ()))

    # Peer observer

    def session_established(self, session):
        if self.is_paired(session.remote_peer_id) or self._refused(session):
            return
        source = session_source(session)
        self._all[session.session_id] = (session, source)
        self._by_source.setdefault(source, OrderedDict())[session.session_id] = session
        self._enforce(source, session)

    def session_resumed(self, session):
        if session.session_id in self._all and not self._refused(session):
            self._touch(session)

    def session_detached(self, session):
        if session.session_id in self._all:
            self._touch(session)

    def session_closed(self, session):
        self._forget(session.session_id)

    # The bounds

    def _refused(self, session) -> bool:
        if self.gauge is None or not self.gauge.short():
            return False
        if self.is_paired(session.remote_peer_id):
            return False
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warn("descriptors short: closed {count} session(s) of unpaired peers so far", count=self.refused)
        self._forget(session.session_id)
        session.close(CloseCode.LIMIT_REACHED, SHORT_REASON)
        return True

    def _touch(self, session):
        sid = session.session_id
        self._all.move_to_end(sid)
        _, source = self._all[sid]
        self._by_source[source].move_to_end(sid)

    def _forget(self, sid):
        entry = self._all.pop(sid, None)
        if entry is None:
            return
        group = self._by_source.get(entry[1])
        if group is not None:
            group.pop(sid, None)
            if not group:
                del self._by_source[entry[1]]

    def _enforce(self, source, newest):
        while self.per_source(source) > self.max_per_source:
            if not self._drop_one(self._by_source[source].values(), newest):
                break
        while len(self._all) > self.max_total:
            if not self._drop_one((s for s, _ in self._all.values()), newest):
                break

    def _drop_one(self, sessions, newest) -> bool:
        """Drop the oldest idle unpaired session but C{newest}; False if none."""
        victim = None
        paired = []
        for session in sessions:
            if session is newest:
                continue
            if self.is_paired(session.remote_peer_id):
                paired.append(session.session_id)
                continue
            if not session.attached:
                victim = session
                break
            if victim is None:
                victim = session
        for sid in paired:
            self._forget(sid)
        if victim is None:
            return bool(paired)
        self._forget(victim.session_id)
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 1000 == 0:
            log.warn("dropped {count} session(s) of unpaired peers over the limits so far", count=self.evicted)
        victim.close(CloseCode.LIMIT_REACHED, EVICTED_REASON)
        return True
