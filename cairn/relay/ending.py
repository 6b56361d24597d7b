"""
Ending relay circuits on the node's side: closing one (both ends told
with a RelayClose), withdrawing offers, and the L{Peer} observer hooks by
which a circuit never outlives a transport of either end (docs/protocol.md
§25.5).

L{Ending} is a mixin of L{cairn.relay.service.RelayService}, which owns the
state it uses: C{circuits}, C{accounts}, C{remote}, and the helpers
C{_send} and C{_answer}.
"""

from twisted.logger import Logger

from cairn.relay import messages
from cairn.relay.remote import RemoteEnd
from cairn.wire.constants import MessageType, RouteStatus

# The log lines keep the namespace they had in the service (operators filter on it).
log = Logger(namespace="cairn.relay.service")


class Ending:
    def _cancel(self, circuit):
        if circuit.timer is not None and circuit.timer.active():
            circuit.timer.cancel()
        circuit.timer = None

    def _drop(self, circuit):
        self._cancel(circuit)
        self.circuits.pop(circuit.circuit_id, None)
        if circuit.splice is not None:
            circuit.splice.stop()
        else:
            for attached in circuit.attached.values():
                if attached is not None:
                    attached[0].loseConnection()
        for end in (circuit.a, circuit.b):
            pacer = self.accounts.pacers.get(end.remote_peer_id)
            if pacer is not None and circuit.queued[end]:
                pacer.discard(circuit.circuit_id)
        circuit.queued.clear()

    def close(self, circuit, reason, culprit=None, final=False):
        """
        Close C{circuit} with C{reason}: both ends are told with a
        RelayClose, but for C{culprit} (an end that closed it or is gone).
        C{final} tells them a new circuit would fare no better (the
        peers end their sessions instead of re-establishing them).
        """
        if self.circuits.get(circuit.circuit_id) is not circuit:
            return
        self._drop(circuit)
        self.accounts.flush_soon(now=True)
        log.info("relay circuit {cid} closed: {reason}", cid=circuit.circuit_id.hex()[:8], reason=reason)
        body = {"circuit": circuit.circuit_id, "reason": reason[: messages.MAX_REASON]}
        if final:
            body["final"] = True
        for end in (circuit.a, circuit.b):
            if end is not culprit:
                self._send(end, MessageType.RELAY_CLOSE, body)

    def end_gone(self, session, final=False):
        """
        C{session} (an end: a session of this node's, or a L{RemoteEnd})
        is gone: its offered circuits are withdrawn (the requester is
        answered OFFLINE, or the target told), its open ones closed and
        the other end told; C{final} as for L{close}.
        """
        if self.remote is not None and not isinstance(session, RemoteEnd):
            self.remote.session_gone(session, final)
        for circuit in list(self.circuits.values()):
            if session not in (circuit.a, circuit.b):
                continue
            if circuit.state == "offered":
                self._drop(circuit)
                if session is circuit.b:
                    self._answer(circuit.a, circuit.req, RouteStatus.OFFLINE, "the target went away")
                else:
                    body = {"circuit": circuit.circuit_id, "reason": "cancelled"}
                    self._send(circuit.b, MessageType.RELAY_CLOSE, body)
            else:
                self.close(circuit, "the other peer went away", culprit=session, final=final)

    # Peer observer hooks: circuits never outlive a transport of their ends.

    def session_detached(self, session):
        self.end_gone(session)

    def session_resumed(self, session):
        # The peer dropped its circuits with the old transport (it may have
        # resumed before this node noticed the drop): close them here too.
        self.end_gone(session)

    def session_closed(self, session):
        # The peer left (or was made to): its sessions will not be resumed.
        self.end_gone(session, final=True)
