"""
Data bench: 1 KiB Data messages over one established session, against
bare transports and bare AEAD measured in the same run.

Measured, over TCP and over WebSocket to a node in a child process:

  - one-way: this process sends N messages on a channel the node counts
    (in batches, letting the reactor write between them), then asks for
    the count; the clock stops when the answer arrives, so all N were
    received, decrypted and delivered;
  - echo: one message in flight, the node sends each one back; round
    trips per second.

Anchors:

  - the same two patterns against a bare Twisted TCP server (4-byte
    length prefix) and a bare autobahn WebSocket server, both in a child
    of their own that imports no cairn module, so autobahn runs there as
    shipped; this process takes cairn's autobahn patches out while it is
    their client (they are process-wide: an anchor measured with them in
    was 40 % faster than autobahn as shipped, bench/README.rst);
  - ChaCha20-Poly1305 (cryptography) seal then open of 1 KiB with a
    31-byte header as associated data, in this process: the floor of
    what any encrypted session pays per message.

    python -m bench.data [--quick] [--messages N] [--roundtrips N] [--transports tcp,websocket]
"""

import os
import struct

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.protocols.basic import Int32StringReceiver

from bench._common import (
    BENCH_PSK,
    ServerProcess,
    Stopwatch,
    log_warnings_only,
    measure_in_process,
    out,
    parser,
    pick,
    rate,
    ratio,
    sleep,
    with_timeout,
)
from cairn.client import Client
from cairn.crypto.identity import Identity
from cairn.transport import autobahn_compat

MESSAGE_SIZE = 1024
#: Messages sent before letting the reactor run (one-way runs).
BATCH = 64
#: What C{--transports} may name (each with its bare anchor).
TRANSPORTS = ("tcp", "websocket")


def aead_operation():
    """One ChaCha20-Poly1305 seal and open of 1 KiB, as a callable."""
    aead = ChaCha20Poly1305(ChaCha20Poly1305.generate_key())
    header = os.urandom(31)
    body = os.urandom(MESSAGE_SIZE)
    counter = [0]

    def seal_open():
        counter[0] += 1
        nonce = b"\x00\x00\x00\x00" + struct.pack("<Q", counter[0])
        aead.decrypt(nonce, aead.encrypt(nonce, body, header), header)

    return seal_open


class _Replies:
    """Replies arriving on a link, handed to whoever waits for the next one."""

    def __init__(self):
        self._waiting = None

    def next(self):
        self._waiting = defer.Deferred()
        return self._waiting

    def deliver(self, data):
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(data)


class CairnLink:
    """One cairn session to the node, with a sink and an echo channel."""

    def __init__(self, session):
        self.session = session
        self.replies = _Replies()
        self.sink = session.open_channel("sink")
        self.echo = session.open_channel("echo")
        self.sink.on_data = self.echo.on_data = self.replies.deliver
        self.sink_prefix = self.echo_prefix = b""

    def send_sink(self, data):
        self.sink.send(data)

    def send_echo(self, data):
        self.echo.send(data)

    def query(self):
        self.sink.send(b"?")

    def close(self):
        self.session.close()


class _BareStream(Int32StringReceiver):
    MAX_LENGTH = 2**24

    def __init__(self):
        self.replies = _Replies()

    def stringReceived(self, data):
        self.replies.deliver(data)


