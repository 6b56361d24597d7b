"""
How the node's log is written: the level (C{CAIRN_LOG_LEVEL}), the form
(C{CAIRN_LOG_FORMAT}: text, or one JSON object a line) and the start-up
summary of the effective settings.

twistd chooses the log observer before it runs the plugin's service, from
its C{--logger} option: a name it imports and calls with no arguments.  So
L{cairn.tap.Options} hands twistd L{twistd_observer} (unless the operator
gave C{--logger} already) after L{prepare} recorded the settings; the
observer writes where twistd would have (its own C{--logfile}, C{--syslog}
and C{--nodaemon} choices), filtered and formatted as configured. When
that is systemd's journal (L{journal_stream}), text lines leave out their
time stamp: journald puts its own on every line.

Twisted's per-listener lines ("Starting factory <... at 0x...>", "Site
starting on 9090", "(TCP Port 9090 Closed)") are shown at debug level only:
the node logs its own "listening:" line for each listener.
"""

from __future__ import annotations

import json
import os
import re
import socket
import string
import sys
from typing import Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LogLevel,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

from cairn import __version__, config_report
from cairn.config_values import LOG_LEVELS

log = Logger()

#: Level names, least to most severe (as in L{cairn.config.LOG_LEVELS}).
_RANK = {name: rank for rank, name in enumerate(LOG_LEVELS)}

#: Twisted's lines about each listener, shown at debug level only.
_NOISE_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})
_NOISE_TEXT = re.compile(r"^(?:\S+ starting on \S+|\((?:TCP|UDP|UNIX) Port \S+ Closed\))$")

# What twistd's --logger factory will build (set by prepare()).
_pending: dict[str, Any] = {}


def _level_name(event: dict) -> str:
    level = event.get("log_level") or LogLevel.info
    name = level.name
    if name == "info" and _is_noise(event):
        return "debug"
    return name


def _is_noise(event: dict) -> bool:
    if event.get("log_format") in _NOISE_FORMATS:
        return True
    # A legacy log.msg() line: its text is in log_text (or message).
    text = event.get("log_text")
    if text is None and event.get("message"):
        text = " ".join(str(part) for part in event["message"])
    return isinstance(text, str) and bool(_NOISE_TEXT.match(text))


@implementer(ILogFilterPredicate)
class LevelPredicate:
    """Pass events at C{level} or above (Twisted's listener lines count as debug)."""

    def __init__(self, level: str) -> None:
        self.rank = _RANK[level]

    def __call__(self, event: dict) -> PredicateResult:
        if _RANK.get(_level_name(event), 1) >= self.rank:
            return PredicateResult.maybe
        return PredicateResult.no


def _fields(event: dict) -> dict:
    """The event's fields named by its format string: those a text line shows too."""
    text = event.get("log_format")
    if not text:
        return {}
    fields = {}
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    except ValueError:
        return {}
    for name in names:
        key = re.split(r"[.\[!:]", name, maxsplit=1)[0]
        if key in event and not key.startswith("log_"):
            value = event[key]
            fields[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
    return fields


def json_line(event: dict) -> str | None:
    """
    One event as one line of JSON: C{time} (ISO 8601, UTC), C{level},
    C{namespace}, C{message} (the text a text log shows), the fields the
    message names, and C{failure} (the traceback) when there is one.
    """
    record = {
        "time": formatTime(event.get("log_time"), "%Y-%m-%dT%H:%M:%S.%f%z"),
        "level": _level_name(event),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    record.update({k: v for k, v in _fields(event).items() if k not in record})
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return json.dumps(record, separators=(",", ":"), default=repr) + "\n"


def json_observer(out) -> FileLogObserver:
    """An observer writing L{json_line}s to the text file C{out}."""
    return FileLogObserver(out, json_line)


def journal_stream(out, environ=None) -> bool:
    """
    Whether C{out} is systemd's journal: C{JOURNAL_STREAM} (set by systemd
    for a service whose output goes to the journal) names its device and
    inode. journald stamps every line with its own time.
    """
    device, colon, inode = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(out.fileno())
        return bool(colon) and (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (AttributeError, OSError, ValueError):
        return False


def journal_line(event: dict) -> str | None:
    """Twisted's text line without its time stamp (journald adds one): C{[namespace#level] message}."""
    text = formatEventAsClassicLogText(event, formatTime=lambda _: "")
    return None if text is None else text[1:]


def make_observer(base, out, level: str, form: str) -> ILogObserver:
    """
    The node's observer: C{base} (an observer writing text) or, for
    C{form} C{"json"}, JSON lines to C{out}; either keeping C{level} and above.
    """
    if form == "json" and out is not None:
        base = json_observer(out)
    return FilteringLogObserver(base, [LevelPredicate(level)])


def prepare(twistd_options, level: str, form: str) -> None:
    """
    Have twistd log through L{twistd_observer} with C{level} and C{form},
    unless the operator chose a C{--logger} of their own.

    @param twistd_options: twistd's C{ServerOptions} (the plugin options'
        C{parent}), before its own C{postOptions} runs.
    """
    if twistd_options is None or twistd_options.get("logger"):
        return
    _pending.update(options=twistd_options, level=level, form=form)
    twistd_options["logger"] = f"{__name__}.twistd_observer"


def twistd_observer() -> ILogObserver:
    """twistd's C{--logger} factory: what twistd would write, filtered and formatted."""
    # Twisted privates (_SomeApplicationRunner, _getLogObserver, _outFile): no public way to twistd's observer.
    from twisted.scripts.twistd import _SomeApplicationRunner

    options = _pending["options"]
    default = _SomeApplicationRunner.loggerFactory(options)._getLogObserver()
    if not ILogObserver.providedBy(default):
        default = LegacyLogObserverWrapper(default)  # syslog
    out = None
    if _pending["form"] == "json" and not options.get("syslog"):
        out = getattr(default, "_outFile", None) or sys.stdout
    elif not options.get("syslog") and journal_stream(getattr(default, "_outFile", None)):
        default = FileLogObserver(default._outFile, journal_line)  # under systemd: one time stamp a line
    return make_observer(default, out, _pending["level"], _pending["form"])


def summary(config, origin=None, logger: Logger = log) -> None:
    """
    Log the effective settings in a few lines (secrets redacted), and warn
    if pairing links will advertise the machine's host name.
    """
    rows = {row["name"]: row for row in config_report.settings(config, origin)}
    width = max(len(rows[name]["variable"]) for name in config_report.SUMMARY)
    lines = [
        f"  {rows[name]['variable']:<{width}}  {config_report.show(rows[name]['value'])}"
        f"  ({rows[name]['source']})"
        for name in config_report.SUMMARY
    ]
    logger.info(
        "cairn {version} settings (all: cairn-server config):\n{settings}",
        version=__version__,
        settings="\n".join(lines),
    )
    if not config.public_addresses and any(map(config_report.binds_every_interface, (config.listen, config.ws_listen))):
        logger.warn(
            "CAIRN_PUBLIC_ADDRESSES is unset: pairing links advertise this machine's host name "
            "({host}); set CAIRN_PUBLIC_ADDRESSES to the address devices dial",
            host=socket.gethostname(),
        )
