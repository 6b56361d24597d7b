"""
The node's log gate: no peer addresses from libraries, and no log flood.

Two things reach the log that cairn's own code cannot shape:

  - Libraries' lines carrying peer addresses: autobahn's "dropping
    connection to peer tcp4:IP:port", Twisted's "EMFILE recovery: Closed
    socket from (IP, port)", and the C{system} prefix Twisted gives legacy
    events raised inside a connection ("StreamProtocol,7,IP"). Unless the
    operator opts in (C{CAIRN_LOG_ADDRESSES}), L{redact} replaces the
    addresses in every event not from cairn (cairn's own lines name
    addresses only when asked) with C{<address>}.
  - Repetition: 100,000 bad inputs meant 235,000 lines (27 MB), most of
    them the same few lines again and again. L{LogGate} lets through at
    most C{burst} events of one kind (namespace, format and level) per
    C{interval} seconds on the injected clock; at the end of the interval
    one summary line says how many more there were. Critical events always
    pass.

L{LogGateService} puts the gate in front of every observer the process
logs to once logging has begun (the twistd plugin adds it to the node; an
application embedding a node keeps its own logging). Twisted's public API
has no way to list a publisher's observers, so L{install} reads
C{LogPublisher._observers}; where that is missing it leaves logging as it
is and says so.
"""

import ipaddress
import re

from twisted.application.service import Service
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

log = Logger()

#: Events of one kind let through per interval, and the interval (seconds).
BURST = 20
INTERVAL = 60.0
REDACTED = "<address>"

# An IPv4 address with an optional port; an IPv6 one (two colons or more
# among hex groups), bare or in brackets with an optional port.
_IPV4 = r"\b(?:\d{1,3}\.){3}\d{1,3}\b(?::\d{1,5})?"
_IPV6 = r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?"
_ADDRESS = re.compile(rf"\[{_IPV6}\](?::\d{{1,5}})?|(?<![\w:]){_IPV6}(?![\w:])|{_IPV4}")
#: Fields of an event that are not the producer's own values.
_META = frozenset({"log_logger", "log_source", "log_level", "log_namespace", "log_time", "log_format", "log_id"})


def _looks_like_address(value) -> bool:
    host = getattr(value, "host", None)
    if isinstance(host, str) and hasattr(value, "port"):
        return True  # an IPv4Address / IPv6Address / HostnameAddress
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        try:
            ipaddress.ip_address(value[0].split("%", 1)[0])
            return True  # a socket address: (host, port[, flow, scope])
        except ValueError:
            return False
    return False


def _scrub(value):
    if _looks_like_address(value):
        return REDACTED
    if isinstance(value, str):
        return _ADDRESS.sub(REDACTED, value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(item) for item in value)
    return value


def redact(event: dict) -> dict:
    """
    C{event} with peer addresses replaced, if it comes from a library; cairn's own events
    (namespace C{cairn.*}) are returned as they are, except for their C{log_system}.
    """
    ours = str(event.get("log_namespace", "")).startswith("cairn.")
    changed = {}
    for key, value in event.items():
        if key in _META or isinstance(value, Failure):
            continue
        if ours and key not in ("log_system", "system"):
            continue
        scrubbed = _scrub(value) if not _is_plain(value) else value
        if scrubbed is not value and scrubbed != value:
            changed[key] = scrubbed
    if not changed:
        return event
    return {**event, **changed}


def _is_plain(value) -> bool:
    return isinstance(value, (int, float, bool, bytes)) or value is None


class _Kind:
    __slots__ = ("passed", "suppressed", "timer", "namespace", "format", "level")

    def __init__(self, namespace, fmt, level):
        self.namespace, self.format, self.level = namespace, fmt, level
        self.passed = 0
        self.suppressed = 0
        self.timer = None


class LogGate:
    """
    An C{ILogObserver} forwarding to C{observers}: addresses redacted
    unless C{log_addresses}, repeats aggregated (see the module docstring).

    @param clock: the C{IReactorTime} of the intervals.
    """

    def __init__(self, observers, clock, log_addresses=False, burst=BURST, interval=INTERVAL):
        self.observers = list(observers)
        self.clock = clock
        self.log_addresses = log_addresses
        self.burst = burst
        self.interval = interval
        self._kinds = {}
        #: Events held back so far (for tests and metrics).
        self.suppressed = 0

    def __call__(self, event):
        level = event.get("log_level")
        if level is not LogLevel.critical:
            key = (event.get("log_namespace"), event.get("log_format"), level)
            kind = self._kinds.get(key)
            if kind is None:
                kind = self._kinds[key] = _Kind(*key)
                kind.timer = self.clock.callLater(self.interval, self._interval_over, key)
            if kind.passed >= self.burst:
                kind.suppressed += 1
                self.suppressed += 1
                return
            kind.passed += 1
        self._forward(event if self.log_addresses else redact(event))

    def _forward(self, event):
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                pass  # an observer that fails must not stop the others (as in LogPublisher)

    def _interval_over(self, key):
        kind = self._kinds.pop(key)
        if kind.suppressed:
            self._summary(kind)

    def _summary(self, kind):
        self._forward(
            {
                "log_namespace": "cairn.logfilter",
                "log_level": kind.level or LogLevel.info,
                "log_time": self.clock.seconds(),
                "log_format": "{count} more like this in the last {interval:g} s, not shown: [{namespace}] {pattern}",
                "count": kind.suppressed,
                "interval": self.interval,
                "namespace": kind.namespace,
                "pattern": kind.format,
            }
        )

    def flush(self):
        """Write the summaries of the intervals still open now (at a stop)."""
        kinds, self._kinds = self._kinds, {}
        for kind in kinds.values():
            if kind.timer is not None and kind.timer.active():
                kind.timer.cancel()
            if kind.suppressed:
                self._summary(kind)


def install(clock, log_addresses=False, publisher=globalLogPublisher, **settings):
    """
    Put a L{LogGate} in front of every observer of C{publisher}; returns
    the gate, or None if the publisher's observers cannot be listed.
    """
    # Twisted's private LogPublisher._observers (no public listing); guarded: without it, no gate.
    observers = getattr(publisher, "_observers", None)
    if observers is None:
        log.warn("log gate not installed: this Twisted does not list its log observers")
        return None
    observers = list(observers)
    for observer in observers:
        publisher.removeObserver(observer)
    gate = LogGate(observers, clock, log_addresses, **settings)
    publisher.addObserver(gate)
    return gate


def uninstall(gate, publisher=globalLogPublisher):
    """Undo L{install}: the gate's observers are the publisher's again."""
    gate.flush()
    publisher.removeObserver(gate)
    for observer in gate.observers:
        publisher.addObserver(observer)


class LogGateService(Service):
    """
    Installs the log gate when started. When stopped it writes the open
    summaries and stays in place, so that the lines of the rest of the
    shutdown are gated too (the process ends with it).
    """

    def __init__(self, clock, log_addresses=False, publisher=globalLogPublisher):
        self.clock = clock
        self.log_addresses = log_addresses
        self.publisher = publisher
        self.gate = None

    def startService(self):
        super().startService()
        self.gate = install(self.clock, self.log_addresses, self.publisher)

    def stopService(self):
        super().stopService()
        if self.gate is not None:
            self.gate.flush()
