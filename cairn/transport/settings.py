"""
What the transport adapters of one listener or dialer need, fixed when its
factory is made.

The adapters (L{cairn.transport.tcp}, L{cairn.transport.websocket}) turn
bytes into envelopes and back; they read their few settings here, once,
instead of reaching into the L{cairn.session.peer.Peer} behind the
connection they drive.
"""

import attr


@attr.s(frozen=True, slots=True, kw_only=True)
class TransportSettings:
    """
    The settings of one listener's or dialer's transports.

    @ivar max_payload: longest envelope payload read (the parser's and
        autobahn's bound).
    @ivar clock: the C{IReactorTime} of the output guard's window and of
        autobahn's handshake and close timers.
    @ivar handshake_timeout: seconds a WebSocket opening handshake may take.
    @ivar keepalive_timeout: seconds a peer's output buffer may stay full
        before it is dropped (L{cairn.transport.limits.OutputGuard}).
    @ivar write_limit: drop a peer that does not read once this many bytes
        wait for it; None: no guard.
    """

    max_payload: int = attr.ib()
    clock = attr.ib(default=None)
    handshake_timeout: float = attr.ib(default=10.0)
    keepalive_timeout: float = attr.ib(default=90.0)
    write_limit: int | None = attr.ib(default=None)

    @classmethod
    def for_peer(cls, peer, **changes) -> "TransportSettings":
        """
        The settings matching a L{cairn.session.peer.Peer}'s limits and
        clock (a client's dialers and listeners, tests), with C{changes}.
        """
        values = {
            "max_payload": peer.max_payload,
            "clock": peer.clock,
            "handshake_timeout": peer.handshake_timeout,
            "keepalive_timeout": peer.keepalive_timeout,
        }
        values.update(changes)
        return cls(**values)
