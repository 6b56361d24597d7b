"""
The benches' server children: a cairn node built by L{make_node}; or,
with C{--bare}, bare Twisted TCP and bare autobahn WebSocket servers with
the same behaviour, in a process of their own that never imports cairn
(cairn's autobahn patches are process-wide: an anchor served next to the
node measured autobahn 40 % faster than as shipped, bench/README.rst).

Behaviour, the same on every server:

  - messages on a cairn channel named C{sink} (bare: a message starting
    with C{S}) are counted; a message C{?} (bare: C{?}) is answered with
    the count so far, in ASCII, and resets it;
  - messages on a channel named C{echo} (bare: starting with C{E}) are
    sent straight back.

Protocol with the parent: one JSON line with the ports on stdout (and
C{autobahn_patched}: whether cairn's patches are in the child); then
each C{cpu} line on stdin is answered with C{{"cpu": seconds}}. End of
stdin stops everything.

Run only by L{bench._common.ServerProcess}.
"""

import json
import shutil
import sys
import tempfile
import time

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, stdio, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver, LineReceiver

from bench._common import LOCAL_ENDPOINT, log_warnings_only, node_config


class Counter:
    """The count of sink messages since the last query."""

    def __init__(self):
        self.count = 0

    def query(self) -> bytes:
        answer, self.count = self.count, 0
        return str(answer).encode("ascii")


def serve_channels(peer, counter):
    """Give every channel the peer's sessions open its sink or echo behaviour."""

    def on_channel(session, channel):
        if channel.name == "sink":

            def on_data(data):
                if data == b"?":
                    channel.send(counter.query())
                else:
                    counter.count += 1

        elif channel.name == "echo":
            on_data = channel.send
        else:
            return
        channel.on_data = on_data

    peer.on_channel = on_channel


def bare_reply(counter, data: bytes):
    """What a bare server answers to C{data} (None: nothing)."""
    tag = data[:1]
    if tag == b"E":
        return data
    if tag == b"S":
        counter.count += 1
        return None
    if data == b"?":
        return counter.query()
    return None


class BareStream(Int32StringReceiver):
    """Bare TCP: 4-byte length prefix, then the message."""

    MAX_LENGTH = 2**24

    def stringReceived(self, data):
        reply = bare_reply(self.factory.counter, data)
        if reply is not None:
            self.sendString(reply)


class BareWebSocket(WebSocketServerProtocol):
    """Bare WebSocket: one binary message per message."""

    def onMessage(self, payload, isBinary):
        reply = bare_reply(self.factory.counter, payload)
        if reply is not None:
            self.sendMessage(reply, isBinary=True)


class Control(LineReceiver):
    """The parent's commands on stdin."""

    delimiter = b"\n"

    def __init__(self, done):
        self.done = done

    def lineReceived(self, line):
        if line.strip() == b"cpu":
            self.sendLine(json.dumps({"cpu": time.process_time()}).encode())

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.callback(None)


def bare_factories(counter):
    """The bare servers' factories: Twisted TCP and autobahn WebSocket, sharing C{counter}."""
    bare = Factory.forProtocol(BareStream)
    bare.counter = counter
    bare_ws = WebSocketServerFactory()
    bare_ws.protocol = BareWebSocket
    bare_ws.counter = counter
    bare_ws.setProtocolOptions(autoFragmentSize=0)
    return {"bare_tcp": bare, "bare_websocket": bare_ws}


def autobahn_patched() -> bool:
    """Whether cairn's autobahn patches are in this process (they must not be in the bare child)."""
    import autobahn.websocket.protocol

    return getattr(autobahn.websocket.protocol.create_xor_masker, "_cairn_small", False)


@defer.inlineCallbacks
def serve(reactor, numbers):
    """Tell the parent C{numbers} (and whether autobahn is patched); answer it until its stdin ends."""
    done = defer.Deferred()
    control = Control(done)
    stdio.StandardIO(control, reactor=reactor)
    control.sendLine(json.dumps(dict(numbers, autobahn_patched=autobahn_patched())).encode())
    yield done


@defer.inlineCallbacks
def main_bare(reactor):
    """
    The anchors' child: bare servers only. It imports no cairn module, so
    autobahn runs as shipped (cairn's WebSocket transport patches it
    process-wide when imported: L{cairn.transport.autobahn_compat}).
    """
    log_warnings_only()
    ports = {}
    try:
        for name, factory in bare_factories(Counter()).items():
            ports[name] = yield serverFromString(reactor, LOCAL_ENDPOINT).listen(factory)
        yield serve(reactor, {name: port.getHost().port for name, port in ports.items()})
    finally:
        for port in ports.values():
            yield port.stopListening()


@defer.inlineCallbacks
def main_node(reactor):
    """The node's child: a cairn node as C{twistd -n cairn} runs it."""
    from cairn.node import Process
    from cairn.service import make_node

    log_warnings_only()
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-")
    node = make_node(node_config(data_dir), reactor, Process(freeze_gc=True))
    serve_channels(node.peer, Counter())
    try:
        node.startService()
        listening = yield node.when_listening()
        yield serve(reactor, {name: port.getHost().port for name, port in listening.items()})
    finally:
        if node.running:
            yield node.stopService()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(reactor, *argv):
    return main_bare(reactor) if "--bare" in argv else main_node(reactor)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
