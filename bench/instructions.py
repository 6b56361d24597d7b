"""
Instructions per 1 KiB Data message, counted by valgrind's callgrind: a
figure that does not move with the machine's load, for when wall-clock
rates are noise (issue 19).

One process holds the node (built by L{make_node}, as in bench/_server.py)
and one client, talking over real loopback sockets. It is run twice under
C{valgrind --tool=callgrind}, with N and 2N messages; the difference of the
two instruction totals divided by N is the cost of one message, both sides
(client and node) together, with start-up, handshake and pairing cancelled
out. The same is done for the bare Twisted TCP server of bench/_server.py as
the anchor.

    python -m bench.instructions [--count N] [--patterns one-way,echo] [--transports tcp,websocket,bare_tcp]

Needs valgrind (C{apt-get install valgrind}); slow (each run is about 50
times slower than natively).
"""

import argparse
import tempfile

from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory

from bench._common import LOCAL_ENDPOINT, callgrind_instructions, log_warnings_only, node_config, out

PATTERNS = ("one-way", "echo")
TRANSPORTS = ("tcp", "websocket", "bare_tcp")


class _NoServer:
    """bench.data's measurements ask a server process for its CPU; here there is none."""

    def cpu(self):
        return 0.0


@defer.inlineCallbacks
def _child(reactor, transport, pattern, count):
    from bench import data
    from bench._server import BareStream, Counter, serve_channels
    from cairn.crypto import ratchet_state
    from cairn.service import make_node

    log_warnings_only()
    # The own-key step's time bound (REKEY_SECONDS) read on a stopped
    # clock: natively a chain reaches REKEY_MESSAGES in milliseconds, but
    # under callgrind (about 50 times slower) the 1 s bound would step
    # every few round trips, as often as the machine is slow: the echo's
    # count then moved with the load by several percent.
    ratchet_state.clock = lambda: 0.0
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-")
    node = make_node(node_config(data_dir), reactor)
    counter = Counter()
    serve_channels(node.peer, counter)
    bare = Factory.forProtocol(BareStream)
    bare.counter = counter
    node.startService()
    listening = yield node.ready  # every service started, ports serving
    port = yield serverFromString(reactor, LOCAL_ENDPOINT).listen(bare)
    if transport == "tcp":
        link = yield data.connect_cairn(reactor, f"tcp:host=127.0.0.1:port={listening['tcp'].getHost().port}")
    elif transport == "websocket":
        link = yield data.connect_cairn(reactor, f"ws://127.0.0.1:{listening['websocket'].getHost().port}/")
    else:
        link = yield data.connect_bare_tcp(reactor, port.getHost().port)
    run = data.one_way if pattern == "one-way" else data.echo
    data.Stopwatch = _Stopwatch
    yield run(reactor, _NoServer(), link, count)
    link.close()
    yield port.stopListening()
    yield node.stopService()


class _Stopwatch:
    def __init__(self, server):
        pass

    def start(self):
        pass

    def stop(self, count):
        return count


def _instructions(transport, pattern, count):
    """Total instructions of one child run under callgrind."""
    return callgrind_instructions("bench.instructions", transport, pattern, count)


def main(argv=None):
    p = argparse.ArgumentParser(description="instructions per 1 KiB Data message (callgrind)")
    p.add_argument("--count", type=int, default=500, help="messages in the smaller run (the other has twice as many)")
    p.add_argument("--patterns", default=",".join(PATTERNS))
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        transport, pattern, count = args.child
        task.react(lambda reactor: _child(reactor, transport, pattern, int(count)))
        return
    out(f"== instructions per 1 KiB message, both sides, callgrind ({args.count} vs {2 * args.count} messages) ==")
    figures = {}
    for pattern in args.patterns.split(","):
        for transport in args.transports.split(","):
            small = _instructions(transport, pattern, args.count)
            large = _instructions(transport, pattern, 2 * args.count)
            per = (large - small) / args.count
            figures[(transport, pattern)] = per
            unit = "message" if pattern == "one-way" else "round trip"
            out(f"{pattern} over {transport}: {per:,.0f} instructions per {unit}")
        base = figures.get(("bare_tcp", pattern))
        if base:
            for transport in ("tcp", "websocket"):
                if (transport, pattern) in figures:
                    out(
                        f"  {pattern}: bare Twisted TCP / cairn over {transport} = "
                        f"{base / figures[(transport, pattern)]:.3f}"
                    )


if __name__ == "__main__":
    main()
