"""
Delivery from a node's sync hub to the sessions of paired devices
(docs/protocol.md §24): each session that subscribed has an L{Outbox}, a
window of SyncUpdates sent and not yet covered by a SyncCursor, filled
from the store as the device moves its cursors; a device behind what
retention removed is sent a SyncReset; the outboxes are kept across a
clean restart (§16).

A mixin of L{cairn.sync.service.SyncService}, which owns the state it
uses: C{store}, C{trust}, C{window}, C{window_bytes}, C{resets},
C{_outboxes}, C{access_of}, C{_end_subscription}, and L{cairn.storeservice.StoreService}'s C{_stopped},
C{_track}, C{_send} and C{_log_failure}.
"""

from twisted.logger import Logger

from cairn.sync.interfaces import Topic
from cairn.wire.constants import MessageType

# The hub's log lines keep the namespace they had before delivery left
# cairn.sync.service (operators filter on it).
log = Logger(namespace="cairn.sync.service")


class Outbox:
    """What one session subscribed to and has been sent but not yet acknowledged."""

    __slots__ = ("session", "topics", "inflight", "own", "fetching", "again")

    def __init__(self, session):
        self.session = session
        self.topics = {}  # topic -> last seq sent (or skipped)
        self.inflight = {}  # (topic, seq) -> size
        self.own = {}  # topic -> last own update skipped while others were in flight
        self.fetching = set()
        self.again = set()

    def inflight_of(self, topic):
        return [seq for (name, seq) in self.inflight if name == topic]


class Delivery:
    """The outboxes of a L{SyncService}: pushing to sessions, and the session observer."""

    def _outboxes_of(self, peer_id):
        return [o for o in list(self._outboxes.values()) if o.session.remote_peer_id == peer_id]

    def _fan_out(self, topic):
        for outbox in list(self._outboxes.values()):
            if topic in outbox.topics:
                self._pump(outbox, topic)

    def _pump_all(self):
        for outbox in list(self._outboxes.values()):
            for topic in list(outbox.topics):
                self._pump(outbox, topic)

    def _check_reset(self, outbox, topic, state):
        """Tell the device if retention removed updates it has not had; never skip silently."""
        if outbox.topics[topic] < state.floor:
            outbox.topics[topic] = state.floor
            self.resets += 1
            reason = f"updates up to seq {state.floor} were removed by retention"
            self._send(
                outbox.session,
                MessageType.SYNC_RESET,
                {"topic": topic, "oldest_seq": state.oldest_seq, "reason": reason},
            )

    def _pump(self, outbox, topic):
        session = outbox.session
        if self._stopped or session.closed is not None or not session.attached or topic not in outbox.topics:
            return
        if not self.trust.is_paired(session.remote_peer_id):
            return  # unpaired since: nothing more is pushed, at once
        if not self.access_of(session.remote_peer_id).may_read(topic):
            # Its grant was narrowed since (through another node: this
            # node's store followed it): nothing more is pushed; SyncDenied.
            self._end_subscription(outbox, topic)
            return
        if topic in outbox.fetching:
            outbox.again.add(topic)
            return
        room = self.window - len(outbox.inflight)
        if room <= 0 or sum(outbox.inflight.values()) >= self.window_bytes:
            return
        state = self.store.topics().get(topic, Topic())
        self._check_reset(outbox, topic, state)
        if outbox.topics[topic] >= state.head:
            return
        outbox.fetching.add(topic)
        outbox.again.discard(topic)
        device = session.remote_peer_id

        def fetched(updates):
            outbox.fetching.discard(topic)
            if topic not in outbox.topics:
                return
            self._check_reset(outbox, topic, self.store.topics().get(topic, Topic()))
            budget = self.window_bytes - sum(outbox.inflight.values())
            for update in updates:
                if session.closed is not None or budget <= 0:
                    break
                if update.seq <= outbox.topics[topic]:
                    continue
                if update.sender == device:
                    # A device is not sent its own updates; its cursor moves over them.
                    outbox.topics[topic] = update.seq
                    if outbox.inflight_of(topic):
                        outbox.own[topic] = update.seq
                    else:
                        self._track(self.store.set_cursor(device, topic, update.seq)).addErrback(
                            self._log_failure, "saving a cursor"
                        )
                    continue
                body = {
                    "topic": topic,
                    "seq": update.seq,
                    "from": update.sender,
                    "id": update.update_id,
                    "payload": update.payload,
                    "at": update.stored_at,
                }
                if not self._send(session, MessageType.SYNC_UPDATE, body):
                    break
                outbox.inflight[(topic, update.seq)] = len(update.payload)
                outbox.topics[topic] = update.seq
                budget -= len(update.payload)
            if topic in outbox.again or (updates and budget > 0):
                self._pump(outbox, topic)

        def failed(failure):
            outbox.fetching.discard(topic)
            log.failure("sync: reading updates to deliver failed", failure)

        self._track(self.store.fetch(topic, outbox.topics[topic], room)).addCallbacks(fetched, failed)

    # Session observer

    def session_established(self, session):
        """Nothing yet: a session's outbox is made by its first SyncSubscribe."""

    def session_resumed(self, session):
        outbox = self._outboxes.get(session.session_id)
        if outbox is None:
            self.session_established(session)
            return
        for topic in list(outbox.topics):
            self._pump(outbox, topic)

    def session_closed(self, session):
        self._outboxes.pop(session.session_id, None)

    # Across a clean restart (docs/protocol.md §16) the subscriptions come
    # back with their session: a resumed device does not subscribe again.

    def session_state(self, session):
        """The subscriptions and window of C{session} as CBOR-ready values, or None."""
        outbox = self._outboxes.get(session.session_id)
        if outbox is None:
            return None
        return {
            "topics": dict(outbox.topics),
            "inflight": [[topic, seq, size] for (topic, seq), size in outbox.inflight.items()],
            "own": dict(outbox.own),
        }

    def restore_session(self, session, state):
        """Recreate the outbox of a restored C{session} from L{session_state} output."""
        # Trust is not loaded yet at restore; every push asks it anyway.
        if state is None:
            return
        outbox = self._outboxes[session.session_id] = Outbox(session)
        outbox.topics.update(state["topics"])
        outbox.inflight.update({(topic, seq): size for topic, seq, size in state["inflight"]})
        outbox.own.update(state["own"])
