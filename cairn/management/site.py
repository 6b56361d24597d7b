"""
The management API's listener side: the L{Site} it is served by, and the
warning given when that listener is reachable from other hosts in clear.
"""

import ipaddress

from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from cairn.management.console import ConsoleRoot
from cairn.management.http import BODY_LIMIT

__all__ = ["make_site", "warn_if_exposed"]

log = Logger()

#: A client still sending after this many body bytes is disconnected.
_ABORT_AFTER = 16 * BODY_LIMIT


class _BoundedRequest(Request):
    """
    A request that keeps at most C{BODY_LIMIT + 1} body bytes in memory
    (so that the API can answer 413) and drops a client that keeps sending.
    """

    _body_seen = 0

    def gotLength(self, length):
        # Always an in-memory buffer: never spool a large body to disk.
        super().gotLength(None)

    def handleContentChunk(self, data):
        seen = self._body_seen
        self._body_seen = seen + len(data)
        room = BODY_LIMIT + 1 - seen
        if room > 0:
            self.content.write(data[:room])
        if seen <= _ABORT_AFTER < self._body_seen:
            log.warn("management API: request body over {n} bytes, disconnecting", n=_ABORT_AFTER)
            self.channel.loseConnection()


#: Seconds a client has to send a whole request (headers and body), from
#: the connection or the end of the previous response: the idle timeout
#: alone restarts at every byte, so a byte every few seconds (slowloris)
#: would hold a connection for ever. Headers are bounded by Twisted
#: (16 KiB in all, 500 lines: 400 Bad Request above).
REQUEST_TIMEOUT = 30.0

_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _DeadlineChannel(HTTPChannel):
    """An L{HTTPChannel} that closes a client too slow to send its request (L{REQUEST_TIMEOUT})."""

    _deadline = None

    def connectionMade(self):
        super().connectionMade()
        self._start_deadline()

    def _start_deadline(self):
        self._stop_deadline()
        self._deadline = self.callLater(self.site_request_timeout, self._too_slow)

    def _stop_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self):
        self._deadline = None
        log.info("management API: request not received within {n} s, disconnecting", n=self.site_request_timeout)
        self.transport.write(_TOO_SLOW)
        self.transport.loseConnection()

    def allContentReceived(self):
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request):
        # Before the parent's: it goes on with a pipelined request at once.
        if self.persistent:
            self._start_deadline()
        super().requestDone(request)

    def connectionLost(self, reason):
        self._stop_deadline()
        super().connectionLost(reason)


class _ManagementSite(Site):
    """A L{Site} whose access log goes to twisted.logger at debug level, without addresses."""

    noisy = False
    protocol = _DeadlineChannel
    request_timeout = REQUEST_TIMEOUT

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.site_request_timeout = self.request_timeout
        return channel

    def log(self, request):
        log.debug(
            "management API: {method} {path} {code}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            code=request.code,
        )


def make_site(api, timeout: float = 30.0, reactor=None) -> Site:
    """
    A L{Site} serving C{api} (a L{cairn.management.app.ManagementAPI}),
    and the web console at C{/ui/} (L{ConsoleRoot}).

    Tracebacks off, idle connections closed after C{timeout} seconds, a
    request not received whole within L{REQUEST_TIMEOUT} answered 408 and
    closed, bodies over L{BODY_LIMIT} refused (and never buffered beyond
    it), no form parsing, access log at debug level without client addresses.
    """
    site = _ManagementSite(
        ConsoleRoot(api.resource()),
        requestFactory=_BoundedRequest,
        timeout=timeout,
        reactor=reactor,
        parsePOSTFormSubmission=False,
    )
    site.displayTracebacks = False
    return site


def warn_if_exposed(endpoint_description, log, intended: bool = False) -> bool:
    """
    Warn when the management listener is reachable from other hosts in clear.

    With C{intended} (C{CAIRN_MGMT_EXPOSED=true}, set by the Docker image,
    where C{-p} decides who reaches the port) an exposed binding is one
    informational line instead of a warning.

    TCP bound to a loopback interface, a UNIX socket, or TLS (C{ssl:},
    C{tls:}) pass silently; other TCP bindings draw a warning.  For other
    endpoint types (e.g. C{systemd:}) the binding cannot be told from here,
    so an informational line is logged instead.

    @return: whether a warning was logged.
    """
    if not endpoint_description:
        return False
    kind, args, kwargs = _parse_endpoint(endpoint_description)
    if kind in ("ssl", "tls", "unix"):
        return False
    if kind in ("tcp", "tcp6"):
        interface = kwargs.get("interface", args[1] if len(args) > 1 else "")
        if _is_loopback(interface):
            return False
        if intended:
            log.info(
                "the management API listens on {endpoint} in clear text (CAIRN_MGMT_EXPOSED=true): "
                "publish its port to trusted networks only (e.g. -p 127.0.0.1:9090:9090)",
                endpoint=endpoint_description,
            )
            return False
        log.warn(
            "the management API listens on {endpoint} in clear text, reachable from other hosts; "
            "bind it to 127.0.0.1 (tcp:9090:interface=127.0.0.1), put it behind TLS, "
            "or keep the port unpublished",
            endpoint=endpoint_description,
        )
        return True
    log.info(
        "the management API listens on {endpoint}: make sure it is not reachable from untrusted networks",
        endpoint=endpoint_description,
    )
    return False


def _parse_endpoint(description: str):
    """Split a Twisted endpoint string into (type, positional args, keyword args), honouring backslash escapes."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    kind, rest = parts[0].strip().lower(), parts[1:]
    args, kwargs = [], {}
    for part in rest:
        name, sep, value = part.partition("=")
        if sep:
            kwargs[name.strip()] = value.strip()
        else:
            args.append(part.strip())
    return kind, args, kwargs


def _is_loopback(interface: str) -> bool:
    interface = interface.strip().strip("[]")
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False
