"""
Re-establishing the end-to-end sessions a peer requested through a node
(L{cairn.relay.client}, "Circuits do not survive..."): once its circuit
is lost, the session is resumed over a new circuit as soon as there is an
attached session with the same node, retrying with backoff
(L{RETRY_BACKOFF}) on the client's clock while the node answers with a
L{RETRYABLE} status.

L{Reestablishing} is a mixin of L{cairn.relay.client.RelayEndpoint},
which owns the state it uses: C{peer}, C{clock}, C{resume_circuits},
C{relayed}, and C{_request} and C{_circuit_of}.
"""

import attr
from twisted.logger import Logger

from cairn.relay.interfaces import RouteRefused
from cairn.session.connection import HandshakeFailed
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode, RouteStatus

log = Logger()

#: Re-establishing a circuit: first delay, factor, ceiling (seconds).
RETRY_BACKOFF = (1.0, 2.0, 60.0)
#: Refusals after which re-establishing is tried again later.
RETRYABLE = frozenset({RouteStatus.OFFLINE, RouteStatus.CAPACITY, RouteStatus.TIMEOUT})


@attr.s(eq=False)
class Relayed:
    """An end-to-end session this peer requested, and how to re-establish it."""

    session = attr.ib()
    node_peer_id = attr.ib()
    delay = attr.ib(default=RETRY_BACKOFF[0])
    timer = attr.ib(default=None)
    pending = attr.ib(default=False)
    #: Circuits opened again for this session (for figures and tests).
    reestablished = attr.ib(default=0)

    def cancel_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class Reestablishing:
    """The sessions a L{RelayEndpoint} requested, resumed over new circuits after losses."""

    def _track(self, session, node_peer_id):
        self.relayed[session.session_id] = Relayed(session, node_peer_id)
        return session

    def _node_session(self, node_peer_id):
        """The newest attached, open session with the node C{node_peer_id}, or None."""
        found = None
        for session in self.peer.sessions.values():
            if (
                session.remote_peer_id == node_peer_id
                and session.closed is None
                and session.attached
                and self._circuit_of(session) is None
            ):
                found = session
        return found

    def _reestablish(self, relayed):
        session = relayed.session
        if session.closed is not None or session.attached or relayed.pending or relayed.timer is not None:
            return
        if not self.resume_circuits:
            return
        node = self._node_session(relayed.node_peer_id)
        if node is None:
            return  # tried again when a session with that node is resumed or established
        relayed.pending = True
        log.info(
            "relay: re-establishing session {sid} with {peer}",
            sid=session.session_id.hex()[:8],
            peer=session.remote_peer_id,
        )
        d = self._request(node, session.remote_peer_id, resume=session)
        d.addCallbacks(self._reestablished, self._reestablish_failed, callbackArgs=(relayed,), errbackArgs=(relayed,))

    def _reestablished(self, session, relayed):
        relayed.pending = False
        relayed.delay = RETRY_BACKOFF[0]
        relayed.reestablished += 1
        log.info("relay: session {sid} resumed over a new circuit", sid=session.session_id.hex()[:8])

    def _reestablish_failed(self, failure, relayed):
        relayed.pending = False
        session = relayed.session
        if session.closed is not None or session.attached:
            return None
        error = failure.value
        final = None
        if isinstance(error, RouteRefused) and error.status not in RETRYABLE:
            final = SessionClosed(CloseCode.GOING_AWAY, f"relay circuit not re-established: {error}")
        elif isinstance(error, HandshakeFailed) and error.code not in (CloseCode.GOING_AWAY, CloseCode.TIMEOUT):
            # The target refused the resume itself (it forgot the session).
            final = SessionClosed(error.code, error.reason)
        elif not isinstance(error, (RouteRefused, HandshakeFailed, SessionClosed)):
            log.failure("relay: re-establishing a circuit failed", failure)
        if final is not None:
            log.info("relay: session {sid} ends: {why}", sid=session.session_id.hex()[:8], why=final.reason)
            session.end_without_close(final)
            return None
        start, factor, ceiling = RETRY_BACKOFF
        relayed.timer = self.clock.callLater(relayed.delay, self._retry, relayed)
        relayed.delay = min(relayed.delay * factor, ceiling)
        return None

    def _retry(self, relayed):
        relayed.timer = None
        self._reestablish(relayed)

    def _node_back(self, node_session):
        """A session with a node is attached again: re-establish what went through that node."""
        for relayed in list(self.relayed.values()):
            if relayed.node_peer_id == node_session.remote_peer_id and not relayed.session.attached:
                relayed.cancel_timer()
                relayed.delay = RETRY_BACKOFF[0]
                self._reestablish(relayed)
