"""
Relay bench: bulk bytes through cairn relay circuits, one circuit and
several at once, against magic-wormhole-transit-relay and a bare Twisted
port-forward proxy measured in the same run; and the node's memory while
a stalled receiver is sent 1 GiB.

    python -m bench.relay [--bytes 1GiB] [--circuits 16] [--rss-bytes 1GiB] [--no-rss]
    python -m bench.relay --layers 500      # each layer of a message, no sockets

What is measured is the relay: the same raw-byte endpoints push through
each of them. A cairn circuit is opened with the real protocol -- PSK
pairing, RouteRequest, an attached circuit (docs/protocol.md §25.8: each
end's own connection, spliced by the node) and the end-to-end cairn
handshake over it -- and then its two connections carry the bench's raw
bytes, as the anchors' connections do after their own handshakes. The
node cannot tell: it splices whatever comes. A separate line
(C{cairn-e2e}, no target) is the same circuit carrying the bytes as
channel messages of the end-to-end session, so with its endpoints'
crypto (ratchet and AEAD in the measuring process), and another
(C{cairn-relaydata}, no target) a circuit of the RelayData kind (§25.3).

Every relay under test runs in a child process on 127.0.0.1, alone: the
cairn node (C{--serve}: make_node on a temporary data dir, PSK pairing),
magic-wormhole-transit-relay (C{--transit}: its twistd plugin's
C{makeService}, pip-installed if missing) or
C{twisted.protocols.portforward} (C{--proxy}). Both ends of every circuit
or pair run in the measuring process; its sender pushes through a
streaming producer (paused by the transport or by the circuit's credit),
its receiver counts bytes. The clock starts once every circuit or pair is
open and stops when the last byte has arrived. C{--bytes} is the total
of each measurement, split evenly over the circuits.

Each measurement also reads the CPU time of the relay process and of the
measuring process (C{/proc/PID/stat}), so the relay's own cost per byte
can be compared even where the endpoints limit the wall rate: the cairn
endpoints seal and open every byte twice (end to end and towards the
node), the anchors' endpoints only copy bytes.

The stalled-receiver measurement opens one circuit, stops the receiver
(no credit from its end, its socket with the node no longer read), then
offers it C{--rss-bytes}: first through the circuit (the sender's
producer is paused by the circuit's credit), then as RelayData written
straight on the sender's session with the node, ignoring credit (the
node must close the circuit rather than queue). It reports the node's
C{VmRSS} before and its peak while each sender is at work.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from bench._ports import free_port

PSK = "bench pre-shared key, long enough to not be weak"
#: Bytes per write into the anchors' raw sockets.
CHUNK = 64 * 1024
#: Bytes per channel message on the circuit: the largest that keeps two
#: inner envelopes (message + ~200 bytes of ratchet, CBOR and sealing)
#: within the 256 KiB flow-control window (docs/protocol.md §25.3), so
#: the sender never idles waiting for credit. Per-message costs (ratchet
#: step, two seals, CBOR, dispatch) are paid half as often as with CHUNK.
CIRCUIT_CHUNK = 256 * 1024 // 2 - 4096
#: What the stalled receiver is sent (C{--rss-bytes}), and for how long
#: the node's memory is watched once the sender has stopped moving.
RSS_BYTES = 2**30
RSS_QUIET = 1.0
#: Longest a single measurement may take before it is abandoned.
TIMEOUT = 300.0
KINDS = ("cairn", "transit", "proxy")
#: Further cairn measurements, reported without a target.
EXTRA = ("cairn-e2e", "cairn-relaydata")
TRANSIT_PACKAGE = "magic-wormhole-transit-relay"


def parse_size(text: str) -> int:
    """C{'1GiB'}, C{'256MiB'}, C{'64KiB'} or a number of bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 256MiB, 65536)")
    units = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    size = int(match.group(1)) * units[match.group(2)]
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def show_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


# The relay processes


