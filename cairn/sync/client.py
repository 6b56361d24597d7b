"""
The device side of the sync hub, over a client L{Session} with a node.

    from cairn.sync import client as sync
    sync.subscribe(session, ["notes"], lambda topic, seq, sender, data: ...,
                   on_reset=lambda topic, oldest_seq, reason: ...)
    seq = yield sync.sync_publish(session, "notes", b"opaque bytes")

L{sync_publish} fires with the update's seq once the node has it on disk
(or fails with L{PublishRejected}). Payloads are sealed end to end by
default (L{cairn.sync.sealing}, docs/protocol.md §24.10) under the
device's group key: give every device of one person the same
L{sealing.Keyring} (L{set_keyring}, or send it with L{share_key} through
the mailbox to a device that L{accept_keys_from} the sender). An update
that does not open is given to C{on_unreadable} (and logged) instead of
the update callback; L{use_plaintext} turns sealing off for an
application that seals its payloads itself.

The subscription is kept per client L{Peer} and sent again at every new
session, so the node replays what the device missed from its durable
cursor. Each update is given to the callback once (per topic, in seq
order; a replay of a seq already given is dropped) and acknowledged with
SyncCursor after the callback returns. A SyncReset (the device's cursor
fell behind retention) is given to the reset callback, then acknowledged
the same way.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger

from cairn.answers import Answers
from cairn.session.errors import Rejected
from cairn.sync import messages, sealing
from cairn.wire.constants import MessageType, SyncStatus

log = Logger()


class PublishRejected(Rejected):
    """The node did not store the update; C{code} is a L{SyncStatus} (or an unknown int)."""

    codes = SyncStatus
    what = "sync publish"


class SyncClient:
    """The sync dispatcher of one client L{Peer}: see the module docstring."""

    def __init__(self, peer):
        self.peer = peer
        #: Called with (topic, seq, sender peer id, data).
        self.on_update = None
        #: Called with (topic, oldest_seq, reason).
        self.on_reset = None
        #: Called with (topic, reason) when the node refuses this device a topic (§24.9).
        self.on_denied = None
        #: Called with (topic, seq, sender, reason) for an update that does not open.
        self.on_unreadable = None
        #: Payloads are sealed with this keyring (made on first use) unless C{plaintext}.
        self._keyring = None
        self.plaintext = False
        self.topics = {}  # topic -> last seq given to the application (0: none yet)
        self._acks = Answers()  # SyncAcks awaited
        handlers = {
            MessageType.SYNC_ACK: self._ack,
            MessageType.SYNC_UPDATE: self._update,
            MessageType.SYNC_RESET: self._reset,
            MessageType.SYNC_DENIED: self._denied,
        }
        peer.register_guarded(handlers, "sync client")
        peer.add_observer(self)

    def subscribe(self, session, topics, cursors=None):
        """
        Subscribe to C{topics} now on C{session}, and at every later session.

        @param cursors: {topic: seq} to replay from instead of the node's
            durable cursor (e.g. after the device lost its local state).
        """
        for topic in topics:
            self.topics.setdefault(topic, 0)
        body = {"topics": list(topics)}
        if cursors:
            self.topics.update(cursors)
            body["cursors"] = dict(cursors)
        _send(session, MessageType.SYNC_SUBSCRIBE, body)

    @property
    def keyring(self) -> sealing.Keyring:
        """The group keys payloads are sealed with (a new random one unless given)."""
        if self._keyring is None:
            self._keyring = sealing.Keyring.generate()
        return self._keyring

    @keyring.setter
    def keyring(self, value):
        self._keyring = value

    def publish(self, session, topic, data: bytes, update_id: bytes = None):
        """Publish C{data} on C{topic}; fires with its seq once durable. Retry with the same C{update_id}."""
        update_id = update_id or os.urandom(messages.UPDATE_ID_SIZE)
        if session.closed is not None:
            return defer.fail(session.closed)
        if not self.plaintext:
            data = self.keyring.seal(topic, self.peer.identity.peer_id, update_id, data)
        d = self._acks.add(session.session_id, update_id)
        session.send(MessageType.SYNC_PUBLISH, {"topic": topic, "id": update_id, "payload": data})
        return d

    def _open(self, topic, seq, sender, update_id, payload):
        """The update's data, or None (reported) if it does not open."""
        if self.plaintext:
            return payload
        try:
            return self.keyring.open(topic, sender, update_id, payload)
        except sealing.SealError as e:
            log.warn(
                "sync: update {seq} of {topic!r} from {sender} does not open: {why}",
                seq=seq,
                topic=topic,
                sender=sender,
                why=str(e),
            )
            if self.on_unreadable is not None:
                self.on_unreadable(topic, seq, sender, str(e))
            return None

    # Handlers

    def _ack(self, session, body):
        update_id, status, seq, reason = messages.parse_ack(body)
        d = self._acks.answered(session.session_id, update_id)
        if d is None:
            return
        if status in (SyncStatus.COMMITTED, SyncStatus.DUPLICATE):
            d.callback(seq)
        else:
            d.errback(PublishRejected(status, reason))

    def _update(self, session, body):
        topic, seq, sender, update_id, payload, _ = messages.parse_update(body)
        try:
            if topic in self.topics and seq > self.topics[topic]:
                self.topics[topic] = seq
                data = self._open(topic, seq, sender, update_id, payload)
                if data is not None and self.on_update is not None:
                    self.on_update(topic, seq, sender, data)
        finally:
            _send(session, MessageType.SYNC_CURSOR, {"topic": topic, "seq": seq})

    def _reset(self, session, body):
        topic, oldest_seq, reason = messages.parse_reset(body)
        try:
            if topic in self.topics:
                self.topics[topic] = max(self.topics[topic], oldest_seq - 1)
            if self.on_reset is not None:
                self.on_reset(topic, oldest_seq, reason)
        finally:
            _send(session, MessageType.SYNC_CURSOR, {"topic": topic, "seq": max(0, oldest_seq - 1)})

    def _denied(self, session, body):
        topic, reason = messages.parse_denied(body)
        # Not subscribed again at the next session: the operator must grant it first.
        self.topics.pop(topic, None)
        log.warn("sync: the node refused topic {topic!r}: {reason}", topic=topic, reason=reason)
        if self.on_denied is not None:
            self.on_denied(topic, reason)

    # Peer observer

    def session_established(self, session):
        if self.topics:
            _send(session, MessageType.SYNC_SUBSCRIBE, {"topics": list(self.topics)})

    def session_closed(self, session):
        sid = session.session_id
        self._acks.session_closed(sid, session.closed)


