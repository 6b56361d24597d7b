"""
Attached circuits on the node's side (docs/protocol.md §25.8).

When both ends ask for it, the node gives each a one-time token with the
circuit; each end opens a connection of its own to the node's TCP
listener and presents it (RelayAttach). Once both are attached the node
splices the two connections (L{cairn.relay.splice}): the inner session's
bytes no longer travel as RelayData, so neither the node nor the peers
seal them a second time, and TCP's flow control replaces the window.
Quotas, rate limits and byte counts apply to the spliced bytes the same
way (L{SpliceAccounting}).

L{Splicing} is a mixin of L{cairn.relay.service.RelayService}, which owns
the state it uses: C{circuits}, C{reactor}, C{splice_options},
C{accounts}, and the helpers C{_cancel} and C{close}.
"""

import hmac

from twisted.logger import Logger

from cairn.relay import messages
from cairn.relay.splice import Splice
from cairn.wire import cbor
from cairn.wire.constants import SUPPORTED_VERSIONS, CloseCode
from cairn.wire.schema import BodyError

log = Logger()


class Splicing:
    """The attachment of a L{RelayService}'s circuits: the preface handler and the splice."""

    def attach(self, connection, envelope):
        """
        The L{cairn.session.peer.Peer}'s preface handler: C{envelope}, a
        RelayAttach, came first on an accepted C{connection}. A valid
        token hands the connection to its circuit; anything else is
        answered with a Close.
        """
        if envelope.version not in SUPPORTED_VERSIONS:
            connection.fail(CloseCode.VERSION_UNSUPPORTED, f"version {envelope.version} not supported")
            return
        try:
            body = cbor.loads(envelope.payload)
            circuit_id, token = messages.parse_relay_attach(body)
        except BodyError as e:
            connection.fail(CloseCode.BAD_CBOR, str(e))
            return
        except Exception:
            connection.fail(CloseCode.BAD_CBOR, "RelayAttach body is not CBOR")
            return
        circuit, end = self.circuits.get(circuit_id), None
        # The target may attach before its acceptance (RouteResponse, on
        # another connection) is in: its token was in the offer.
        if circuit is not None:
            for session, expected in circuit.tokens.items():
                if hmac.compare_digest(expected, token) and session not in circuit.attached:
                    end = session
        if end is None:
            connection.fail(CloseCode.UNKNOWN_SESSION, "no such circuit, or not this token")
            return
        hand_off = getattr(connection.transport, "hand_off", None)
        if hand_off is None:
            connection.fail(CloseCode.UNEXPECTED_MESSAGE, "RelayAttach needs a TCP connection")
            return
        circuit.attached[end] = None
        hand_off(lambda transport, rest: self._attached(circuit, end, transport, rest))

    def _attached(self, circuit, end, transport, rest):
        if self.circuits.get(circuit.circuit_id) is not circuit or (circuit.state == "open" and not circuit.tokens):
            transport.abortConnection()  # closed, or the target accepted without attaching
            return
        circuit.attached[end] = (transport, rest)
        log.debug("relay circuit {cid}: an end attached", cid=circuit.circuit_id.hex()[:8])
        ends = [circuit.attached.get(circuit.a), circuit.attached.get(circuit.b)]
        if None in ends:
            return
        self._cancel(circuit)
        circuit.splice = Splice(self.reactor, ends, SpliceAccounting(self, circuit), **self.splice_options)
        circuit.splice.start()

    def _attach_timed_out(self, circuit):
        circuit.timer = None
        if circuit.splice is None:
            self.close(circuit, "the peers did not attach their connections in time")


class SpliceAccounting:
    """
    What a circuit's L{Splice} asks and tells the service: the byte quota
    before each read, the counts and the rate limit after it.
    """

    def __init__(self, service, circuit):
        self.service = service
        self.accounts = service.accounts
        self.circuit = circuit
        self.ends = (circuit.a, circuit.b)

    def budget(self, index):
        peer_id = self.ends[index].remote_peer_id
        quota = self.accounts.quota(peer_id)
        return None if quota is None else max(0, quota - self.accounts.bytes_sent[peer_id])

    def over_budget(self, index):
        self.service.close(self.circuit, "relay byte quota exceeded", final=True)

    def moved_in(self, index, size):
        end = self.ends[index]
        self.accounts.sent(end.remote_peer_id, size)
        pacer = self.accounts.pacers.get(end.remote_peer_id)
        if pacer is None:
            return False
        circuit = self.circuit
        circuit.queued[end] += size

        def go():
            circuit.queued[end] -= size
            if circuit.splice is not None:
                circuit.splice.release(index)

        pacer.submit(circuit.circuit_id, size, go)
        return True

    def moved_out(self, index, size):
        self.circuit.forwarded[self.ends[1 - index]] += size
        self.accounts.received(self.ends[index].remote_peer_id, size)

    def finished(self, reason, index):
        self.service.close(self.circuit, reason)
