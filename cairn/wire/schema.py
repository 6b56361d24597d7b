"""
Validation of the CBOR bodies the session layer itself understands, and
the field checks every service's body parsers share.

Each C{parse_*} takes the decoded CBOR value and returns it checked, or
raises L{BodyError}. Unknown extra keys are ignored (minor versions may
add optional fields).
"""

from cairn.wire.constants import MAX_SEQUENCE


class BodyError(ValueError):
    """A body decodes as CBOR but does not follow its message's schema."""


def require_map(body, what):
    """C{body} if it is a map, else L{BodyError} naming C{what}."""
    if not isinstance(body, dict):
        raise BodyError(f"{what} body must be a map")
    return body


def uint_value(value, key, what, maximum=MAX_SEQUENCE, minimum=0):
    """C{value} (found at C{key}) if it is an integer (not a bool) from C{minimum} to C{maximum}."""
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        if minimum:
            raise BodyError(f"{what}: {key!r} must be an integer from {minimum} to {maximum}")
        raise BodyError(f"{what}: {key!r} must be an unsigned integer <= {maximum}")
    return value


def uint_field(body, key, what, maximum=MAX_SEQUENCE, required=True, minimum=0):
    """An unsigned integer (not a bool) at C{key}, at most C{maximum}; None if optional and absent."""
    if key not in body and not required:
        return None
    return uint_value(body.get(key), key, what, maximum, minimum)


def text_field(body, key, what, max_len=None, default=None):
    """Text at C{key} of at most C{max_len} UTF-8 bytes (any length if None; C{default} if absent and given)."""
    value = body.get(key, default)
    if not isinstance(value, str) or (max_len is not None and len(value.encode("utf-8", "surrogatepass")) > max_len):
        limit = "" if max_len is None else f" of at most {max_len} bytes"
        raise BodyError(f"{what}: {key!r} must be text{limit}")
    return value


def bool_field(body, key, what, default=False):
    """A boolean at C{key} (C{default} if absent)."""
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BodyError(f"{what}: {key!r} must be a boolean")
    return value


def bytes_field(body, key, what, size=None):
    """A byte string at C{key}, of exactly C{size} bytes when given."""
    value = body.get(key)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        shape = f"{size} bytes" if size is not None else "a byte string"
        raise BodyError(f"{what}: {key!r} must be {shape}")
    return value


def parse_handshake(body) -> bytes:
    """The Noise message inside a handshake envelope payload."""
    return bytes_field(require_map(body, "handshake"), "noise", "handshake")


def parse_keepalive(body):
    """Keepalive: {} or {"ack": uint}; returns the ack or None."""
    return uint_field(require_map(body, "Keepalive"), "ack", "Keepalive", required=False)


def parse_close(body):
    """Close: {"code": uint, "reason": text}; returns (code, reason)."""
    body = require_map(body, "Close")
    return uint_field(body, "code", "Close", 0xFFFF), text_field(body, "reason", "Close", 1024)


def parse_reconnect(body) -> int:
    """Reconnect: {"last_received": uint}; returns it."""
    return uint_field(require_map(body, "Reconnect"), "last_received", "Reconnect")


def parse_key_update(body) -> int:
    """KeyUpdate: {"epoch": uint}; returns the sender's new epoch."""
    return uint_field(require_map(body, "KeyUpdate"), "epoch", "KeyUpdate")


def parse_channel_init(body):
    """ChannelInit: {"channel": uint, "name": text}; returns (id, name)."""
    body = require_map(body, "ChannelInit")
    cid = uint_field(body, "channel", "ChannelInit", 2**32 - 1)
    name = text_field(body, "name", "ChannelInit", 255)
    if cid == 0:
        raise BodyError("ChannelInit: channel 0 is reserved")
    return cid, name


def parse_data(body):
    """Data: {"channel": uint, "dr": map}; returns (id, ratchet message)."""
    body = require_map(body, "Data")
    cid = uint_field(body, "channel", "Data", 2**32 - 1)
    dr = body.get("dr")
    if not isinstance(dr, dict):
        raise BodyError("Data: 'dr' must be a map")
    return cid, dr
