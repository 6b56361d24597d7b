"""
What a session keeps so that it can be resumed: the resend buffer of
envelopes sent and not yet acknowledged, resent after a Reconnect
(docs/protocol.md §12), and the snapshot a clean restart saves and
restores (§16).

A mixin of L{cairn.session.session.Session}, which owns the state it uses:
C{local} (the L{Peer}, with C{resend_limits}), C{connection}, C{cipher},
C{result}, C{send_seq}, C{recv_seq}, C{_unacked}, C{_unacked_bytes},
C{_dropped_upto}, C{_reconnect_seq}, C{_key_update_seq}, C{_seed_okm} and
its channels.
"""

import secrets
from collections import deque

import attr

from cairn.session.errors import ProtocolViolation
from cairn.wire.constants import CloseCode

#: A restored session's send counter jumps forward by at least RESTORE_JUMP
#: plus a random number below RESTORE_JUMP_RANDOM (docs/protocol.md §16.4),
#: and is not restored at all past RESTORE_SEQ_LIMIT.
RESTORE_JUMP = 2**32
RESTORE_JUMP_RANDOM = 2**56
RESTORE_SEQ_LIMIT = 2**63


class ResumeState:
    """The resend buffer and the restart snapshot of a L{Session}."""

    __slots__ = ()  # the state is in the slots of the class using it

    # The resend buffer (§12)

    def _resend_queue(self) -> deque:
        """The resend buffer, made on first use (see __init__)."""
        if not self._unacked:
            self._unacked = deque()
        return self._unacked

    def _buffer(self, seq, data):
        unacked = self._unacked
        if not unacked:  # L{_resend_queue}, written in (every buffered envelope, issue 19)
            unacked = self._unacked = deque()
        unacked.append((seq, data))
        self._unacked_bytes += len(data)
        limit_count, limit_bytes = self.local.resend_limits
        while self._unacked and (len(self._unacked) > limit_count or self._unacked_bytes > limit_bytes):
            old_seq, old = self._unacked.popleft()
            self._unacked_bytes -= len(old)
            self._dropped_upto = old_seq

    def _acknowledged(self, upto: int):
        while self._unacked and self._unacked[0][0] <= upto:
            _, old = self._unacked.popleft()
            self._unacked_bytes -= len(old)
            if not self._unacked:
                self._unacked = ()  # everything acknowledged: free the buffer
        if self._key_update_seq is not None and upto >= self._key_update_seq:
            self._key_update_seq = None  # the peer has our new key: another update may follow

    def resend_after(self, last_received: int) -> None:
        """
        Resend everything the peer has not received.

        @raise ProtocolViolation: C{RESUME_FAILED} if some of it was
            dropped from the bounded buffer, or the peer claims to have
            received more than was sent.
        """
        if last_received >= self.send_seq:
            raise ProtocolViolation(CloseCode.RESUME_FAILED, "peer acknowledges envelopes never sent")
        if last_received < self._dropped_upto:
            raise ProtocolViolation(CloseCode.RESUME_FAILED, "envelopes the peer lacks are no longer buffered")
        self._acknowledged(last_received)
        for _, data in self._unacked:
            self.connection.write(data)

    def buffered(self):
        """(count, bytes) held for resend; for metrics and tests."""
        return len(self._unacked), self._unacked_bytes

    # Persistence for resume across restarts (§16)

    def snapshot(self) -> dict:
        """The state a clean restart needs to resume this session (has keys)."""
        return {
            "session_id": self.session_id,
            "version": self.version,
            "initiator": self.initiator,
            "remote_identity": self.remote_identity,
            "handshake_hash": self.result.handshake_hash,
            # The keys of the current epochs (never the handshake's: a leaked
            # snapshot exposes no earlier epoch), under the handshake's names.
            "key_i2r": self.cipher.send_key if self.initiator else self.cipher.recv_key,
            "key_r2i": self.cipher.recv_key if self.initiator else self.cipher.send_key,
            "send_epoch": self.cipher.send_epoch,
            "recv_epoch": self.cipher.recv_epoch,
            "key_update_seq": self._key_update_seq,
            "seed_okm": self._seed_okm_now(),
            "send_seq": self.send_seq,
            "recv_seq": self.recv_seq,
            "dropped_upto": self._dropped_upto,
            "reconnect_seq": self._reconnect_seq,
            "unacked": [data for _, data in self._unacked],
            "unacked_seqs": [seq for seq, _ in self._unacked],
            **self._channels.snapshot(),
        }

    def restore(self, state: dict) -> None:
        """
        Load what L{snapshot} saved (the session object is new).

        The send counter jumps forward by a large random amount: the same
        snapshot may be restored more than once (a backup, a rollback),
        and two restores must never seal different plaintexts under one
        (key, nonce). Envelopes in the resend buffer keep their numbers:
        they are resent as the same bytes, not sealed again.

        @raise ValueError: the counter would pass L{RESTORE_SEQ_LIMIT}.
        """
        jumped = self.send_seq + RESTORE_JUMP + secrets.randbelow(RESTORE_JUMP_RANDOM)
        if jumped >= RESTORE_SEQ_LIMIT:
            raise ValueError("the send counter is too high to jump: the session cannot be restored")
        self.send_seq = jumped
        # The keys the session was made with are the snapshot's epoch keys.
        self.cipher.send_epoch = state.get("send_epoch", 0)
        self.cipher.recv_epoch = state.get("recv_epoch", 0)
        self._key_update_seq = state.get("key_update_seq")
        if state.get("seed_okm") is not None:
            self._seed_okm = state["seed_okm"]
            self.result = attr.evolve(self.result, key_i2r=None, key_r2i=None)
        self._dropped_upto = state["dropped_upto"]
        self._reconnect_seq = state["reconnect_seq"]
        for seq, data in zip(state["unacked_seqs"], state["unacked"]):
            self._resend_queue().append((seq, data))
            self._unacked_bytes += len(data)
        self._channels.restore(state)