def serve():
    """The child: a node on loopback; prints its TCP port, runs until stdin closes."""
    from twisted.internet import reactor

    from bench._common import log_warnings_only
    from cairn.config import Config
    from cairn.service import make_node

    log_warnings_only()
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-relay-")
    config = Config.from_env(
        {},
        data_dir=data_dir,
        listen="tcp:0:interface=127.0.0.1",
        ws_listen="none",
        mgmt_listen="none",
        psk=PSK,
        max_handshakes_per_source=1_000_000,  # every end dials from 127.0.0.1
    )
    node = make_node(config, reactor)
    node.startService()
    node.ready.addCallback(lambda ports: _announce(ports["tcp"].getHost().port))
    _until_stdin_closes(reactor, lambda: node.stopService().addBoth(lambda _: shutil.rmtree(data_dir, True)))


def transit():
    """
    The child: magic-wormhole-transit-relay on 127.0.0.1, built by its own
    twistd plugin's C{makeService}, with no usage log or database; run in
    a temporary directory, removed when it stops.
    """
    from twisted.internet import reactor
    from wormhole_transit_relay import server_tap

    from bench._common import log_warnings_only

    log_warnings_only()
    work = tempfile.mkdtemp(prefix="bench-transit-")
    os.chdir(work)
    port = free_port()
    options = server_tap.Options()
    options.parseOptions([f"--port=tcp:{port}:interface=127.0.0.1"])
    service = server_tap.makeService(options, reactor)
    service.startService()
    _announce(port)
    _until_stdin_closes(reactor, lambda: _stop_then(service.stopService(), lambda: shutil.rmtree(work, True)))


def proxy(target):
    """The child: a bare Twisted port-forward proxy to 127.0.0.1:target."""
    from twisted.internet import reactor
    from twisted.protocols.portforward import ProxyFactory

    port = reactor.listenTCP(0, ProxyFactory("127.0.0.1", target), interface="127.0.0.1")
    _announce(port.getHost().port)
    _until_stdin_closes(reactor, lambda: None)


def _stop_then(d, then):
    return defer.maybeDeferred(lambda: d).addBoth(lambda _: then())


def _announce(port):
    print(json.dumps({"port": port}), flush=True)


def _until_stdin_closes(reactor, stop):
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    class Stdin(LineReceiver):
        def connectionLost(self, reason=None):
            defer.maybeDeferred(stop).addBoth(lambda _: reactor.stop())

    stdio.StandardIO(Stdin())
    reactor.run()


def _child(*args):
    """
    Start C{python -m bench.relay ARGS}; return it and the port it announced.
    The node (C{--serve}) runs under cProfile if C{$CAIRN_BENCH_SERVER_PROFILE}
    names the file to write.
    """
    profile = os.environ.get("CAIRN_BENCH_SERVER_PROFILE") if args[0] == "--serve" else None
    profiler = ["-m", "cProfile", "-o", profile] if profile else []
    command = [sys.executable, *profiler, "-m", "bench.relay", *args]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = child.stdout.readline()
    if not line:
        child.wait(30)
        raise RuntimeError(f"relay child {args[0]} did not start (exit code {child.returncode})")
    return child, json.loads(line)["port"]


def ensure_transit_relay():
    """Import magic-wormhole-transit-relay, pip-installing it first if missing."""
    try:
        import wormhole_transit_relay  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", TRANSIT_PACKAGE])


# The two ends


@implementer(IPushProducer)
class Pusher:
    """
    A streaming producer that writes C{size} bytes with C{write}, C{chunk}
    at a time, as long as it is not paused.
    """

    def __init__(self, write, size, chunk):
        self.write = write
        self.left = size
        self.chunk = chunk
        self.paused = True
        self.sent = 0

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        chunk = self.chunk
        while not self.paused and self.left > 0:
            data = chunk if self.left >= len(chunk) else chunk[: self.left]
            self.left -= len(data)
            self.sent += len(data)
            self.write(data)

    def stopProducing(self):
        self.paused = True
        self.left = 0


class Tally:
    """Bytes received over all circuits; C{done} fires once C{expected} arrived."""

    def __init__(self, expected):
        self.expected = expected
        self.got = 0
        self.done = defer.Deferred()

    def add(self, data):
        self.got += len(data)
        if self.got >= self.expected and not self.done.called:
            self.done.callback(None)


