"""
CBOR bodies of the sync family (docs/protocol.md §24): parsers that raise
L{BodyError}, on both sides.
"""

from cairn.crypto.identity import parse_peer_id
from cairn.wire.schema import BodyError, bytes_field, require_map, uint_value

UPDATE_ID_SIZE = 16
#: Most bytes (UTF-8) in a topic name, and topics in one SyncSubscribe.
MAX_TOPIC = 255
MAX_TOPICS = 256
#: Envelope bytes a SyncUpdate adds around the payload (its other keys and
#: the topic), reserved so that whatever the node accepted it can deliver.
UPDATE_OVERHEAD = 512


def _topic(value, what):
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > MAX_TOPIC:
        raise BodyError(f"{what}: a topic must be text of 1 to {MAX_TOPIC} bytes")
    return value


def _seq(value, what, key="seq"):
    return uint_value(value, key, what, 2**63 - 1)


def parse_subscribe(body):
    """SyncSubscribe: {"topics": [text], "cursors"?: {text: uint}}; returns {topic: seq or None}."""
    body = require_map(body, "SyncSubscribe")
    topics = body.get("topics")
    if not isinstance(topics, list) or not topics or len(topics) > MAX_TOPICS:
        raise BodyError(f"SyncSubscribe: 'topics' must be an array of 1 to {MAX_TOPICS} topics")
    cursors = body.get("cursors", {})
    if not isinstance(cursors, dict):
        raise BodyError("SyncSubscribe: 'cursors' must be a map")
    wanted = {_topic(t, "SyncSubscribe"): None for t in topics}
    for name, seq in cursors.items():
        if name not in wanted:
            raise BodyError("SyncSubscribe: 'cursors' names a topic not in 'topics'")
        wanted[name] = _seq(seq, "SyncSubscribe")
    return wanted


def publish_id(body) -> bytes:
    """The update id of a SyncPublish, or L{BodyError} if there is none to answer to."""
    return bytes_field(require_map(body, "SyncPublish"), "id", "SyncPublish", UPDATE_ID_SIZE)


def parse_publish(body):
    """SyncPublish: {"topic": text, "id": 16 bytes, "payload": bytes}; returns (topic, id, payload)."""
    body = require_map(body, "SyncPublish")
    update_id = bytes_field(body, "id", "SyncPublish", UPDATE_ID_SIZE)
    topic = _topic(body.get("topic"), "SyncPublish")
    payload = body.get("payload")
    if not isinstance(payload, bytes):
        raise BodyError("SyncPublish: 'payload' must be a byte string")
    return topic, update_id, payload


def parse_cursor(body):
    """SyncCursor: {"topic": text, "seq": uint}; returns (topic, seq)."""
    body = require_map(body, "SyncCursor")
    return _topic(body.get("topic"), "SyncCursor"), _seq(body.get("seq"), "SyncCursor")


# Client side


def parse_ack(body):
    """SyncAck: {"id", "status", "seq": uint or null, "reason"?}; returns (id, status, seq, reason)."""
    body = require_map(body, "SyncAck")
    status = _seq(body.get("status"), "SyncAck", "status")
    seq = body.get("seq")
    if seq is not None:
        seq = _seq(seq, "SyncAck")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BodyError("SyncAck: 'reason' must be text")
    return bytes_field(body, "id", "SyncAck", UPDATE_ID_SIZE), status, seq, reason


def parse_update(body):
    """SyncUpdate: {"topic", "seq", "from", "id", "payload", "at"}; returns them as a tuple."""
    body = require_map(body, "SyncUpdate")
    topic = _topic(body.get("topic"), "SyncUpdate")
    seq = _seq(body.get("seq"), "SyncUpdate")
    sender = body.get("from")
    if not isinstance(sender, str) or len(sender) > 64:
        raise BodyError("SyncUpdate: 'from' must be a peer id")
    try:
        parse_peer_id(sender)
    except ValueError as e:
        raise BodyError(f"SyncUpdate: 'from': {e}") from None
    payload = body.get("payload")
    if not isinstance(payload, bytes):
        raise BodyError("SyncUpdate: 'payload' must be a byte string")
    at = body.get("at")
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        raise BodyError("SyncUpdate: 'at' must be a number")
    return topic, seq, sender, bytes_field(body, "id", "SyncUpdate", UPDATE_ID_SIZE), payload, float(at)


def parse_reset(body):
    """SyncReset: {"topic", "oldest_seq", "reason"}; returns them as a tuple."""
    body = require_map(body, "SyncReset")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BodyError("SyncReset: 'reason' must be text")
    return _topic(body.get("topic"), "SyncReset"), _seq(body.get("oldest_seq"), "SyncReset", "oldest_seq"), reason


def parse_denied(body):
    """SyncDenied: {"topic", "reason"}; returns them as a tuple."""
    body = require_map(body, "SyncDenied")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BodyError("SyncDenied: 'reason' must be text")
    return _topic(body.get("topic"), "SyncDenied"), reason
