"""
The keepalive floor (issue 20): what holding N idle connections costs a
bare Python server that does nothing but what a keepalive needs -- one
small message each way per connection per interval -- measured the way
C{idle} measures the cairn node's keepalive CPU, in the same run.

A C{floor-node} child listens on 127.0.0.1 (bare Twisted: a
C{Protocol} that counts the bytes it reads, C{TCP_NODELAY} as cairn's
stream transport sets it, Twisted's default read size; or, with
C{--asyncio}, the same in bare asyncio with its own event loop and no
Twisted). C{floor-clients} children (Twisted) open their share of the N
connections from their own loopback addresses and, like the node, write
one message of L{message_size} bytes (the size of a sealed Keepalive on
the wire) on every connection every interval: the connections are spread
over L{SLOTS} slots of the interval, one timer for each slot, as the
node's keepalive wheel spreads its sessions. Nothing is framed, sealed,
parsed or acknowledged: the node's CPU per message handled (sent plus
received, counted) is the reactor turn, the system calls and the
per-message objects of one Python process per descriptor -- the floor
under cairn's figure.
"""

import functools
import json
import os
import socket
import sys
import time

from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol

from bench._common import gather, out, proc_cpu, ratio, sleep
from bench.capacity.children import Child, with_children
from bench.capacity.limits import raise_descriptors, source_addresses

#: Slots per interval: the connections' ticks are spread over this many timers.
SLOTS = 32
#: The floor's clients bind to 127.1.0.2, ...: not the addresses cairn's
#: clients use after them, where the floor's closed connections would
#: leave ports in TIME_WAIT.
SOURCES = "127.1"
#: The issue's interval: the floor at 100,000 connections is given for it.
DEFAULT_INTERVAL = 30.0
KINDS = {
    "twisted": "bare Twisted",
    "asyncio": "bare asyncio",
    # Not in idle's default: the measure of Twisted's write path (L{_direct_server}).
    "twisted-direct": "bare Twisted, immediate writes",
}


def message_size() -> int:
    """The bytes of a sealed Keepalive envelope on the wire, as the node sends one (ack 1000)."""
    from cairn.crypto.aead import SessionCipher
    from cairn.wire import cbor
    from cairn.wire.constants import MessageType

    cipher = SessionCipher(bytes(32), bytes(32))
    return len(cipher.seal_bytes(1, MessageType.KEEPALIVE, bytes(16), 1000, cbor.dumps_keepalive(1000)))


#: What L{DirectServer.write} reads of Twisted's transport.
_DIRECT_READS = ("connected", "disconnecting", "_writeDisconnected", "TLS", "_tempDataLen", "dataBuffer", "offset")


@functools.cache
def _direct_server():
    """
    A C{tcp.Server} whose C{write} sends at once when nothing is queued:
    the C{twisted-direct} floor, the measure of Twisted's write path.

    Twisted's C{write} only queues: it asks the reactor to watch the socket
    for writability (C{epoll_ctl}), and in a later turn C{doWrite} sends
    and stops the watch (another C{epoll_ctl}); strace counted one
    C{sendto} and two C{epoll_ctl} per message sent, on the floor as on the
    node. Here a write with nothing queued before it (Twisted's
    C{dataBuffer}/C{offset} and its private C{_tempDataLen}), on an open
    connection that is not closing and not TLS, goes through Twisted's own
    C{writeSomeData}; what the kernel does not take, and any error, goes
    the usual way. Not used by cairn (bench/README.rst, "Keepalive floor",
    says why); Twisted has no such option.
    """
    from twisted.internet import tcp

    class DirectServer(tcp.Server):
        def write(self, data):
            if (
                type(data) is bytes
                and not self._tempDataLen
                and self.offset == len(self.dataBuffer)
                and self.connected
                and not self.disconnecting
                and not self._writeDisconnected
                and not self.TLS
            ):
                sent = self.writeSomeData(data)
                if type(sent) is int:
                    if sent == len(data):
                        return
                    data = data[sent:]
            super().write(data)

    return tcp.Server, DirectServer


def _spread(connections, interval, write, clock):
    """
    Every C{interval}/L{SLOTS} seconds, C{write(connection)} for each of
    the connections in the next slot (C{connections}: a dict per slot).
    """
    state = {"slot": 0}

    def tick():
        slot = state["slot"]
        state["slot"] = (slot + 1) % SLOTS
        for connection in connections[slot]:
            write(connection)

    loop = task.LoopingCall(tick)
    loop.clock = clock
    loop.start(interval / SLOTS, now=False)
    return loop


class _Counted(Protocol):
    """A floor connection (either end): counts what it reads, joins a slot."""

    slot = None

    def connectionMade(self):
        if self.factory.direct:
            # The same object, its class changed to the one with the immediate write.
            plain, direct = _direct_server()
            if type(self.transport) is plain and all(hasattr(self.transport, a) for a in _DIRECT_READS):
                self.transport.__class__ = direct
        self.transport.setTcpNoDelay(True)
        self.factory.joined(self)

    def dataReceived(self, data):
        self.factory.bytes_received += len(data)

    def connectionLost(self, reason=None):
        self.factory.left(self)


