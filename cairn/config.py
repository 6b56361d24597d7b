"""
Environment variables and command-line flags, turned into one frozen L{Config}.

This is the only module that knows the C{CAIRN_*} variable names; domain code
receives a L{Config} and never reads C{os.environ}.  Every value is parsed and
validated here, so a bad setting stops start-up with one line naming the
variable and the forms it accepts.  Secrets (the management token, the
pre-shared key, the TURN secret) never appear in an error message or a repr.
The parsers of the values themselves are in L{cairn.config_values}, the
checks of typed values and L{ConfigError} in L{cairn.config_checks}, how
each kind of setting is declared in L{cairn.config_fields}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr

from cairn import config_fields as field
from cairn.config_checks import (
    ENV_KEY,
    ConfigError,
    are_urls,
    between,
    nats_url,
    redacted_urls,
    variable_of,
    ws_origin,
)
from cairn.config_values import (
    LOG_FORMATS,
    LOG_LEVELS,
    parse_bool,
    parse_count,
    parse_duration,
    parse_endpoint,
    parse_size,
    parse_text,
    public_address,
    shown_urls,
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


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Config:
    """
    Every setting of a server node, typed and validated.

    Build it with L{Config.from_env}; constructing it directly (as tests do)
    runs the same validation.  Durations are in seconds, sizes in bytes, and a
    listener of C{None} is disabled.
    """

    data_dir: str = field.text("CAIRN_DATA_DIR", "/data")
    listen: str | None = field.endpoint("CAIRN_LISTEN", "tcp:7400")
    ws_listen: str | None = field.endpoint("CAIRN_WS_LISTEN", "tcp:7401")
    #: Web page origins allowed to open a WebSocket (clients without Origin always may).
    ws_allowed_origins: tuple[str, ...] = field.urls("CAIRN_WS_ALLOWED_ORIGINS", ws_origin)
    mgmt_listen: str | None = field.endpoint("CAIRN_MGMT_LISTEN", "tcp:9090:interface=127.0.0.1")
    max_payload: int = field.size("CAIRN_MAX_PAYLOAD", 1_000_000, 1024, U32_MAX)
    keepalive_interval: float = field.duration("CAIRN_KEEPALIVE_INTERVAL", 30.0)
    keepalive_timeout: float = field.duration("CAIRN_KEEPALIVE_TIMEOUT", 90.0)
    handshake_timeout: float = field.duration("CAIRN_HANDSHAKE_TIMEOUT", 10.0)
    max_handshakes_per_source: int = field.count("CAIRN_MAX_HANDSHAKES_PER_SOURCE", 16)
    max_write_buffer: int = field.size("CAIRN_MAX_WRITE_BUFFER", 32 * 2**20, 2**20)
    session_ttl: float = field.duration("CAIRN_SESSION_TTL", 3600.0)
    # Unauthenticated peers (docs/reliability.md, "Unpaired peers").
    unpaired_session_ttl: float = field.duration("CAIRN_UNPAIRED_SESSION_TTL", 10.0)
    max_unpaired_sessions: int = field.count("CAIRN_MAX_UNPAIRED_SESSIONS", 1000)
    max_unpaired_per_source: int = field.count("CAIRN_MAX_UNPAIRED_PER_SOURCE", 32)
    max_pending_per_source: int = field.count("CAIRN_MAX_PENDING_PER_SOURCE", 10)
    fd_reserve: int = field.count("CAIRN_FD_RESERVE", 128)
    mgmt_enabled: bool = field.boolean("CAIRN_MGMT_ENABLED", True)
    mgmt_token: str | None = field.secret("CAIRN_MGMT_TOKEN")
    mgmt_token_file: str | None = field.text("CAIRN_MGMT_TOKEN_FILE")
    psk: str | None = field.secret("CAIRN_PSK")
    # PSK limits (docs/protocol.md §20.4.7): 0 uses = no limit; no expiry by default.
    psk_max_uses: int = field.setting(
        "CAIRN_PSK_MAX_USES", parse_count, 0, between(0, None, "", above=False, integer=True)
    )
    psk_expires: float | None = field.setting(
        "CAIRN_PSK_EXPIRES",
        parse_duration,
        None,
        attr.validators.optional(between(0, None, "s", above=True, integer=False)),
        converter=field.seconds,
    )
    forward_enabled: bool = field.boolean("CAIRN_FORWARD_ENABLED", True)
    forward_max_per_peer: int = field.count("CAIRN_FORWARD_MAX_PER_PEER", 10_000)
    forward_max_age: float = field.duration("CAIRN_FORWARD_MAX_AGE", 7 * 86400.0)
    forward_max_total: int = field.size("CAIRN_FORWARD_MAX_TOTAL", 10**9, 1)
    # Free space kept on the data directory's file system for deletions (cairn.diskspace).
    disk_reserve: int = field.size("CAIRN_DISK_RESERVE", 64 * 2**20, 0)
    # How SQLite overwrites what deletions free (cairn.db.open_connection).
    secure_delete: str = field.choice("CAIRN_SECURE_DELETE", "fast", ("fast", "on"))
    relay_capacity: int = field.count("CAIRN_RELAY_CAPACITY", 64)
    sync_access: str = field.choice("CAIRN_SYNC_ACCESS", "all", ("all", "none"))
    # A URL may carry ?token= (README): shown without it.
    signal_servers: tuple[str, ...] = field.setting(
        "CAIRN_SIGNAL_SERVERS", url_list(signal_url), (), are_urls(signal_url), converter=tuple, repr=shown_urls
    )
    turn_servers: tuple[str, ...] = field.urls("CAIRN_TURN_SERVERS", turn_url)
    public_addresses: tuple[str, ...] = field.urls("CAIRN_PUBLIC_ADDRESSES", public_address)
    turn_secret: str | None = field.secret("CAIRN_TURN_SECRET")
    turn_secret_file: str | None = field.text("CAIRN_TURN_SECRET_FILE")
    turn_ttl: float = field.duration("CAIRN_TURN_TTL", 3600.0)
    log_addresses: bool = field.boolean("CAIRN_LOG_ADDRESSES", False)
    signal_listen_addr: str = field.text("CAIRN_SIGNAL_LISTEN_ADDR", "0.0.0.0:8443")
    signal_token: str | None = field.secret("CAIRN_SIGNAL_TOKEN")
    signal_token_file: str | None = field.text("CAIRN_SIGNAL_TOKEN_FILE")
    signal_announce_interval: float = field.duration("CAIRN_SIGNAL_ANNOUNCE_INTERVAL", 300.0)
    # Operators (issue 16): how much the node logs and in which form, and
    # whether a management listener beyond loopback is intended (a container).
    log_level: str = field.choice("CAIRN_LOG_LEVEL", "info", LOG_LEVELS)
    log_format: str = field.choice("CAIRN_LOG_FORMAT", "text", LOG_FORMATS)
    mgmt_exposed: bool = field.boolean("CAIRN_MGMT_EXPOSED", False)
    # The node's state on NATS JetStream (cairn/cluster/, docs/scaling.md);
    # unset = the embedded SQLite database.
    cluster_nats: tuple[str, ...] = field.setting(
        "CAIRN_CLUSTER_NATS", url_list(nats_url), (), are_urls(nats_url), converter=tuple, repr=redacted_urls
    )
    cluster_replicas: int = field.setting(
        "CAIRN_CLUSTER_REPLICAS", parse_count, 3, between(1, 5, "", above=False, integer=True)
    )
    cluster_creds_file: str | None = field.text("CAIRN_CLUSTER_CREDS_FILE")
    # The certificate authority tls:// NATS servers are checked against (unset: the system's).
    cluster_tls_ca: str | None = field.text("CAIRN_CLUSTER_TLS_CA")
    cluster_prefix: str = field.setting("CAIRN_CLUSTER_PREFIX", parse_text, "cairn", field.is_prefix)
    # JetStream storage kept as a ballast, released at NATS's storage limit (cairn.cluster.reserve).
    cluster_reserve: int = field.size("CAIRN_CLUSTER_RESERVE", 8 * 2**20, 0)
    # Several nodes as one server (issue 15): the shared identity key (unset:
    # identity.key in the data directory) and this node's name.
    identity_file: str | None = field.text("CAIRN_IDENTITY_FILE")
    node_name: str = field.setting(
        "CAIRN_NODE_NAME", parse_text, attr.Factory(field.default_node_name), field.is_node_name
    )
    # This node's own address for attached relay circuits across nodes
    # (docs/protocol.md §25.8.8); unset: those circuits are RelayData ones.
    relay_attach_address: str | None = field.setting(
        "CAIRN_RELAY_ATTACH_ADDRESS", parse_text, None, field.is_attach_address
    )

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
        return variable_of(attr.fields_dict(cls)[name])

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
        fields = {a.name: a for a in attr.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        values = {}
        for name, attribute in fields.items():
            if name in overrides:
                values[name] = _override(attribute, overrides[name])
                continue
            raw = environ.get(variable_of(attribute), "")
            if raw.strip():
                values[name] = _parse(attribute, raw)
        if values.get("mgmt_token_file") is not None:
            values["mgmt_token"] = secret_from_file(
                values, "mgmt_token", "CAIRN_MGMT_TOKEN", "mgmt_token_file", what="token"
            )
        if values.get("turn_secret_file") is not None:
            values["turn_secret"] = secret_from_file(values, "turn_secret", "CAIRN_TURN_SECRET", "turn_secret_file")
        if values.get("signal_token_file") is not None:
            values["signal_token"] = secret_from_file(values, "signal_token", "CAIRN_SIGNAL_TOKEN", "signal_token_file")
        return cls(**values)


def _parse(attribute: attr.Attribute, raw: str) -> Any:
    """Parse one environment value, naming its variable if it is bad."""
    variable, parse = attribute.metadata[ENV_KEY]
    try:
        return parse(raw)
    except ValueError as e:
        raise ConfigError(variable, str(e)) from None


def _override(attribute: attr.Attribute, value: Any) -> Any:
    """Accept a typed flag value; a listener given as a string is checked here."""
    if attribute.metadata[ENV_KEY][1] is parse_endpoint and isinstance(value, str):
        return _parse(attribute, value)
    return value


def secret_from_file(values: Mapping[str, Any], name: str, variable: str, file_name: str, what: str = "secret") -> str:
    """
    Read the secret C{name} from the file named by the setting C{file_name}
    (the variable C{variable + "_FILE"}), surrounding whitespace stripped;
    C{what} names it in the message for an empty file.

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
        raise ConfigError(file_variable, f"{path!r} is empty (put the {what} in it)")
    return secret
