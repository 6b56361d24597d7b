"""
One-time pairing codes: PINs and links, their text forms and their state.

A PIN is 40 random bits written as 8 Crockford base32 characters and
shown as C{XXXX-XXXX}. The node keeps one active PIN at a time: creating
a new one replaces the old. A link is a C{cairn://pair?...} URI carrying
the node's peer id, the addresses it can be dialled at, a 128-bit secret
and the expiry; any number of links may be active, each filed under an id
derived from its secret.

Both kinds are single-use, expire, and are burned after a number of
failed attempts. They live in memory only: a restart invalidates them.
"""

import base64
import os
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import attr

from cairn.pairing import proofs
from cairn.wire.constants import PairRejectCode

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
        query += [("addr", address) for address in self.addresses]
        query += [("secret", _b64url(self.secret)), ("exp", str(self.expires_at))]
        return f"{LINK_SCHEME}://{LINK_HOST}?" + urlencode(query, quote_via=quote, safe="")

    def __repr__(self):
        return f"<Link peer={self.peer_id} addresses={list(self.addresses)} expires_at={self.expires_at}>"


def parse_link(uri: str) -> Link:
    """
    Read a C{cairn://pair?...} URI; unknown parameters are ignored.

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
    return Link(one("peer"), tuple(query.get("addr", [])), secret, int(exp))


# Server-side state


@attr.s(auto_attribs=True, repr=False)
class Code:
    """One issued code: what it proves with, when it ends, how it was used."""

    key: bytes
    expires_at: float
    generation: int = 0
    failures: int = 0
    used: bool = False

    def refusal(self, now: float, max_failures: int):
        """None if the code can be tried now, else (PairRejectCode, reason)."""
        if self.used:
            return PairRejectCode.ALREADY_USED, "code already used"
        if self.failures >= max_failures:
            return PairRejectCode.EXPIRED, f"code invalidated after {max_failures} failed attempts"
        if now >= self.expires_at:
            return PairRejectCode.EXPIRED, "code expired"
        return None


class PinBook:
    """
    The one active PIN. A new PIN replaces the previous one, whatever its
    state: only the PIN the operator last saw works.
    """

    def __init__(self, clock, ttl: float, max_failures: int):
        self.clock = clock
        self.ttl = ttl
        self.max_failures = max_failures
        self.current = None
        self._generation = 0

    def create(self):
        """(display form, expires_at) of a new PIN."""
        canonical = new_pin()
        self._generation += 1
        expires_at = self.clock.seconds() + self.ttl
        self.current = Code(canonical.encode("ascii"), expires_at, self._generation)
        return format_pin(canonical), expires_at

    def refusal(self, generation=None):
        """Why the active PIN (of C{generation} if given) cannot be tried, or None."""
        pin = self.current
        if pin is None:
            return PairRejectCode.UNKNOWN_CODE, "no PIN is active"
        if generation is not None and pin.generation != generation:
            return PairRejectCode.EXPIRED, "the PIN was replaced by a newer one"
        return pin.refusal(self.clock.seconds(), self.max_failures)


class LinkBook:
    """
    Active links by id. Spent and expired links are remembered for one
    more TTL (so a late attempt is told why), then forgotten; at most
    C{max_links} are kept, the oldest dropped first.
    """

    def __init__(self, clock, ttl: float, max_failures: int, max_links: int = 1000):
        self.clock = clock
        self.ttl = ttl
        self.max_failures = max_failures
        self.max_links = max_links
        self._links = {}

    def create(self, peer_id: str, addresses) -> Link:
        self._prune()
        secret = os.urandom(proofs.LINK_SECRET_SIZE)
        expires_at = int(self.clock.seconds() + self.ttl)
        self._links[proofs.link_id(secret)] = Code(proofs.link_key(secret), expires_at)
        while len(self._links) > self.max_links:
            del self._links[next(iter(self._links))]
        return Link(peer_id, tuple(addresses), secret, expires_at)

    def get(self, link_id: bytes):
        """The L{Code} filed under C{link_id}, or None."""
        self._prune()
        return self._links.get(link_id)

    def refusal(self, code):
        if code is None:
            return PairRejectCode.UNKNOWN_CODE, "no such link"
        return code.refusal(self.clock.seconds(), self.max_failures)

    def _prune(self):
        horizon = self.clock.seconds() - self.ttl
        for key in [k for k, c in self._links.items() if c.expires_at <= horizon]:
            del self._links[key]

    def __len__(self):
        return len(self._links)