def _sizes(total, circuits):
    """C{total} split over C{circuits}, the remainder on the first ones."""
    share, extra = divmod(total, circuits)
    return [share + (1 if i < extra else 0) for i in range(circuits)]


def cairn_circuits(reactor, port, sizes, tally, mode="raw"):
    """
    One pair of clients per circuit (each with its own sessions with the
    node, both PSK-paired) and a circuit from the first to the second.
    C{mode}: C{raw} -- an attached circuit whose two connections then carry
    raw bytes (the end-to-end session is left idle); C{e2e} -- the same
    circuit carrying channel messages of the end-to-end session;
    C{relaydata} -- a RelayData circuit carrying channel messages. Fires
    with C{(pusher, ends)} per circuit.
    """
    from cairn.client import Client
    from cairn.pairing import client as pairing
    from cairn.relay.attached import AttachProtocol
    from cairn.relay.client import relay_endpoint, relay_to

    address = f"tcp:host=127.0.0.1:port={port}"
    payload = b"\x00" * (CHUNK if mode == "raw" else CIRCUIT_CHUNK)

    @defer.inlineCallbacks
    def one(size):
        alice, bob = Client(reactor), Client(reactor)
        relay_endpoint(alice).attach = mode != "relaydata"
        node_a = yield alice.connect(address)
        yield pairing.pair_psk(node_a, PSK)
        node_b = yield bob.connect(address)
        yield pairing.pair_psk(node_b, PSK)
        accepted = defer.Deferred()
        relay_endpoint(bob).on_session = accepted.callback
        a = yield relay_to(alice, node_a, bob.peer_id)
        b = yield accepted
        ends = (alice, bob, node_a, node_b, a, b)
        if mode == "raw":
            sender, receiver = a.connection.transport, b.connection.transport
            if not isinstance(sender, AttachProtocol):
                raise RuntimeError("the node did not give an attached circuit")
            receiver.dataReceived = tally.add  # the inner session hears nothing more
            pusher = Pusher(sender.transport.write, size, payload)
            sender.transport.registerProducer(pusher, True)
            return pusher, ends
        b.on_channel = lambda channel: setattr(channel, "on_data", tally.add)
        pusher = Pusher(a.open_channel("bulk").send, size, payload)
        consumer = a.connection.transport  # a CircuitTransport, or an AttachProtocol over a TCP transport
        consumer = consumer if mode == "relaydata" else consumer.transport
        consumer.registerProducer(pusher, True)
        return pusher, ends

    return _sequentially(one, sizes)