class _Ends(Factory):
    """The connections of one floor process, in L{SLOTS} slots, each written to once per interval."""

    protocol = _Counted

    def __init__(self, reactor, interval, message, direct=False):
        self.direct = direct
        self.message = message
        #: Per slot, its connections ({protocol: None}).
        self.slots = [{} for _ in range(SLOTS)]
        self.count = 0
        self.sent = 0
        self.bytes_received = 0
        self._loop = _spread(self.slots, interval, self._write, reactor)

    def joined(self, protocol):
        protocol.slot = self.slots[self.count % SLOTS]
        protocol.slot[protocol] = None
        self.count += 1

    def left(self, protocol):
        if protocol.slot is not None and protocol.slot.pop(protocol, False) is None:
            self.count -= 1

    def _write(self, protocol):
        protocol.transport.write(self.message)
        self.sent += 1

    def stats(self):
        size = len(self.message)
        return {"connections": self.count, "sent": self.sent, "received": self.bytes_received // size}

    def stop(self):
        if self._loop.running:
            self._loop.stop()


@defer.inlineCallbacks
def floor_node_role(reactor, control, args):
    """The bare-Twisted floor node: listens, writes and counts, answers C{stats}."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    nofile = raise_descriptors()
    ends = _Ends(reactor, args.keepalive, b"k" * args.size, args.direct)
    port = yield TCP4ServerEndpoint(reactor, 0, backlog=4096, interface="127.0.0.1").listen(ends)
    control.handle = lambda command: ends.stats()
    control.send({"port": port.getHost().port, "nofile_line": nofile.line(), "pid": os.getpid()})
    yield control.done
    ends.stop()


@defer.inlineCallbacks
def floor_clients_role(reactor, control, args):
    """Open C{--count} connections to the floor node (C{--concurrency} at a time), then tick like it."""
    from twisted.internet.endpoints import TCP4ClientEndpoint

    nofile = raise_descriptors()
    control.send({"nofile_line": nofile.line()})
    ends = _Ends(reactor, args.keepalive, b"k" * args.size)
    sources = args.source or [None]
    left = iter(range(args.count))
    failed = []

    @defer.inlineCallbacks
    def worker():
        for i in left:
            source = sources[i % len(sources)]
            bind = {"bindAddress": (source, 0)} if source else {}
            try:
                yield TCP4ClientEndpoint(reactor, "127.0.0.1", args.port, timeout=30, **bind).connect(ends)
            except Exception as e:
                failed.append(type(e).__name__)

    yield gather(worker() for _ in range(args.concurrency))
    control.handle = lambda command: ends.stats()
    control.send({"opened": ends.count, "failed": len(failed)})
    yield control.done
    ends.stop()


def asyncio_floor_node(args):
    """
    The bare-asyncio floor node: the same as L{floor_node_role} on
    asyncio's own event loop (no Twisted in the loop), answering the same
    JSON lines on stdin.
    """
    import asyncio

    nofile = raise_descriptors()
    message = b"k" * args.size

    class Counted(asyncio.Protocol):
        def connection_made(self, transport):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.transport = transport
            self.slot = slots[counts["connections"] % SLOTS]
            self.slot[self] = None
            counts["connections"] += 1

        def data_received(self, data):
            counts["bytes"] += len(data)

        def connection_lost(self, exc):
            del self.slot[self]
            counts["connections"] -= 1

    slots = [{} for _ in range(SLOTS)]
    counts = {"connections": 0, "sent": 0, "bytes": 0}

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Counted, "127.0.0.1", 0, backlog=4096)
        step = args.keepalive / SLOTS
        start = loop.time()

        def tick(n):
            for protocol in slots[n % SLOTS]:
                protocol.transport.write(message)
                counts["sent"] += 1
            loop.call_at(start + (n + 2) * step, tick, n + 1)

        loop.call_at(start + step, tick, 0)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        def send(message):
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

        port = server.sockets[0].getsockname()[1]
        send({"port": port, "nofile_line": nofile.line(), "pid": os.getpid()})
        while line := await reader.readline():
            json.loads(line)  # every command is "stats"
            send(
                {
                    "connections": counts["connections"],
                    "sent": counts["sent"],
                    "received": counts["bytes"] // len(message),
                }
            )
        server.close()

    asyncio.run(main())


@defer.inlineCallbacks
def measure_floor(reactor, args, n, kind, size):
    """
    One floor run of C{kind} (L{KINDS}) with C{n} connections, C{args}'s
    client processes, interval and window; print its lines and fire with
    its figures: C{share} (of a core), C{empty} (share with no
    connection), C{handled} (messages sent plus received) and C{us} (node
    CPU per message handled).
    """
    children = []

    @defer.inlineCallbacks
    def run():
        k = args.keepalive
        node_k = args.node_keepalive or k
        node = Child.spawn(
            reactor,
            f"floor node ({kind})",
            "floor-node",
            "--keepalive",
            node_k,
            "--size",
            size,
            *{"asyncio": ["--asyncio"], "twisted-direct": ["--direct"]}.get(kind, []),
        )
        children.append(node)
        hello = yield node.next(60)
        out(f"floor node ({KINDS[kind]}, pid {hello['pid']}): {hello['nofile_line']}")
        empty_window = min(2.0, args.window)
        cpu0 = proc_cpu(node.pid)
        yield sleep(reactor, empty_window)
        empty = (proc_cpu(node.pid) - cpu0) / empty_window
        sources = source_addresses(n, args.per_address, SOURCES)
        shares = [n // args.clients + (i < n % args.clients) for i in range(args.clients)]
        start = time.perf_counter()
        for i, count in enumerate(shares):
            options = ["--port", hello["port"], "--count", count, "--keepalive", k, "--size", size]
            options += ["--concurrency", 64]
            for source in sources[i :: args.clients] or [sources[i % len(sources)]]:
                options += ["--source", source]
            children.append(Child.spawn(reactor, f"floor clients {i}", "floor-clients", *options, nice=args.nice))
        workers = children[1:]
        yield gather(w.next(60) for w in workers)
        results = yield gather(w.next(args.open_timeout) for w in workers)
        opened = sum(r["opened"] for r in results)
        failed = sum(r["failed"] for r in results)
        seconds = time.perf_counter() - start
        # A whole interval, so that every connection has been written to.
        yield sleep(reactor, min(1.0, n / 1000) + k)
        before = yield node.ask("stats")
        cpu0, t0 = proc_cpu(node.pid), time.perf_counter()
        yield sleep(reactor, args.window)
        cpu, wall = proc_cpu(node.pid) - cpu0, time.perf_counter() - t0
        after = yield node.ask("stats")
        sent = after["sent"] - before["sent"]
        received = after["received"] - before["received"]
        handled = sent + received
        share = cpu / wall
        us = cpu / handled * 1e6 if handled else float("nan")
        out(
            f"floor ({KINDS[kind]}, {size} B a message): {opened} of {n} connections in {seconds:.1f} s"
            + (f" ({failed} failed)" if failed else "")
            + f"; node CPU {share * 100:.1f}% of a core over {wall:.1f} s (no connection: {empty * 100:.1f}%); "
            f"{handled:,} messages handled ({sent:,} sent, {received:,} received; "
            f"{opened * wall * (1 / k + 1 / node_k):,.0f} expected): {us:.1f} us each"
        )
        return {"kind": kind, "share": share, "empty": empty, "handled": handled, "us": us, "opened": opened}

    result = yield with_children(reactor, run, children)
    return result


def at_scale(us: float, sessions: int, interval: float = DEFAULT_INTERVAL, mix: float = 2.0) -> float:
    """
    Share of a core (percent) of C{us} per message, C{mix} messages per
    session per C{interval} (2: one each way; 1: the node's own ticks
    skipped, only the peer's received).
    """
    return us * 1e-6 * mix * sessions / interval * 100


def kinds(option: str) -> list:
    """The floors C{--floor} names, in order (L{KINDS}, comma-separated; "none": none)."""
    import argparse

    names = [name.strip() for name in option.split(",") if name.strip() not in ("", "none")]
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)} (known: {', '.join(KINDS)}, none)")
    return names


def report_against_floor(floors, cairn_us, mix=2.0):
    """
    The cairn figure against each floor of the same run, and each at the
    issue's 100,000 sessions with C{mix} messages per session per
    interval (2 when the node ticks as often as its peers; 1 + k/node_k
    with C{--node-keepalive}).
    """
    from bench.capacity.common import TARGET_SESSIONS

    rate = mix * TARGET_SESSIONS / DEFAULT_INTERVAL
    budget = 0.10 / rate * 1e6
    for f in floors:
        out(
            f"idle: cairn / floor ({KINDS[f['kind']]}) per keepalive handled: {cairn_us:.0f} / {f['us']:.1f} us = "
            f"{ratio(cairn_us, f['us'])}x; cairn's part above the floor {cairn_us - f['us']:.1f} us"
        )
        floor, cairn = at_scale(f["us"], TARGET_SESSIONS, mix=mix), at_scale(cairn_us, TARGET_SESSIONS, mix=mix)
        out(
            f"  the floor alone at {TARGET_SESSIONS:,} connections, {mix:.2f} messages each per {DEFAULT_INTERVAL:g} s "
            f"({rate:,.0f} handled a second): {floor:.1f}% of a core (issue 20: < 10%, i.e. < {budget:.1f} us each); "
            f"cairn at that rate {cairn:.1f}%"
        )
