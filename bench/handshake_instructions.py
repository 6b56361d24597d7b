"""
Instructions per cairn handshake, counted by valgrind's callgrind: a
figure that does not move with the machine's load, for when the wall and
CPU-time figures of L{bench.handshake} are noise (issue 19).

One process holds the node (built by L{make_node}, as in bench/_server.py)
and one client, connecting over real loopback sockets, one handshake at a
time; each handshake is what L{bench.handshake} measures (connect, the
three Noise messages with the identity payloads, a sealed Close). It is
run twice under C{valgrind --tool=callgrind}, with N and 2N handshakes;
the difference of the two instruction totals divided by N is the cost of
one handshake, both sides (client and node) together, with start-up
cancelled out. The anchor is the bare noiseprotocol handshake of
L{bench.handshake} (both sides in one process), counted the same way.

    python -m bench.handshake_instructions [--count N] [--transports tcp,websocket,bare,noise_xx]

Needs valgrind; slow (each run is about 50 times slower than natively).
"""

import argparse
import tempfile

from twisted.internet import defer, task

from bench._common import callgrind_instructions, log_warnings_only, node_config, out

TRANSPORTS = ("tcp", "websocket", "bare")
#: Not run by default: cairn's own Noise XX (L{cairn.crypto.noise_xx}) with
#: the anchor's pattern, keys and prologue and empty payloads, both sides.
EXTRA = ("noise_xx",)


@defer.inlineCallbacks
def _child(reactor, transport, count):
    from bench import handshake
    from cairn.client import Client
    from cairn.crypto.identity import Identity
    from cairn.node import Process
    from cairn.service import make_node

    log_warnings_only()
    if transport in ("bare", "noise_xx"):
        operation = (handshake.bare_handshake_operation if transport == "bare" else _noise_xx_operation)()
        for _ in range(count):
            operation()
        return
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-")
    node = make_node(node_config(data_dir), reactor, Process(freeze_gc=True))  # as twistd -n cairn does
    node.startService()
    listening = yield node.ready
    port = listening[transport].getHost().port
    address = f"tcp:host=127.0.0.1:port={port}" if transport == "tcp" else f"ws://127.0.0.1:{port}/"
    # One at a time, with no time limit (bench.handshake's would fire
    # under valgrind on a loaded machine).
    client = Client(reactor, Identity.generate())
    for _ in range(count + 1):  # + the warm-up bench.handshake also makes
        session = yield client.connect(address)
        session.close()
    yield node.stopService()


def _noise_xx_operation():
    """L{bench.handshake.bare_handshake_operation}'s handshake, through cairn's Noise state machine."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from cairn.crypto.identity import Identity
    from cairn.crypto.noise_xx import XXState, public_bytes
    from cairn.wire.constants import NOISE_PROLOGUE

    keys = [X25519PrivateKey.from_private_bytes(Identity.generate().noise_static_private()) for _ in range(2)]
    pubs = [public_bytes(key) for key in keys]

    def handshake():
        initiator = XXState(True, keys[0], pubs[0], NOISE_PROLOGUE)
        responder = XXState(False, keys[1], pubs[1], NOISE_PROLOGUE)
        responder.read_message(initiator.write_message(b""))
        initiator.read_message(responder.write_message(b""))
        responder.read_message(initiator.write_message(b""))
        assert initiator.finished and responder.finished

    return handshake


def _instructions(transport, count):
    """Total instructions of one child run under callgrind."""
    return callgrind_instructions("bench.handshake_instructions", transport, count)


def main(argv=None):
    p = argparse.ArgumentParser(description="instructions per cairn handshake, both sides (callgrind)")
    p.add_argument("--count", type=int, default=100, help="handshakes in the smaller run (the other has twice as many)")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help=f"of {', '.join(TRANSPORTS + EXTRA)}")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        transport, count = args.child
        task.react(lambda reactor: _child(reactor, transport, int(count)))
        return
    out(f"== instructions per handshake, both sides, callgrind ({args.count} vs {2 * args.count} handshakes) ==")
    figures = {}
    for transport in args.transports.split(","):
        small = _instructions(transport, args.count)
        large = _instructions(transport, 2 * args.count)
        figures[transport] = per = (large - small) / args.count
        out(f"handshake over {transport}: {per:,.0f} instructions per handshake")
    base = figures.get("bare")
    if base:
        for transport in ("tcp", "websocket"):
            if transport in figures:
                out(f"  bare noiseprotocol / cairn over {transport} = {base / figures[transport]:.3f}")
    if base and "noise_xx" in figures:
        out(f"  bare noiseprotocol / cairn's Noise XX alone = {base / figures['noise_xx']:.3f}")


if __name__ == "__main__":
    main()
