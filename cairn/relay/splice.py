"""
Moving an attached circuit's bytes between its two TCP connections (§25.8).

Once both ends of a circuit have attached a connection, the node no
longer parses what they send: every byte read from one connection is
written to the other, in order, until one of them ends. On Linux the
bytes go through a pipe with C{splice(2)} (C{os.splice}) and never enter
the process; elsewhere (or with C{use_splice=False}) through a buffer
with C{recv}/C{send}. Either way the node holds at most L{CHUNK} bytes
per direction (plus what arrived with the RelayAttach), and TCP's own
flow control stalls a sender whose receiver does not read.

Why this is written here: Twisted has no splice, and copying through
Twisted transports (as C{twisted.protocols.portforward} does) costs a
read, a copy and a write in Python for every chunk. The connections'
Twisted transports are taken off the reactor (C{stopReading},
C{stopWriting}) and a L{_Side} per connection is registered for the same
file descriptor until the circuit ends; then the transports are closed
through Twisted as usual.

The L{Splice} asks its observer before each read and tells it after each
move, which is how byte quotas, rate limits and the byte counts apply to
attached circuits (L{cairn.relay.service}).
"""

import errno
import os
import socket

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

#: Bytes moved per read, and what a direction holds at most.
CHUNK = 1024 * 1024
#: Moves per direction per wake-up, so one busy circuit cannot keep the
#: reactor from the others (epoll is level-triggered: the rest follows).
ROUNDS = 8
#: fcntl's F_SETPIPE_SZ (Linux; not exported by Python's fcntl module before 3.10 on all builds).
F_SETPIPE_SZ = 1031
SPLICE_AVAILABLE = hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_GONE = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH})


class _PipeDirection:
    """One direction through a kernel pipe: the bytes never enter the process."""

    def __init__(self, size):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.capacity = 65536
        try:
            import fcntl

            self.capacity = fcntl.fcntl(self.w, F_SETPIPE_SZ, size)
        except OSError:
            pass  # the default pipe size (64 KiB) will do, at more wake-ups
        self.held = 0  # bytes in the pipe

    def fill(self, fd, size) -> int:
        """Move up to C{size} bytes from socket C{fd}; 0 at its end; BlockingIOError if none."""
        n = os.splice(fd, self.w, min(size, self.capacity), flags=_SPLICE_FLAGS)
        self.held += n
        return n

    def drain(self, fd) -> int:
        n = os.splice(self.r, fd, self.held, flags=_SPLICE_FLAGS)
        self.held -= n
        return n

    def close(self):
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.r = self.w = -1
        self.held = 0


class _BufferDirection:
    """One direction through a buffer in the process (no splice available)."""

    def __init__(self, size):
        self.capacity = size
        self.buffer = bytearray()

    @property
    def held(self):
        return len(self.buffer)

    def fill(self, fd, size) -> int:
        data = os.read(fd, min(size, self.capacity))
        self.buffer += data
        return len(data)

    def drain(self, fd) -> int:
        n = os.write(fd, self.buffer)
        del self.buffer[:n]
        return n

    def close(self):
        self.buffer = bytearray()


class _Flow:
    """Bytes from C{src} to C{dst}: first C{rest} (read with the RelayAttach), then the pipe."""

    def __init__(self, src, dst, rest, channel):
        self.src = src
        self.dst = dst
        self.rest = rest
        self.channel = channel
        #: "read": waiting for the source; "write": for the destination;
        #: "held": for the observer (L{Splice.release}).
        self.state = "write" if rest else "read"
        self.eof = False


@implementer(IReadDescriptor, IWriteDescriptor)
class _Side:
    """One connection's file descriptor, as the reactor sees it while spliced."""

    def __init__(self, splice, index, transport):
        self.splice = splice
        self.index = index
        self.transport = transport
        self.fd = transport.fileno()
        self.out = None  # the _Flow this side feeds
        self.into = None  # the _Flow this side receives

    def fileno(self):
        return self.fd

    def doRead(self):
        self.splice._pump(self.out)

    def doWrite(self):
        self.splice._pump(self.into)

    def connectionLost(self, reason):
        self.splice._end("the node is stopping", None)

    def logPrefix(self):
        return "RelaySplice"


