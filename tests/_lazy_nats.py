"""
A NATS server stand-in that registers a client's subscription no sooner
than NATS must: a C{SUB} (or C{UNSUB}) takes effect only before the server
answers or routes something the client sent after it. That is all NATS
promises (one connection's commands in order), and what a real server busy
elsewhere may do; so a client that thinks a subscription in place without
a round trip behind its C{SUB} is caught every time, not once under load.

Enough of the protocol for nats-py's connect, C{SUB}, C{UNSUB}, C{PUB}
(routed to every connection's matching subscriptions) and C{PING}.
"""

import json

from twisted.internet import defer, protocol
from twisted.protocols.basic import LineReceiver


def matches(pattern, subject):
    """Whether NATS subject C{subject} matches C{pattern} (C{*} one token, C{>} the rest)."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or token not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)


class LazyNats(protocol.Factory):
    """The server: its connections, and the subjects subscribed (registered) on any of them."""

    def __init__(self):
        self.connections = []

    def buildProtocol(self, addr):
        connection = _Connection()
        connection.factory = self
        return connection

    def subjects(self):
        """The subjects of every subscription registered now."""
        return {subject for c in self.connections for subject in c.subscriptions.values()}

    def all_lost(self):
        """Fires once every connection made so far is closed."""
        return defer.DeferredList([c.lost for c in self.connections])


class _Connection(LineReceiver):
    delimiter = b"\r\n"

    def connectionMade(self):
        self.factory.connections.append(self)
        self.lost = defer.Deferred()
        self.subscriptions = {}  # sid -> subject, registered
        self._queued = []  # SUB and UNSUB arguments received, not yet registered
        self._publish = None  # (subject, reply, size) of the PUB whose payload is coming
        info = {"server_id": "lazy", "version": "2.12.0", "proto": 1, "max_payload": 1 << 20, "headers": True}
        self.sendLine(b"INFO " + json.dumps(info).encode())

    def connectionLost(self, reason=None):
        self.subscriptions.clear()
        self.lost.callback(None)

    def lineReceived(self, line):
        op, _, rest = line.decode().partition(" ")
        op, args = op.upper(), rest.split()
        if op in ("SUB", "UNSUB"):
            self._queued.append((op, args))
            return
        self._register()  # what came before this command
        if op == "PING":
            self.sendLine(b"PONG")
        elif op == "PUB":
            self._publish = (args[0], args[1] if len(args) == 3 else "", int(args[-1]))
            self.setRawMode()

    def rawDataReceived(self, data):
        subject, reply, size = self._publish
        self._buffer = getattr(self, "_buffer", b"") + data
        if len(self._buffer) < size + 2:
            return
        payload, rest = self._buffer[:size], self._buffer[size + 2 :]
        self._buffer, self._publish = b"", None
        for connection in self.factory.connections:
            connection._route(subject, reply, payload)
        self.setLineMode(rest)

    def _register(self):
        for op, args in self._queued:
            if op == "SUB":
                self.subscriptions[args[-1]] = args[0]
            else:
                self.subscriptions.pop(args[0], None)
        self._queued = []

    def _route(self, subject, reply, payload):
        for sid, pattern in list(self.subscriptions.items()):
            if matches(pattern, subject):
                head = " ".join(filter(None, ("MSG", subject, sid, reply, str(len(payload)))))
                self.transport.write(head.encode() + b"\r\n" + payload + b"\r\n")
