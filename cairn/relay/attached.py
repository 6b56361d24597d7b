"""
The peer's end of an attached circuit (docs/protocol.md §25.8).

When the node hands out attachment tokens with a circuit, each end opens
a TCP connection of its own to the node, sends the RelayAttach envelope
first, and then runs the end-to-end session over that connection exactly
as over a direct one: an L{AttachProtocol} is the ordinary
L{StreamProtocol} with that one envelope in front. The node splices the
two connections, so the session's envelopes are sealed once (end to end)
instead of travelling sealed again inside RelayData.

An L{AttachedCircuit} is what the L{cairn.relay.client.RelayEndpoint}
keeps for such a circuit (as it keeps a L{CircuitTransport} for the
others): a RelayClose from the node, or the loss of the node session,
drops the connection (after reading it to its end, for a RelayClose that
is not final: L{AttachedCircuit.remote_closed}), which detaches the
end-to-end session like any dropped transport (and ends it when the node
says the loss is final).
When the connection drops first, the circuit is forgotten on the
RelayClose the node sends next (or with the node session).
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from cairn.relay import messages
from cairn.session.connection import HandshakeFailed
from cairn.session.session import SessionClosed
from cairn.transport.tcp import StreamProtocol
from cairn.wire.constants import CloseCode, MessageType

log = Logger()

#: Seconds an end reads an attached connection to its end after a RelayClose
#: that is not final (L{AttachedCircuit.remote_closed}) before dropping it.
DRAIN_GRACE = 5.0


class AttachedCircuit:
    """
    One end of an attached circuit.

    @ivar protocol: the L{AttachProtocol} once connected.
    @ivar closed: the reason, once the circuit is gone.
    @ivar settings: the L{TransportSettings} of its connection to the node.
    """

    def __init__(self, endpoint, node_session, circuit_id, remote_peer_id, connection, settings):
        self.endpoint = endpoint
        self.settings = settings
        self.node_session = node_session
        self.circuit_id = circuit_id
        self.remote_peer_id = remote_peer_id
        self.connection = connection
        self.protocol = None
        self.closed = None
        #: The end-to-end session, kept once its connection is lost (a
        #: final RelayClose may come after the node closed the connection).
        self.session = None
        #: (timer, reason, final) while the connection is read to its end after a RelayClose.
        self._draining = None

    def __repr__(self):
        return f"<AttachedCircuit {self.circuit_id.hex()[:8]} closed={self.closed!r}>"

    def dial(self, endpoint, token):
        """Connect to the node with C{endpoint} and attach; a failure fails the connection."""
        d = endpoint.connect(_AttachFactory(self, token, self.settings))
        d.addErrback(self._dial_failed)
        return d

    def _dial_failed(self, failure):
        reason = f"could not attach to the node: {failure.getErrorMessage()}"
        log.info("relay circuit {cid}: {reason}", cid=self.circuit_id.hex()[:8], reason=reason)
        self.node_session.send_if_open(MessageType.RELAY_CLOSE, {"circuit": self.circuit_id, "reason": reason})
        self._finish(reason)
        if self.connection.initiator and not self.connection.ready.called:
            self.connection.ready.errback(HandshakeFailed(CloseCode.GOING_AWAY, reason))

    def remote_closed(self, reason: str, final: bool = False) -> None:
        """
        The node closed the circuit, or the node session was lost: drop the
        connection (the end-to-end session detaches); if C{final} (or the
        endpoint does not re-establish circuits) end the session too.

        Unless C{final}, a connection still open is first read to its end,
        for at most L{DRAIN_GRACE} seconds: the node closes it too, after
        writing what it read from the other end (§25.8.4), and the
        RelayClose on the node session may be read before those last bytes
        -- the other end's Close among them, which would otherwise be lost
        and the session detached instead of closed.
        """
        if self.closed is not None:
            return
        self._finish(reason)
        transport = self.protocol.transport if self.protocol is not None else None
        if final or transport is None or not transport.connected or transport.disconnecting:
            self._drop(reason, final)
            return
        self._draining = (self.endpoint.clock.callLater(DRAIN_GRACE, self._drop, reason, final), reason, final)

    def _drop(self, reason, final):
        if self._draining is not None:
            timer = self._draining[0]
            if timer.active():
                timer.cancel()
            self._draining = None
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()
        session = self.connection.session or self.session
        if session is not None and session.closed is None and (final or not self.endpoint.resume_circuits):
            session.end_without_close(SessionClosed(CloseCode.GOING_AWAY, f"relay circuit closed: {reason}"))

    def connection_lost(self):
        """The connection ended: a drain after the RelayClose (L{remote_closed}) is over."""
        if self._draining is not None:
            self._drop(*self._draining[1:])

    def _finish(self, reason):
        self.closed = reason
        if self.endpoint.circuits.get(self.circuit_id) is self:
            del self.endpoint.circuits[self.circuit_id]


class AttachProtocol(StreamProtocol):
    """A L{StreamProtocol} that sends the RelayAttach before anything else."""

    def __init__(self, circuit, token, settings):
        super().__init__(circuit.connection, settings)
        self.circuit = circuit
        self._attach = messages.relay_attach(circuit.circuit_id, token)

    @property
    def peer_address(self) -> str:
        return f"relay:{self.circuit.circuit_id.hex()[:8]}"

    @property
    def expected_peer_id(self) -> str:
        """The circuit's other end: a Reconnect on it resumes only that peer's session."""
        return self.circuit.remote_peer_id

    def connectionMade(self):
        self.circuit.protocol = self
        self.transport.write(self._attach)
        super().connectionMade()

    def connectionLost(self, reason=None):
        self.circuit.session = self.sink.session or self.circuit.session
        super().connectionLost(reason)
        self.circuit.connection_lost()


class _AttachFactory(Factory):
    noisy = False

    def __init__(self, circuit, token, settings):
        self.circuit = circuit
        self.token = token
        self.settings = settings

    def buildProtocol(self, addr):
        protocol = AttachProtocol(self.circuit, self.token, self.settings)
        protocol.factory = self
        return protocol
