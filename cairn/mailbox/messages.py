"""
CBOR bodies of the forward family (docs/protocol.md §21): parsers that
raise L{BodyError}, builders that return plain maps.
"""

import functools

from cairn.crypto.identity import parse_peer_id
from cairn.wire.schema import BodyError, bytes_field, require_map, uint_field, uint_value

#: Sequence numbers and ids are positive and below 2^63 (§21.1).
MAX_POSITIVE = 2**63 - 1
#: The item types of a list of integers only (L{_uints}).
_INT = {int}

MESSAGE_ID_SIZE = 16
#: Most ids in one ForwardPurge list.
MAX_PURGE_IDS = 4096
#: Most deliveries in one ForwardDeliver, receipts in one ForwardReceipt.
MAX_BATCH = 4096
#: Envelope bytes a ForwardDeliver adds around the payload (its other keys),
#: reserved so that whatever the node accepted it can also deliver.
DELIVER_OVERHEAD = 256


@functools.lru_cache(maxsize=4096)
def _peer_id_error(value):
    """Why C{value} is not a peer id, or None (base58 costs ~20 us; the same ids come back)."""
    try:
        parse_peer_id(value)
    except ValueError as e:
        return str(e)
    return None


def _peer_id(body, key, what):
    value = body.get(key)
    if not isinstance(value, str) or len(value) > 64:
        raise BodyError(f"{what}: {key!r} must be a peer id")
    error = _peer_id_error(value)
    if error is not None:
        raise BodyError(f"{what}: {key!r}: {error}")
    return value


def _batch(body, key, what):
    body = require_map(body, what)
    value = body.get(key)
    if not isinstance(value, list) or not 0 < len(value) <= MAX_BATCH:
        raise BodyError(f"{what}: {key!r} must be an array of 1 to {MAX_BATCH} maps")
    return value


def _uints(body, key, what):
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_PURGE_IDS:
        raise BodyError(f"{what}: {key!r} must be an array of at most {MAX_PURGE_IDS} integers")
    # All ints (not bools) in range, tested in C loops: a drain's receipts
    # come back 256 a ForwardPurge (issue 19); else the item that is not.
    if value and not (set(map(type, value)) == _INT and min(value) >= 1 and max(value) <= MAX_POSITIVE):
        for item in value:
            uint_value(item, key, what, MAX_POSITIVE, minimum=1)
    return value


def request_entries(body):
    """
    ForwardRequest: {"messages": [entry]}; returns the entries (maps), each
    checked to have an id to answer to, or raises L{BodyError}.
    """
    entries = _batch(body, "messages", "ForwardRequest")
    for entry in entries:
        request_id(entry)
    return entries


def request_id(body) -> bytes:
    """The message id of a ForwardRequest entry, or L{BodyError} if there is none to answer to."""
    return bytes_field(require_map(body, "ForwardRequest"), "id", "ForwardRequest", MESSAGE_ID_SIZE)


def parse_forward_request(body):
    """A ForwardRequest entry: {"to": peer id, "id": 16 bytes, "payload": bytes}; returns (to, id, payload)."""
    body = require_map(body, "ForwardRequest")
    message_id = bytes_field(body, "id", "ForwardRequest", MESSAGE_ID_SIZE)
    to = _peer_id(body, "to", "ForwardRequest")
    payload = body.get("payload")
    if not isinstance(payload, bytes) or not payload:
        raise BodyError("ForwardRequest: 'payload' must be a non-empty byte string")
    return to, message_id, payload


def uuid7_millis(message_id: bytes):
    """The Unix milliseconds of a UUIDv7, or None if C{message_id} is not one (RFC 9562)."""
    if len(message_id) != MESSAGE_ID_SIZE or message_id[6] >> 4 != 7 or message_id[8] >> 6 != 0b10:
        return None
    return int.from_bytes(message_id[:6], "big")


def parse_forward_purge(body):
    """ForwardPurge: {"seqs": [uint], "receipts": [uint]} (each optional); returns (seqs, rseqs)."""
    body = require_map(body, "ForwardPurge")
    return _uints(body, "seqs", "ForwardPurge"), _uints(body, "receipts", "ForwardPurge")


def parse_purge_upto(body) -> int:
    """The cumulative C{"upto"} of a ForwardPurge (a map already), 0 when absent."""
    return uint_field(body, "upto", "ForwardPurge", MAX_POSITIVE, minimum=1) if "upto" in body else 0


def parse_peer_key_request(body) -> str:
    """PeerKeyRequest: {"peer": peer id}; returns it."""
    return _peer_id(require_map(body, "PeerKeyRequest"), "peer", "PeerKeyRequest")


# Client side


def parse_acks(body):
    """ForwardAck: {"acks": [ack]}; returns the L{parse_forward_ack} tuples."""
    return [parse_forward_ack(entry) for entry in _batch(body, "acks", "ForwardAck")]


def parse_forward_ack(body):
    """One ack of a ForwardAck: {"id", "status", "reason"?}; returns (id, status, reason)."""
    body = require_map(body, "ForwardAck")
    status = body.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or status < 0:
        raise BodyError("ForwardAck: 'status' must be an unsigned integer")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BodyError("ForwardAck: 'reason' must be text")
    return bytes_field(body, "id", "ForwardAck", MESSAGE_ID_SIZE), status, reason


