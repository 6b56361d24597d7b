"""
The named channels of one session and the Double Ratchet over their Data.

Channel ids: the initiator opens even ids from 2, the responder odd ids
from 1; 0 is reserved for the ratchet start (docs/protocol.md §10, §9.5).

The ratchet starts with the first channel, not with the session: the
initiator sends the ratchet start (an empty Data on channel 0) just before
its first ChannelInit, or just after the responder's first ChannelInit
reaches it. A session that never opens a channel (a mailbox or sync
session, a relay control session, an idle device) never pays for a
ratchet: no seed derivation, no X25519 key pairs, no state to keep. The
responder queues Data it wants to send until the start arrives, because a
Double Ratchet responder cannot encrypt before the initiator's first
message.

Ratchet keys are made ahead (L{cairn.crypto.ratchet.make_spare_keys}):
when an own-key step (docs/protocol.md section 11.8, taken at a send) or a
ratchet start has used one, the channels ask for a new one once the writes
of the current reactor turn are out (L{_top_up_later}), so the next step,
usually at the answer to the peer's next message, does not wait for a key
generation.
"""

from collections import deque

from cairn.crypto.ratchet import (
    Ratchet,
    RatchetError,
    make_spare_keys,
    spare_keys_wanted,
)
from cairn.crypto.ratchet_seed import derive_seed, session_ad
from cairn.session.errors import ProtocolViolation
from cairn.wire.cbor import dumps_data
from cairn.wire.constants import CloseCode, MessageType

#: Every Data's type, bound once (see L{cairn.session.receiving._DATA}).
_DATA = MessageType.DATA
#: Data queued by a responder before the initiator's ratchet start arrives.
MAX_PENDING_DATA = 1024
MAX_NAME_BYTES = 255

#: The clock of the last top-up asked for and its pending call (one a process
#: in practice: the reactor's).
_top_up = [None, None]


def _top_up_later(clock) -> None:
    """
    Call L{make_spare_keys} after the writes of this reactor turn are sent.

    Twisted sends what a protocol wrote when the next poll finds the socket
    writable, and a reactor iteration runs its due timed calls before it
    polls: a call made with C{callLater(0)} now would run before the send,
    delaying the answer it was meant to stay out of the way of. So it is
    two hops: the first runs before the poll that sends, the second after
    it. One pending top-up per clock at a time.
    """
    last_clock, call = _top_up
    if last_clock is clock and call is not None and call.active():
        return
    _top_up[0], _top_up[1] = clock, clock.callLater(0, _second_hop, clock)


def _second_hop(clock) -> None:
    _top_up[1] = clock.callLater(0, _make_spare_keys)


def _make_spare_keys() -> None:
    _top_up[1] = None
    make_spare_keys()


class Channel:
    """
    A named channel on a session. Data sent on it is ratchet-encrypted.

    Set C{on_data} to a callable taking C{bytes} to receive.
    """

    def __init__(self, channels, channel_id: int, name: str):
        self._channels = channels
        self.session = channels.session
        self.id = channel_id
        self.name = name
        self.on_data = None

    @property
    def id(self) -> int:
        return self._id

    @id.setter
    def id(self, channel_id: int) -> None:
        self._id = channel_id
        #: The ratchet's associated data for this channel's Data (made once per id).
        self.ad = session_ad(self.session.session_id, channel_id)

    def send(self, data: bytes) -> None:
        """Send C{data} on this channel."""
        self._channels.send(self._id, data, self.ad)

    def __repr__(self):
        return f"<Channel {self.id} {self.name!r}>"


