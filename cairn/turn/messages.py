"""
CBOR bodies of RelayRequest (0x0401) and RelayResponse (0x0402),
docs/protocol.md §22: parsers that raise L{BodyError}, builders that
return plain maps.
"""

from cairn.wire.schema import BodyError, require_map, text_field, uint_field

#: Bounds a client applies to a RelayResponse.
MAX_SERVERS = 32
MAX_URL = 1024
MAX_USERNAME = 512
MAX_PASSWORD = 256
MAX_ERROR = 1024
#: Largest ttl a RelayRequest may carry (larger values are a malformed body).
MAX_TTL = 2**32 - 1


def parse_relay_request(body):
    """RelayRequest: C{{? "ttl": uint (1..2**32-1)}}; returns the requested ttl or None."""
    body = require_map(body, "RelayRequest")
    ttl = uint_field(body, "ttl", "RelayRequest", MAX_TTL, required=False)
    if ttl == 0:
        raise BodyError("RelayRequest: 'ttl' must be at least 1")
    return ttl


def relay_request(ttl=None):
    """A RelayRequest body."""
    return {} if ttl is None else {"ttl": ttl}


def relay_granted(servers, username, password, ttl, expires_at):
    """A RelayResponse body with credentials."""
    return {
        "servers": list(servers),
        "username": username,
        "password": password,
        "ttl": ttl,
        "expires_at": expires_at,
    }


def relay_refused(reason):
    """A RelayResponse body saying the node offers no TURN service."""
    return {"servers": [], "error": reason}


def parse_relay_response(body):
    """
    RelayResponse, either form; returns a dict with the same keys: the
    credentials form, or C{{"servers": [], "error": text}}.
    """
    body = require_map(body, "RelayResponse")
    servers = body.get("servers")
    if not isinstance(servers, list) or len(servers) > MAX_SERVERS:
        raise BodyError(f"RelayResponse: 'servers' must be an array of at most {MAX_SERVERS} URLs")
    for item in servers:
        if not isinstance(item, str) or not 0 < len(item.encode("utf-8", "surrogatepass")) <= MAX_URL:
            raise BodyError(f"RelayResponse: 'servers' must hold text of at most {MAX_URL} bytes")
    if "error" in body:
        return {"servers": list(servers), "error": text_field(body, "error", "RelayResponse", MAX_ERROR)}
    return {
        "servers": list(servers),
        "username": text_field(body, "username", "RelayResponse", MAX_USERNAME),
        "password": text_field(body, "password", "RelayResponse", MAX_PASSWORD),
        "ttl": uint_field(body, "ttl", "RelayResponse"),
        "expires_at": uint_field(body, "expires_at", "RelayResponse"),
    }
