"""The command line: scenarios in this process, child roles in others."""

import argparse

from twisted.internet import task

from bench._common import log_warnings_only
from bench.capacity.children import run_child
from bench.capacity.clients import handshakes_role, sessions_role
from bench.capacity.flood import churn, flood
from bench.capacity.floor import KINDS, asyncio_floor_node, floor_clients_role, floor_node_role, kinds
from bench.capacity.idle import idle
from bench.capacity.limits import PER_SOURCE
from bench.capacity.node import node_role
from bench.capacity.storm import storm

#: The storm's resumes, unless told: like cairn.client's automatic resume.
LOCKSTEP = (
    "resume every dropped session at once, and again at once after a failed attempt (the worst case); "
    "by default each waits the client's backoff less its random share first"
)


def main(argv=None):
    p = argparse.ArgumentParser(description="cairn capacity benches (issue 7)")
    roles = p.add_subparsers(dest="role", required=True)
    nice = dict(type=int, default=0, help="run the client processes under nice -n N")
    # All clients of the bench dial from 127.0.0.1, where real ones come
    # from many addresses: idle and storm lift the per-source limit.
    lifted = dict(type=int, default=1_000_000, help="the node's CAIRN_MAX_HANDSHAKES_PER_SOURCE")

    s = roles.add_parser("idle", help="idle sessions: node RSS and keepalive CPU")
    s.add_argument("--sessions", type=int, default=10_000)
    s.add_argument("--clients", type=int, default=2, help="client processes")
    s.add_argument("--concurrency", type=int, default=32, help="handshakes in flight per client process")
    s.add_argument("--keepalive", type=float, default=5.0, help="keepalive interval (s), node and clients")
    s.add_argument(
        "--node-keepalive",
        type=float,
        default=None,
        help="the node's own keepalive interval (s), if not --keepalive: e.g. 3600 for a node that never ticks in "
        "the window, which then only receives (the clients' keepalive timeout follows the longer interval)",
    )
    s.add_argument("--window", type=float, default=20.0, help="CPU measurement window (s)")
    s.add_argument("--open-timeout", type=float, default=900.0, help="give up opening after this (s)")
    s.add_argument("--unpaired", dest="paired", action="store_false", help="do not pair the sessions' peers first")
    s.add_argument("--tracemalloc", action="store_true", help="report where the node's memory went")
    s.add_argument("--profile", metavar="PATH", help="cProfile the node over the CPU window into PATH (and print it)")
    s.add_argument("--types", action="store_true", help="report the node's new objects by type")
    s.add_argument(
        "--heap", action="store_true", help="report glibc's heap growth (in use, free) and what malloc_trim gives back"
    )
    s.add_argument("--top", type=int, default=25, help="lines per memory report")
    s.add_argument("--only", choices=("tcp", "websocket"), help="open sessions of this transport only")
    s.add_argument("--nice", **nice)
    s.add_argument("--per-source", **lifted)
    s.add_argument(
        "--per-address", type=int, default=PER_SOURCE, help="sessions per client source address (127.0.0.2, ...)"
    )
    s.add_argument("--backlog", type=int, default=None, help="the node's listen backlog (default: Twisted's)")
    s.add_argument("--hold", type=float, default=0.0, help="then hold the sessions this long (s), with a bystander")
    s.add_argument("--bystander-every", type=float, default=0.2, help="the bystander's mailbox message period (s)")
    s.add_argument("--storm", type=int, default=0, help="then drop this many of them at once and resume them")
    s.add_argument("--messages", type=int, default=1, help="mailbox messages queued per dropped session")
    s.add_argument("--storm-timeout", type=float, default=300.0, help="give up waiting for the storm after this (s)")
    s.add_argument("--attempts", type=int, default=8, help="resume attempts per session in the storm")
    s.add_argument("--lockstep", action="store_true", help=LOCKSTEP)
    s.add_argument(
        "--floor",
        default="twisted,asyncio",
        type=kinds,
        help="first measure these bare servers' CPU per message with the same connections, interval, window and "
        f"client processes, to compare with (comma-separated: {', '.join(KINDS)}; 'none': no floor)",
    )

    s = roles.add_parser("storm", help="reconnect storm: all sessions drop and resume at once")
    s.add_argument("--sessions", type=int, default=2000)
    s.add_argument("--messages", type=int, default=1, help="mailbox messages queued per session")
    s.add_argument("--data", type=int, default=1, help="Data queued per session in its resend buffer")
    s.add_argument("--concurrency", type=int, default=32, help="sessions opened (and forwards sent) at a time")
    s.add_argument("--attempts", type=int, default=8, help="resume attempts per session")
    s.add_argument("--lockstep", action="store_true", help=LOCKSTEP)
    s.add_argument("--timeout", type=float, default=180.0, help="give up waiting after this (s)")
    s.add_argument("--attempt-timeout", type=float, default=15.0, help="a resume attempt fails after this (s)")
    s.add_argument("--backlog", type=int, default=None, help="the node's listen backlog (default: Twisted's)")
    s.add_argument("--per-source", **lifted)

    s = roles.add_parser("flood", help="handshake flood against established sessions")
    s.add_argument("--sessions", type=int, default=100, help="established sessions")
    s.add_argument("--rate", type=float, default=200.0, help="echo requests per second, all sessions")
    s.add_argument("--seconds", type=float, default=10.0, help="flood duration")
    s.add_argument("--before", type=float, default=5.0, help="measurement before the flood (s)")
    s.add_argument("--after", type=float, default=3.0, help="measurement after the flood (s)")
    s.add_argument("--concurrency", type=int, default=64, help="flood handshakes in flight")
    s.add_argument("--nice", **nice)
    s.add_argument("--per-source", type=int, default=None, help="the node's limit (default: the node's default)")

    s = roles.add_parser("churn", help="handshake-and-drop cycles of fresh unpaired identities: sessions held, RSS")
    s.add_argument("--cycles", type=int, default=10_000)
    s.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    s.add_argument("--legacy", action="store_true", help="lift the unpaired bounds (TTL 1 h), as before issue 13")
    s.add_argument("--bounds", default=None, help="the node's unpaired TTL:TOTAL:PER_SOURCE (default: its defaults)")
    s.add_argument("--wait", type=float, default=12.0, help="then wait this long (s) for the unpaired TTL")
    s.add_argument("--nice", **nice)
    s.add_argument("--per-source", **lifted)

    s = roles.add_parser("node", help=argparse.SUPPRESS)
    s.add_argument("--per-source", type=int, default=None)
    s.add_argument("--keepalive", type=float, default=30.0)
    s.add_argument("--pair", action="store_true", help="accept PSK pairing with the bench's PSK")
    s.add_argument("--backlog", type=int, default=None)
    s.add_argument("--tracemalloc", action="store_true")
    s.add_argument("--unpaired-limits", default=None, help="[TTL]:TOTAL:PER_SOURCE of unpaired sessions")

    s = roles.add_parser("floor-node", help=argparse.SUPPRESS)
    s.add_argument("--keepalive", type=float, required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--asyncio", action="store_true", help="bare asyncio instead of bare Twisted")
    s.add_argument("--direct", action="store_true", help="writes sent at once when nothing is queued")

    s = roles.add_parser("floor-clients", help=argparse.SUPPRESS)
    for name in ("--port", "--count", "--size", "--concurrency"):
        s.add_argument(name, type=int, required=True)
    s.add_argument("--keepalive", type=float, required=True)
    s.add_argument("--source", action="append", default=[], help="a loopback address to bind to (repeatable)")

    s = roles.add_parser("sessions", help=argparse.SUPPRESS)
    for name in ("--tcp", "--websocket", "--first", "--count", "--concurrency"):
        s.add_argument(name, type=int, required=True)
    s.add_argument("--keepalive", type=float, required=True)
    s.add_argument("--keepalive-timeout", type=float, default=None, help="default: 4 x --keepalive")
    s.add_argument("--unpaired", dest="paired", action="store_false")
    s.add_argument("--only", choices=("tcp", "websocket"), default=None)
    s.add_argument("--source", action="append", default=[], help="a loopback address to bind to (repeatable)")

    s = roles.add_parser("handshakes", help=argparse.SUPPRESS)
    s.add_argument("--address", required=True)
    s.add_argument("--concurrency", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--cycles", type=int, default=0, help="stop after this many (0: only the time limit)")
    s.add_argument("--fresh", action="store_true", help="a new identity per handshake")
    s.add_argument("--drop", action="store_true", help="abort the transport instead of closing the session")

    args = p.parse_args(argv)
    if args.role == "floor-node" and args.asyncio:
        asyncio_floor_node(args)
        return
    roles = {
        "node": node_role,
        "sessions": sessions_role,
        "handshakes": handshakes_role,
        "floor-node": floor_node_role,
        "floor-clients": floor_clients_role,
    }
    if args.role in roles:
        role = roles[args.role]
        run_child(lambda reactor, control: role(reactor, control, args))
        return
    scenario = {"idle": idle, "storm": storm, "flood": flood, "churn": churn}[args.role]
    log_warnings_only()
    task.react(lambda reactor: scenario(reactor, args))


if __name__ == "__main__":
    main()