def parse_forward_deliver(body):
    """One delivery of a ForwardDeliver: {"id", "from", "seq", "stored_at", "payload"}; returns them as a tuple."""
    body = require_map(body, "ForwardDeliver")
    message_id = bytes_field(body, "id", "ForwardDeliver", MESSAGE_ID_SIZE)
    sender = _peer_id(body, "from", "ForwardDeliver")
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
        raise BodyError("ForwardDeliver: 'seq' must be a positive integer")
    stored_at = body.get("stored_at")
    if not isinstance(stored_at, (int, float)) or isinstance(stored_at, bool):
        raise BodyError("ForwardDeliver: 'stored_at' must be a number")
    payload = body.get("payload")
    if not isinstance(payload, bytes):
        raise BodyError("ForwardDeliver: 'payload' must be a byte string")
    return message_id, sender, seq, float(stored_at), payload


def parse_deliveries(body):
    """
    ForwardDeliver: {"messages": [delivery]}; returns the L{parse_forward_deliver}
    tuples, checked to be in increasing C{seq} order.

    An entry of exactly the kinds a node sends (a dict; bytes id of 16
    bytes; text sender; int seq; float stored_at; bytes payload) is taken
    in one test of its values; any other goes through
    L{parse_forward_deliver}, which accepts or refuses it as before (a
    recipient's drain pays this per message: issue 19).
    """
    out, last = [], 0
    for entry in _batch(body, "messages", "ForwardDeliver"):
        if type(entry) is dict:
            message_id, sender, seq = entry.get("id"), entry.get("from"), entry.get("seq")
            stored_at, payload = entry.get("stored_at"), entry.get("payload")
            if (
                type(message_id) is bytes
                and len(message_id) == MESSAGE_ID_SIZE
                and type(sender) is str
                and len(sender) <= 64
                and type(seq) is int
                and seq > 0
                and type(stored_at) is float
                and type(payload) is bytes
                and _peer_id_error(sender) is None
            ):
                delivery = (message_id, sender, seq, stored_at, payload)
            else:
                delivery = parse_forward_deliver(entry)
        else:
            delivery = parse_forward_deliver(entry)
        if delivery[2] <= last:
            raise BodyError("ForwardDeliver: 'messages' must be in increasing 'seq' order")
        last = delivery[2]
        out.append(delivery)
    return out


def parse_receipts(body):
    """
    ForwardReceipt: {"receipts": [receipt]}; returns the L{parse_forward_receipt}
    tuples (an entry of exactly the kinds a node sends in one test, as in
    L{parse_deliveries}; any other through L{parse_forward_receipt}).
    """
    out = []
    for entry in _batch(body, "receipts", "ForwardReceipt"):
        if type(entry) is dict:
            message_id, to, rseq = entry.get("id"), entry.get("to"), entry.get("rseq")
            status, at = entry.get("status"), entry.get("at")
            if (
                type(message_id) is bytes
                and len(message_id) == MESSAGE_ID_SIZE
                and type(to) is str
                and len(to) <= 64
                and type(rseq) is int
                and rseq > 0
                and type(status) is int
                and type(at) is float
                and _peer_id_error(to) is None
            ):
                out.append((message_id, to, rseq, status, at))
                continue
        out.append(parse_forward_receipt(entry))
    return out


def parse_forward_receipt(body):
    """One receipt of a ForwardReceipt: {"id", "to", "rseq", "status", "at"}; returns them as a tuple."""
    body = require_map(body, "ForwardReceipt")
    message_id = bytes_field(body, "id", "ForwardReceipt", MESSAGE_ID_SIZE)
    to = _peer_id(body, "to", "ForwardReceipt")
    rseq, status, at = body.get("rseq"), body.get("status"), body.get("at")
    if not isinstance(rseq, int) or isinstance(rseq, bool) or rseq <= 0:
        raise BodyError("ForwardReceipt: 'rseq' must be a positive integer")
    if not isinstance(status, int) or isinstance(status, bool):
        raise BodyError("ForwardReceipt: 'status' must be an integer")
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        raise BodyError("ForwardReceipt: 'at' must be a number")
    return message_id, to, rseq, status, float(at)


def parse_peer_key_response(body):
    """
    PeerKeyResponse: {"peer": peer id, "key": 32 bytes or null, ? "retry":
    bool}; returns (peer, key, retry): C{retry} with a null key, the node
    could not check the peer's pairing now (§21.7), so it is not known unpaired.
    """
    body = require_map(body, "PeerKeyResponse")
    peer = _peer_id(body, "peer", "PeerKeyResponse")
    key = body.get("key")
    if key is not None and (not isinstance(key, bytes) or len(key) != 32):
        raise BodyError("PeerKeyResponse: 'key' must be 32 bytes or null")
    retry = body.get("retry", False)
    if not isinstance(retry, bool):
        raise BodyError("PeerKeyResponse: 'retry' must be a boolean")
    return peer, key, retry and key is None
