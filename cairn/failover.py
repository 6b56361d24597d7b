"""
Automatic resume and failover of a L{cairn.client.Client}'s sessions
(C{auto_resume=True}): a session whose transport drops is resumed at the
address that served it last, then at the other addresses of its node in
turn, each round once per backoff delay (L{RESUME_BACKOFF}, on the
injected clock); where a node refuses the Reconnect with Close 9
(docs/protocol.md §14.1) a new handshake replaces the session there.

A mixin of L{cairn.client.Client} (its L{Peer} observer hooks), which owns
the state it uses: C{auto_resume}, C{clock}, C{on_session_replaced},
C{_targets}, C{_addresses}, C{_successors}, C{_retries}, and its
C{resume} and C{_handshake}.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from cairn.dial import error_text
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode

# The client's log lines keep the namespace they had before this part
# left cairn.client.
log = Logger(namespace="cairn.client")

#: Automatic resume backoff: first delay, factor, ceiling (seconds).
RESUME_BACKOFF = (1.0, 2.0, 60.0)
#: Each backoff wait d is drawn uniformly from [(1 - RESUME_JITTER) d, d]:
#: never longer than the backoff says, and spread over its second half.
RESUME_JITTER = 0.5


class AutoResume:
    """Resume dropped sessions, and replace those no node knows any more (the L{Peer} observer hooks)."""

    def session_detached(self, session):
        if self.auto_resume and session.session_id in self._targets:
            self._schedule_resume(session, RESUME_BACKOFF[0])

    def session_closed(self, session):
        sid = session.session_id
        self._addresses.pop(sid, None)
        self._targets.pop(sid, None)
        call = self._retries.pop(sid, None)
        if call is not None and call.active():
            call.cancel()
        if sid not in self._successors:
            # Nothing replaces it: forget the chains of replacements that led to it.
            stale = [old for old in self._successors if self._last(old) is session]
            for old in stale:
                del self._successors[old]

    def _last(self, session_id):
        session = self._successors[session_id]
        while session.session_id in self._successors:
            session = self._successors[session.session_id]
        return session

    def _schedule_resume(self, session, delay):
        """Try to resume C{session} after the backoff C{delay}, less its random share (L{RESUME_JITTER})."""
        wait = delay * (1.0 - self.resume_jitter * self._random())
        self._retries[session.session_id] = self.clock.callLater(wait, self._try_resume, session, delay)

    def _try_resume(self, session, delay):
        self._retries.pop(session.session_id, None)
        if session.attached or session.closed is not None:
            return

        def again(done):
            if not done and session.closed is None and not session.attached:
                start, factor, ceiling = RESUME_BACKOFF
                self._schedule_resume(session, min(delay * factor, ceiling))

        def failed(failure):
            log.failure("automatic resume of {sid} failed", failure, sid=session.session_id.hex()[:8])

        self._resume_round(session).addCallbacks(again, failed)

    @inlineCallbacks
    def _resume_round(self, session):
        """
        Try each address of C{session}'s node once: resume it, or -- where
        the node refuses the Reconnect with Close 9 -- replace it with a new
        session. Fires with True when done (resumed, replaced or ended),
        False to try again after the next backoff delay.
        """
        sid = session.session_id.hex()[:8]
        target = self._targets.get(session.session_id)
        if target is None:
            return True
        renew = False
        for address in target.order():
            if session.closed is not None or session.attached:
                return True
            if not renew:
                try:
                    yield self.resume(session, address)
                except Exception as e:
                    code = getattr(e, "code", None)
                    log.info("resume of {sid} at {address} failed: {why}", sid=sid, address=address, why=error_text(e))
                    if code == CloseCode.UNKNOWN_SESSION:
                        # This node does not have the session (another one of
                        # the deployment had it, or it was lost): start anew here.
                        renew = True
                    elif code is not None and code not in (CloseCode.GOING_AWAY, CloseCode.TIMEOUT):
                        # The node refused the session itself: retrying cannot help.
                        session.end_without_close(SessionClosed(code, e.reason))
                        return True
                    else:
                        continue
                else:
                    if session.session_id in self._targets:
                        self._targets[session.session_id] = target.served(address)
                    return True
            if session.closed is not None or session.attached:
                return True
            try:
                new = yield self._handshake(target, [address])
            except Exception as e:
                log.info("new session at {address} failed: {why}", address=address, why=error_text(e))
                continue
            self._replace(session, new, target.served(address))
            return True
        return False

    def _replace(self, old, new, target):
        """C{new} takes the place of C{old}, which no node of the deployment knows any more."""
        if old.closed is not None:
            # It ended meanwhile (its TTL, or the application closed it):
            # nobody waits for a successor.
            new.close(CloseCode.NORMAL, "no longer wanted")
            return
        self._targets[new.session_id] = target
        self._successors[old.session_id] = new
        log.info(
            "session {old} replaced by a new session {new} (the node did not know it)",
            old=old.session_id.hex()[:8],
            new=new.session_id.hex()[:8],
        )
        old.end_without_close(
            SessionClosed(CloseCode.UNKNOWN_SESSION, "the node no longer has this session; replaced by a new one")
        )
        if self.on_session_replaced is not None:
            try:
                self.on_session_replaced(old, new)
            except Exception:
                log.failure("on_session_replaced failed")
