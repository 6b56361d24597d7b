"""
The C{twistd cairn} command: its options and its service.

Flags are typed here, at the edge, with the parsers of L{cairn.config}; a flag
beats its environment variable, which beats the default.  Settings without a
flag (secrets above all) come from the environment only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from cairn import config_report, fdlimit, logs
from cairn.config import (
    Config,
    ConfigError,
    parse_duration,
    parse_endpoint,
    parse_size,
)
from cairn.startup import StartupError


def _flag_parser(flag: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """
    Wrap C{parse} as an option coerce function whose errors name C{--flag}.

    A C{ValueError} from a coerce function reaches the user prefixed with
    "Parameter type enforcement failed"; a L{usage.UsageError} goes through
    as it is, so the message stays one line starting with the flag.
    """

    def coerce(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise usage.UsageError(f"--{flag}: {e}") from None

    return coerce


def _listener(text: str) -> str:
    """Check an endpoint flag, keeping C{"none"} so that it is not taken as unset."""
    return parse_endpoint(text) or "none"


_ENDPOINT = "a Twisted endpoint string, or 'none' to disable it"

# (flag, Config attribute, parser or None for plain text, help)
_FLAGS = [
    ("data-dir", "data_dir", None, "Persistent data directory."),
    ("listen", "listen", _listener, f"Cairn protocol over TCP: {_ENDPOINT}."),
    ("ws-listen", "ws_listen", _listener, f"Cairn over WebSocket: {_ENDPOINT}."),
    ("mgmt-listen", "mgmt_listen", _listener, f"Management API: {_ENDPOINT}."),
    (
        "max-payload",
        "max_payload",
        parse_size,
        "Largest envelope payload accepted: bytes, or e.g. 64KiB, 1MB.",
    ),
    (
        "keepalive-interval",
        "keepalive_interval",
        parse_duration,
        "Time between Keepalives on a session: seconds, or e.g. 15s, 1m.",
    ),
    (
        "keepalive-timeout",
        "keepalive_timeout",
        parse_duration,
        "Silence from the peer after which its connection is dropped: e.g. 90s.",
    ),
]


def _help(attribute: str, text: str) -> str:
    """Add the environment variable and the built-in default to a flag's help."""
    value = getattr(Config(), attribute)
    default = f"{value:g}s" if isinstance(value, float) else str(value)
    return f"{text} [env: {Config.variable(attribute)}; default: {default}]"


def _parameter(flag: str, attribute: str, parse, text: str) -> list:
    """One C{optParameters} row; every default is C{None}, meaning "not given"."""
    row = [flag, None, None, _help(attribute, text)]
    if parse is not None:
        row.append(_flag_parser(flag, parse))
    return row


class Options(usage.Options):
    """
    Options of C{twistd cairn} (and of C{cairn-server run}).

    Parsing also builds the L{Config}, so that a bad setting stops
    everything before twistd goes on: a bad flag is a usage error (twistd
    prints its usage, then the line naming the flag), a bad environment
    variable a L{StartupError} (just the line naming the variable).
    """

    longdesc = (
        "Run a cairn server node. Each flag overrides its environment "
        "variable; every other setting, secrets included, is read from the "
        "environment only: all of them are listed below."
    )
    optParameters: ClassVar[list] = [_parameter(*flag) for flag in _FLAGS]

    def postOptions(self) -> None:
        """Check the flags and the environment together; set up the log for twistd."""
        config = config_from_options(self)
        # Under twistd, self.parent is its ServerOptions: the log observer
        # must be chosen there, before twistd starts logging (cairn.logs).
        logs.prepare(getattr(self, "parent", None), config.log_level, config.log_format)

    def getUsage(self, width: int | None = None) -> str:
        """The flags, then every setting with its default (the README is not installed)."""
        return super().getUsage(width) + settings_help()

    def opt_version(self) -> None:
        """Display cairn's version (and Twisted's) and exit."""
        from cairn import __version__
        from twisted import __version__ as twisted_version

        sys.stdout.write(f"cairn-server {__version__} (Twisted {twisted_version})\n")
        raise SystemExit(0)

    def overrides(self) -> dict[str, Any]:
        """The L{Config} attributes given as flags, by attribute name."""
        return {
            attribute: self[flag]
            for flag, attribute, *_ in _FLAGS
            if self[flag] is not None
        }


def settings_help() -> str:
    """Every setting: its variable, its flag if it has one, and its default (secrets: unset)."""
    import attr

    flags = {attribute: flag for flag, attribute, *_ in _FLAGS}
    rows = []
    for field in attr.fields(Config):
        flag = f" (--{flags[field.name]})" if field.name in flags else ""
        rows.append((Config.variable(field.name) + flag, config_report.show(field.default)))
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {default}" for name, default in rows]
    return (
        "\nSettings (environment variables; a flag overrides its variable), with defaults:\n"
        + "\n".join(lines)
        + "\nSizes take units (64KiB, 1MB), durations too (30s, 15m, 7d); 'none' disables a listener.\n"
        "Secrets may be read from files: CAIRN_MGMT_TOKEN_FILE, CAIRN_TURN_SECRET_FILE,\n"
        "CAIRN_SIGNAL_TOKEN_FILE. Meanings: the README's settings table (README.rst).\n"
    )


def _flag_for(variable: str, options: Options) -> str | None:
    """The flag that was given for C{variable}, if any."""
    for flag, attribute, *_ in _FLAGS:
        if Config.variable(attribute) == variable and options[flag] is not None:
            return flag
    return None


def config_from_options(options: Options) -> Config:
    """
    Build the L{Config} from C{os.environ} and the flags in C{options}.

    @raise usage.UsageError: one line naming the flag, if the bad value came
        from a flag.
    @raise StartupError: one line naming the environment variable, if it
        came from the environment.
    """
    try:
        return Config.from_env(os.environ, **options.overrides())
    except ConfigError as e:
        flag = _flag_for(e.variable, options)
        if flag:
            raise usage.UsageError(f"--{flag}: {e.problem}") from None
        raise StartupError(str(e)) from None


def makeService(options: Options) -> IService:
    """
    Build the server node's service from parsed C{options}.

    @raise usage.UsageError: if a flag is bad.
    @raise StartupError: if anything else stops the node from starting
        (one line, see L{cairn.startup}).
    """
    config = config_from_options(options)
    # Imported here, not at the top: twistd installs the reactor chosen on
    # its command line before calling makeService, and `twistd cairn --help`
    # should not need the whole node.
    from twisted.internet import reactor

    from cairn.node import Process
    from cairn.pairing.psk import PskError
    from cairn.service import make_node

    sources = config_report.sources(os.environ, options.overrides())
    # The process is the node's alone (see cairn.node.Process); twistd's
    # own options are the launcher (parsing a subcommand sets its parent).
    process = Process(
        freeze_gc=True,
        handle_sighup=True,
        exit_status=True,
        tell_systemd=True,
        launcher=getattr(options, "parent", None),
        config_sources=sources,
    )
    # Before the node is made: its descriptor gauge reads the limit.
    fdlimit.raise_and_say()
    try:
        node = make_node(config, reactor, process)
    except PskError as e:  # a damaged <data dir>/pairing-psk.json: one line, no traceback
        raise StartupError(str(e)) from None
    # The process is the node's: gate its whole log (addresses, floods).
    from cairn.logfilter import LogGateService

    LogGateService(reactor, config.log_addresses).setServiceParent(node)
    logs.summary(config, sources)
    return node