class _BareWebSocket(WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.replies = _Replies()

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.replies.deliver(payload)


class BareLink:
    """A bare TCP or WebSocket connection to the node's bare servers."""

    sink_prefix = b"S"
    echo_prefix = b"E"

    def __init__(self, protocol, send, close):
        self.replies = protocol.replies
        self.send_sink = self.send_echo = self._send = send
        self._close = close

    def query(self):
        self._send(b"?")

    def close(self):
        self._close()


@defer.inlineCallbacks
def connect_cairn(reactor, address):
    from cairn.pairing.client import pair_psk

    session = yield Client(reactor, Identity.generate()).connect(address)
    # The node serves channels to paired peers only; pairing is not measured.
    yield pair_psk(session, BENCH_PSK)
    return CairnLink(session)


@defer.inlineCallbacks
def connect_bare_tcp(reactor, port):
    endpoint = clientFromString(reactor, f"tcp:host=127.0.0.1:port={port}")
    protocol = yield connectProtocol(endpoint, _BareStream())
    return BareLink(protocol, protocol.sendString, protocol.transport.loseConnection)


@defer.inlineCallbacks
def connect_bare_websocket(reactor, port):
    """
    A client of the bare autobahn server, with autobahn as shipped until
    the link closes: cairn's patches (L{autobahn_compat}, process-wide) are
    taken out of this process meanwhile and put back after.
    """
    url = f"ws://127.0.0.1:{port}/"
    factory = WebSocketClientFactory(url)
    factory.protocol = _BareWebSocket
    factory.setProtocolOptions(autoFragmentSize=0)
    factory.opened = defer.Deferred()
    endpoint = clientFromString(reactor, f"tcp:host=127.0.0.1:port={port}")
    autobahn_compat.uninstall()
    try:
        yield endpoint.connect(factory)
        protocol = yield factory.opened
    except BaseException:
        autobahn_compat.install()
        raise

    def send(data):
        protocol.sendMessage(data, isBinary=True)

    def close():
        protocol.sendClose(code=1000)
        autobahn_compat.install()

    return BareLink(protocol, send, close)


@defer.inlineCallbacks
def one_way(reactor, server, link, count):
    """Send C{count} messages to the sink; stop the clock when the node has them all."""
    body = link.sink_prefix + os.urandom(MESSAGE_SIZE - len(link.sink_prefix))
    # Warm up and zero the counter.
    link.send_sink(body)
    reply = link.replies.next()
    link.query()
    yield with_timeout(reply, reactor, 30)
    watch = Stopwatch(server)
    watch.start()
    sent = 0
    while sent < count:
        for _ in range(min(BATCH, count - sent)):
            link.send_sink(body)
            sent += 1
        yield sleep(reactor)
    reply = link.replies.next()
    link.query()
    answer = yield with_timeout(reply, reactor, 120)
    measurement = watch.stop(count)
    if int(answer) != count:
        raise RuntimeError(f"node counted {int(answer)} messages of {count}")
    return measurement


@defer.inlineCallbacks
def echo(reactor, server, link, count):
    """C{count} round trips with one message in flight."""
    body = link.echo_prefix + os.urandom(MESSAGE_SIZE - len(link.echo_prefix))
    reply = link.replies.next()
    link.send_echo(body)
    yield with_timeout(reply, reactor, 30)
    watch = Stopwatch(server)
    watch.start()
    for _ in range(count):
        reply = link.replies.next()
        link.send_echo(body)
        answer = yield reply
        if len(answer) != MESSAGE_SIZE:
            raise RuntimeError(f"echo of {len(answer)} bytes")
    return watch.stop(count)


@defer.inlineCallbacks
def measure_link(reactor, server, connect, messages, roundtrips):
    link = yield with_timeout(connect(), reactor, 30)
    try:
        sent = yield one_way(reactor, server, link, messages)
        echoed = yield echo(reactor, server, link, roundtrips)
    finally:
        link.close()
    yield sleep(reactor, 0.05)
    return sent, echoed


def report(name, cairn, bare, aead):
    (c_sent, c_echo), (b_sent, b_echo) = cairn, bare
    bare_name = "bare Twisted TCP" if name == "TCP" else "bare autobahn WebSocket"
    out(
        f"data: cairn over {name} {rate(c_sent.count, c_sent.wall, ' msg/s')}; "
        f"{bare_name} {rate(b_sent.count, b_sent.wall, ' msg/s')}; "
        f"ratio X/Y = {ratio(c_sent.rate, b_sent.rate)}"
    )
    out(f"  {name} one-way: {c_sent.cpu_line('message')}")
    out(f"  {name} one-way, {bare_name}: {b_sent.cpu_line('message')}")
    out(
        f"data: cairn over {name} {rate(c_sent.count, c_sent.wall, ' msg/s')}; "
        f"ChaCha20-Poly1305 seal+open {rate(aead.count, aead.wall, ' msg/s')}; "
        f"ratio X/Y = {ratio(c_sent.rate, aead.rate)}"
    )
    out(
        f"data echo: cairn over {name} {rate(c_echo.count, c_echo.wall, ' rt/s')}; "
        f"{bare_name} {rate(b_echo.count, b_echo.wall, ' rt/s')}; "
        f"ratio X/Y = {ratio(c_echo.rate, b_echo.rate)}"
    )
    out(f"  {name} echo: {c_echo.cpu_line('round trip')}")


@defer.inlineCallbacks
def run(reactor, quick=False, messages=None, roundtrips=None, aead_count=None, transports=TRANSPORTS):
    """Measure the anchors and cairn over TCP and WebSocket (or C{transports}); print the results."""
    messages = pick(messages, quick, 50000, 2000)
    roundtrips = pick(roundtrips, quick, 5000, 300)
    aead_count = pick(aead_count, quick, 100000, 10000)
    out(
        f"== data bench ({MESSAGE_SIZE}-byte messages: {messages} one-way, "
        f"{roundtrips} round trips per transport) =="
    )
    aead = measure_in_process(aead_operation(), aead_count)
    out(f"ChaCha20-Poly1305 seal+open of 1 KiB in one process: {rate(aead.count, aead.wall, ' msg/s')}")
    server, anchors = ServerProcess(), ServerProcess(bare=True)
    results = {"aead": aead}
    try:
        ports = server.start()
        ports.update(anchors.start())
        links = {
            "tcp": lambda: connect_cairn(reactor, f"tcp:host=127.0.0.1:port={ports['tcp']}"),
            "bare_tcp": lambda: connect_bare_tcp(reactor, ports["bare_tcp"]),
            "websocket": lambda: connect_cairn(reactor, f"ws://127.0.0.1:{ports['websocket']}/"),
            "bare_websocket": lambda: connect_bare_websocket(reactor, ports["bare_websocket"]),
        }
        for name, connect in links.items():
            if name.removeprefix("bare_") in transports:
                child = anchors if name.startswith("bare_") else server
                results[name] = yield measure_link(reactor, child, connect, messages, roundtrips)
    finally:
        server.stop()
        anchors.stop()
    if "tcp" in transports:
        report("TCP", results["tcp"], results["bare_tcp"], aead)
    if "websocket" in transports:
        report("WebSocket", results["websocket"], results["bare_websocket"], aead)
    return results


def main(argv=None):
    p = parser("1 KiB Data messages per second against bare transports and bare AEAD")
    p.add_argument("--messages", type=int, help="one-way messages per transport")
    p.add_argument("--roundtrips", type=int, help="echo round trips per transport")
    p.add_argument("--aead-count", type=int, help="bare seal+open operations")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="which of tcp,websocket to measure")
    args = p.parse_args(argv)
    transports = tuple(args.transports.split(","))
    if not set(transports) <= set(TRANSPORTS):
        p.error(f"--transports: choose from {','.join(TRANSPORTS)}")
    log_warnings_only()
    task.react(
        lambda reactor: run(
            reactor, args.quick, args.messages, args.roundtrips, args.aead_count, transports
        ).addCallback(lambda _: None)
    )


if __name__ == "__main__":
    main()
