"""
Where the node's CPU per handshake goes, read from a cProfile of the
bench's node child (C{CAIRN_BENCH_SERVER_PROFILE}, one transport at a
time with C{bench.handshake --transport}):

    CAIRN_BENCH_SERVER_PROFILE=/tmp/node.prof python -m bench.handshake --transport tcp --count 3000
    python -m bench.handshake_pieces /tmp/node.prof 3001 [--cpu-us 600]

Each piece is the cumulative profiled time of the functions named for it,
per handshake (C{count}: the measured handshakes plus the warm-up one), and
its share of the time the reactor spent handling sockets and timers (the
node's work per handshake; start-up and imports left out). With
C{--cpu-us} (the node's CPU per handshake measured without the profiler,
from C{bench.handshake}) each share is also shown in microseconds of that.
cProfile charges every Python call a fixed overhead, so pieces made of many
small Python calls (autobahn, logging) show a larger share than they have
without it, and C code (the X25519 and hashing of Noise) a smaller one:
read the shares as an upper bound for Python-heavy pieces.
"""

import argparse
import pstats

#: (label, [(file suffix, function name)]): the pieces, cumulative; the
#: first entry is the whole the shares are of.
PIECES = [
    (
        "reactor: all socket and timer work",
        [("twisted/internet/posixbase.py", "_doReadOrWrite"), ("twisted/internet/base.py", "runUntilCurrent")],
    ),
    (
        "accept: limits, descriptor gauge, protocol and Connection made",
        [("cairn/transport/tcp.py", "buildProtocol"), ("cairn/transport/websocket.py", "buildProtocol")],
    ),
    ("  of which the descriptor gauge (admit)", [("cairn/transport/fds.py", "admit")]),
    (
        "HandshakeInit in, HandshakeResponse out (Noise, signed identity payload)",
        [("cairn/session/opening.py", "_accept_init")],
    ),
    ("  of which NoiseHandshake set-up", [("cairn/crypto/handshake.py", "__init__")]),
    ("HandshakeFinal in, session established", [("cairn/session/opening.py", "_accept_final")]),
    ("  of which the Noise read and identity check", [("cairn/crypto/handshake.py", "read_final")]),
    ("  of which the observers and log line of a new session", [("cairn/session/peer.py", "session_established")]),
    ("sealed Close in, session closed", [("cairn/session/session.py", "envelope_received")]),
    ("  of which the observers and log line of a closed session", [("cairn/session/peer.py", "session_closed")]),
    ("log events emitted (all levels, including those filtered out)", [("twisted/logger/_logger.py", "emit")]),
    (
        "WebSocket: autobahn per-connection set-up (connectionMade)",
        [("autobahn/twisted/websocket.py", "connectionMade")],
    ),
    (
        "WebSocket: HTTP upgrade (parse, onConnect, 101 response)",
        # cairn's reads the plain case, autobahn's every other (called from
        # cairn's: such an upgrade is counted twice, none is in the bench).
        [
            ("autobahn/websocket/protocol.py", "processHandshake"),
            ("cairn/transport/websocket_upgrade.py", "processHandshake"),
        ],
    ),
    (
        "WebSocket: frames sent (header, send)",
        [("autobahn/websocket/protocol.py", "sendFrame"), ("autobahn/websocket/protocol.py", "sendMessage")],
    ),
    (
        "WebSocket: unmasking frames (XOR masker per frame)",
        # autobahn's maskers, and cairn's (made and run: their process() is
        # where the XOR is, autobahn's cost was in making one).
        [
            ("autobahn/nvx/_xormasker.py", "create_xor_masker"),
            ("autobahn/websocket/xormasker.py", "create_xor_masker"),
            ("cairn/transport/autobahn_compat.py", "create_xor_masker"),
            ("cairn/transport/autobahn_compat.py", "process"),
        ],
    ),
    (
        "WebSocket: closing handshake and connection lost",
        [
            ("autobahn/websocket/protocol.py", "processControlFrame"),
            ("autobahn/twisted/websocket.py", "connectionLost"),
        ],
    ),
    ("TCP: connection lost", [("cairn/transport/tcp.py", "connectionLost")]),
]


def _cumulative(stats, wanted):
    total = 0.0
    for (filename, _, name), (_, _, _, cumtime, _) in stats.stats.items():
        for suffix, function in wanted:
            if name == function and filename.endswith(suffix):
                total += cumtime
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description="the node's profiled time per handshake, by piece")
    p.add_argument("profile")
    p.add_argument("count", type=int, help="handshakes in the profile (measured + 1 warm-up)")
    p.add_argument("--cpu-us", type=float, help="the node's CPU per handshake measured without the profiler")
    args = p.parse_args(argv)
    stats = pstats.Stats(args.profile)
    whole = None
    for label, wanted in PIECES:
        seconds = _cumulative(stats, wanted)
        if seconds == 0:
            continue
        per = seconds / args.count * 1e6
        if whole is None:
            whole = per
        share = per / whole
        line = f"{label:<75} {per:8.0f} us profiled  {share:6.1%}"
        if args.cpu_us:
            line += f"  ~{share * args.cpu_us:5.0f} us"
        print(line)


if __name__ == "__main__":
    main()
