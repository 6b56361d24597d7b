"""
Envelopes written while a read is handled, sent together at its end.

Twisted's C{write} only buffers: the bytes leave when the reactor next
finds the socket writable, after registering for it and polling again
(two C{epoll_ctl} and an C{epoll_wait} more, and that iteration's
dispatch), and in a request/response exchange that is on the path of every
answer (issue 19: 9 % of a TCP echo round trip's instructions). So a
transport adapter holds what its sink writes while one of its reads is
handled and, at the end of the read, when Twisted holds nothing unsent on
a plain TCP connection, gives it to the socket itself; only what the
socket does not take goes through C{write}, which also meets and reports a
socket error again. Anything else (TLS, a test's transport) gets the
read's envelopes through C{write}, together. Twisted has no such call of
its own (C{FileDescriptor.doWrite} would still register for writability
and unregister again).

Past L{HOLD_MAX} bytes the held envelopes leave at once: a read that
writes much (a mailbox drain) is not held in memory, and the output
guard (L{cairn.transport.limits.OutputGuard}) sees its writes as they go.
"""

from twisted.internet.tcp import Connection

#: Most bytes written while a read is handled that wait for its end.
HOLD_MAX = 64 * 1024


class _Read:
    """The adapter whose read is being handled, and what it wrote meanwhile (one at a time: the reactor's thread)."""

    __slots__ = ("adapter", "held", "size")

    def __init__(self):
        self.adapter = None
        self.held = []
        self.size = 0


#: Kept here, not on each adapter: an idle connection holds nothing for it
#: (an attribute more per protocol cost 836 bytes per idle TCP session,
#: its instance dict no longer sharing its keys; issue 19's memory row).
_read = _Read()


class HeldWrites:
    """
    A mixin for a transport adapter whose C{transport} is Twisted's: wrap
    each read's handling in L{handling}, offer each envelope to L{hold},
    and L{send_held} before anything else is written or the connection is
    ended (L{drop_held} before an abort). C{after_send()} is called after
    each send (the output guard's check).
    """

    def handling(self, handle, data):
        """C{handle(data)} with the writes it makes on this connection held until it returns."""
        read = _read
        if read.adapter is self:  # re-entered: the outer call sends
            handle(data)
            return
        outer = read.adapter, read.held, read.size  # another connection's read, if any: resumed after
        read.adapter, read.held, read.size = self, [], 0
        try:
            handle(data)
        finally:
            try:
                self.send_held()
            finally:
                read.adapter, read.held, read.size = outer

    def hold(self, data: bytes) -> bool:
        """Keep C{data} for the end of this connection's read being handled; False if none is."""
        read = _read
        if read.adapter is not self:
            return False
        read.held.append(data)
        read.size += len(data)
        if read.size > HOLD_MAX:
            self.send_held()
        return True

    def drop_held(self) -> None:
        """Forget what is held (the connection is aborted: Twisted drops what it holds too)."""
        read = _read
        if read.adapter is self:
            del read.held[:]
            read.size = 0

    def send_held(self) -> None:
        """Send what is held now, in the order written, behind anything Twisted holds."""
        read = _read
        held = read.held
        if read.adapter is not self or not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        del held[:]
        read.size = 0
        transport = self.transport
        if (
            isinstance(transport, Connection)
            and not transport.dataBuffer
            and not transport._tempDataBuffer
            and not transport.disconnecting
        ):
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = 0  # EAGAIN, or an error that Twisted's own write meets again and reports
            if sent:
                data = data[sent:]
        if data:
            transport.write(data)
        self.after_send()

    def after_send(self) -> None:
        """Called after each send (the output guard's check, in an adapter that has one)."""


class HeldFrames(HeldWrites):
    """
    L{HeldWrites} for cairn's autobahn protocols: what autobahn writes
    itself (C{sendData}: the opening handshake's answer, control frames,
    its Close) goes behind what is held, and the end of the connection
    sends what is held first (or drops it, at an abort).
    """

    def sendData(self, data, sync=False, chopsize=None):
        self.send_held()
        super().sendData(data, sync, chopsize)

    def _closeConnection(self, abort=False):
        if abort:
            self.drop_held()
        else:
            self.send_held()
        super()._closeConnection(abort)

    def after_send(self):
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.check()