class Channels:
    """
    The channels of one L{Session}, and the ratchet protecting their Data.

    @ivar by_id: the open channels by id.
    """

    def __init__(self, session):
        self.session = session
        self.by_id = {}
        self._by_name = {}
        self._next = 2 if session.initiator else 1
        self._ratchet = None
        self._pending = deque()

    def _seed(self):
        # A session that forgot its handshake keys (a key update, a restore)
        # kept what the seed is made from (docs/protocol.md §8.3).
        seed = self.session.seed_from_okm()
        if seed is not None:
            return seed
        result = self.session.result
        return derive_seed(result.handshake_hash, result.key_i2r, result.key_r2i)

    def open(self, name: str) -> Channel:
        """
        Open (or return the already open) channel called C{name}.

        @raise ValueError: the name is longer than 255 UTF-8 bytes.
        """
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"a channel name is at most {MAX_NAME_BYTES} UTF-8 bytes")
        if name in self._by_name:
            return self._by_name[name]
        cid = self._next
        self._next += 2
        channel = self._add(cid, name)
        if self.session.initiator and self._ratchet is None:
            self.start_ratchet()
        self.session.send(MessageType.CHANNEL_INIT, {"channel": cid, "name": name})
        return channel

    def _add(self, cid, name):
        channel = Channel(self, cid, name)
        self.by_id[cid] = channel
        self._by_name.setdefault(name, channel)
        return channel

    def init_received(self, cid, name) -> Channel:
        """The peer opened channel C{cid}; raise L{ProtocolViolation} if it may not."""
        if cid in self.by_id:
            raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, f"channel {cid} already open")
        if (cid % 2 == 0) == self.session.initiator:
            raise ProtocolViolation(
                CloseCode.UNEXPECTED_MESSAGE, f"channel {cid} has the wrong parity for its opener"
            )
        channel = self._add(cid, name)
        if self.session.initiator and self._ratchet is None:
            # The responder opened the first channel: it is waiting for us.
            self.start_ratchet()
        return channel

    def start_ratchet(self) -> None:
        """Initiator only: send the ratchet start (empty Data on channel 0)."""
        session = self.session
        self._ratchet, message = Ratchet.start_initiator(self._seed(), b"", session_ad(session.session_id, 0))
        session.send(MessageType.DATA, {"channel": 0, "dr": message})
        if spare_keys_wanted():
            _top_up_later(session.clock)
        self._flush_pending()

    def _flush_pending(self):
        while self._pending:
            self.send(*self._pending.popleft())

    def send(self, cid, data, ad=None) -> None:
        """Ratchet-encrypt C{data} and send it as Data on channel C{cid} (C{ad}: its L{session_ad}, if known)."""
        session = self.session
        if session.closed is not None:
            raise session.closed
        if self._ratchet is None:
            if len(self._pending) >= MAX_PENDING_DATA:
                raise ValueError("too much data queued before the ratchet started")
            self._pending.append((cid, data))
            return
        pub, pn, n, ct = self._ratchet.encrypt_parts(data, ad or session_ad(session.session_id, cid))
        session.send_payload(_DATA, dumps_data(cid, pub, pn, n, ct))
        if spare_keys_wanted():  # an own-key step used one
            _top_up_later(session.clock)

    def data_received(self, cid, message):
        """
        Decrypt one Data body; return C{(channel, plaintext)}, or None for the
        ratchet start.

        @raise ProtocolViolation: Data before the ratchet start, a ratchet
            failure, or an unopened channel.
        """
        ad = session_ad(self.session.session_id, cid)
        try:
            if self._ratchet is None:
                if self.session.initiator or cid != 0:
                    raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, "Data before the ratchet start")
                self._ratchet, _ = Ratchet.start_responder(self._seed(), message, ad)
                self._flush_pending()
                if spare_keys_wanted():
                    _top_up_later(self.session.clock)
                return None
            plain = self._ratchet.decrypt(message, ad)
        except RatchetError as e:
            raise ProtocolViolation(CloseCode.DECRYPT_FAILED, f"ratchet: {e}") from None
        if cid == 0:
            return None
        channel = self.by_id.get(cid)
        if channel is None:
            raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, f"Data on unopened channel {cid}")
        return channel, plain

    def parts_received(self, cid, pub, pn, n, ct):
        """
        L{data_received} of a Data body read by L{cairn.wire.cbor.loads_data}
        (the common case: no ratchet message dict is made).
        """
        ratchet = self._ratchet
        if ratchet is None:
            return self.data_received(cid, {"pub": pub, "pn": pn, "n": n, "ct": ct})
        channel = self.by_id.get(cid)
        ad = channel.ad if channel is not None else session_ad(self.session.session_id, cid)
        try:
            plain = ratchet.decrypt_parts(pub, pn, n, ct, ad)
        except RatchetError as e:
            raise ProtocolViolation(CloseCode.DECRYPT_FAILED, f"ratchet: {e}") from None
        if cid == 0:
            return None
        if channel is None:
            raise ProtocolViolation(CloseCode.UNEXPECTED_MESSAGE, f"Data on unopened channel {cid}")
        return channel, plain

    def snapshot(self) -> dict:
        """The channel and ratchet state a clean restart needs."""
        return {
            "ratchet": self._ratchet.to_json() if self._ratchet is not None else None,
            "channels": [[c.id, c.name] for c in self.by_id.values()],
            "next_channel": self._next,
        }

    def restore(self, state: dict) -> None:
        """Load what L{snapshot} saved."""
        if state["ratchet"] is not None:
            self._ratchet = Ratchet.from_json(state["ratchet"])
        for cid, name in state["channels"]:
            self._add(cid, name)
        self._next = state["next_channel"]
