"""
Environment variables and command-line flags, turned into one frozen L{Config}.

This is the only module that knows the C{CAIRN_*} variable names; domain code
receives a L{Config} and never reads C{os.environ}.  Every value is parsed and
validated here, so a bad setting stops start-up with one line naming the
variable and the forms it accepts.  Secrets (the management token, the
pre-shared key, the TURN secret) never appear in an error message or a repr.
The parsers of the values themselves are in L{cairn.config_values}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attr

from cairn.config_values import (
    BOOL_FORMS,
    ENDPOINT_FORMS,
    LOG_FORMATS,
    LOG_LEVELS,
    parse_bool,
    parse_count,
    parse_duration,
    parse_endpoint,
    parse_size,
    parse_text,
    public_address,
    signal_url,
    turn_url,
    url_list,
)

__all__ = [
    "Config",
    "ConfigError",
    "parse_bool",
    "parse_duration",
    "parse_endpoint",
    "parse_size",
]

U32_MAX = 2**32 - 1


def _ws_origin(item: str) -> str:
    """Check one entry of C{CAIRN_WS_ALLOWED_ORIGINS} (an origin, C{null} or C{*})."""
    from cairn.transport.origins import normalize_origin

    normalize_origin(item)
    return item

# Key under which each Config attribute's metadata holds (variable, parser).
_ENV = "cairn.env"


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


def _variable(attribute: attr.Attribute) -> str:
    """Name the environment variable behind a L{Config} attribute."""
    return attribute.metadata[_ENV][0]


def _show(number: float) -> str:
    """Write a bound without exponent notation."""
    return str(int(number)) if number == int(number) else f"{number}"


def _between(low: float, high: float | None, unit: str, *, above: bool, integer: bool):
    """
    Validator: the value is a number (an C{int} when C{integer}) at least
    C{low} (more than C{low} when C{above}) and at most C{high}.
    """
    kinds = int if integer else (int, float)
    if high is not None:
        bound = f"use between {_show(low)} and {_show(high)}{unit}"
    else:
        bound = f"use {'more than' if above else 'at least'} {_show(low)}{unit}"

    def validate(instance: Config, attribute: attr.Attribute, value: Any) -> None:
        ok = (
            isinstance(value, kinds)
            and not isinstance(value, bool)
            and (value > low if above else value >= low)
            and (high is None or value <= high)
        )
        if not ok:
            raise ConfigError(
                _variable(attribute), f"{value!r} is out of range ({bound})"
            )

    return validate


def _is_text(optional: bool):
    """Validator: the value is a non-empty string (or C{None} when C{optional})."""

    def validate(instance: Config, attribute: attr.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            # The value may be a secret: describe it, never show it.
            raise ConfigError(_variable(attribute), "must be a non-empty string")

    return validate


def _is_listener(instance: Config, attribute: attr.Attribute, value: Any) -> None:
    """Validator: the value is an endpoint string, or C{None} (disabled)."""
    if value is None:
        return
    problem = f"{value!r} is not an endpoint ({ENDPOINT_FORMS})"
    try:
        ok = isinstance(value, str) and parse_endpoint(value) is not None
    except ValueError as e:
        ok, problem = False, str(e)
    if not ok:
        raise ConfigError(_variable(attribute), problem)


def _is_bool(instance: Config, attribute: attr.Attribute, value: Any) -> None:
    """Validator: the value is a C{bool}."""
    if not isinstance(value, bool):
        raise ConfigError(
            _variable(attribute), f"{value!r} is not a boolean ({BOOL_FORMS})"
        )


def _are_urls(check: Callable[[str], str]):
    """Validator: every item of a tuple passes C{check}."""

    def validate(instance: Config, attribute: attr.Attribute, value: Any) -> None:
        for item in value:
            try:
                check(item)
            except ValueError as e:
                raise ConfigError(_variable(attribute), str(e)) from None

    return validate


def _seconds(value: Any) -> Any:
    """Store a whole-second duration given as C{int} as C{float}, like parsed ones."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _redacted(value: str | None) -> str:
    """Show whether a secret is set, never what it is."""
    return "None" if value is None else "'<redacted>'"