class Splice:
    """
    Move bytes both ways between two connections handed off by their
    L{cairn.transport.tcp.StreamProtocol} (Twisted TCP transports).

    @param ends: C{[(transport, rest), (transport, rest)]}: each connection
        and the bytes it sent after its RelayAttach (to go out first).
    @param observer: an object with
        - C{budget(index) -> int or None}: bytes side C{index} may still send (None: no limit);
        - C{over_budget(index)}: it sent more than its budget (the observer ends the splice);
        - C{moved_in(index, n) -> bool}: C{n} bytes were read from side C{index}; true
          holds them until L{release}C{(index)};
        - C{moved_out(index, n)}: C{n} bytes were written to side C{index};
        - C{finished(reason, index)}: the splice ended by itself (C{index}: the
          side whose connection ended or failed, or None).
    """

    def __init__(self, reactor, ends, observer, *, chunk=CHUNK, use_splice=SPLICE_AVAILABLE):
        self.reactor = reactor
        self.observer = observer
        self.chunk = chunk
        self.done = False
        make = _PipeDirection if use_splice else _BufferDirection
        self.sides = [_Side(self, i, transport) for i, (transport, _) in enumerate(ends)]
        a, b = self.sides
        a.out = b.into = _Flow(a, b, ends[0][1], make(chunk))
        b.out = a.into = _Flow(b, a, ends[1][1], make(chunk))
        for side in self.sides:
            side.transport.stopReading()
            side.transport.stopWriting()
            # The node forwards each arrival at once; with TCP_NODELAY (set
            # for envelopes by StreamProtocol) every small arrival went out
            # as a segment of its own, and the receiving end paid for each:
            # bench/relay, 16 circuits, 1,440 -> 2,600-3,100 MiB/s with
            # Nagle's algorithm back on. It delays a small segment only
            # while earlier data is unacknowledged; the ends keep
            # TCP_NODELAY on their own sockets.
            side.transport.setTcpNoDelay(False)

    def __repr__(self):
        held = [side.out.channel.held for side in self.sides]
        return f"<Splice held={held} done={self.done}>"

    def start(self):
        """Count what came with the RelayAttaches (as any read), then move bytes."""
        for side in self.sides:
            flow = side.out
            if not flow.rest or self.done:
                continue
            budget = self.observer.budget(side.index)
            if budget is not None and budget < len(flow.rest):
                self.observer.over_budget(side.index)
                return
            self._hold(flow, len(flow.rest))
        for side in self.sides:
            self._pump(side.out)

    def held(self) -> int:
        """Bytes the node holds for this circuit (both directions)."""
        return sum(len(side.out.rest) + side.out.channel.held for side in self.sides)

    def release(self, index):
        """Let the bytes held for the observer (L{moved_in}) from side C{index} go on."""
        flow = self.sides[index].out
        if flow.state == "holding":
            flow.state = "write"  # released from within moved_in: nothing to hold
        elif not self.done and flow.state == "held":
            flow.state = "write"
            self._pump(flow)

    def _hold(self, flow, size) -> bool:
        """Tell the observer C{size} bytes came from C{flow}'s source; whether they are held."""
        flow.state = "holding"
        hold = self.observer.moved_in(flow.src.index, size)
        if hold and flow.state == "holding":
            flow.state = "held"
            return True
        flow.state = "write"
        return False

    def stop(self, abort=False):
        """End the splice and close both connections (the observer is not told)."""
        if self.done:
            return
        self.done = True
        for side in self.sides:
            self.reactor.removeReader(side)
            self.reactor.removeWriter(side)
            side.out.channel.close()
            side.fd = -1
        for side in self.sides:
            if abort:
                side.transport.abortConnection()
            else:
                side.transport.loseConnection()

    # Moving

    def _pump(self, flow):
        if self.done:
            return
        try:
            self._move(flow)
        except OSError as e:
            if e.errno not in _GONE:
                log.warn("relay splice: {error}", error=e)
            self._end("the other peer went away", flow.src.index, abort=True)
            return
        if not self.done:
            self._interest(flow.src)
            self._interest(flow.dst)

    def _move(self, flow):
        channel, dst = flow.channel, flow.dst
        for _ in range(ROUNDS):
            if flow.rest and flow.state != "held":
                try:
                    sent = os.write(dst.fd, flow.rest)
                except BlockingIOError:
                    flow.state = "write"
                    return
                self.observer.moved_out(dst.index, sent)
                flow.rest = flow.rest[sent:]
                continue
            if channel.held and flow.state != "held":
                try:
                    sent = channel.drain(dst.fd)
                except BlockingIOError:
                    flow.state = "write"
                    return
                self.observer.moved_out(dst.index, sent)
                continue
            if flow.state == "held":
                return
            if flow.eof:
                self._end("the other peer went away", flow.src.index)
                return
            if not self._read(flow):
                return
        flow.state = "write" if channel.held else "read"

    def _read(self, flow):
        """Read what the source allows into the channel; False when there is nothing to do now."""
        src = flow.src
        budget = self.observer.budget(src.index)
        size = self.chunk if budget is None else min(self.chunk, budget)
        try:
            if size == 0:
                if not self._peek(src):
                    flow.eof = True
                    return True
                self.observer.over_budget(src.index)
                return False
            moved = flow.channel.fill(src.fd, size)
        except BlockingIOError:
            flow.state = "read"
            return False
        if moved == 0:
            flow.eof = True
            return True
        if self._hold(flow, moved):
            return False
        flow.state = "write"
        return not self.done

    @staticmethod
    def _peek(side) -> bool:
        """Whether C{side} sent more (True) or ended (False); BlockingIOError if neither yet."""
        return bool(side.transport.socket.recv(1, socket.MSG_PEEK))

    def _interest(self, side):
        if side.out.state == "read" and not side.out.eof:
            self.reactor.addReader(side)
        else:
            self.reactor.removeReader(side)
        if side.into.state == "write":
            self.reactor.addWriter(side)
        else:
            self.reactor.removeWriter(side)

    def _end(self, reason, index, abort=False):
        if self.done:
            return
        self.stop(abort=abort)
        self.observer.finished(reason, index)
