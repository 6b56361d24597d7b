"""
What a L{cairn.config.Config} value must be: L{ConfigError} and the checks
the settings' validators run, naming the variable at fault.

The parsers of environment text are in L{cairn.config_values}; the table of
settings and how they are read is L{cairn.config}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attr

from cairn.config_values import BOOL_FORMS, ENDPOINT_FORMS, parse_endpoint


def ws_origin(item: str) -> str:
    """Check one entry of C{CAIRN_WS_ALLOWED_ORIGINS} (an origin, C{null} or C{*})."""
    from cairn.transport.origins import normalize_origin

    normalize_origin(item)
    return item


# Key under which each Config attribute's metadata holds (variable, parser).
ENV_KEY = "cairn.env"


class ConfigError(Exception):
    """
    A setting has a bad value.

    C{str()} is one line, C{"VARIABLE: problem (accepted forms)"}.

    @ivar variable: the environment variable at fault.
    @ivar problem: what is wrong with it, without the variable name.
    """

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def variable_of(attribute: attr.Attribute) -> str:
    """Name the environment variable behind a L{Config} attribute."""
    return attribute.metadata[ENV_KEY][0]


def _show(number: float) -> str:
    """Write a bound without exponent notation."""
    return str(int(number)) if number == int(number) else f"{number}"


def between(low: float, high: float | None, unit: str, *, above: bool, integer: bool):
    """
    Validator: the value is a number (an C{int} when C{integer}) at least
    C{low} (more than C{low} when C{above}) and at most C{high}.
    """
    kinds = int if integer else (int, float)
    if high is not None:
        bound = f"use between {_show(low)} and {_show(high)}{unit}"
    else:
        bound = f"use {'more than' if above else 'at least'} {_show(low)}{unit}"

    def validate(instance: Any, attribute: attr.Attribute, value: Any) -> None:
        ok = (
            isinstance(value, kinds)
            and not isinstance(value, bool)
            and (value > low if above else value >= low)
            and (high is None or value <= high)
        )
        if not ok:
            raise ConfigError(variable_of(attribute), f"{value!r} is out of range ({bound})")

    return validate


def is_text(optional: bool):
    """Validator: the value is a non-empty string (or C{None} when C{optional})."""

    def validate(instance: Any, attribute: attr.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            # The value may be a secret: describe it, never show it.
            raise ConfigError(variable_of(attribute), "must be a non-empty string")

    return validate


def is_listener(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: the value is an endpoint string, or C{None} (disabled)."""
    if value is None:
        return
    problem = f"{value!r} is not an endpoint ({ENDPOINT_FORMS})"
    try:
        ok = isinstance(value, str) and parse_endpoint(value) is not None
    except ValueError as e:
        ok, problem = False, str(e)
    if not ok:
        raise ConfigError(variable_of(attribute), problem)


def is_bool(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: the value is a C{bool}."""
    if not isinstance(value, bool):
        raise ConfigError(variable_of(attribute), f"{value!r} is not a boolean ({BOOL_FORMS})")


def are_urls(check: Callable[[str], str]):
    """Validator: every item of a tuple passes C{check}."""

    def validate(instance: Any, attribute: attr.Attribute, value: Any) -> None:
        for item in value:
            try:
                check(item)
            except ValueError as e:
                raise ConfigError(variable_of(attribute), str(e)) from None

    return validate


def _without_userinfo(url: str) -> str:
    """C{url} with any C{user:password@} replaced, for messages and reprs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://<redacted>@{rest.split('@', 1)[1]}"
    return url


def nats_url(item: str) -> str:
    """Check one C{CAIRN_CLUSTER_NATS} URL (credentials in it are never shown)."""
    lowered = item.lower()
    if not any(lowered.startswith(p) and len(item) > len(p) for p in ("nats://", "tls://")):
        raise ValueError(
            f"{_without_userinfo(item)!r} is not a NATS URL (use e.g. nats://nats1.example:4222,tls://nats2.example:4222)"
        )
    return item


def redacted_urls(value: tuple) -> str:
    return repr(tuple(_without_userinfo(url) for url in value))