def _setting(variable, parse, default, validator, **kwargs) -> Any:
    """Declare a L{Config} attribute read from C{variable} with C{parse}."""
    return attr.ib(
        default=default,
        validator=validator,
        metadata={_ENV: (variable, parse)},
        **kwargs,
    )


def _text(variable: str, default: str | None = None) -> Any:
    """A free-form string setting; optional when it has no default."""
    return _setting(variable, parse_text, default, _is_text(default is None))


def _secret(variable: str) -> Any:
    """An optional secret: shown as C{'<redacted>'} in the repr."""
    return _setting(variable, parse_text, None, _is_text(True), repr=_redacted)


def _endpoint(variable: str, default: str) -> Any:
    """A listener: an endpoint string, or C{None} when disabled."""
    return _setting(variable, parse_endpoint, default, _is_listener)


def _boolean(variable: str, default: bool) -> Any:
    """A C{true}/C{false} switch."""
    return _setting(variable, parse_bool, default, _is_bool)


def _duration(variable: str, default: float) -> Any:
    """A positive duration in seconds."""
    check = _between(0, None, "s", above=True, integer=False)
    return _setting(variable, parse_duration, default, check, converter=_seconds)


def _size(variable: str, default: int, low: int, high: int | None = None) -> Any:
    """A size in bytes, at least C{low} and at most C{high}."""
    check = _between(low, high, " bytes", above=False, integer=True)
    return _setting(variable, parse_size, default, check)


def _count(variable: str, default: int) -> Any:
    """A whole number, at least 1."""
    check = _between(1, None, "", above=False, integer=True)
    return _setting(variable, parse_count, default, check)


def _choice(variable: str, default: str, choices: tuple[str, ...]) -> Any:
    """One word of C{choices}, case-insensitive."""

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return word

    def validate(instance: Config, attribute: attr.Attribute, value: Any) -> None:
        if value not in choices:
            raise ConfigError(_variable(attribute), f"{value!r} is not one of {', '.join(choices)}")

    return _setting(variable, parse, default, validate)


def _urls(variable: str, check: Callable[[str], str]) -> Any:
    """A comma-separated list of URLs, each passing C{check}; empty by default."""
    return _setting(variable, url_list(check), (), _are_urls(check), converter=tuple)


def _without_userinfo(url: str) -> str:
    """C{url} with any C{user:password@} replaced, for messages and reprs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://<redacted>@{rest.split('@', 1)[1]}"
    return url


def _nats_url(item: str) -> str:
    """Check one C{CAIRN_CLUSTER_NATS} URL (credentials in it are never shown)."""
    lowered = item.lower()
    if not any(lowered.startswith(p) and len(item) > len(p) for p in ("nats://", "tls://")):
        raise ValueError(
            f"{_without_userinfo(item)!r} is not a NATS URL (use e.g. nats://nats1.example:4222,tls://nats2.example:4222)"
        )
    return item


def _redacted_urls(value: tuple) -> str:
    return repr(tuple(_without_userinfo(url) for url in value))


def _is_attach_address(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: None, or a C{tcp://host:port} / C{tls://host:port} address (docs/protocol.md §25.8.8)."""
    if value is None:
        return
    from cairn.pairing.codes import InvalidCode, parse_address

    try:
        ok = "://" in value and parse_address(value).scheme in ("tcp", "tls")
    except InvalidCode:
        ok = False
    if not ok:
        raise ConfigError(_variable(attribute), f"{value!r} is not a tcp://host:port or tls://host:port address")