def transit_pairs(reactor, port, sizes, tally):
    """
    Two raw TCP clients per pair, each sending the transit handshake
    (C{please relay TOKEN for side SIDE}) with the pair's token and its own
    side, waiting for C{ok}. Fires with C{(pusher, ends)} per pair.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    payload = b"\x00" * CHUNK

    @defer.inlineCallbacks
    def one(size):
        token = os.urandom(32).hex()
        sender = TransitEnd(token, os.urandom(8).hex(), None)
        receiver = TransitEnd(token, os.urandom(8).hex(), tally)
        yield connectProtocol(endpoint, sender)
        yield connectProtocol(endpoint, receiver)
        yield defer.gatherResults([sender.ready, receiver.ready], consumeErrors=True)
        pusher = Pusher(sender.transport.write, size, payload)
        sender.transport.registerProducer(pusher, True)
        return pusher, (sender, receiver)

    return _sequentially(one, sizes)


class TransitEnd(Protocol):
    """One side of a transit relay pair; counts what follows C{ok} into C{tally}."""

    def __init__(self, token, side, tally):
        self.line = f"please relay {token} for side {side}\n".encode("ascii")
        self.tally = tally
        self.buffer = b""
        self.ready = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.line)

    def dataReceived(self, data):
        if self.ready.called:
            if self.tally is not None:
                self.tally.add(data)
            return
        self.buffer += data
        if len(self.buffer) < 3:
            return
        answer, rest, self.buffer = self.buffer[:3], self.buffer[3:], b""
        if answer != b"ok\n":
            self.ready.errback(RuntimeError(f"transit relay answered {answer!r}"))
            self.transport.loseConnection()
            return
        self.ready.callback(self)
        if rest and self.tally is not None:
            self.tally.add(rest)

    def connectionLost(self, reason=None):
        if not self.ready.called:
            self.ready.errback(RuntimeError("transit relay closed the connection before ok"))


class Sink(Protocol):
    """The proxy anchor's receiving end: counts bytes into the factory's tally."""

    def connectionMade(self):
        self.factory.connected(self)

    def dataReceived(self, data):
        self.factory.tally.add(data)


class SinkFactory(Factory):
    protocol = Sink

    def __init__(self, tally):
        self.tally = tally
        self.waiting = []

    def connected(self, sink):
        if self.waiting:
            self.waiting.pop(0).callback(sink)

    def next_connection(self):
        d = defer.Deferred()
        self.waiting.append(d)
        return d


def proxy_pairs(reactor, port, sizes, sinks):
    """
    A raw TCP client per pair, connected through the proxy to a sink in
    this process (C{sinks}: the L{SinkFactory} the proxy forwards to).
    Fires with C{(pusher, ends)} per pair.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    payload = b"\x00" * CHUNK

    @defer.inlineCallbacks
    def one(size):
        arrived = sinks.next_connection()
        sender = yield connectProtocol(endpoint, Protocol())
        sink = yield arrived
        pusher = Pusher(sender.transport.write, size, payload)
        sender.transport.registerProducer(pusher, True)
        return pusher, (sender, sink)

    return _sequentially(one, sizes)


@defer.inlineCallbacks
def _sequentially(one, sizes):
    made = []
    for size in sizes:
        made.append((yield one(size)))
    return made


# Measurements (each in a process of its own: a reactor runs once)


def measure(kind, circuits, total):
    """
    Push C{total} bytes through C{circuits} circuits (or pairs) of relay
    C{kind} at once; return the wall time and both processes' CPU time.
    """
    from twisted.internet import reactor

    from bench._common import proc_cpu

    sizes = _sizes(total, circuits)
    tally = Tally(total)
    if kind.startswith("cairn"):
        child, port = _child("--serve")
        mode = {"cairn": "raw", "cairn-e2e": "e2e", "cairn-relaydata": "relaydata"}[kind]
        prepare = lambda: cairn_circuits(reactor, port, sizes, tally, mode)  # noqa: E731
    elif kind == "transit":
        ensure_transit_relay()
        child, port = _child("--transit")
        prepare = lambda: transit_pairs(reactor, port, sizes, tally)  # noqa: E731
    else:
        sinks = SinkFactory(tally)
        listener = reactor.listenTCP(0, sinks, interface="127.0.0.1")
        child, port = _child("--proxy", str(listener.getHost().port))
        prepare = lambda: proxy_pairs(reactor, port, sizes, sinks)  # noqa: E731
    result = {"kind": kind, "circuits": circuits, "bytes": total}

    @defer.inlineCallbacks
    def run():
        made = yield prepare()
        server_cpu, own_cpu, start = proc_cpu(child.pid), time.process_time(), time.perf_counter()
        for pusher, _ in made:
            pusher.resumeProducing()
        yield tally.done.addTimeout(TIMEOUT, reactor)
        result["wall"] = time.perf_counter() - start
        result["server_cpu"] = proc_cpu(child.pid) - server_cpu
        result["client_cpu"] = time.process_time() - own_cpu
        result["received"] = tally.got

    _run(reactor, run, child)
    return result


