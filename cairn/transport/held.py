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


class HeldWrites:
    """
    A mixin for a transport adapter whose C{transport} is Twisted's: wrap
    each read's handling in L{handling}, offer each envelope to L{hold},
    and L{send_held} before anything else is written or the connection is
    ended (L{drop_held} before an abort). C{after_send()} is called after
    each send (the output guard's check).
    """

    #: While a read is handled: what was written meanwhile, and its size.
    _held = None
    _held_bytes = 0

    def handling(self, handle, data):
        """C{handle(data)} with the writes it makes held until it returns."""
        if self._held is not None:  # re-entered: the outer call sends
            handle(data)
            return
        self._held = []
        try:
            handle(data)
        finally:
            self.send_held()
            self._held = None

    def hold(self, data: bytes) -> bool:
        """Keep C{data} for the end of the read being handled; False if none is."""
        held = self._held
        if held is None:
            return False
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > HOLD_MAX:
            self.send_held()
        return True

    def drop_held(self) -> None:
        """Forget what is held (the connection is aborted: Twisted drops what it holds too)."""
        if self._held:
            del self._held[:]
            self._held_bytes = 0

    def send_held(self) -> None:
        """Send what is held now, in the order written, behind anything Twisted holds."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        del held[:]
        self._held_bytes = 0
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
