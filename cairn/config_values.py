"""
Parsers of setting values: sizes (C{1MB}, C{512KiB}), durations (C{30s},
C{7d}), booleans, Twisted endpoint strings, whole numbers and lists of URLs.

Each raises C{ValueError} with a message that shows the accepted forms;
L{cairn.config} turns that into a L{cairn.config.ConfigError} naming the
variable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

SIZE_FORMS = "use e.g. 1048576, 512KiB, 1MB, 1.5GB, or plain bytes"
DURATION_FORMS = "use e.g. 30s, 15m, 12h, 7d, 2w, or plain seconds"
BOOL_FORMS = "use true/false, yes/no, on/off or 1/0"
ENDPOINT_FORMS = "use e.g. tcp:7400, tcp:7400:interface=127.0.0.1, or none"

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_DURATION_UNITS = {
    "": 1,
    "ms": Decimal("0.001"),
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
}
_NUMBER_WITH_UNIT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", re.IGNORECASE)
_ENDPOINT = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*:\S.*")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

def _number_and_unit(text: str, units: Mapping[str, Any]) -> tuple[Decimal, Any]:
    """
    Split C{text} into a non-negative number and a known unit.

    @raise ValueError: if C{text} has another shape or an unknown unit.
    """
    match = _NUMBER_WITH_UNIT.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    number, unit = match.groups()
    multiplier = units.get(unit.lower())
    if multiplier is None:
        raise ValueError(text)
    return Decimal(number), multiplier


def parse_size(text: str) -> int:
    """
    Parse a byte size: plain bytes, or a number with a unit.

    Units are B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB
    (powers of 1024), case-insensitive, optionally after a space; the number
    may be decimal (C{"1.5GB"}) as long as the result is whole bytes.

    @raise ValueError: with a message showing the accepted forms.
    """
    try:
        number, multiplier = _number_and_unit(text, _SIZE_UNITS)
    except ValueError:
        raise ValueError(f"{text!r} is not a size ({SIZE_FORMS})") from None
    size = number * multiplier
    if size != size.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes ({SIZE_FORMS})")
    return int(size)


def parse_duration(text: str) -> float:
    """
    Parse a duration into seconds: plain seconds, or a number with a unit.

    Units are ms, s, m, h, d and w, case-insensitive; the number may be
    decimal (C{"1.5h"}).

    @raise ValueError: with a message showing the accepted forms.
    """
    try:
        number, multiplier = _number_and_unit(text, _DURATION_UNITS)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration ({DURATION_FORMS})") from None
    seconds = float(number * multiplier)
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is too long a duration ({DURATION_FORMS})")
    return seconds


def parse_bool(text: str) -> bool:
    """
    Parse a boolean: true/false, yes/no, on/off or 1/0, case-insensitive.

    @raise ValueError: with a message showing the accepted forms.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean ({BOOL_FORMS})")


def parse_endpoint(text: str) -> str | None:
    """
    Check the shape of a Twisted server endpoint string; C{"none"} gives C{None}.

    Only the syntax C{type:arguments} is checked: nothing is opened or bound
    here, so that a busy port is reported by the listener itself at start-up.

    @return: the endpoint string, stripped, or C{None} for a disabled listener.
    @raise ValueError: with a message showing the accepted forms.
    """
    stripped = text.strip()
    if stripped.lower() == "none":
        return None
    if _ENDPOINT.fullmatch(stripped) is None:
        raise ValueError(f"{text!r} is not an endpoint ({ENDPOINT_FORMS})")
    return stripped


def parse_text(text: str) -> str:
    """Return a free-form setting (a path, a secret) unchanged."""
    return text


#: CAIRN_LOG_LEVEL's values, most verbose first (twisted.logger's level names).
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
#: CAIRN_LOG_FORMAT's values.
LOG_FORMATS = ("text", "json")


def parse_count(text: str) -> int:
    """
    Parse a whole number written in plain decimal digits.

    @raise ValueError: with a message showing the accepted form.
    """
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()):
        raise ValueError(f"{text!r} is not a whole number (use e.g. 10000)")
    return int(stripped)


def shown_url(item: str) -> str:
    """
    C{item} as an error message may show it: its query, fragment and any
    C{user:password@} redacted, since each may carry a token (e.g. a
    signaling server's C{?token=}).
    """
    head, cut, _ = item.partition("?")
    head, hash_cut, _ = head.partition("#")
    scheme, sep, rest = head.partition("://")
    authority, slash, path = rest.partition("/")
    if sep and "@" in authority:
        head = f"{scheme}://<redacted>@{authority.rsplit('@', 1)[1]}{slash}{path}"
    return f"{head}?<redacted>" if cut or hash_cut else head


def shown_urls(value: tuple) -> str:
    """The repr of a tuple of URLs, each as L{shown_url} shows it."""
    return repr(tuple(shown_url(item) for item in value))


def url_check(what: str, prefixes: tuple[str, ...], example: str):
    """Make a check that one URL starts with one of C{prefixes}."""

    def check(item: str) -> str:
        lowered = item.lower()
        if not any(
            lowered.startswith(prefix) and len(item) > len(prefix)
            for prefix in prefixes
        ):
            raise ValueError(f"{shown_url(item)!r} is not a {what} URL (use e.g. {example})")
        return item

    return check


def url_list(check: Callable[[str], str]) -> Callable[[str], tuple[str, ...]]:
    """Make a parser of comma-separated URLs; empty items are skipped."""

    def parse(text: str) -> tuple[str, ...]:
        items = (item.strip() for item in text.split(","))
        return tuple(check(item) for item in items if item)

    return parse


signal_url = url_check("signaling", ("ws://", "wss://"), "wss://signal.example:8443")
turn_url = url_check("TURN", ("turn:", "turns:", "stun:"), "turn:relay.example:3478")
public_address = url_check(
    "dialable", ("tcp:", "tls:", "ws://", "wss://"), "tcp:host=node.example:port=7400 or wss://node.example/"
)
