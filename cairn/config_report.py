"""
The effective configuration as an operator sees it: every setting with its
value and where the value came from, secrets redacted.

Used by the start-up summary (L{cairn.logs}), C{GET /config} and
C{cairn-server config}.  A source is C{"flag"} (a C{twistd cairn} /
C{cairn-server run} option), C{"env"} (its C{CAIRN_*} variable, or the
C{*_FILE} variable for a secret read from a file) or C{"default"}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attr

from cairn.config import Config
from cairn.config_values import shown_url, shown_urls
from cairn.management.token import TOKEN_FILE_NAME

REDACTED = "<redacted>"

#: Settings whose value is read from the file named by another setting.
_FROM_FILE = {
    "mgmt_token": "mgmt_token_file",
    "turn_secret": "turn_secret_file",
    "signal_token": "signal_token_file",
}

#: The settings the start-up summary shows (the rest: C{cairn-server config}).
SUMMARY = (
    "data_dir",
    "listen",
    "ws_listen",
    "mgmt_listen",
    "public_addresses",
    "psk",
    "mgmt_token",
    "forward_enabled",
    "forward_max_per_peer",
    "forward_max_age",
    "forward_max_total",
    "relay_capacity",
    "signal_servers",
    "turn_servers",
    "log_level",
    "log_format",
)


def binds_every_interface(listen: str | None) -> bool:
    """Whether a listener's endpoint binds every interface (pairing links then name the host)."""
    if not listen:
        return False
    interface = re.search(r"(?:^|:)interface=([^:]*)", listen)
    return interface is None or interface.group(1) in ("", "0.0.0.0", "::")


def is_secret(name: str) -> bool:
    """Whether the setting C{name} is a secret (never shown; URLs that may carry one are shown without it)."""
    return attr.fields_dict(Config)[name].repr not in (True, shown_urls)


def sources(environ: Mapping[str, str], flags: Iterable[str] = ()) -> dict[str, str]:
    """
    Where each setting comes from: C{"flag"} for the attribute names in
    C{flags}, C{"env"} for a non-empty variable in C{environ}, else
    C{"default"}.
    """
    flags = set(flags)
    found = {}
    for field in attr.fields(Config):
        if field.name in flags:
            found[field.name] = "flag"
        elif environ.get(Config.variable(field.name), "").strip():
            found[field.name] = "env"
        else:
            found[field.name] = "default"
    for secret, file_setting in _FROM_FILE.items():
        if found.get(file_setting) == "env":
            found[secret] = "env"
    return found


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def settings(config: Config, origin: Mapping[str, str] | None = None) -> list[dict]:
    """
    Every setting of C{config}: C{name}, C{variable}, C{value} (JSON-able;
    a secret is C{"<redacted>"} when set) and C{source}.

    Without C{origin} (a node built from a L{Config} in code), a value equal
    to its default is C{"default"} and any other C{"set"}.
    """
    rows = []
    for field in attr.fields(Config):
        value = getattr(config, field.name)
        if origin and field.name in origin:
            source = origin[field.name]
        else:
            source = "default" if value == field.default else "set"
        if is_secret(field.name) and value is not None:
            value = REDACTED
        elif field.repr is shown_urls:
            value = tuple(shown_url(item) for item in value)
        elif field.name == "mgmt_token" and _token_generated(config):
            value = f"<generated: {os.path.join(config.data_dir, TOKEN_FILE_NAME)}>"
        rows.append(
            {
                "name": field.name,
                "variable": Config.variable(field.name),
                "value": _jsonable(value),
                "source": source,
            }
        )
    return rows


def _token_generated(config: Config) -> bool:
    """
    Whether the node generates its management token (kept in the data
    directory; L{cairn.management.token}): the API is on and no token is set.
    """
    return (
        config.mgmt_enabled
        and bool(config.mgmt_listen)
        and config.mgmt_token is None
        and config.mgmt_token_file is None
    )


def show(value: Any) -> str:
    """A setting's value as one short piece of text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, list | tuple):
        return ",".join(value) if value else "(none)"
    return str(value)
