"""
What the operator should know about the node as a whole, for
C{GET /node}: its peer id, its listeners (endpoint and bound address) and
the warnings that are still true.

Unlike C{GET /health} this is behind the token: listener addresses and
configuration problems are not for anyone who can reach the port.
"""

from twisted.internet.defer import maybeDeferred

from cairn.transport.tcp import StreamProtocol
from cairn.transport.websocket import ClientProtocol, ServerProtocol

__all__ = ["NodeStatus", "management_warnings", "transport_of"]

#: Share of a limit from which a warning is shown.
NEARLY_FULL = 0.9
#: Below this length the management token draws a warning (as in L{cairn.management.token}).
SHORT_TOKEN = 16


def management_warnings(mgmt_listen, token, exposed) -> list:
    """
    The start-up warnings about the management API that C{GET /node}
    repeats: C{exposed} is what L{cairn.management.site.warn_if_exposed}
    found for the C{mgmt_listen} endpoint.
    """
    warnings = []
    if exposed:
        warnings.append(
            f"the management API listens on {mgmt_listen} in clear text, reachable from other hosts:"
            " bind it to 127.0.0.1, put it behind TLS, or keep the port unpublished"
        )
    if len(token) < SHORT_TOKEN:
        warnings.append(f"the management token is shorter than {SHORT_TOKEN} characters: use a long random value")
    return warnings


class NodeStatus:
    """
    C{GET /node} of one L{cairn.node.CairnNode}.

    @param node: the node (its C{peer}, C{listeners}, C{mailbox}, C{relay}).
    @param endpoints: C{{listener name: endpoint description}} as configured.
    @param warnings: warnings found at start-up (e.g. the management API
        reachable in clear), as sentences.
    """

    def __init__(self, node, endpoints, warnings=()):
        self.node = node
        self.endpoints = dict(endpoints)
        self.warnings = list(warnings)

    def __call__(self):
        """A Deferred firing with the status dict."""
        return maybeDeferred(self._listeners).addCallback(self._report)

    def _listeners(self):
        # The listeners' Deferreds fired at start-up; before that (or for
        # one that failed) there is no address to show.
        result = []
        for name, service in sorted(self.node.listeners.items()):
            # Twisted's private _waitingForPort (no public accessor); getattr: a listener without one shows none.
            waiting = getattr(service, "_waitingForPort", None)
            port = waiting.result if waiting is not None and waiting.called else None
            address = None
            if port is not None and hasattr(port, "getHost"):
                host = port.getHost()
                if hasattr(host, "port"):
                    shown = f"[{host.host}]" if ":" in host.host else host.host
                    address = f"{shown}:{host.port}"
                else:
                    address = str(getattr(host, "name", host))
            result.append({"name": name, "endpoint": self.endpoints.get(name), "address": address})
        return result

    def _report(self, listeners):
        return {
            "peer_id": self.node.peer.peer_id,
            "listeners": listeners,
            "warnings": self.warnings + self._live_warnings(),
        }

    def _live_warnings(self):
        warnings = []
        mailbox = self.node.mailbox
        if mailbox is not None and mailbox.enabled:
            stats = mailbox.stats()
            limit = stats["limits"]["max_total"]
            if limit and stats["bytes"] >= NEARLY_FULL * limit:
                warnings.append(
                    f"the mailbox holds {stats['bytes']} of its {limit} bytes (CAIRN_FORWARD_MAX_TOTAL): "
                    "new messages will soon be refused"
                )
        relay = self.node.relay
        # Its load counts the circuits it carries for other nodes' requesters too.
        if relay is not None and relay.capacity and relay.load() >= relay.capacity:
            warnings.append(
                f"the relay is full: {relay.load()} circuits open, CAIRN_RELAY_CAPACITY is "
                f"{relay.capacity}; new circuits are refused"
            )
        return warnings


def transport_of(peer, peer_id):
    """
    How C{peer_id} is connected to C{peer} now: C{"tcp"}, C{"websocket"},
    C{"other"} (a transport of an embedding application), or C{None} when
    no session with it is attached.
    """
    for session in list(peer.sessions.values()):
        if session.attached and session.remote_peer_id == peer_id:
            transport = getattr(getattr(session, "connection", None), "transport", None)
            if isinstance(transport, StreamProtocol):
                return "tcp"
            if isinstance(transport, (ServerProtocol, ClientProtocol)):
                return "websocket"
            return "other"
    return None
