"""
Validation of the CBOR bodies the session layer itself understands.

Each C{parse_*} takes the decoded CBOR value and returns it checked, or
raises L{BodyError}. Unknown extra keys are ignored (minor versions may
add optional fields).
"""

from cairn.wire.constants import MAX_SEQUENCE


class BodyError(ValueError):
    """A body decodes as CBOR but does not follow its message's schema."""


def _map(body, what):
    if not isinstance(body, dict):
        raise BodyError(f"{what} body must be a map")
    return body


def _uint(body, key, what, maximum=MAX_SEQUENCE, required=True):
    if key not in body and not required:
        return None
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise BodyError(f"{what}: {key!r} must be an unsigned integer <= {maximum}")
    return value


def _text(body, key, what, max_len):
    value = body.get(key)
    if not isinstance(value, str) or len(value.encode("utf-8")) > max_len:
        raise BodyError(f"{what}: {key!r} must be text of at most {max_len} bytes")
    return value


def _bytes(body, key, what, size=None):
    value = body.get(key)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        shape = f"{size} bytes" if size is not None else "a byte string"
        raise BodyError(f"{what}: {key!r} must be {shape}")
    return value


def parse_handshake(body) -> bytes:
    """The Noise message inside a handshake envelope payload."""
    return _bytes(_map(body, "handshake"), "noise", "handshake")


def parse_keepalive(body):
    """Keepalive: {} or {"ack": uint}; returns the ack or None."""
    return _uint(_map(body, "Keepalive"), "ack", "Keepalive", required=False)


def parse_close(body):
    """Close: {"code": uint, "reason": text}; returns (code, reason)."""
    body = _map(body, "Close")
    return _uint(body, "code", "Close", 0xFFFF), _text(body, "reason", "Close", 1024)


def parse_reconnect(body) -> int:
    """Reconnect: {"last_received": uint}; returns it."""
    return _uint(_map(body, "Reconnect"), "last_received", "Reconnect")


def parse_channel_init(body):
    """ChannelInit: {"channel": uint, "name": text}; returns (id, name)."""
    body = _map(body, "ChannelInit")
    cid = _uint(body, "channel", "ChannelInit", 2**32 - 1)
    name = _text(body, "name", "ChannelInit", 255)
    if cid == 0:
        raise BodyError("ChannelInit: channel 0 is reserved")
    return cid, name


def parse_data(body):
    """Data: {"channel": uint, "dr": map}; returns (id, ratchet message)."""
    body = _map(body, "Data")
    cid = _uint(body, "channel", "Data", 2**32 - 1)
    dr = body.get("dr")
    if not isinstance(dr, dict):
        raise BodyError("Data: 'dr' must be a map")
    return cid, dr