def stalled_rss(size):
    """
    The node's resident memory while a receiver that never reads its
    socket is sent C{size} bytes: through an attached circuit (the
    sender's producer is paused by TCP); then, on a RelayData circuit
    whose receiver also grants no credit, by a sender that respects the
    circuit's credit, then by one that writes RelayData for the circuit
    regardless (the node must close the circuit, not queue the bytes).
    """
    from twisted.internet import reactor

    from bench._common import proc_memory, sleep
    from cairn.wire.constants import MessageType

    child, port = _child("--serve")
    result = {"bytes": size}

    def proc_rss(pid):
        return proc_memory(pid)["VmRSS"]

    @defer.inlineCallbacks
    def watch(progress):
        """Peak RSS until C{progress()} has not changed for RSS_QUIET seconds."""
        peak, last, quiet_since = proc_rss(child.pid), None, time.perf_counter()
        deadline = quiet_since + TIMEOUT
        while time.perf_counter() - quiet_since < RSS_QUIET and time.perf_counter() < deadline:
            yield sleep(reactor, 0.05)
            peak = max(peak, proc_rss(child.pid))
            now = progress()
            if now != last:
                last, quiet_since = now, time.perf_counter()
        return peak

    @defer.inlineCallbacks
    def run():
        [(pusher, ends)] = yield cairn_circuits(reactor, port, [size], Tally(size))
        # The attached circuit's receiver does not read its connection.
        ends[5].connection.transport.transport.pauseProducing()
        yield sleep(reactor, 0.2)
        result["attached_base"] = proc_rss(child.pid)
        pusher.resumeProducing()
        result["attached_peak"] = yield watch(lambda: pusher.sent)
        result["attached_sent"] = pusher.sent
        [(pusher, ends)] = yield cairn_circuits(reactor, port, [size], Tally(size), "relaydata")
        _, _, node_a, node_b, a, b = ends
        # The receiver: no credit from its end of the circuit, and its
        # socket with the node is not read at all from now on.
        b.connection.transport.pause_reading()
        node_b.connection.transport.transport.pauseProducing()
        yield sleep(reactor, 0.2)
        result["base"] = proc_rss(child.pid)
        pusher.resumeProducing()
        result["peak"] = yield watch(lambda: pusher.sent)
        result["sent"] = pusher.sent
        result["after_polite"] = proc_rss(child.pid)
        # The flood: RelayData for the circuit straight on the session with
        # the node, paced only by the TCP socket.
        circuit = a.connection.transport
        circuit_id = circuit.circuit_id
        body = {"circuit": circuit_id, "data": b"\x00" * CIRCUIT_CHUNK}
        flood = Pusher(lambda data: node_a.send(MessageType.RELAY_DATA, body), size, b"\x00" * CIRCUIT_CHUNK)
        socket_a = node_a.connection.transport.transport
        if socket_a.producer is not None:
            return  # something else paces this socket: no flood measurement
        socket_a.registerProducer(flood, True)
        flood.resumeProducing()
        result["flood_peak"] = yield watch(lambda: flood.sent)
        result["flood_sent"] = flood.sent
        result["flood_after"] = proc_rss(child.pid)
        result["circuit_closed"] = circuit.closed
        result["session_closed"] = None if node_a.closed is None else str(node_a.closed)

    _run(reactor, run, child)
    return result


def _run(reactor, run, child):
    """Run C{run()} on the reactor (once per process: the reactor cannot restart)."""
    failures = []

    def go():
        d = run()
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(go)
        reactor.run()
    finally:
        child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if failures:
        failures[0].raiseException()