def _is_prefix(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: a stream/bucket/subject prefix (letters, digits, '-' and '_')."""
    ok = isinstance(value, str) and 0 < len(value) <= 32
    ok = ok and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    if not ok:
        raise ConfigError(
            _variable(attribute), f"{value!r} is not a prefix (use 1-32 letters, digits, '-' or '_', e.g. cairn)"
        )


def default_node_name() -> str:
    """The host name's first label, made a node name (letters, digits, '-', '_'; at most 32)."""
    import socket

    label = socket.gethostname().split(".")[0]
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in label)[:32].strip("-_")
    return name or "cairn"


def _is_node_name(instance: Any, attribute: attr.Attribute, value: Any) -> None:
    """Validator: a node name, a token of NATS subjects (letters, digits, '-', '_'; 1-32, not starting with - or _)."""
    ok = isinstance(value, str) and 0 < len(value) <= 32 and value[0].isascii() and value[0].isalnum()
    ok = ok and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    if not ok:
        raise ConfigError(
            _variable(attribute),
            f"{value!r} is not a node name (use 1-32 letters, digits, '-' or '_', starting with a letter or digit)",
        )


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Config:
    """
    Every setting of a server node, typed and validated.

    Build it with L{Config.from_env}; constructing it directly (as tests do)
    runs the same validation.  Durations are in seconds, sizes in bytes, and a
    listener of C{None} is disabled.
    """

    data_dir: str = _text("CAIRN_DATA_DIR", "/data")
    listen: str | None = _endpoint("CAIRN_LISTEN", "tcp:7400")
    ws_listen: str | None = _endpoint("CAIRN_WS_LISTEN", "tcp:7401")
    #: Web page origins allowed to open a WebSocket (clients without Origin always may).
    ws_allowed_origins: tuple[str, ...] = _urls("CAIRN_WS_ALLOWED_ORIGINS", _ws_origin)
    mgmt_listen: str | None = _endpoint(
        "CAIRN_MGMT_LISTEN", "tcp:9090:interface=127.0.0.1"
    )
    max_payload: int = _size("CAIRN_MAX_PAYLOAD", 1_000_000, 1024, U32_MAX)
    keepalive_interval: float = _duration("CAIRN_KEEPALIVE_INTERVAL", 30.0)
    keepalive_timeout: float = _duration("CAIRN_KEEPALIVE_TIMEOUT", 90.0)
    handshake_timeout: float = _duration("CAIRN_HANDSHAKE_TIMEOUT", 10.0)
    max_handshakes_per_source: int = _count("CAIRN_MAX_HANDSHAKES_PER_SOURCE", 16)
    max_write_buffer: int = _size("CAIRN_MAX_WRITE_BUFFER", 32 * 2**20, 2**20)
    session_ttl: float = _duration("CAIRN_SESSION_TTL", 3600.0)
    # Unauthenticated peers (docs/reliability.md, "Unpaired peers").
    unpaired_session_ttl: float = _duration("CAIRN_UNPAIRED_SESSION_TTL", 10.0)
    max_unpaired_sessions: int = _count("CAIRN_MAX_UNPAIRED_SESSIONS", 1000)
    max_unpaired_per_source: int = _count("CAIRN_MAX_UNPAIRED_PER_SOURCE", 32)
    max_pending_per_source: int = _count("CAIRN_MAX_PENDING_PER_SOURCE", 10)
    fd_reserve: int = _count("CAIRN_FD_RESERVE", 128)
    mgmt_enabled: bool = _boolean("CAIRN_MGMT_ENABLED", True)
    mgmt_token: str | None = _secret("CAIRN_MGMT_TOKEN")
    mgmt_token_file: str | None = _text("CAIRN_MGMT_TOKEN_FILE")
    psk: str | None = _secret("CAIRN_PSK")
    # PSK limits (docs/protocol.md §20.4.7): 0 uses = no limit; no expiry by default.
    psk_max_uses: int = _setting(
        "CAIRN_PSK_MAX_USES", parse_count, 0, _between(0, None, "", above=False, integer=True)
    )
    psk_expires: float | None = _setting(
        "CAIRN_PSK_EXPIRES",
        parse_duration,
        None,
        attr.validators.optional(_between(0, None, "s", above=True, integer=False)),
        converter=_seconds,
    )
    forward_enabled: bool = _boolean("CAIRN_FORWARD_ENABLED", True)
    forward_max_per_peer: int = _count("CAIRN_FORWARD_MAX_PER_PEER", 10_000)
    forward_max_age: float = _duration("CAIRN_FORWARD_MAX_AGE", 7 * 86400.0)
    forward_max_total: int = _size("CAIRN_FORWARD_MAX_TOTAL", 10**9, 1)
    # Free space kept on the data directory's file system for deletions (cairn.diskspace).
    disk_reserve: int = _size("CAIRN_DISK_RESERVE", 64 * 2**20, 0)
    relay_capacity: int = _count("CAIRN_RELAY_CAPACITY", 64)
    sync_access: str = _choice("CAIRN_SYNC_ACCESS", "all", ("all", "none"))
    signal_servers: tuple[str, ...] = _urls("CAIRN_SIGNAL_SERVERS", signal_url)
    turn_servers: tuple[str, ...] = _urls("CAIRN_TURN_SERVERS", turn_url)
    public_addresses: tuple[str, ...] = _urls("CAIRN_PUBLIC_ADDRESSES", public_address)
    turn_secret: str | None = _secret("CAIRN_TURN_SECRET")
    turn_secret_file: str | None = _text("CAIRN_TURN_SECRET_FILE")
    turn_ttl: float = _duration("CAIRN_TURN_TTL", 3600.0)
    log_addresses: bool = _boolean("CAIRN_LOG_ADDRESSES", False)
    signal_listen_addr: str = _text("CAIRN_SIGNAL_LISTEN_ADDR", "0.0.0.0:8443")
    signal_token: str | None = _secret("CAIRN_SIGNAL_TOKEN")
    signal_token_file: str | None = _text("CAIRN_SIGNAL_TOKEN_FILE")
    signal_announce_interval: float = _duration("CAIRN_SIGNAL_ANNOUNCE_INTERVAL", 300.0)
    # Operators (issue 16): how much the node logs and in which form, and
    # whether a management listener beyond loopback is intended (a container).
    log_level: str = _choice("CAIRN_LOG_LEVEL", "info", LOG_LEVELS)
    log_format: str = _choice("CAIRN_LOG_FORMAT", "text", LOG_FORMATS)
    mgmt_exposed: bool = _boolean("CAIRN_MGMT_EXPOSED", False)
    # The node's state on NATS JetStream (cairn/cluster/, docs/scaling.md);
    # unset = the embedded SQLite database.
    cluster_nats: tuple[str, ...] = _setting(
        "CAIRN_CLUSTER_NATS", url_list(_nats_url), (), _are_urls(_nats_url), converter=tuple, repr=_redacted_urls
    )
    cluster_replicas: int = _setting(
        "CAIRN_CLUSTER_REPLICAS", parse_count, 3, _between(1, 5, "", above=False, integer=True)
    )
    cluster_creds_file: str | None = _text("CAIRN_CLUSTER_CREDS_FILE")
    cluster_prefix: str = _setting("CAIRN_CLUSTER_PREFIX", parse_text, "cairn", _is_prefix)
    # Several nodes as one server (issue 15): the shared identity key (unset:
    # identity.key in the data directory) and this node's name.
    identity_file: str | None = _text("CAIRN_IDENTITY_FILE")
    node_name: str = _setting("CAIRN_NODE_NAME", parse_text, attr.Factory(default_node_name), _is_node_name)
    # This node's own address for attached relay circuits across nodes
    # (docs/protocol.md §25.8.8); unset: those circuits are RelayData ones.
    relay_attach_address: str | None = _setting("CAIRN_RELAY_ATTACH_ADDRESS", parse_text, None, _is_attach_address)

    def __attrs_post_init__(self) -> None:
        """Check the rules that tie settings together."""
        if self.keepalive_timeout <= self.keepalive_interval:
            raise ConfigError(
                "CAIRN_KEEPALIVE_TIMEOUT",
                f"{self.keepalive_timeout:g}s must be more than "
                f"CAIRN_KEEPALIVE_INTERVAL ({self.keepalive_interval:g}s)",
            )

    @classmethod
    def variable(cls, name: str) -> str:
        """Name the environment variable read for the attribute C{name}."""
        return _variable(attr.fields_dict(cls)[name])

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Config:
        """
        Read every setting from C{environ}, with C{overrides} taking precedence.

        A variable that is unset or empty takes its default.  When
        C{CAIRN_MGMT_TOKEN_FILE} is set, the management token is read from
        that file (surrounding whitespace stripped); likewise the TURN
        secret from C{CAIRN_TURN_SECRET_FILE}.

        @param environ: the process environment, or a stand-in.
        @param overrides: already-typed values from command-line flags, by
            attribute name; a listener may also be given as C{"none"}.
        @raise ConfigError: naming the first variable with a bad value.
        @raise TypeError: if an override names no setting.
        """
        fields = {field.name: field for field in attr.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        values = {}
        for name, field in fields.items():
            if name in overrides:
                values[name] = _override(field, overrides[name])
                continue
            raw = environ.get(_variable(field), "")
            if raw.strip():
                values[name] = _parse(field, raw)
        if values.get("mgmt_token_file") is not None:
            values["mgmt_token"] = _token_from_file(values)
        if values.get("turn_secret_file") is not None:
            values["turn_secret"] = secret_from_file(
                values, "turn_secret", "CAIRN_TURN_SECRET", "turn_secret_file"
            )
        if values.get("signal_token_file") is not None:
            values["signal_token"] = secret_from_file(
                values, "signal_token", "CAIRN_SIGNAL_TOKEN", "signal_token_file"
            )
        return cls(**values)


def _parse(field: attr.Attribute, raw: str) -> Any:
    """Parse one environment value, naming its variable if it is bad."""
    variable, parse = field.metadata[_ENV]
    try:
        return parse(raw)
    except ValueError as e:
        raise ConfigError(variable, str(e)) from None


def _override(field: attr.Attribute, value: Any) -> Any:
    """Accept a typed flag value; a listener given as a string is checked here."""
    if field.metadata[_ENV][1] is parse_endpoint and isinstance(value, str):
        return _parse(field, value)
    return value


def _token_from_file(values: Mapping[str, Any]) -> str:
    """
    Read the management token from C{CAIRN_MGMT_TOKEN_FILE}.

    Errors name the file, never its contents.
    """
    path = values["mgmt_token_file"]
    if values.get("mgmt_token") is not None:
        raise ConfigError(
            "CAIRN_MGMT_TOKEN_FILE",
            "CAIRN_MGMT_TOKEN and CAIRN_MGMT_TOKEN_FILE are both set (set only one)",
        )
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError(
            "CAIRN_MGMT_TOKEN_FILE", f"cannot read {path!r} ({e.strerror})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            "CAIRN_MGMT_TOKEN_FILE", f"{path!r} is not UTF-8 text"
        ) from None
    if not token:
        raise ConfigError(
            "CAIRN_MGMT_TOKEN_FILE", f"{path!r} is empty (put the token in it)"
        )
    return token


def secret_from_file(
    values: Mapping[str, Any], name: str, variable: str, file_name: str
) -> str:
    """
    Read the secret C{name} from the file named by the setting C{file_name}
    (the variable C{variable + "_FILE"}), surrounding whitespace stripped.

    Errors name the variable and the file, never its contents.
    """
    file_variable = f"{variable}_FILE"
    path = values[file_name]
    if values.get(name) is not None:
        raise ConfigError(
            file_variable,
            f"{variable} and {file_variable} are both set (set only one)",
        )
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as e:
        raise ConfigError(file_variable, f"cannot read {path!r} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(file_variable, f"{path!r} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(file_variable, f"{path!r} is empty (put the secret in it)")
    return secret
