"""
One-time pairing codes in text: PINs, pairing links and the addresses
they carry.

A PIN is 40 random bits written as 8 Crockford base32 characters and
shown as C{XXXX-XXXX}. A link is a C{cairn://pair?...} URI carrying
the node's peer id, the addresses it can be dialled at, a 128-bit secret
and the expiry.

What the node keeps of the codes it issued: L{cairn.pairing.books} (the
PIN and link books) and L{cairn.pairing.code_store} (one issued
code and where it is shared).
"""

import base64
import ipaddress
import os
import re
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import attr

from cairn.pairing import proofs

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_ALIASES = str.maketrans({"I": "1", "L": "1", "O": "0"})
PIN_LENGTH = 8
LINK_SCHEME = "cairn"
LINK_HOST = "pair"
LINK_VERSION = "1"


class InvalidCode(ValueError):
    """A PIN or link that cannot be read."""


# PIN text


def new_pin() -> str:
    """A fresh canonical PIN: 40 bits from os.urandom, 8 Crockford characters."""
    number = int.from_bytes(os.urandom(5), "big")
    return "".join(CROCKFORD[(number >> shift) & 31] for shift in range(35, -5, -5))


def format_pin(canonical: str) -> str:
    """C{ABCD1234} -> C{ABCD-1234}."""
    return f"{canonical[:4]}-{canonical[4:]}"


def normalize_pin(text: str) -> str:
    """
    The canonical form of a PIN as typed by a person.

    Case-insensitive; I and L read as 1, O as 0; hyphens and whitespace
    are ignored.

    @raise InvalidCode: not 8 Crockford base32 characters.
    """
    if not isinstance(text, str):
        raise InvalidCode("a PIN is text")
    cleaned = "".join(ch for ch in text if ch != "-" and not ch.isspace())
    if not cleaned.isascii():
        raise InvalidCode("a PIN is 8 characters of 0-9 and A-Z (without U)")
    canonical = cleaned.upper().translate(_CROCKFORD_ALIASES)
    if len(canonical) != PIN_LENGTH or any(ch not in CROCKFORD for ch in canonical):
        raise InvalidCode("a PIN is 8 characters of 0-9 and A-Z (without U)")
    return canonical


