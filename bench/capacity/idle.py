"""C{idle}: many paired sessions held; node memory and keepalive CPU."""

import os
import pstats
import struct
import time
from collections import Counter

from twisted.internet import defer, task

from bench._common import gather, listen_overflows, megabytes, out, proc_cpu, proc_memory, sleep
from bench.capacity.children import Child, start_node, with_children
from bench.capacity.clients import addresses, open_sessions
from bench.capacity.common import (
    RSS_TARGET,
    TARGET_SESSIONS,
    failure_name,
    gather_limited,
    percentile,
    resume_mode,
    wait_for,
)
from bench.capacity.floor import measure_floor, message_size, report_against_floor
from bench.capacity.limits import fd_budget, source_addresses
from bench.capacity.probe import Stalls, describe


def idle(reactor, args):
    children = []

    @defer.inlineCallbacks
    def run():
        n = fd_budget(args.sessions, args.clients)
        k = args.keepalive
        node_k = args.node_keepalive or k
        # Pauses for things to settle, and the empty node's CPU window.
        settle, empty_window = min(1.0, n / 1000), min(2.0, args.window)
        sources = source_addresses(n, args.per_address)
        out(
            f"== capacity: idle ({n} sessions, {args.clients} client processes, keepalive every {k:g} s"
            + (f", the node's every {node_k:g} s" if node_k != k else "")
            + "; "
            f"clients bound to {', '.join(sources) if sources else '127.0.0.1'}) =="
        )
        floors = []
        for kind in args.floor:
            floors.append((yield measure_floor(reactor, args, n, kind, message_size())))
        options = ["--keepalive", node_k, "--pair"] + (["--tracemalloc"] if args.tracemalloc else [])
        options += ["--backlog", args.backlog] if args.backlog else []
        if not args.paired:
            # Idle unpaired sessions from one address: lift the bounds on them.
            options += ["--unpaired-limits", "3600:1000000000:1000000000"]
        else:
            # Each peer pairs in an unpaired session first, up to
            # --concurrency per client process at once from a few
            # addresses: lift the per-source bounds (the TTL stays).
            options += ["--unpaired-limits", ":1000000000:1000000000"]
        node, ports = yield start_node(reactor, children, args, *options)
        yield sleep(reactor, settle)
        empty = proc_memory(node.pid)
        cpu0 = proc_cpu(node.pid)
        yield sleep(reactor, empty_window)
        empty_cpu = (proc_cpu(node.pid) - cpu0) / empty_window
        yield node.ask("baseline")
        heap0 = (yield node.ask("heap")) if args.heap else None
        start = time.perf_counter()
        shares = [n // args.clients + (i < n % args.clients) for i in range(args.clients)]
        firsts = [sum(shares[:i]) for i in range(args.clients)]
        for i, (first, count) in enumerate(zip(firsts, shares)):
            options = ["--tcp", ports["tcp"], "--websocket", ports["websocket"], "--first", first, "--count", count]
            options += ["--concurrency", args.concurrency, "--keepalive", k, "--keepalive-timeout", 4 * max(k, node_k)]
            options += [] if args.paired else ["--unpaired"]
            options += ["--only", args.only] if args.only else []
            # Each process its own addresses (all, when fewer than processes).
            mine = (sources[i :: args.clients] or [sources[i % len(sources)]]) if sources else []
            for source in mine:
                options += ["--source", source]
            children.append(Child.spawn(reactor, f"clients {i}", "sessions", *options, nice=args.nice))
        workers = children[1:]
        for i, hello in enumerate((yield gather(w.next(60) for w in workers))):
            out(f"client process {i}: {hello['nofile_line']}")
        results = yield gather(w.next(args.open_timeout) for w in workers)
        opened = sum(r["opened"] for r in results)
        failed = Counter()
        for r in results:
            failed.update(r["failed"])
        out(
            f"idle: {opened} of {n} sessions opened in {time.perf_counter() - start:.1f} s "
            + ("(each peer paired first, in a session of its own)" if args.paired else "(peers not paired)")
            + (f"; failures: {dict(failed)}" if failed else "")
        )
        yield sleep(reactor, settle)
        full = proc_memory(node.pid)
        before = yield node.ask("stats")
        if args.profile:
            yield node.ask("profile")
        cpu0, t0 = proc_cpu(node.pid), time.perf_counter()
        yield sleep(reactor, args.window)
        cpu, wall = proc_cpu(node.pid) - cpu0, time.perf_counter() - t0
        if args.profile:
            yield node.ask("profile", timeout=120, path=os.path.abspath(args.profile))
        after = yield node.ask("stats")
        last = proc_memory(node.pid)
        clients = yield gather(w.ask("stats") for w in workers)
        per_keepalive = report_idle(args, opened, after, empty, full, last, empty_cpu, cpu, wall, before, clients)
        report_against_floor(floors, per_keepalive, 1 + k / node_k)
        if args.profile:
            report_profile(args.profile, after["sent"] - before["sent"] + after["received"] - before["received"])
        if args.tracemalloc or args.types:
            report_memory((yield node.ask("top", timeout=600, limit=args.top)), opened)
        if args.heap:
            report_heap(heap0, (yield node.ask("heap", timeout=120, trim=True)), opened)
            # Whether the pages given back stay given back while the sessions idle.
            yield sleep(reactor, args.keepalive)
            later = yield node.ask("heap", timeout=120)
            out(f"  RSS {args.keepalive:g} s after the trim: {megabytes(later['rss'])}")
        if args.hold or args.storm:
            yield hold_and_storm(reactor, args, node, ports, workers, shares)

    return with_children(reactor, run, children)


@defer.inlineCallbacks
def hold_and_storm(reactor, args, node, ports, workers, shares):
    """
    The sessions held for C{--hold} seconds while a bystander measures the
    mailbox's round trip, then (C{--storm N}) N of them dropped, mailbox
    messages queued for them, and all resumed at once.
    """
    bystander = yield Bystander.start(reactor, addresses(ports), args.bystander_every)
    bystander.phase = "hold"
    # Where the bystander's stalls come from: each process's collections
    # and reactor lateness, over each 30 s of the hold.
    mine = Stalls(reactor).start()
    yield report_stalls(node, workers, mine, show=False)
    start = time.perf_counter()
    while time.perf_counter() - start < args.hold:
        yield sleep(reactor, min(30.0, args.hold - (time.perf_counter() - start)))
        stats = yield node.ask("stats", timeout=120)
        mem = proc_memory(node.pid)
        out(
            f"  hold {time.perf_counter() - start:.0f} s: node {stats['attached']} attached, RSS "
            f"{megabytes(mem['VmRSS'])}; bystander so far {bystander.summary('hold')}"
        )
        yield report_stalls(node, workers, mine)
    out(f"idle: held {args.hold:g} s; bystander mailbox round trip {bystander.summary('hold')}")
    if args.storm:
        yield storm_held(reactor, args, node, workers, shares, bystander)
        yield report_stalls(node, workers, mine)
    mine.stop()
    bystander.stop()
    if bystander.failures:
        out(f"  bystander failures: {dict(bystander.failures)}")


@defer.inlineCallbacks
def storm_held(reactor, args, node, workers, shares, bystander):
    """The reconnect storm among the held sessions (L{hold_and_storm})."""
    from cairn.mailbox import client as mailbox

    total = sum(shares)
    counts = [min(share, args.storm * share // total) for share in shares]
    counts[0] += min(args.storm, total) - sum(counts)
    before = yield node.ask("stats", timeout=120)
    bystander.phase = "drop"
    start = time.perf_counter()
    dropped = yield gather(w.ask("drop", timeout=300, count=c) for w, c in zip(workers, counts))
    errors = [d["error"] for d in dropped if "error" in d]
    if errors:
        raise RuntimeError(f"a client process could not drop its sessions: {errors}")
    peers = [peer for d in dropped for peer in d["peers"]]
    yield wait_for(reactor, node, lambda s: s["attached"] <= before["attached"] - len(peers), 300, every=0.5)
    out(
        f"storm: {len(peers)} sessions dropped at once (sockets aborted); the node saw them gone in "
        f"{time.perf_counter() - start:.1f} s"
    )
    start = time.perf_counter()
    m = args.messages
    forwards = (mailbox.forward(bystander.sender, peer, b"storm %d" % j) for peer in peers for j in range(m))
    yield gather_limited(forwards, 32)
    out(
        f"storm: {len(peers) * m} mailbox messages queued for them (stored by the node) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    bystander.phase = "storm"
    out(f"storm: the sessions resume {resume_mode(args.lockstep)}")
    overflows = listen_overflows()
    start = time.perf_counter()
    asks = (
        w.ask(
            "resume",
            args.storm_timeout + 120,
            expect=c * m,
            within=args.storm_timeout,
            attempts=args.attempts,
            attempt_timeout=15.0,
            lockstep=args.lockstep,
        )
        for w, c in zip(workers, counts)
    )
    results = yield gather(asks)
    wall = time.perf_counter() - start
    times = [t for r in results for t in r["times"]]
    resumed = sum(r["resumed"] for r in results)
    received = sum(r["messages"] for r in results)
    retries = Counter()
    for r in results:
        retries.update(r["retries"])
    lasts = [r["last"] for r in results if r["last"] is not None]
    after = yield node.ask("stats", timeout=120)
    out(
        f"storm: {resumed} of {len(peers)} sessions resumed, the last {max(times, default=float('nan')):.2f} s after "
        f"the resumes started (per session: median {percentile(times, 0.5):.3f} s, p99 {percentile(times, 0.99):.3f} s)"
        + (f"; failed attempts: {dict(retries)}" if retries else "")
    )
    out(
        f"storm: {received} of {len(peers) * m} queued mailbox messages delivered ({len(peers) * m - received} lost), "
        f"the last {max(lasts, default=float('nan')):.2f} s after the resumes started ({wall:.1f} s in all)"
    )
    out(
        f"storm: node {after['closed'] - before['closed']} sessions closed during it, {after['attached']} attached "
        f"after; kernel TcpExtListenOverflows +{listen_overflows() - overflows} (system-wide)"
    )
    out(f"storm: bystander mailbox round trip during the storm {bystander.summary('storm')}")


@defer.inlineCallbacks
def report_stalls(node, workers, mine, show=True):
    """Print each process's collections and reactor lateness since the last call (L{Stalls})."""
    figures = [("node", (yield node.ask("stalls", timeout=120, reset=True)))]
    clients = yield gather(w.ask("stalls", timeout=120, reset=True) for w in workers)
    figures += [(f"clients {i}", summary) for i, summary in enumerate(clients)]
    figures.append(("bench (bystander)", mine.summary()))
    mine.reset()
    if show:
        for name, summary in figures:
            out("    " + describe(name, summary))


class Bystander:
    """
    Two paired peers of the bench's own, each with one session: every
    C{every} seconds the sender forwards a mailbox message to the receiver;
    the round trip is from the forward to its delivery, by phase.
    """

    def __init__(self, reactor, sender, receiver_id, every):
        self.reactor = reactor
        self.sender = sender
        self.receiver_id = receiver_id
        self.phase = None
        self.latencies = {}
        self.failures = Counter()
        self._loop = task.LoopingCall(self._send)
        self._loop.clock = reactor
        self._loop.start(every, now=False)

    @classmethod
    @defer.inlineCallbacks
    def start(cls, reactor, targets, every):
        from cairn.mailbox import client as mailbox

        failures = Counter()
        opened = yield open_sessions(reactor, targets, [0, 1], 2, failures)
        if failures or len(opened) != 2:
            raise RuntimeError(f"the bystander's sessions did not open: {dict(failures)}")
        (_, sender, sender_session), (_, receiver, _) = sorted(opened, key=lambda o: o[0])
        bystander = cls(reactor, sender_session, receiver.peer_id, every)
        mailbox.set_inbox(receiver.peer, bystander._arrived)
        return bystander

    def _send(self):
        from cairn.mailbox import client as mailbox

        payload = struct.pack("!d", time.perf_counter()) + self.phase.encode()
        d = mailbox.forward(self.sender, self.receiver_id, payload)
        d.addErrback(lambda f: self.failures.update([failure_name(f)]))

    def _arrived(self, sender, message_id, data):
        sent = struct.unpack("!d", data[:8])[0]
        self.latencies.setdefault(data[8:].decode(), []).append(time.perf_counter() - sent)

    def summary(self, phase) -> str:
        values = self.latencies.get(phase, [])
        return (
            f"({len(values)} messages): median {percentile(values, 0.5) * 1e3:.1f} ms, "
            f"p99 {percentile(values, 0.99) * 1e3:.1f} ms, max {max(values, default=float('nan')) * 1e3:.1f} ms"
        )

    def stop(self):
        if self._loop.running:
            self._loop.stop()


def report_idle(args, opened, stats, empty, full, last, empty_cpu, cpu, wall, before, clients):
    grown = full["VmRSS"] - empty["VmRSS"]
    per = grown / opened if opened else float("nan")
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(stats["transports"].items()))
    out(f"idle: node holds {stats['sessions']} sessions, {stats['attached']} attached ({kinds})")
    out(
        f"idle: node RSS {megabytes(empty['VmRSS'])} with no session -> {megabytes(full['VmRSS'])} "
        f"with {opened} (+{megabytes(grown)}, {per:,.0f} bytes per session); after the window "
        f"{megabytes(last['VmRSS'])}, peak {megabytes(last['VmHWM'])}"
    )
    if opened:
        scaled = empty["VmRSS"] + per * TARGET_SESSIONS
        verdict = "met" if scaled < RSS_TARGET else "MISSED"
        out(
            f"  at that rate {TARGET_SESSIONS:,} sessions would take {megabytes(scaled)} "
            f"(issue 20: < {megabytes(RSS_TARGET)}: {verdict})"
        )
    sent = stats["sent"] - before["sent"]
    received = stats["received"] - before["received"]
    handled = sent + received
    node_k = args.node_keepalive or args.keepalive
    expected = opened * wall * (1 / args.keepalive + 1 / node_k)
    share = cpu / wall * 100
    per_keepalive = cpu / handled * 1e6 if handled else float("nan")
    out(
        f"idle: keepalive CPU on the node: {share:.1f}% of a core over {wall:.1f} s "
        f"(no session: {empty_cpu * 100:.1f}%); {handled:,} keepalives handled ({sent:,} sent, "
        f"{received:,} received; {expected:,.0f} expected): {per_keepalive:.0f} us each"
    )
    if node_k == args.keepalive:
        out(
            f"  at the default CAIRN_KEEPALIVE_INTERVAL of 30 s that would be "
            f"{(share - empty_cpu * 100) * args.keepalive / 30:.1f}% of a core above the empty node"
        )
    attached = sum(c["attached"] for c in clients)
    ended = sum(c["ended"] for c in clients)
    rss = ", ".join(megabytes(c["rss"]) for c in clients)
    lost = stats["closed"] - before["closed"]
    out(
        f"idle: at the end {stats['attached']} attached on the node ({lost} closed in the window), {attached} on the "
        f"clients ({ended} ended); client processes' RSS: {rss}"
    )
    return per_keepalive


def report_profile(path, handled, top=30):
    """The node's profile over the window (L{NodeControl.do_profile}): its heaviest functions, per keepalive."""
    stats = pstats.Stats(path)
    out(
        f"idle: the node's cProfile over the window in {path} (CPU time; the profiler's own cost inflates the "
        "figures above); by own time, per keepalive handled:"
    )
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, line, name), (_, calls, own, total, _) in rows:
        where = f"{os.path.basename(filename)}:{line}({name})" if line else name
        out(
            f"    {own / handled * 1e6:7.2f} us own {total / handled * 1e6:7.2f} us cumulative "
            f"{calls / handled:6.2f} calls  {where}"
        )


def report_heap(before, after, sessions):
    """Print glibc's heap figures' growth per session, and what C{malloc_trim} gave back (L{heap_figures})."""
    n = max(sessions, 1)
    parts = [f"RSS {after['rss'] - before['rss']:,} B"]
    for key, title in (("in_use", "in use"), ("free", "free in the arenas"), ("mmapped", "mmapped")):
        if key in after:
            parts.append(f"{title} {(after[key] - before[key]) / n:,.0f} B/session")
    out(f"heap (glibc mallinfo2), growth: {', '.join(parts)}")
    parts = []
    for key, title in (
        ("py_arenas", "arenas"),
        ("py_in_use", "in use"),
        ("py_free_blocks", "free blocks"),
        ("py_free_pools", "free pools"),
    ):
        if key in after:
            parts.append(f"{title} {(after[key] - before[key]) / n:,.0f} B/session")
    if parts:
        out(f"  pymalloc (objects up to 512 B), growth: {', '.join(parts)}")
    if "rss_trimmed" in after:
        given = after["rss"] - after["rss_trimmed"]
        out(
            f"  malloc_trim(0) gave back {megabytes(given)} ({given / n:,.0f} B/session) "
            f"in {after['trim_seconds'] * 1e3:.1f} ms"
        )


def report_memory(top, sessions):
    """Print the node's memory growth by allocation site, by file and by object type."""
    if "total" in top:
        out(f"tracemalloc: {megabytes(top['total'])} more traced ({top['total'] / max(sessions, 1):,.0f} B/session)")
        for key, title in (("filename", "by file"), ("lineno", "by line")):
            out(f"  {title}:")
            for where, size, count in top[key]:
                out(f"    {size / max(sessions, 1):>8,.0f} B/session {count / max(sessions, 1):>6.1f} blocks  {where}")
    out("  objects tracked by the garbage collector, more than before, per session:")
    for name, count in top["types"]:
        out(f"    {count / max(sessions, 1):>7.2f}  {name}")
