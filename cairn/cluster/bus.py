"""
The node bus: wake-ups and requests between the nodes of a deployment.

A service that stored something another session is waiting for raises a
notice on the bus instead of calling its own delivery directly:
C{wake(recipient)} (messages stored for it), C{owe(sender)} (receipts
owed to it), C{fan_out(topic)} (sync updates). Every node holding a
session that cares gets the notice and pumps, this node synchronously,
as before. L{LocalBus}, the single-node version, is exactly that direct
call. The NATS version (L{cairn.cluster.nats_bus.NatsBus}) also sends it
on the core subjects of the other nodes (C{<prefix>.node.<name>.<kind>}).

A notice is a hint, never the message: a missed one may cost latency,
never a message (the services re-check on their clock, see
L{cairn.mailbox.service.MailboxService} C{recheck}). Where the bus knows
that notices addressed here may have been lost (NATS dropped some as a
slow consumer, or sent some while a reconnection's subscription was not
yet in place), it calls its C{on_missed} callbacks: the services re-check
every session at once instead of at the next period.

C{request(node, kind, body)} asks one named node and waits for its
answer (relay offers across nodes use it); C{serve(kind, handler)}
answers them on this node.

Nothing here imports nats: the single-node graph uses this module.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

log = Logger()

#: Notice kinds: messages stored for a recipient, receipts owed to a sender, updates on a topic.
WAKE, OWE, TOPIC = "wake", "owe", "topic"
#: Notice kinds between the nodes only (L{cairn.cluster.nats_bus}): a node entered full mode at
#: JetStream's storage limit, or left it (L{cairn.cluster.reserve}); the key is its name.
FULL, ROOM = "full", "room"
NOTICES = (WAKE, OWE, TOPIC, FULL, ROOM)


class NoRoute(Exception):
    """A request names a node the bus cannot reach (unknown, gone, or it did not answer)."""


class INodeBus(Interface):
    """Notices (fire and forget) and requests (one answer) between the nodes of a deployment."""

    node = Attribute("This node's name (C{CAIRN_NODE_NAME}).")

    def start():
        """Begin receiving; a Deferred firing once notices and requests addressed here arrive."""

    def stop():
        """Stop receiving; a Deferred."""

    def subscribe(kind, callback):
        """
        Call C{callback(key)} for each notice of C{kind} (L{WAKE}: a
        recipient's peer id, L{OWE}: a sender's, L{TOPIC}: a topic name)
        raised on any node, this one included (this one's synchronously);
        L{FULL} and L{ROOM} (a node's name) come only from other nodes.
        """

    def wake(recipient):
        """Messages were stored for C{recipient}: the nodes holding its sessions deliver them."""

    def owe(sender):
        """Receipts are owed to C{sender}: the nodes holding its sessions send them."""

    def fan_out(topic):
        """C{topic} has new updates: every node pumps it to its subscribed devices."""

    def on_missed(callback):
        """
        Call C{callback()} whenever notices addressed to this node may have
        been lost (never, one node alone): the services re-check at once.
        """

    def serve(kind, handler):
        """Answer requests of C{kind} addressed to this node with C{handler(body: bytes) -> bytes} (or a Deferred)."""

    def request(node, kind, body):
        """
        Ask node C{node} (a name) with C{body} (bytes); a Deferred firing
        with its handler's answer, or failing with L{NoRoute}.
        """


class Notices:
    """The callbacks subscribed per notice kind, called in order; one failing is logged, the rest still run."""

    def __init__(self):
        self._callbacks = {kind: [] for kind in NOTICES}

    def add(self, kind, callback):
        if kind not in self._callbacks:
            raise ValueError(f"unknown notice kind {kind!r}")
        self._callbacks[kind].append(callback)

    def __call__(self, kind, key):
        for callback in list(self._callbacks[kind]):
            try:
                callback(key)
            except Exception:
                log.failure("a {kind} notice callback failed", kind=kind)


@implementer(INodeBus)
class LocalBus:
    """One node alone: a notice is the direct call to this node's callbacks; only this node answers requests."""

    def __init__(self, node):
        self.node = node
        self.notices = Notices()
        self._handlers = {}
        self._missed = []  # on_missed's callbacks

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def subscribe(self, kind, callback):
        self.notices.add(kind, callback)

    def wake(self, recipient):
        self.notices(WAKE, recipient)

    def owe(self, sender):
        self.notices(OWE, sender)

    def fan_out(self, topic):
        self.notices(TOPIC, topic)

    def on_missed(self, callback):
        self._missed.append(callback)

    def missed(self):
        """Notices addressed here may have been lost: every L{on_missed} callback, now (on the reactor)."""
        for callback in list(self._missed):
            try:
                callback()
            except Exception:
                log.failure("a missed-notices callback failed")

    def serve(self, kind, handler):
        self._handlers[kind] = handler

    def request(self, node, kind, body):
        handler = self._handlers.get(kind)
        if node != self.node or handler is None:
            return defer.fail(NoRoute(f"no node {node!r} answers {kind!r} requests"))
        return defer.maybeDeferred(handler, body)
