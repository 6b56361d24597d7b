"""
What the operator (or another node sharing the trust store) decides
about a peer: approving or rejecting its pending request, revoking its
pairing, and the purge hooks that forget a revoked peer's state.

L{Decisions} is a mixin of L{cairn.pairing.service.PairingService}, which
owns the state it uses: C{peer}, C{trust}, C{clock}, C{approvals},
C{_purge_hooks} and C{_sessions_of}.
"""

from twisted.internet import defer
from twisted.logger import Logger

from cairn.mailbox.interfaces import StoreFull
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED, UnknownPeer
from cairn.pairing.messages import APPROVAL
from cairn.wire.constants import CloseCode

log = Logger()


class Decisions:
    """Approval, rejection and revocation of a L{PairingService}'s peers, and the purge after a revocation."""

    def approve(self, peer_id):
        def check(record):
            if record is None or record.state != PENDING:
                raise UnknownPeer(peer_id)
            return self.trust.set_paired(peer_id, record.identity_key, record.name, APPROVAL, self.clock.seconds())

        def approved(record):
            log.info("peer {peer_id} paired by operator approval", peer_id=peer_id)
            for session in self._sessions_of(peer_id):
                self.approvals.confirm(session)
            self.peer.peer_paired(peer_id)
            return record

        return self.trust.get(peer_id).addCallback(check).addCallback(approved)

    def reject(self, peer_id):
        def rejected(_):
            log.info("pairing request of {peer_id} rejected by the operator", peer_id=peer_id)
            for session in self._sessions_of(peer_id):
                self.approvals.refuse(session)

        return self.trust.reject(peer_id).addCallback(rejected)

    def unpair(self, peer_id):
        def revoked(_):
            log.info("peer {peer_id} unpaired", peer_id=peer_id)
            for session in self._sessions_of(peer_id):
                try:
                    session.close(CloseCode.PAIRING_REVOKED, "pairing revoked")
                except Exception:  # one broken transport must not stop the revocation
                    log.failure("closing a revoked session failed")
            return self._purge(peer_id)

        return self.trust.revoke(peer_id, self.clock.seconds()).addCallback(revoked)

    def _decided_elsewhere(self, peer_id, record):
        """
        Another node changed C{peer_id}'s record: its sessions here follow
        within the watch's latency, as if it had happened here -- a
        revocation closes them (PAIRING_REVOKED), an approval confirms the
        one waiting for it, a rejection refuses it.
        """
        sessions = self._sessions_of(peer_id)
        if not sessions:
            return
        if record is not None and record.state == REVOKED:
            log.info("peer {peer_id} unpaired on another node", peer_id=peer_id)
            for session in sessions:
                try:
                    session.close(CloseCode.PAIRING_REVOKED, "pairing revoked")
                except Exception:
                    log.failure("closing a revoked session failed")
        elif record is not None and record.state == PAIRED:
            for session in sessions:
                if self.approvals.waiting(session):
                    self.approvals.confirm(session)
            self.peer.peer_paired(peer_id)  # idempotent: the services serve what they do not yet
        elif record is None:
            for session in sessions:
                if self.approvals.waiting(session):
                    self.approvals.refuse(session)

    def add_purge_hook(self, hook):
        self._purge_hooks.append(hook)

    def _purge(self, peer_id):
        results = [defer.maybeDeferred(hook, peer_id) for hook in self._purge_hooks]

        def done(outcomes):
            failures = [value for ok, value in outcomes if not ok]
            for failure in failures:
                if failure.check(StoreFull):  # a full store is expected (disk, reserve, JetStream away)
                    log.warn("purge hook failed for {peer_id}: {why}", peer_id=peer_id, why=failure.getErrorMessage())
                else:
                    log.failure("purge hook failed for {peer_id}", failure, peer_id=peer_id)
            if failures:
                return failures[0]  # revoked all the same; the caller learns the purge failed
            return None

        return defer.DeferredList(results, consumeErrors=True).addCallback(done)