# Link text


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not text or any(ch not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for ch in text):
        raise InvalidCode("link secret is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise InvalidCode("link secret is not base64url") from None


@attr.s(frozen=True, auto_attribs=True, repr=False)
class Link:
    """The contents of a pairing link. The repr never shows the secret."""

    peer_id: str
    addresses: tuple
    secret: bytes
    expires_at: int

    def to_uri(self) -> str:
        query = [("v", LINK_VERSION), ("peer", self.peer_id)]
        query += [("addr", _canonical_or_given(address)) for address in self.addresses]
        query += [("secret", _b64url(self.secret)), ("exp", str(self.expires_at))]
        return f"{LINK_SCHEME}://{LINK_HOST}?" + urlencode(query, quote_via=quote, safe="")

    def __repr__(self):
        return f"<Link peer={self.peer_id} addresses={list(self.addresses)} expires_at={self.expires_at}>"


def parse_link(uri: str) -> Link:
    """
    Read a C{cairn://pair?...} URI; unknown parameters are ignored.

    The link's addresses come back in their canonical form (L{Address});
    an address that cannot be read (an unknown scheme) is skipped.

    @raise InvalidCode: not a pairing link of a known version.
    """
    if not isinstance(uri, str):
        raise InvalidCode("a link is text")
    parts = urlsplit(uri.strip())
    if parts.scheme != LINK_SCHEME or parts.netloc != LINK_HOST or parts.path not in ("", "/"):
        raise InvalidCode("not a cairn://pair link")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidCode("the link's query is malformed") from None

    def one(name):
        values = query.get(name, [])
        if len(values) != 1:
            raise InvalidCode(f"the link needs exactly one {name!r}")
        return values[0]

    if one("v") != LINK_VERSION:
        raise InvalidCode(f"unsupported link version {one('v')!r}")
    secret = _unb64url(one("secret"))
    if len(secret) < proofs.LINK_SECRET_SIZE:
        raise InvalidCode("the link secret is too short")
    exp = one("exp")
    if not exp.isascii() or not exp.isdigit():
        raise InvalidCode("the link expiry is not a number")
    return Link(one("peer"), _readable_addresses(query.get("addr", [])), secret, int(exp))


# Link addresses (docs/protocol.md §20.3.2)

#: The address schemes a link may carry, and the default port of each
#: (None: the port is required).
ADDRESS_SCHEMES = {"tcp": None, "tls": None, "ws": 80, "wss": 443}


@attr.s(frozen=True, auto_attribs=True)
class Address:
    """
    Where a device dials a node: the C{addr} of a pairing link.

    C{scheme} is C{tcp} (cairn over TCP, §2.1), C{tls} (the same inside
    TLS), C{ws} or C{wss} (cairn over WebSocket, §2.2); C{path} is the
    WebSocket request path, with its query if any (always C{/} for tcp
    and tls, which have none).
    """

    scheme: str
    host: str
    port: int
    path: str = "/"

    def __str__(self) -> str:
        """The canonical text form: C{tcp://host:port}, C{ws://host:port/path}."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.scheme}://{host}:{self.port}"
        return text + self.path if self.scheme in ("ws", "wss") else text

    def dial_string(self) -> str:
        """What L{cairn.client.Client.connect} dials: a Twisted client endpoint string or a WebSocket URL."""
        if self.scheme in ("ws", "wss"):
            return str(self)
        host = self.host.replace("\\", "\\\\").replace(":", "\\:")
        return f"{self.scheme}:host={host}:port={self.port}"


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535 and len(text) <= 5):
        raise InvalidCode(f"address port {text!r} is not 1-65535")
    return int(text)


def _host(text: str) -> str:
    if not text or not text.isascii() or any(ch in text for ch in " /?#@\\[]") or any(ord(ch) < 0x21 for ch in text):
        raise InvalidCode(f"address host {text!r} is not a host name or IP address")
    return text.lower()


def _parse_url(text: str) -> Address:
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme not in ADDRESS_SCHEMES:
        raise InvalidCode(f"unknown address scheme {scheme!r}")
    authority, slash, path = rest.partition("/")
    if not slash and "?" in authority:
        authority, mark, query = authority.partition("?")
        path = "/" + mark + query
    else:
        path = slash + path
    if "#" in path or "@" in authority:
        raise InvalidCode("an address has no user or fragment")
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or not host or ":" not in host:
            raise InvalidCode("a bracketed address host must be an IPv6 address")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise InvalidCode(f"{host!r} is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise InvalidCode("junk after the address host")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon:
            host, port_text = authority, None
        host = _host(host)
    if port_text is None:
        default = ADDRESS_SCHEMES[scheme]
        if default is None:
            raise InvalidCode(f"a {scheme}:// address needs a port")
        port = default
    else:
        port = _port(port_text)
    if scheme in ("tcp", "tls"):
        if path not in ("", "/"):
            raise InvalidCode(f"a {scheme}:// address has no path or query")
        path = "/"
    elif not path:
        path = "/"
    elif not path.isascii() or any(ord(ch) < 0x21 for ch in path):
        raise InvalidCode("an address path is printable ASCII")
    return Address(scheme, host, port, path)


def _parse_endpoint(text: str) -> Address:
    # The form links carried before the address was defined by the protocol:
    # a Twisted client endpoint string, tcp:/tls: with host and port given
    # by keyword or position, colons escaped with a backslash.
    parts = [p.replace("\\:", ":").replace("\\\\", "\\") for p in re.split(r"(?<!\\):", text)]
    kind, args = parts[0].lower(), parts[1:]
    host = port = None
    positional = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq:
            positional.append(arg)
        elif key == "host":
            host = value
        elif key == "port":
            port = value
    if host is None and positional:
        host = positional.pop(0)
    if port is None and positional:
        port = positional.pop(0)
    if host is None or port is None:
        raise InvalidCode(f"the {kind}: address needs a host and a port")
    if ":" in host:
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise InvalidCode(f"{host!r} is not an IPv6 address") from None
    else:
        host = _host(host)
    return Address(kind, host, _port(port))


def parse_address(text: str) -> Address:
    """
    Read one link address: C{tcp://host:port}, C{tls://host:port},
    C{ws://host[:port][/path]} or C{wss://...}; also the Twisted endpoint
    form of links issued before (C{tcp:host=H:port=P}, C{tls:H:P}).

    @raise InvalidCode: none of these.
    """
    if not isinstance(text, str) or not text or len(text) > 1024:
        raise InvalidCode("an address is non-empty text")
    if "://" in text:
        return _parse_url(text)
    kind = text.partition(":")[0].lower()
    if kind in ("tcp", "tls"):
        return _parse_endpoint(text)
    raise InvalidCode(f"not a cairn address: {text!r}")


def _canonical_or_given(text: str) -> str:
    # A link carries the canonical form; an address the operator configured
    # that cannot be read is passed on as it is (readers skip it).
    try:
        return format_address(text)
    except InvalidCode:
        return text


def _readable_addresses(texts) -> tuple:
    # Readers skip an address they cannot read: a later revision may add
    # schemes, and the other addresses still serve.
    found = []
    for text in texts:
        try:
            found.append(format_address(text))
        except InvalidCode:
            continue
    return tuple(found)


def format_address(text: str) -> str:
    """The canonical form (as links carry it) of an address in any accepted form."""
    return str(parse_address(text))


def dial_string(text: str) -> str:
    """What to hand a client's C{connect} for an address in any accepted form."""
    return parse_address(text).dial_string()
