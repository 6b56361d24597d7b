"""
Run both benches in one go: the data bench, then the handshake bench.

    python -m bench.run            # about a minute on two cores
    python -m bench.run --quick    # a few seconds

Counts given explicitly override the full or quick defaults of each bench.
"""

import time

from twisted.internet import defer, task

from bench import data, handshake
from bench._common import log_warnings_only, out, parser


@defer.inlineCallbacks
def run(reactor, args):
    started = time.perf_counter()
    # Data first: closed WebSockets of the handshake bench keep timers
    # running in this process for a few seconds after it ends.
    yield data.run(reactor, args.quick, messages=args.messages, roundtrips=args.roundtrips)
    out()
    yield handshake.run(reactor, args.quick, count=args.handshakes)
    out()
    out(f"all benches done in {time.perf_counter() - started:.1f} s")


def main(argv=None):
    p = parser("every cairn bench, each against its anchor")
    p.add_argument("--handshakes", type=int, help="handshakes per transport")
    p.add_argument("--messages", type=int, help="one-way data messages per transport")
    p.add_argument("--roundtrips", type=int, help="echo round trips per transport")
    args = p.parse_args(argv)
    log_warnings_only()
    task.react(run, [args])


if __name__ == "__main__":
    main()
