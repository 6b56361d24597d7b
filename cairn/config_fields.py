"""
How a L{cairn.config.Config} setting is declared: its environment
variable, the parser of its text (L{cairn.config_values}), its default and
the check of its typed value (L{cairn.config_checks}), in one C{attr.ib}
per kind of setting; and the checks only one setting uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attr

from cairn.config_checks import (
    ENV_KEY,
    ConfigError,
    are_urls,
    between,
    is_bool,
    is_listener,
    is_text,
    variable_of,
)
from cairn.config_values import (
    parse_bool,
    parse_count,
    parse_duration,
    parse_endpoint,
    parse_size,
    parse_text,
    url_list,
)


def seconds(value: Any) -> Any:
    """Store a whole-second duration given as C{int} as C{float}, like parsed ones."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def redacted(value: str | None) -> str:
    """Show whether a secret is set, never what it is."""
    return "None" if value is None else "'<redacted>'"


def setting(variable, parse, default, validator, **kwargs) -> Any:
    """Declare a L{Config} attribute read from C{variable} with C{parse}."""
    return attr.ib(
        default=default,
        validator=validator,
        metadata={ENV_KEY: (variable, parse)},
        **kwargs,
    )


def text(variable: str, default: str | None = None) -> Any:
    """A free-form string setting; optional when it has no default."""
    return setting(variable, parse_text, default, is_text(default is None))


def secret(variable: str) -> Any:
    """An optional secret: shown as C{'<redacted>'} in the repr."""
    return setting(variable, parse_text, None, is_text(True), repr=redacted)


def endpoint(variable: str, default: str) -> Any:
    """A listener: an endpoint string, or C{None} when disabled."""
    return setting(variable, parse_endpoint, default, is_listener)


def boolean(variable: str, default: bool) -> Any:
    """A C{true}/C{false} switch."""
    return setting(variable, parse_bool, default, is_bool)


def duration(variable: str, default: float) -> Any:
    """A positive duration in seconds."""
    check = between(0, None, "s", above=True, integer=False)
    return setting(variable, parse_duration, default, check, converter=seconds)


def size(variable: str, default: int, low: int, high: int | None = None) -> Any:
    """A size in bytes, at least C{low} and at most C{high}."""
    check = between(low, high, " bytes", above=False, integer=True)
    return setting(variable, parse_size, default, check)


def count(variable: str, default: int) -> Any:
    """A whole number, at least 1."""
    check = between(1, None, "", above=False, integer=True)
    return setting(variable, parse_count, default, check)


def choice(variable: str, default: str, choices: tuple[str, ...]) -> Any:
    """One word of C{choices}, case-insensitive."""

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return word

    def validate(instance: Any, attribute: attr.Attribute, value: Any) -> None:
        if value not in choices:
            raise ConfigError(variable_of(attribute), f"{value!r} is not one of {', '.join(choices)}")

    return setting(variable, parse, default, validate)


def urls(variable: str, check: Callable[[str], str]) -> Any:
    """A comma-separated list of URLs, each passing C{check}; empty by default."""
    return setting(variable, url_list(check), (), are_urls(check), converter=tuple)


def is_attach_address(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: None, or a C{tcp://host:port} / C{tls://host:port} address (docs/protocol.md §25.8.8)."""
    if value is None:
        return
    from cairn.pairing.codes import InvalidCode, parse_address

    try:
        ok = "://" in value and parse_address(value).scheme in ("tcp", "tls")
    except InvalidCode:
        ok = False
    if not ok:
        raise ConfigError(variable_of(attribute), f"{value!r} is not a tcp://host:port or tls://host:port address")


def is_prefix(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: a stream/bucket/subject prefix (letters, digits, '-' and '_')."""
    ok = isinstance(value, str) and 0 < len(value) <= 32
    ok = ok and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    if not ok:
        raise ConfigError(
            variable_of(attribute), f"{value!r} is not a prefix (use 1-32 letters, digits, '-' or '_', e.g. cairn)"
        )


def default_node_name() -> str:
    """The host name's first label, made a node name (letters, digits, '-', '_'; at most 32)."""
    import socket

    label = socket.gethostname().split(".")[0]
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in label)[:32].strip("-_")
    return name or "cairn"


def is_node_name(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: a node name, a token of NATS subjects (letters, digits, '-', '_'; 1-32, not starting with - or _)."""
    ok = isinstance(value, str) and 0 < len(value) <= 32 and value[0].isascii() and value[0].isalnum()
    ok = ok and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    if not ok:
        raise ConfigError(
            variable_of(attribute),
            f"{value!r} is not a node name (use 1-32 letters, digits, '-' or '_', starting with a letter or digit)",
        )
