"""
The target's node's side of a circuit another node owns (L{cairn.relay.remote};
docs/scaling.md, "Relay across nodes").

The target's node keeps a L{Proxy} per such circuit: it hands the owner's
messages to the target's session and the target's to the owner. It also
enforces the target's window itself (it sees the credit go by), so a
target that overruns it never makes the proxy buffer or publish more
than one window: the proxy asks the owner to close the circuit instead.

L{Proxying} is a mixin of L{cairn.relay.remote.Remote}, which owns the
state it uses: C{service}, C{clock}, C{node}, C{proxies}, and C{_send}
and C{send_env}.
"""

import attr

from cairn.relay import messages
from cairn.relay.messages import WINDOW
from cairn.session.session import SessionClosed
from cairn.wire.constants import MessageType

#: What the owner may send on to the target's session.
_TO_TARGET = (MessageType.RELAY_DATA, MessageType.RELAY_ACK, MessageType.RELAY_CLOSE)


@attr.s(eq=False)
class Proxy:
    """The target's node's side of a circuit owned by node C{owner}."""

    circuit_id = attr.ib()
    session = attr.ib()
    owner = attr.ib()
    #: The requester's peer id (from the offer).
    requester = attr.ib(default=None)
    state = attr.ib(default="offered")
    #: Bytes the target may still send (its window, credited by the requester).
    allowance = attr.ib(default=WINDOW)
    #: Whether the offer carried a token (an accepted offer may then be attached).
    token = attr.ib(default=False)
    attached = attr.ib(default=False)
    #: When the target accepted (the service's clock), for C{GET /relay}.
    opened_at = attr.ib(default=None)
    #: RelayData bytes carried, both ways (for C{GET /relay} only: the
    #: owner's counts are the ones that count).
    carried = attr.ib(default=0)


class Proxying:
    """The circuits a L{Remote} carries for another node's requester, whose target is on this node."""

    def _offered(self, owner, circuit_id, body, target):
        session = self.service.online(target) if target is not None else None
        if session is not None and self.service.load() >= self.service.capacity:
            # This node carries the target's end: it counts against this
            # node's capacity as much as a circuit it owns.
            self._send(
                owner,
                circuit_id,
                {
                    "op": "close",
                    "from": self.node,
                    "circuit": circuit_id,
                    "capacity": True,
                    "reason": f"relay capacity ({self.service.capacity}) of node {self.node} reached",
                },
            )
            return
        if session is None:
            self._send(
                owner,
                circuit_id,
                {
                    "op": "close",
                    "from": self.node,
                    "circuit": circuit_id,
                    "culprit": True,
                    "reason": "the other peer went away",
                },
            )
            return
        proxy = Proxy(
            circuit_id,
            session,
            owner,
            requester=body.get("from"),
            allowance=self.service.window,
            token=body.get("token") is not None,
        )
        self.proxies[circuit_id] = proxy
        self._to_target(proxy, MessageType.ROUTE_REQUEST, body)

    def _from_owner(self, proxy, type_code, body):
        if type_code not in _TO_TARGET:
            return
        if type_code == MessageType.RELAY_CLOSE:
            self._drop(proxy)
        elif type_code == MessageType.RELAY_ACK:
            proxy.allowance = min(self.service.window, proxy.allowance + max(0, int(body.get("credit", 0))))
        elif type_code == MessageType.RELAY_DATA:
            proxy.carried += len(body.get("data", b""))
        self._to_target(proxy, type_code, body)

    def listing(self):
        """C{GET /relay} entries for the circuits this node carries for another node's requester."""
        now = self.clock.seconds()
        return [
            {
                "circuit": p.circuit_id.hex(),
                "state": p.state,
                "mode": "attached" if p.attached else "session",
                "requester": p.requester,
                "target": p.session.remote_peer_id,
                "bytes": p.carried,
                "queued": 0,
                "age": None if p.opened_at is None else now - p.opened_at,
                "owner": p.owner,
            }
            for p in self.proxies.values()
        ]

    def proxy_of(self, session, circuit_id):
        """The L{Proxy} of C{circuit_id} if C{session} is its target's session, else None."""
        proxy = self.proxies.get(circuit_id)
        return proxy if proxy is not None and proxy.session is session else None

    def from_target(self, proxy, type_code, body):
        """What the target sent on a proxied circuit (its body already checked by the service's parser)."""
        if type_code == MessageType.ROUTE_RESPONSE:
            if proxy.state != "offered":
                return
            status, _, _, _ = messages.parse_route_response(body)
            attach, _ = messages.route_response_attach(body)
            if status != 0:
                self._drop(proxy)
            else:
                proxy.state = "open"
                proxy.opened_at = self.clock.seconds()
                proxy.attached = bool(attach and proxy.token)
        elif type_code == MessageType.RELAY_DATA:
            if proxy.state != "open":
                return
            proxy.carried += len(body["data"])
            if not proxy.attached:
                size = len(body["data"])
                if size > proxy.allowance:
                    # Stop here: the owner closes the circuit for both ends.
                    proxy.state = "closing"
                    self._to_owner_close(proxy, "flow control window exceeded", final=True)
                    return
                proxy.allowance -= size
        elif type_code == MessageType.RELAY_CLOSE:
            self._drop(proxy)
        self.send_env(proxy.owner, proxy.circuit_id, type_code, body)

    def session_gone(self, session, final=False):
        """The target's node session lost its transport (or ended): close its proxied circuits."""
        for proxy in list(self.proxies.values()):
            if proxy.session is session:
                self._drop(proxy)
                self._to_owner_close(proxy, "the other peer went away", culprit=True, final=final)

    def purge(self, peer_id):
        """The pairing purge on this node: close the proxied circuits of C{peer_id} (either end), as final."""
        reason = "the other peer was unpaired"
        for proxy in list(self.proxies.values()):
            if peer_id in (proxy.session.remote_peer_id, proxy.requester):
                self._drop(proxy)
                self._to_target(
                    proxy, MessageType.RELAY_CLOSE, {"circuit": proxy.circuit_id, "reason": reason, "final": True}
                )
                self._to_owner_close(proxy, reason, culprit=True, final=True)

    def _to_owner_close(self, proxy, reason, culprit=False, final=False):
        message = {"op": "close", "from": self.node, "circuit": proxy.circuit_id, "reason": reason}
        if culprit:
            message["culprit"] = True
        if final:
            message["final"] = True
        self._send(proxy.owner, proxy.circuit_id, message)

    def _to_target(self, proxy, type_code, body):
        try:
            proxy.session.send(type_code, body)
        except SessionClosed:
            pass

    def _drop(self, proxy):
        if self.proxies.get(proxy.circuit_id) is proxy:
            del self.proxies[proxy.circuit_id]
