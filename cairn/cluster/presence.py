"""
Presence: on which node of a deployment each peer's session is attached.

L{IPresence} is the seam the services and the management API ask
("where is this peer?", "which nodes are alive?"). L{LocalPresence} is
the single-node version, exactly what the node did before there were
several: a scan of the local L{Peer}'s sessions. The NATS version,
L{cairn.cluster.kv_presence.KVPresence}, keeps the same answers for a
whole deployment in a KV bucket (docs/scaling.md, "Presence").

Nothing here imports nats: the single-node graph uses this module.
"""

import re

from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

#: What a node name may be: it is a token of NATS subjects and KV keys.
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class IPresence(Interface):
    """Which node holds each peer's attached session, and which nodes are alive."""

    node = Attribute("This node's name (C{CAIRN_NODE_NAME}).")

    def start():
        """Begin following the deployment; a Deferred firing once L{locate} is accurate."""

    def stop():
        """Withdraw what this node announced; a Deferred firing once done."""

    def locate(peer_id):
        """
        The name of a node where C{peer_id} has an attached session (this
        node's first), or None. Synchronous: answered from memory.
        """

    def where(peer_id):
        """The names of every (live) node where C{peer_id} has an attached session: a tuple, this node's first."""

    def elsewhere(peer_id):
        """
        The names of the other live nodes where C{peer_id} has an attached
        session (a list). Unlike the rest, callable from the NATS loop's
        thread (the node bus tells them of a message as its PubAck comes).
        """

    def peers():
        """C{{peer_id: (node name, ...)}} of every peer attached anywhere in the deployment."""

    def nodes():
        """C{{node name: seconds since last heard}} of the nodes alive (this one at 0)."""

    def on_other_node(callback):
        """
        Call C{callback()} whenever another node is heard of (on the reactor;
        never, for a node alone). Until the first call, L{elsewhere} names no
        node for any peer.
        """


def attached_locally(peer, peer_id) -> bool:
    """Whether C{peer_id} has an open, attached session with the local C{peer}."""
    return any(s.remote_peer_id == peer_id and s.closed is None and s.attached for s in list(peer.sessions.values()))


def local_peers(peer) -> set:
    """The peer ids with an open, attached session on the local C{peer}."""
    return {s.remote_peer_id for s in list(peer.sessions.values()) if s.closed is None and s.attached}


@implementer(IPresence)
class LocalPresence:
    """
    One node alone: a peer is present when it has an attached session
    with this node's L{Peer}; no other node exists.
    """

    def __init__(self, peer, node):
        self.peer = peer
        self.node = node

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def locate(self, peer_id):
        return self.node if attached_locally(self.peer, peer_id) else None

    def where(self, peer_id):
        return (self.node,) if attached_locally(self.peer, peer_id) else ()

    def elsewhere(self, peer_id):
        return []

    def peers(self):
        return {peer_id: (self.node,) for peer_id in local_peers(self.peer)}

    def nodes(self):
        return {self.node: 0.0}

    def on_other_node(self, callback):
        pass  # there is none
