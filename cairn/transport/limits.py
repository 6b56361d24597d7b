"""
Limits the listeners apply below the session layer, against slow and
hostile peers (docs/protocol.md §15, docs/reliability.md):

  - L{SourceLimiter}: at most C{max_pending} connections per source
    address that have not yet completed a handshake or Reconnect
    (C{CAIRN_MAX_HANDSHAKES_PER_SOURCE}). One more is refused at once: on
    TCP with a Close in clear (code 12, LIMIT_REACHED), on WebSocket with
    HTTP 429 before the upgrade. Together with the handshake timeout this
    bounds what one address can hold open without authenticating.
  - L{OutputGuard}: bounds what is queued for a peer that does not read.
    Registered as a streaming producer on the transport, it is told when
    the transport's buffer passes its pause threshold (Twisted's
    C{bufferSize}: 256 KiB on cairn TCP connections, 64 KiB under
    WebSocket) and when it empties again. A peer whose buffer has not
    emptied within C{window} seconds (the keepalive timeout), or whose
    buffer passes C{limit} bytes
    (C{CAIRN_MAX_WRITE_BUFFER}), is closed with LIMIT_REACHED and its
    transport aborted (a Close queued behind what it does not read would
    never arrive).
"""

import ipaddress

import attr
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from cairn.wire import cbor
from cairn.wire.constants import PROTOCOL_VERSION, CloseCode, MessageType
from cairn.wire.envelope import Envelope

log = Logger()

#: Defaults of the configuration (docs/deployment.md).
MAX_PENDING_PER_SOURCE = 16
MAX_WRITE_BUFFER = 32 * 1024 * 1024

_ZERO_SID = b"\x00" * 16
REFUSED_REASON = "too many unfinished handshakes from this address"


def source_of(addr) -> str:
    """
    The key of the per-source limits: the host of an address (the port
    changes per dial). IPv6 hosts are grouped by their /64: one subscriber
    usually holds a whole /64 and can dial from any address in it.
    """
    host = getattr(addr, "host", None)
    if not host:
        return str(addr)
    return source_key(host)


def source_key(host: str) -> str:
    """C{host}, or for an IPv6 address its /64 network (C{"2001:db8:1:2::/64"})."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


def session_source(session) -> str:
    """The per-source key of the transport carrying C{session} ("unknown" if detached)."""
    transport = getattr(getattr(session, "connection", None), "transport", None)
    get_peer = getattr(getattr(transport, "transport", None), "getPeer", None)
    if get_peer is None:
        return "unknown"
    return source_of(get_peer())


@attr.s(eq=False)
class Ticket:
    """One admitted connection; L{done} once it is established or gone (idempotent)."""

    limiter = attr.ib()
    source = attr.ib()
    _open = attr.ib(default=True)

    def done(self) -> None:
        if self._open:
            self._open = False
            self.limiter.release(self.source)


class SourceLimiter:
    """
    Counts unfinished handshakes per source address, across listeners.

    @param max_pending: unfinished handshakes allowed per source.
    """

    def __init__(self, max_pending: int = MAX_PENDING_PER_SOURCE):
        self.max_pending = max_pending
        self.pending = {}  # source -> unfinished handshakes
        #: connections refused so far (for tests and metrics)
        self.refused = 0

    def admit(self, addr):
        """A L{Ticket} for a new connection from C{addr}, or None to refuse it."""
        source = source_of(addr)
        count = self.pending.get(source, 0)
        if count >= self.max_pending:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                # Addresses only if the operator opts in: log the count alone.
                log.warn("refused {count} connection(s) over the per-source handshake limit", count=self.refused)
            return None
        self.pending[source] = count + 1
        return Ticket(self, source)

    def release(self, source) -> None:
        """One unfinished handshake from C{source} ended (L{Ticket.done} calls this once per ticket)."""
        count = self.pending.get(source, 0) - 1
        if count > 0:
            self.pending[source] = count
        else:
            self.pending.pop(source, None)


def refusal_close() -> bytes:
    """The Close in clear (LIMIT_REACHED) written to a refused TCP connection."""
    body = cbor.dumps({"code": int(CloseCode.LIMIT_REACHED), "reason": REFUSED_REASON})
    return Envelope(PROTOCOL_VERSION, MessageType.CLOSE, _ZERO_SID, 0, body).to_bytes()


def refusal_http() -> bytes:
    """The HTTP answer written to a refused WebSocket connection before its upgrade."""
    reason = REFUSED_REASON.encode("ascii")
    return (
        b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(reason), reason)
    )


class Refused(Protocol):
    """Writes C{answer} and closes: a connection over the per-source limit."""

    def __init__(self, answer: bytes):
        self.answer = answer

    def connectionMade(self):
        self.transport.write(self.answer)
        self.transport.loseConnection()

    def dataReceived(self, data):
        pass  # whatever it sent is not read


def buffered_bytes(transport) -> int:
    """Bytes a Twisted socket transport holds that the kernel has not taken yet (0 if unknown)."""
    # Twisted's private _tempDataLen (writes not yet joined into dataBuffer; no public count exists): guarded below.
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return 0


@implementer(IPushProducer)
class OutputGuard:
    """
    Watches one transport's output buffer; see the module docstring.

    One per connection, for its life: slotted, and it keeps its owner
    rather than a bound method of it (issue 19: about 130 bytes less per
    idle session than an instance dict, a clock, a window and a method object).

    @param transport: a Twisted socket transport (an C{IConsumer}).
    @param settings: the connection's L{cairn.transport.settings.TransportSettings}:
        its C{clock} times the window of C{keepalive_timeout} seconds, its
        C{write_limit} is the limit.
    @param owner: told once, with C{owner.output_overflow(reason)}, when the
        peer is to be dropped (the transport adapter).
    """

    __slots__ = ("transport", "settings", "limit", "_owner", "stalled", "overflowed", "high_water", "_timer")

    def __init__(self, transport, settings, owner):
        self.transport = transport
        self.settings = settings
        self.limit = settings.write_limit
        self._owner = owner
        self.stalled = False
        self.overflowed = False
        #: the largest buffered byte count seen by L{check} (for tests and metrics)
        self.high_water = 0
        self._timer = None
        register = getattr(transport, "registerProducer", None)
        if register is not None:
            register(self, True)

    def check(self) -> None:
        """Call after each write: drop the peer once its buffer passes the limit."""
        if self.overflowed:
            return
        buffered = buffered_bytes(self.transport)
        self.high_water = max(self.high_water, buffered)
        if buffered > self.limit:
            self._overflow(f"peer not reading: {buffered} bytes queued, above {self.limit}")

    def _overflow(self, reason):
        self.overflowed = True
        self._cancel()
        log.info("dropping a connection: {reason}", reason=reason)
        self._owner.output_overflow(reason)

    def _timed_out(self):
        self._timer = None
        if self.stalled and not self.overflowed:
            self._overflow(f"peer not reading: output not drained in {self.settings.keepalive_timeout:g} s")

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # IPushProducer: the transport says its buffer is over (pause) or
    # empty again (resume). Reading from the peer goes on: pausing it
    # could deadlock two peers that both write more than they read.

    def pauseProducing(self):
        self.stalled = True
        if self._timer is None and not self.overflowed:
            self._timer = self.settings.clock.callLater(self.settings.keepalive_timeout, self._timed_out)

    def resumeProducing(self):
        self.stalled = False
        self._cancel()

    def stopProducing(self):
        self.stalled = False
        self._cancel()
