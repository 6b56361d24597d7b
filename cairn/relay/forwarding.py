"""
The messages of open circuits: RelayData, RelayAck and RelayClose
(docs/protocol.md §25.3-§25.5).

Flow control is end to end and in bytes of RelayData C{data}: each end
may have at most L{cairn.relay.messages.WINDOW} bytes sent and not yet credited by the other
end (RelayAck). The node enforces the window (a sender that overruns it
loses the circuit), so what it holds for a circuit in each direction,
RelayData accepted and not yet credited, never exceeds that window. That
includes what waits for a rate-limited sender's token bucket
(L{cairn.relay.pacing}): pacing delays forwarding, and the receiver
credits only what it received, so the sender stalls on its own window.

A mixin of L{cairn.relay.service.RelayService}, which owns the state it
uses: C{circuits}, C{window}, C{accounts}, and the helpers C{_proxied},
C{_end_of}, C{_send}, C{_cancel}, C{_drop} and C{close}.
"""

from cairn.relay import messages
from cairn.wire.constants import MessageType


class Forwarding:
    """The handlers of a L{RelayService} for circuits once offered: forwarding, credit and closing."""

    def _relay_data(self, session, body):
        circuit_id, data = messages.parse_relay_data(body)
        if self._proxied(session, circuit_id, MessageType.RELAY_DATA, body):
            return
        circuit = self._end_of(session, circuit_id)
        if circuit is None or circuit.state != "open":
            self._send(session, MessageType.RELAY_CLOSE, {"circuit": circuit_id, "reason": "no such circuit"})
            return
        if circuit.mode == "attached":
            self.close(circuit, "RelayData on an attached circuit", final=True)
            return
        size = len(data)
        left = circuit.allowance[session] - size
        if left < 0:
            self.close(circuit, "flow control window exceeded", final=True)
            return
        sender = session.remote_peer_id
        if self.accounts.over_quota(sender, size):
            self.close(circuit, "relay byte quota exceeded", final=True)
            return
        circuit.allowance[session] = left
        self.accounts.sent(sender, size)
        pacer = self.accounts.pacers.get(sender)
        if pacer is None:
            self._forward(circuit, session, data)
        else:
            circuit.queued[session] += size
            pacer.submit(circuit_id, size, lambda: self._forward(circuit, session, data, paced=True))

    def _forward(self, circuit, session, data, paced=False):
        size = len(data)
        if paced:
            circuit.queued[session] -= size
        if self.circuits.get(circuit.circuit_id) is not circuit:
            return
        circuit.forwarded[session] += size
        other = circuit.other(session)
        self.accounts.received(other.remote_peer_id, size)
        self._send(other, MessageType.RELAY_DATA, {"circuit": circuit.circuit_id, "data": data})

    def _relay_ack(self, session, body):
        circuit_id, credit = messages.parse_relay_ack(body)
        if self._proxied(session, circuit_id, MessageType.RELAY_ACK, body):
            return
        circuit = self._end_of(session, circuit_id)
        if circuit is None or circuit.state != "open" or circuit.mode == "attached":
            return
        other = circuit.other(session)
        circuit.allowance[other] = min(self.window, circuit.allowance[other] + credit)
        self._send(other, MessageType.RELAY_ACK, {"circuit": circuit_id, "credit": credit})

    def _relay_close(self, session, body):
        circuit_id, reason, _final = messages.parse_relay_close(body)
        if self._proxied(session, circuit_id, MessageType.RELAY_CLOSE, body):
            return
        circuit = self._end_of(session, circuit_id)
        if circuit is None:
            return
        if circuit.state == "offered" and session is circuit.a:
            self._cancel(circuit)
            self._drop(circuit)
            self._send(circuit.b, MessageType.RELAY_CLOSE, {"circuit": circuit_id, "reason": "cancelled"})
            return
        self.close(circuit, reason or "closed by the other end", culprit=session)
