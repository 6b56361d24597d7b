"""
Handshake bench: full cairn handshakes per second over real sockets,
against bare in-process noiseprotocol handshakes measured in the same run.

Anchor: C{Noise_XX_25519_ChaChaPoly_SHA256} with prologue C{b"cairn"},
both sides in this process, three messages with empty payloads, static
keys generated beforehand (the ephemeral keys are fresh every time).

Measured: a node in a child process (C{bench._server}), and this process
connecting to it over 127.0.0.1 with a fixed number of handshakes in
flight. One cairn handshake here is everything a client does to get a
session: TCP (or WebSocket) connect, the three Noise messages with the
signed identity payloads, and then a sealed Close. (No channel is opened,
so no Double Ratchet is started: it starts with a session's first channel,
docs/protocol.md §9.5; bench.data measures sessions that carry Data.)
For the WebSocket run it also counts how the client's WebSockets closed
(clean or not) and the timers still pending shortly after the run.

    python -m bench.handshake [--quick] [--count N] [--concurrency N] [--transport tcp|websocket]
"""

from noise.connection import Keypair, NoiseConnection
from twisted.internet import defer, task

from bench._common import (
    ServerProcess,
    Stopwatch,
    gather,
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
from cairn.wire.constants import NOISE_PROLOGUE, NOISE_PROTOCOL_NAME

#: The ratio the full TCP handshake should reach against the bare one.
TARGET = 0.7
#: The transports measured, in order.
TRANSPORTS = ("tcp", "websocket")
#: Seconds to let the last WebSockets close before counting how they closed.
CLOSE_GRACE = 0.5


def bare_handshake_operation():
    """One complete bare XX handshake between two pre-keyed parties, as a callable."""
    initiator_static = Identity.generate().noise_static_private()
    responder_static = Identity.generate().noise_static_private()

    def handshake():
        initiator = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        responder = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        initiator.set_as_initiator()
        responder.set_as_responder()
        for conn, static in ((initiator, initiator_static), (responder, responder_static)):
            conn.set_prologue(NOISE_PROLOGUE)
            conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
            conn.start_handshake()
        responder.read_message(initiator.write_message(b""))
        initiator.read_message(responder.write_message(b""))
        responder.read_message(initiator.write_message(b""))
        assert initiator.handshake_finished and responder.handshake_finished

    return handshake


@defer.inlineCallbacks
def cairn_handshakes(reactor, server, address: str, count: int, concurrency: int):
    """
    Open C{count} sessions to C{address}, C{concurrency} at a time, closing each.

    @return: a L{Measurement}; the clock stops when the last session is up.
    """
    client = Client(reactor, Identity.generate())
    left = [count]

    @defer.inlineCallbacks
    def worker():
        while left[0] > 0:
            left[0] -= 1
            session = yield client.connect(address)
            session.close()

    yield client.connect(address).addCallback(lambda s: s.close())  # warm-up
    watch = Stopwatch(server)
    watch.start()
    yield with_timeout(gather(worker() for _ in range(min(concurrency, count))), reactor, 120)
    return watch.stop(count)


class WebSocketCloses:
    """
    Counts, in this (the client) process, how cairn's client WebSockets
    close: cleanly (closing handshake completed) or not. A context manager.
    """

    def __init__(self):
        self.clean = 0
        self.unclean = 0

    def __enter__(self):
        from cairn.transport.websocket import ClientProtocol

        original = ClientProtocol.onClose
        own = "onClose" in vars(ClientProtocol)

        def onClose(protocol, wasClean, code, reason):
            if wasClean:
                self.clean += 1
            else:
                self.unclean += 1
            return original(protocol, wasClean, code, reason)

        ClientProtocol.onClose = onClose

        def restore():
            if own:
                ClientProtocol.onClose = original
            else:
                del ClientProtocol.onClose

        self._restore = restore
        return self

    def __exit__(self, *exc):
        self._restore()

    def line(self, opened: int, after: float, timers: int) -> str:
        still_open = opened - self.clean - self.unclean
        return (
            f"client WebSocket closes: {self.clean} clean, {self.unclean} unclean, "
            f"{still_open} not closed {after:g} s after the last session was up; "
            f"{timers} timers pending then (an unclean close leaves its 5 s close timer behind)"
        )


def report_transport(name, measured, bare, target=None):
    """Print the lines for one transport."""
    line = (
        f"handshake: cairn over {name} {rate(measured.count, measured.wall)}; "
        f"bare noiseprotocol {rate(bare.count, bare.wall)}; "
        f"ratio X/Y = {ratio(measured.rate, bare.rate)}"
    )
    if target is not None:
        line += f" (target >= {target})"
    out(line)
    out(f"  {name}: {measured.cpu_line('handshake')}")
    both = measured.client_cpu + measured.server_cpu
    if both > 0:
        out(
            f"  {name}: both sides on one core would do {rate(measured.count, both)}; "
            f"ratio to bare = {ratio(measured.count / both, bare.rate)}"
        )


@defer.inlineCallbacks
def run(reactor, quick=False, count=None, bare_count=None, concurrency=16, transports=TRANSPORTS):
    """
    Measure the anchor, then cairn over TCP and over WebSocket; print the results.

    @param transports: the transports to measure (both by default; one
        alone makes a profile of the node that is about that one).
    """
    count = pick(count, quick, 5000, 300)
    bare_count = pick(bare_count, quick, 5000, 300)
    out(f"== handshake bench ({count} handshakes per transport, {concurrency} in flight) ==")
    bare = measure_in_process(bare_handshake_operation(), bare_count)
    out(f"bare noiseprotocol XX in one process: {rate(bare.count, bare.wall)} ({bare_count} handshakes)")
    server = ServerProcess()
    tcp = websocket = closes = None
    try:
        ports = server.start()
        if "tcp" in transports:
            tcp = yield cairn_handshakes(reactor, server, f"tcp:host=127.0.0.1:port={ports['tcp']}", count, concurrency)
        if "websocket" in transports:
            with WebSocketCloses() as closes:
                websocket = yield cairn_handshakes(
                    reactor, server, f"ws://127.0.0.1:{ports['websocket']}/", count, concurrency
                )
                yield sleep(reactor, CLOSE_GRACE)
                timers = len(reactor.getDelayedCalls())
    finally:
        server.stop()
    if tcp is not None:
        report_transport("TCP", tcp, bare, TARGET)
    if websocket is not None:
        report_transport("WebSocket", websocket, bare)
        out(f"  WebSocket: {closes.line(count + 1, CLOSE_GRACE, timers)}")
    out(
        "  (wall rates: client in this process, node in a child process, one core each; "
        "the bare anchor runs both sides on one core)"
    )
    return {"bare": bare, "tcp": tcp, "websocket": websocket}


def main(argv=None):
    p = parser("cairn handshakes per second against bare noiseprotocol")
    p.add_argument("--count", type=int, help="handshakes per transport")
    p.add_argument("--bare-count", type=int, help="bare noiseprotocol handshakes")
    p.add_argument("--concurrency", type=int, default=16, help="handshakes in flight")
    p.add_argument("--transport", choices=TRANSPORTS, help="measure this transport only (default: both)")
    args = p.parse_args(argv)
    log_warnings_only()
    task.react(
        lambda reactor: run(
            reactor,
            args.quick,
            args.count,
            args.bare_count,
            args.concurrency,
            (args.transport,) if args.transport else TRANSPORTS,
        ).addCallback(lambda _: None)
    )


if __name__ == "__main__":
    main()
