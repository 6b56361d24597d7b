"""
Which web pages may open a cairn WebSocket (C{CAIRN_WS_ALLOWED_ORIGINS}).

A browser puts the page's origin (RFC 6454) in the C{Origin} header of
every WebSocket it opens, and lets any page open a WebSocket to any
address -- a node on the user's LAN or on localhost included. cairn's
clients are not web pages: they send no C{Origin}. So the node accepts an
opening handshake without C{Origin}, and one with C{Origin} only if that
origin is listed; anything else is refused with HTTP 403 before the
upgrade (docs/protocol.md §2.2).

Origins compare in their serialized form: scheme and host in lower case,
the port only when it is not the scheme's default (80 for http, 443 for
https). C{null} (a sandboxed page, a local file) matches only when listed;
C{*} allows every origin.
"""

from urllib.parse import urlsplit

ANY = "*"
NULL = "null"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(text: str) -> str:
    """
    The serialized form of an origin (or C{null}, or C{*}).

    @raise ValueError: not C{scheme://host[:port]}.
    """
    if not isinstance(text, str):
        raise ValueError("an origin is text")
    stripped = text.strip()
    if stripped in (ANY, NULL) or stripped.lower() == NULL:
        return stripped.lower()
    try:
        parts = urlsplit(stripped)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin (use e.g. https://app.example)") from None
    scheme = parts.scheme.lower()
    if (
        not scheme
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"{text!r} is not an origin (use e.g. https://app.example)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """
    The configured allowed origins.

    @param allowed: origins as configured (any spelling L{normalize_origin} reads).
    """

    def __init__(self, allowed=()):
        self._allowed = frozenset(normalize_origin(item) for item in allowed)

    def allows(self, origin) -> bool:
        """Whether an opening handshake with this C{Origin} header value (None or "": none) may proceed."""
        if not origin:
            return True  # not a browser: cairn clients send no Origin
        if ANY in self._allowed:
            return True
        try:
            return normalize_origin(origin) in self._allowed
        except ValueError:
            return False
