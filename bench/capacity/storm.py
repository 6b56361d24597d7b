"""C{storm}: every session dropped at once, messages queued, all resumed at once."""

import math
import time
from collections import Counter

from twisted.internet import defer

from bench._common import listen_overflows, out, sleep
from bench.capacity.children import start_node, with_children
from bench.capacity.clients import addresses, open_sessions
from bench.capacity.common import PSK, gather_limited, percentile, poll, resume_like_a_fleet, resume_mode, wait_for
from bench.capacity.limits import fd_budget


def storm(reactor, args):
    from cairn.client import Client
    from cairn.mailbox import client as mailbox
    from cairn.pairing.client import pair_psk

    children = []

    @defer.inlineCallbacks
    def run():
        n = fd_budget(args.sessions)
        m, data = args.messages, args.data
        out(f"== capacity: storm ({n} sessions, {m} mailbox messages and {data} Data queued per session) ==")
        backlog = ["--backlog", args.backlog] if args.backlog else []
        # Each peer pairs in an unpaired session first, --concurrency at
        # once from 127.0.0.1: lift the per-source bounds (as idle does).
        lifted = ["--unpaired-limits", ":1000000000:1000000000"]
        node, ports = yield start_node(reactor, children, args, "--pair", *backlog, *lifted)
        targets = addresses(ports)
        sender = Client(reactor)
        sender_session = yield sender.connect(targets[0])
        yield pair_psk(sender_session, PSK)
        received = Counter()

        def arrived():
            received["messages"] += 1
            received["last"] = time.perf_counter()

        def prepare(client, session):
            mailbox.set_inbox(client.peer, lambda sender, mid, data: arrived())
            if data:
                session.open_channel("sink")

        failures = Counter()
        start = time.perf_counter()
        opened = yield open_sessions(reactor, targets, range(n), args.concurrency, failures, prepare)
        yield sleep(reactor, 0.5)
        stats = yield node.ask("stats")
        out(
            f"storm: {len(opened)} sessions opened (each peer paired first) in {time.perf_counter() - start:.1f} s"
            + (f"; failures: {dict(failures)}" if failures else "")
            + f"; the node holds {stats['sessions'] - 1} of them"
        )
        start = time.perf_counter()
        for _, _, session in opened:
            # Under the cairn transport (TCP stream or WebSocket): the socket.
            session.connection.transport.transport.abortConnection()
        yield wait_for(reactor, node, lambda s: s["attached"] == 1, 60)  # the sender's
        yield poll(reactor, lambda: not any(s.attached for _, _, s in opened), 60)
        gone = time.perf_counter() - start
        out(f"storm: all {len(opened)} transports dropped at once; the node saw them gone in {gone:.2f} s")
        start = time.perf_counter()
        forwards = (mailbox.forward(sender_session, c.peer_id, b"storm %d" % j) for _, c, _ in opened for j in range(m))
        yield gather_limited(forwards, args.concurrency)
        for _, _, session in opened:
            for _ in range(data):
                session.open_channel("sink").send(b"storm")
        out(
            f"storm: queued {len(opened) * m} mailbox messages (stored by the node) and {len(opened) * data} "
            f"Data (in the detached sessions' resend buffers) in {time.perf_counter() - start:.1f} s"
        )
        yield storm_resume(reactor, node, opened, received, args)

    return with_children(reactor, run, children)


@defer.inlineCallbacks
def storm_resume(reactor, node, opened, received, args):
    """Resume every session at once; report when all resumed and all queued messages arrived."""
    before = yield node.ask("stats")
    out(f"storm: the sessions resume {resume_mode(args.lockstep)}")
    overflows = listen_overflows()
    times = []
    retries = Counter()
    start = time.perf_counter()

    @defer.inlineCallbacks
    def resume(client, session):
        failed = lambda name: retries.update([name])  # noqa: E731
        attempts, timeout = args.attempts, args.attempt_timeout
        if (yield resume_like_a_fleet(reactor, client, session, attempts, timeout, args.lockstep, failed)):
            times.append(time.perf_counter() - start)
        else:
            retries["gave up"] += 1

    for _, client, session in opened:
        resume(client, session)
    targets = {"resumed": len(opened), "messages": len(opened) * args.messages, "data": len(opened) * args.data}
    done = {}
    report = 5.0
    while len(done) < len(targets):
        stats = yield node.ask("stats")
        now = time.perf_counter() - start
        reached = {"resumed": len(times), "messages": received["messages"], "data": stats["sink"] - before["sink"]}
        done.update((name, now) for name, count in reached.items() if count >= targets[name] and name not in done)
        if now > args.timeout:
            out(f"storm: gave up after {args.timeout:g} s: reached {reached} of {targets}")
            break
        if now >= report:
            out(f"  {now:.0f} s: reached {reached} of {targets}; node: {stats['attached'] - 1} attached")
            report += 5.0
        yield sleep(reactor, 0.02)
    out(
        f"storm: {len(times)} of {len(opened)} sessions resumed, the last {max(times, default=math.nan):.2f} s "
        f"after the resumes started (per session: median {percentile(times, 0.5):.2f} s, "
        f"p99 {percentile(times, 0.99):.2f} s)"
    )
    if retries:
        out(f"  failed attempts: {dict(retries)}")
    last = received["last"] - start if received["messages"] else math.nan
    out(
        f"storm: {'all' if 'messages' in done else 'NOT all:'} {received['messages']} of {targets['messages']} "
        f"queued mailbox messages delivered, the last {last:.2f} s after the resumes started"
    )
    stats = yield node.ask("stats")
    arrived = stats["sink"] - before["sink"]
    out(
        f"storm: {'all' if 'data' in done else 'NOT all:'} {arrived} of {targets['data']} queued Data received by "
        f"the node {done.get('data', math.nan):.2f} s after the resumes started (polled every 20 ms)"
    )
    out(f"  node: {stats['closed'] - before['closed']} sessions closed during the storm")
    out(f"  kernel: TcpExtListenOverflows +{listen_overflows() - overflows} since the resumes started (system-wide)")
