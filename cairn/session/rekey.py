"""
Key epochs of a session (docs/protocol.md §8.3): the KeyUpdate that moves
one direction's key forward, one way, every N envelopes or T seconds,
and the ratchet seed that outlives the handshake keys.

A mixin of L{cairn.session.session.Session}, which owns the state it uses:
C{cipher} (a L{cairn.crypto.aead.SessionCipher}), C{result}, C{clock},
C{local} (the L{Peer}, with C{rekey_envelopes} and C{rekey_interval}),
C{_epoch_sent}, C{_epoch_started}, C{_key_update_seq} and C{_seed_okm}.
"""

import attr

from cairn.crypto.ratchet_seed import seed_from_okm, seed_okm
from cairn.session.errors import ProtocolViolation
from cairn.wire.constants import CloseCode, MessageType

#: A direction's key is updated (KeyUpdate, §8.3) after this many envelopes
#: sealed under it, or this many seconds (the Peer may override both).
REKEY_ENVELOPES = 2**16
REKEY_INTERVAL = 900.0
#: Types before which no KeyUpdate is sent (a Reconnect answer must come first;
#: L{cairn.session.session.Session}'s send checks it with L{KeyEpochs._rekey_due}).
NO_REKEY_BEFORE = frozenset({MessageType.KEY_UPDATE, MessageType.RECONNECT, MessageType.CLOSE})


class KeyEpochs:
    """KeyUpdate sending and receiving, and the ratchet seed, for a L{Session}."""

    __slots__ = ()  # the state is in the slots of the class using it

    def _rekey_due(self) -> bool:
        local = self.local
        return (
            self._epoch_sent >= local.rekey_envelopes
            or self.clock.seconds() - self._epoch_started >= local.rekey_interval
        )

    def _update_send_key(self):
        """Send a KeyUpdate under the current key, then seal everything after it under the next one."""
        self._forget_handshake_keys()
        self._key_update_seq = self.send(MessageType.KEY_UPDATE, {"epoch": self.cipher.send_epoch + 1})
        self.cipher.update_send()
        self._epoch_sent = 0
        self._epoch_started = self.clock.seconds()

    def _key_update_received(self, epoch):
        if epoch != self.cipher.recv_epoch + 1:
            raise ProtocolViolation(
                CloseCode.UNEXPECTED_MESSAGE, f"KeyUpdate to epoch {epoch}, expected {self.cipher.recv_epoch + 1}"
            )
        self._forget_handshake_keys()
        self.cipher.update_recv()

    def _forget_handshake_keys(self):
        # Once a key is updated, memory keeps no key of an earlier epoch:
        # the channels' ratchet seed needs only what HKDF made of them.
        if self._seed_okm is None:
            result = self.result
            self._seed_okm = seed_okm(result.handshake_hash, result.key_i2r, result.key_r2i)
            self.result = attr.evolve(result, key_i2r=None, key_r2i=None)

    def seed_from_okm(self):
        """The L{RatchetSeed} of this session's channels if its handshake keys were forgotten, else None."""
        if self._seed_okm is None:
            return None
        return seed_from_okm(self._seed_okm)

    def _seed_okm_now(self) -> bytes:
        if self._seed_okm is not None:
            return self._seed_okm
        result = self.result
        return seed_okm(result.handshake_hash, result.key_i2r, result.key_r2i)
