"""
The benches' server child: a cairn node built by L{make_node}, plus bare
Twisted TCP and bare autobahn WebSocket servers with the same behaviour.

Behaviour, the same on every server:

  - messages on a cairn channel named C{sink} (bare: a message starting
    with C{S}) are counted; a message C{?} (bare: C{?}) is answered with
    the count so far, in ASCII, and resets it;
  - messages on a channel named C{echo} (bare: starting with C{E}) are
    sent straight back.

Protocol with the parent: one JSON line with the ports on stdout; then
each C{cpu} line on stdin is answered with C{{"cpu": seconds}}. End of
stdin stops everything.

Run only by L{bench._common.ServerProcess}.
"""

import json
import shutil
import tempfile
import time

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, stdio, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver, LineReceiver

from bench._common import LOCAL_ENDPOINT, log_warnings_only, node_config
from cairn.node import Process
from cairn.service import make_node


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


@defer.inlineCallbacks
def main(reactor):
    log_warnings_only()
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-")
    node = make_node(node_config(data_dir), reactor, Process(freeze_gc=True))  # as twistd -n cairn does
    counter = Counter()
    serve_channels(node.peer, counter)
    bare = Factory.forProtocol(BareStream)
    bare.counter = counter
    bare_ws = WebSocketServerFactory()
    bare_ws.protocol = BareWebSocket
    bare_ws.counter = counter
    bare_ws.setProtocolOptions(autoFragmentSize=0)
    ports = []
    try:
        node.startService()
        listening = yield node.when_listening()
        for factory in (bare, bare_ws):
            ports.append((yield serverFromString(reactor, LOCAL_ENDPOINT).listen(factory)))
        numbers = {name: port.getHost().port for name, port in listening.items()}
        numbers["bare_tcp"] = ports[0].getHost().port
        numbers["bare_websocket"] = ports[1].getHost().port
        done = defer.Deferred()
        control = Control(done)
        stdio.StandardIO(control, reactor=reactor)
        control.sendLine(json.dumps(numbers).encode())
        yield done
    finally:
        for port in ports:
            yield port.stopListening()
        if node.running:
            yield node.stopService()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    task.react(main)