def _send(session, type_code, body):
    """Send if the session is open; what is lost with a transport is owed again (the node resends)."""
    session.send_if_open(type_code, body)


def sync_client(peer) -> SyncClient:
    """The L{SyncClient} of C{peer}, created on first use (also C{Client.sync})."""
    return peer.extension(SyncClient)


def sync_publish(session, topic: str, data: bytes, update_id: bytes = None):
    """Publish C{data} on C{topic} through the node of C{session}; see L{SyncClient.publish}."""
    return sync_client(session.local).publish(session, topic, data, update_id)


def set_keyring(peer, keyring) -> None:
    """Seal and open C{peer}'s sync payloads with C{keyring} (a L{sealing.Keyring})."""
    sync_client(peer).keyring = keyring


def use_plaintext(peer) -> None:
    """Send and give C{peer}'s sync payloads as they are (the application seals them itself)."""
    sync_client(peer).plaintext = True


def share_key(session, peer_id: str):
    """
    Send this device's current group key to its device C{peer_id} through
    the mailbox (sealed end to end); fires once the node stored it.
    """
    from cairn.mailbox import client as mailbox

    ring = sync_client(session.local).keyring
    return mailbox.forward(session, peer_id, sealing.share_key_message(ring.keys[ring.current]))


def accept_keys_from(peer, peer_ids, on_key=None) -> None:
    """
    Adopt (as current) a group key sent with L{share_key} by one of
    C{peer_ids}, this person's other devices; key messages from anyone
    else are dropped. C{on_key(sender, key_id)} is told of each adopted key.
    """
    from cairn.mailbox import client as mailbox

    trusted = set(peer_ids)
    client = sync_client(peer)

    def consume(sender, message_id, data) -> bool:
        key = sealing.shared_key(data)
        if key is None:
            return False
        if sender not in trusted:
            log.warn("sync: dropped a group key sent by {sender}, not a trusted device", sender=sender)
            return True
        ident = client.keyring.add(key, make_current=True)
        log.info("sync: adopted group key {key_id} from {sender}", key_id=ident.hex(), sender=sender)
        if on_key is not None:
            on_key(sender, ident)
        return True

    mailbox.mailbox(peer).filters.append(consume)


def subscribe(session, topics, callback, on_reset=None, cursors=None, on_denied=None):
    """
    Give C{callback(topic, seq, sender, data)} every update of C{topics}
    after the device's cursor, from this session on, acknowledging each
    once the callback returns; C{on_reset(topic, oldest_seq, reason)} is
    told when updates were removed by retention before the device had them,
    C{on_denied(topic, reason)} when the node does not let this device read
    a topic.
    """
    client = sync_client(session.local)
    client.on_update = callback
    if on_reset is not None:
        client.on_reset = on_reset
    if on_denied is not None:
        client.on_denied = on_denied
    client.subscribe(session, topics, cursors)
    return client