def layers(count):
    """
    (label, CPU seconds per message) for each layer a circuit message
    crosses, timed in this process without sockets, for C{CIRCUIT_CHUNK}-byte
    messages.
    """
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from bench._common import measure_in_process
    from bench.breakdown import SESSION_ID, _cairn_noise, _ratchets
    from cairn.crypto.aead import SessionCipher
    from cairn.crypto.identity import Identity
    from cairn.wire import cbor
    from cairn.wire.constants import MessageType
    from cairn.wire.envelope import decode

    message = os.urandom(CIRCUIT_CHUNK)
    sender, receiver = _ratchets(_cairn_noise(Identity.generate(), Identity.generate())())
    ahead = iter([sender.encrypt(message, SESSION_ID) for _ in range(count + 1)])
    dr = next(ahead)
    keys = [os.urandom(32) for _ in range(4)]
    e2e_out, e2e_in = SessionCipher(keys[0], keys[1]), SessionCipher(keys[1], keys[0])
    hop_out, hop_in = SessionCipher(keys[2], keys[3]), SessionCipher(keys[3], keys[2])
    circuit_id = os.urandom(16)
    seq = iter(range(1, 10 * count + 10))
    max_payload = 1_000_000

    def seal(cipher, type_code, body):
        return cipher.seal_bytes(1, type_code, SESSION_ID, next(seq), cbor.dumps(body))

    def open_(cipher, data):
        return cbor.loads(cipher.open(decode(data, max_payload)))

    inner = seal(e2e_out, MessageType.DATA, {"channel": 2, "dr": dr})
    outer = seal(hop_out, MessageType.RELAY_DATA, {"circuit": circuit_id, "data": inner})
    chacha = ChaCha20Poly1305(keys[0])
    nonce, ad = bytes(12), bytes(31)
    parts = [
        ("ratchet encrypt (AES-256-CBC + HMAC-SHA256, KDF step)", lambda: sender.encrypt(message, SESSION_ID)),
        ("ratchet decrypt (HMAC-SHA256 + AES-256-CBC, KDF step)", lambda: receiver.decrypt(next(ahead), SESSION_ID)),
        (
            "end-to-end envelope: CBOR Data + ChaCha20-Poly1305 seal",
            lambda: seal(e2e_out, MessageType.DATA, {"channel": 2, "dr": dr}),
        ),
        ("end-to-end envelope: parse + open + CBOR", lambda: open_(e2e_in, inner)),
        (
            "hop envelope: CBOR RelayData + ChaCha20-Poly1305 seal",
            lambda: seal(hop_out, MessageType.RELAY_DATA, {"circuit": circuit_id, "data": inner}),
        ),
        ("hop envelope: parse + open + CBOR", lambda: open_(hop_in, outer)),
        ("  bare ChaCha20-Poly1305 encrypt (the floor of a seal)", lambda: chacha.encrypt(nonce, message, ad)),
    ]
    # CPU time, not wall time: the machine may be shared.
    return [(label, measure_in_process(operation, count).client_cpu / count) for label, operation in parts]


def report_layers(count):
    timed = layers(count)
    print(f"layers of one circuit message of {CIRCUIT_CHUNK} bytes: CPU time, one core, no sockets:")
    for label, seconds in timed:
        print(f"  {label:<58} {seconds * 1e6:8.1f} us {CIRCUIT_CHUNK / seconds / 2**20:8.0f} MiB/s")
    cost = dict(timed)
    labels = [label for label, _ in timed]
    sides = {
        "sender (ratchet encrypt, 2 seals)": [labels[0], labels[2], labels[4]],
        "node (open + seal)": [labels[5], labels[4]],
        "receiver (2 opens, ratchet decrypt)": [labels[5], labels[3], labels[1]],
    }
    for side, parts in sides.items():
        seconds = sum(cost[p] for p in parts)
        print(f"  {side:<58} {seconds * 1e6:8.1f} us {CIRCUIT_CHUNK / seconds / 2**20:8.0f} MiB/s")


# The whole run


def _in_child(*args):
    """Run one measurement in a fresh process; return its JSON result."""
    out = subprocess.check_output([sys.executable, "-m", "bench.relay", *args])
    return json.loads(out.decode().strip().splitlines()[-1])


def report(results, rss, total, counts):
    def mib_s(count, seconds):
        return count / seconds / 2**20 if seconds > 0 else float("inf")

    print(f"relay: {show_size(total)} per measurement, split evenly over the circuits")
    print("  MiB/s: wall; per CPU-second of the relay process; per CPU-second of the endpoints' process")
    for n in counts:
        print(f"  {n} circuit{'s' if n > 1 else ''}:")
        labels = (
            ("cairn", "cairn node"),
            ("transit", "transit relay"),
            ("proxy", "bare Twisted proxy"),
            ("cairn-e2e", "cairn, e2e session"),
            ("cairn-relaydata", "cairn, RelayData"),
        )
        for kind, label in labels:
            r = results.get((kind, n))
            if r is None:
                continue
            print(
                f"    {label:<20} {mib_s(r['bytes'], r['wall']):8.1f} wall"
                f"  {mib_s(r['bytes'], r['server_cpu']):8.1f} relay core"
                f"  {mib_s(r['bytes'], r['client_cpu']):8.1f} endpoint core"
            )
        ours, transit_, bare = (results[k, n] for k in KINDS)
        wall = [mib_s(r["bytes"], r["wall"]) for r in (ours, transit_, bare)]
        core = [mib_s(r["bytes"], r["server_cpu"]) for r in (ours, transit_, bare)]
        print(
            f"    ratio cairn / transit  {wall[0] / wall[1]:6.2f}x wall (target >= 1.25)"
            f"  {core[0] / core[1]:6.2f}x relay core"
        )
        print(
            f"    ratio cairn / proxy    {wall[0] / wall[2]:6.2f}x wall (target >= 0.9) "
            f"  {core[0] / core[2]:6.2f}x relay core"
        )
    if rss is not None:
        report_rss(rss)


def report_rss(rss):
    """The stalled-receiver lines: the node's RSS growth in MB (10^6 bytes)."""
    mb = 1e6
    print(f"node RSS, stalled receiver sent {show_size(rss['bytes'])} (target: growth < 64 MB):")
    print(
        f"  attached circuit:         {rss['attached_sent'] / 2**10:.0f} KiB left the sender;"
        f" RSS {rss['attached_base'] / mb:.1f} MB -> peak {rss['attached_peak'] / mb:.1f} MB,"
        f" growth {(rss['attached_peak'] - rss['attached_base']) / mb:.1f} MB"
    )
    print(
        f"  RelayData circuit, credit-respecting sender: {rss['sent'] / 2**10:.0f} KiB left the sender;"
        f" RSS {rss['base'] / mb:.1f} MB -> peak {rss['peak'] / mb:.1f} MB,"
        f" growth {(rss['peak'] - rss['base']) / mb:.1f} MB"
    )
    if "flood_sent" not in rss:
        print("  sender ignoring credit:   not measured (the sender's socket already has a producer)")
        return
    print(
        f"  RelayData circuit, sender ignoring credit: {rss['flood_sent'] / 2**20:.0f} MiB written as RelayData;"
        f" peak {rss['flood_peak'] / mb:.1f} MB, growth {(rss['flood_peak'] - rss['base']) / mb:.1f} MB"
        f" over the same base; circuit closed with {rss['circuit_closed']!r}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=parse_size, default=2**30, help="bytes per measurement (default 1GiB)")
    parser.add_argument("--circuits", type=int, default=16, help="circuits of the concurrent measurement")
    parser.add_argument("--rss-bytes", type=parse_size, default=RSS_BYTES, help="bytes sent to the stalled receiver")
    parser.add_argument("--no-rss", action="store_true", help="skip the stalled-receiver measurement")
    parser.add_argument("--layers", type=int, metavar="N", help="only time each layer of a message, N times")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--transit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=[*KINDS, *EXTRA, "rss"], help="one measurement, as JSON")
    parser.add_argument("--no-extra", action="store_true", help="skip the cairn-e2e and cairn-relaydata lines")
    args = parser.parse_args(argv)
    if args.circuits < 1:
        parser.error(f"--circuits must be at least 1, not {args.circuits}")
    if args.serve:
        return serve()
    if args.transit:
        return transit()
    if args.proxy:
        return proxy(args.proxy)
    if args.layers:
        return report_layers(args.layers)
    if args.only == "rss":
        print(json.dumps(stalled_rss(args.rss_bytes)), flush=True)
        return None
    if args.only:
        print(json.dumps(measure(args.only, args.circuits, args.bytes)), flush=True)
        return None
    ensure_transit_relay()
    counts = sorted({1, args.circuits})
    results = {}
    for n in counts:
        for kind in KINDS + (() if args.no_extra else EXTRA):
            results[kind, n] = _in_child("--only", kind, "--circuits", str(n), "--bytes", str(args.bytes))
    rss = None if args.no_rss else _in_child("--only", "rss", "--rss-bytes", str(args.rss_bytes))
    report(results, rss, args.bytes, counts)
    return None


if __name__ == "__main__":
    main()
