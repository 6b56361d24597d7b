"""
Capacity bench (issue 7): many idle sessions, a reconnect storm and a
handshake flood, each against a node in a child process.

    python -m bench.capacity idle  [--sessions 10000] [--clients 2] [--keepalive 5] [--window 20] [--types]
                                   [--tracemalloc]
    python -m bench.capacity storm [--sessions 2000] [--messages 1] [--data 1] [--backlog N]
    python -m bench.capacity flood [--sessions 100] [--rate 200] [--seconds 10] [--concurrency 64]
                                   [--per-source N]
    python -m bench.capacity churn [--cycles 10000] [--concurrency 32] [--legacy | --bounds TTL:TOTAL:PER_SOURCE]

idle
    N sessions, half TCP and half WebSocket, each from its own identity,
    paired with the node's PSK beforehand (C{--unpaired}: not), opened by
    C{--clients} client processes; node and clients send a
    Keepalive every C{--keepalive} seconds. Measured on the node, from
    C{/proc/PID}: VmRSS before and after (bytes per session), and CPU
    (utime + stime) over a window, as a share of a core and per Keepalive
    handled (sent plus received, counted from the sessions' sequence
    numbers). C{--types} also reports the node's new objects by type,
    C{--tracemalloc} its traced memory growth by file and by line.
storm
    N sessions (half TCP, half WebSocket), each its own peer paired with
    the node's PSK. All transports are dropped at once; while the sessions
    are detached, a sender forwards C{--messages} mailbox messages to each
    (stored by the node) and each session sends C{--data} Data on a channel
    (kept in its resend buffer). Then all resume at once: time until every
    session is resumed, until every mailbox message reached its recipient
    and until every Data reached the node.
flood
    K established sessions each send one echo request (Data on a channel)
    in turn, C{--rate} per second in all; another process opens new TCP
    handshakes as fast as it can (C{--concurrency} in flight). Measured:
    handshakes per second accepted, and the requests served per second and
    their latency before, during and after the flood.
churn
    C{--cycles} handshake-and-drop cycles, each from a fresh identity that
    is not paired, the transport aborted without a Close (issue 13). The
    node keeps the sessions its unpaired-peer bounds allow (defaults;
    C{--legacy}: the bounds lifted and the detached TTL an hour, as before
    them). Measured: sessions held and node RSS after the flood (bytes per
    session held), and again once the unpaired TTL has passed.

Every process raises its soft RLIMIT_NOFILE to its hard limit and prints
what it got; when that is too low for the sessions asked for, the bench
opens fewer and says so. The clients all dial from 127.0.0.1: idle and
storm lift the node's per-source handshake limit, flood keeps the node's
default unless given C{--per-source}. The child roles (C{node},
C{sessions}, C{handshakes}) are run by the bench itself; bench/README.rst
has the details and the figures.
"""

import argparse
import gc
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, deque

import attr
from twisted.internet import defer, stdio, task
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from bench._common import (
    LOCAL_ENDPOINT,
    REPO_ROOT,
    ServerError,
    gather,
    listen_overflows,
    log_warnings_only,
    megabytes,
    out,
    proc_cpu,
    proc_memory,
    raise_nofile,
    sleep,
)

PSK = "capacity bench pre-shared key, long enough to not be weak"
#: File descriptors a process needs besides one per session.
FD_MARGIN = 64
#: Seconds before a connect that has not given a session counts as failed.
CONNECT_TIMEOUT = 30.0
#: The issue's memory target for 10,000 idle sessions.
RSS_TARGET = 256 * 2**20


# Children: JSON lines on stdin and stdout


class Child(ProcessProtocol):
    """
    A C{python -m bench.capacity ROLE} child: it answers JSON-line commands
    on its stdin with JSON lines on its stdout, and stops when its stdin
    closes. Its stderr is ours.
    """

    def __init__(self, reactor, name):
        self.reactor = reactor
        self.name = name
        self.exit = None
        self._buffer = b""
        self._lines = deque()
        self._waiting = deque()
        self._ended = []

    @classmethod
    def spawn(cls, reactor, name, role, *args, nice=0):
        child = cls(reactor, name)
        argv = [sys.executable, "-m", "bench.capacity", role, *map(str, args)]
        if nice and shutil.which("nice"):
            argv = [shutil.which("nice"), "-n", str(nice), *argv]
        fds = {0: "w", 1: "r", 2: 2}
        reactor.spawnProcess(child, argv[0], argv, env=dict(os.environ), path=REPO_ROOT, childFDs=fds)
        return child

    @property
    def pid(self) -> int:
        return self.transport.pid

    def outReceived(self, data):
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if line.strip():
                self._lines.append(json.loads(line))
        while self._lines and self._waiting:
            d = self._waiting.popleft()
            if not d.called:  # else it timed out
                d.callback(self._lines.popleft())

    def next(self, timeout: float = 60.0):
        """Fire with the child's next message."""
        if self._lines:
            return defer.succeed(self._lines.popleft())
        if self.exit is not None:
            return defer.fail(ServerError(f"{self.name} exited ({self.exit})"))
        d = defer.Deferred()
        self._waiting.append(d)
        return d.addTimeout(timeout, self.reactor)

    def ask(self, command: str, timeout: float = 60.0, **arguments):
        self.transport.write(json.dumps({"cmd": command, **arguments}).encode() + b"\n")
        return self.next(timeout)

    def processEnded(self, reason):
        self.exit = getattr(reason.value, "exitCode", None)
        while self._waiting:
            d = self._waiting.popleft()
            if not d.called:
                d.errback(ServerError(f"{self.name} exited ({self.exit})"))
        for d in self._ended:
            d.callback(None)

    def stop(self, grace: float = 30.0):
        """Close its stdin; kill it if it is still running C{grace} seconds later."""
        if self.exit is not None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._ended.append(d)
        self.transport.closeStdin()
        kill = self.reactor.callLater(grace, self.transport.signalProcess, "KILL")
        return d.addBoth(lambda result: kill.active() and kill.cancel())


class Control(LineReceiver):
    """A child's end: commands from stdin to C{handle(command) -> dict}; EOF fires C{done}."""

    delimiter = b"\n"

    def __init__(self, handle=None):
        self.handle = handle
        self.done = defer.Deferred()

    def send(self, message: dict) -> None:
        self.sendLine(json.dumps(message).encode())

    def lineReceived(self, line):
        command = json.loads(line)
        d = defer.maybeDeferred(self.handle, command.pop("cmd"), **command)
        d.addCallback(self.send)
        d.addErrback(lambda f: self.send({"error": f.getErrorMessage()}))

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.callback(None)


def run_child(main):
    """Run C{main(reactor, control)} with a L{Control} on stdio until stdin closes."""

    @defer.inlineCallbacks
    def react(reactor):
        log_warnings_only()
        control = Control()
        stdio.StandardIO(control, reactor=reactor)
        yield main(reactor, control)

    task.react(react)


# The node child


class SessionEvents:
    """Counts the node's session events (a L{Peer} observer)."""

    def __init__(self):
        self.counts = Counter()

    def session_established(self, session):
        self.counts["established"] += 1

    def session_resumed(self, session):
        self.counts["resumed"] += 1

    def session_closed(self, session):
        self.counts["closed"] += 1


def _module_of(transport) -> str:
    return type(transport).__module__.rpartition(".")[2]


class NodeControl:
    """What the bench asks the node child: its counters, and where its memory went."""

    def __init__(self, node, counter, events):
        self.node = node
        self.counter = counter
        self.events = events
        self._snapshot = None
        self._types = None

    def __call__(self, command, **arguments):
        return getattr(self, "do_" + command)(**arguments)

    def do_stats(self):
        sessions = list(self.node.peer.sessions.values())
        from cairn.transport.tcp import StreamProtocol

        # The node's TCP listener uses a subclass (transport/handoff.py): named by its base.
        kinds = Counter(
            "tcp" if isinstance(s.connection.transport, StreamProtocol) else _module_of(s.connection.transport)
            for s in sessions
            if s.attached
        )
        return {
            "sessions": len(sessions),
            "attached": sum(kinds.values()),
            "transports": dict(kinds),
            "sent": sum(s.send_seq for s in sessions),
            "received": sum(s.recv_seq for s in sessions),
            "sink": self.counter.count,
            "delivered": self.node.mailbox.delivered,
            **{name: self.events.counts[name] for name in ("established", "resumed", "closed")},
        }

    def do_baseline(self):
        gc.collect()
        self._types = _type_counts()
        self._snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        return {"tracing": self._snapshot is not None}

    def do_top(self, limit=25):
        """Growth since L{do_baseline}: allocation sites, files and object types."""
        gc.collect()
        types = _type_counts()
        types.subtract(self._types)
        answer = {"types": [(name, count) for name, count in types.most_common(limit) if count > 0]}
        if self._snapshot is not None:
            now = tracemalloc.take_snapshot()
            for key in ("lineno", "filename"):
                stats = now.compare_to(self._snapshot, key)
                answer[key] = [
                    (_where(s.traceback[0], key), s.size_diff, s.count_diff) for s in stats[:limit] if s.size_diff > 0
                ]
            answer["total"] = sum(s.size_diff for s in now.compare_to(self._snapshot, "filename"))
        return answer


def _type_counts() -> Counter:
    """Objects the garbage collector tracks, by type."""
    counts = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return counts


def _where(frame, key) -> str:
    name = frame.filename
    for prefix in (REPO_ROOT + os.sep, *(p + os.sep for p in sys.path if p.endswith("-packages"))):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return f"{name}:{frame.lineno}" if key == "lineno" else name


@defer.inlineCallbacks
def node_role(reactor, control, args):
    """The node under test: prints its ports, answers L{NodeControl} commands."""
    from bench._server import Counter as SinkCounter
    from bench._server import serve_channels
    from cairn.config import Config
    from cairn.service import make_node

    nofile = raise_nofile()
    if args.tracemalloc:
        tracemalloc.start()
    listen = LOCAL_ENDPOINT + (f":backlog={args.backlog}" if args.backlog else "")
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-capacity-")
    limits = {}
    if args.per_source and "max_handshakes_per_source" in attr.fields_dict(Config):
        limits["max_handshakes_per_source"] = args.per_source
    if args.unpaired_limits and "max_unpaired_sessions" in attr.fields_dict(Config):
        ttl, total, per_source = args.unpaired_limits.split(":")
        limits.update(
            unpaired_session_ttl=float(ttl), max_unpaired_sessions=int(total), max_unpaired_per_source=int(per_source)
        )
    config = Config.from_env(
        {},
        **limits,
        data_dir=data_dir,
        listen=listen,
        ws_listen=listen,
        mgmt_listen="none",
        keepalive_interval=args.keepalive,
        keepalive_timeout=args.keepalive * 4,
        psk=PSK if args.pair else None,  # the module's constant: never on a command line
    )
    node = make_node(config, reactor)
    counter = SinkCounter()
    serve_channels(node.peer, counter)
    events = SessionEvents()
    node.peer.add_observer(events)
    try:
        node.startService()
        ports = yield node.ready
        control.handle = NodeControl(node, counter, events)
        numbers = {name: port.getHost().port for name, port in ports.items()}
        control.send({**numbers, "nofile": nofile, "pid": os.getpid()})
        yield control.done
    finally:
        if node.running:
            yield node.stopService()
        shutil.rmtree(data_dir, ignore_errors=True)


# Client children


def addresses(ports) -> list:
    """The node's TCP and WebSocket addresses: session C{i} uses C{addresses[i % 2]}."""
    return [f"tcp:host=127.0.0.1:port={ports['tcp']}", f"ws://127.0.0.1:{ports['websocket']}/"]


def failure_name(failure) -> str:
    return f"{failure.type.__name__}: {failure.getErrorMessage()[:80]}"


@defer.inlineCallbacks
def open_sessions(reactor, targets, indices, concurrency, failures, prepare=None, paired=True, **settings):
    """
    Open one session per index, each from a new L{Client} (identity) to
    C{targets[i % 2]}, C{concurrency} at a time; C{prepare(client, session)}
    may add work (a Deferred) to each. Failures are counted by reason.

    @param paired: first pair the identity with the node's PSK in a session
        of its own, closed then, as a device does once: the session kept is
        one of a paired peer, like those of the devices a node serves.
    @return: a list of (index, client, session).
    """
    from cairn.client import Client
    from cairn.pairing.client import pair_psk

    opened = []
    left = iter(indices)

    @defer.inlineCallbacks
    def worker():
        for i in left:
            client = Client(reactor, **settings)
            try:
                if paired:
                    session = yield client.connect(targets[i % 2]).addTimeout(CONNECT_TIMEOUT, reactor)
                    yield pair_psk(session, PSK)
                    session.close()
                session = yield client.connect(targets[i % 2]).addTimeout(CONNECT_TIMEOUT, reactor)
                if prepare is not None:
                    yield prepare(client, session)
            except Exception:
                failures[failure_name(Failure())] += 1
            else:
                opened.append((i, client, session))

    yield gather(worker() for _ in range(concurrency))
    return opened


@defer.inlineCallbacks
def sessions_role(reactor, control, args):
    """Idle clients: open sessions, report, keep them until stdin closes."""
    nofile = raise_nofile()
    control.send({"nofile": nofile})
    failures = Counter()
    start = time.perf_counter()
    settings = dict(keepalive_interval=args.keepalive, keepalive_timeout=args.keepalive * 4)
    targets = addresses({"tcp": args.tcp, "websocket": args.websocket})
    if args.only:
        # One session type only (per-type memory): both slots dial it.
        targets = [targets[0 if args.only == "tcp" else 1]] * 2
    indices = range(args.first, args.first + args.count)
    opened = yield open_sessions(reactor, targets, indices, args.concurrency, failures, paired=args.paired, **settings)
    sessions = [s for _, _, s in opened]

    def stats(cmd):
        return {
            "attached": sum(s.attached for s in sessions),
            "ended": sum(s.closed is not None for s in sessions),
            "rss": proc_memory(os.getpid())["VmRSS"],
        }

    control.handle = stats
    control.send(
        {"opened": len(sessions), "failed": dict(failures), "seconds": time.perf_counter() - start}
    )
    yield control.done


@defer.inlineCallbacks
def handshakes_role(reactor, control, args):
    """The flood: new sessions, each closed once up, as fast as possible for C{--seconds}."""
    from cairn.client import Client

    client = Client(reactor)
    counts = Counter()
    start = time.perf_counter()
    cpu = time.process_time()
    deadline = start + args.seconds
    left = iter(range(args.cycles)) if args.cycles else None
    control.send({"started": True})

    @defer.inlineCallbacks
    def worker():
        while time.perf_counter() < deadline and (left is None or next(left, None) is not None):
            # --fresh: a new identity per handshake (a client of its own).
            dialer = Client(reactor) if args.fresh else client
            try:
                session = yield dialer.connect(args.address).addTimeout(CONNECT_TIMEOUT, reactor)
            except Exception:
                counts["failed: " + failure_name(Failure())] += 1
                continue
            if args.drop:
                # No Close, but the HandshakeFinal flushed first (an abort
                # would discard it): the node keeps the session detached.
                session.connection.transport.lose(abort=False)
            else:
                session.close()
            counts["done" if time.perf_counter() <= deadline else "late"] += 1

    yield gather(worker() for _ in range(args.concurrency))
    control.send({**counts, "seconds": args.seconds, "cpu": time.process_time() - cpu})
    yield control.done


# Scenarios, in the bench process


def fd_budget(sessions: int, processes: int = 1) -> int:
    """How many sessions the file-descriptor limits allow (all if enough); says so if fewer."""
    soft, hard = raise_nofile()
    out(f"RLIMIT_NOFILE of this process raised to soft {soft}, hard {hard}")
    fits = min(soft - FD_MARGIN, (soft - FD_MARGIN) * processes)
    if sessions > fits:
        out(f"  the limit allows only {fits} sessions: scaled down from {sessions} to {fits}")
        return fits
    return sessions


def percentile(values, share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(share * len(ordered))) - 1)]


@defer.inlineCallbacks
def with_children(reactor, run, children):
    """Run C{run()}, then stop every child in C{children} (last started first)."""
    try:
        result = yield run()
    finally:
        for child in reversed(children):
            yield child.stop()
    return result


@defer.inlineCallbacks
def start_node(reactor, children, args, *options):
    if args.per_source:
        options += ("--per-source", args.per_source)
    node = Child.spawn(reactor, "node", "node", *options)
    children.append(node)
    hello = yield node.next(60)
    limit = f"; CAIRN_MAX_HANDSHAKES_PER_SOURCE {args.per_source}" if args.per_source else ""
    out(f"node (pid {node.pid}): RLIMIT_NOFILE soft {hello['nofile'][0]}, hard {hello['nofile'][1]}{limit}")
    return node, hello


def idle(reactor, args):
    children = []

    @defer.inlineCallbacks
    def run():
        n = fd_budget(args.sessions, args.clients)
        k = args.keepalive
        # Pauses for things to settle, and the empty node's CPU window.
        settle, empty_window = min(1.0, n / 1000), min(2.0, args.window)
        out(f"== capacity: idle ({n} sessions, {args.clients} client processes, keepalive every {k:g} s) ==")
        options = ["--keepalive", k, "--pair"] + (["--tracemalloc"] if args.tracemalloc else [])
        if not args.paired:
            # Idle unpaired sessions from one address: lift the bounds on them.
            options += ["--unpaired-limits", "3600:1000000000:1000000000"]
        node, ports = yield start_node(reactor, children, args, *options)
        yield sleep(reactor, settle)
        empty = proc_memory(node.pid)
        cpu0 = proc_cpu(node.pid)
        yield sleep(reactor, empty_window)
        empty_cpu = (proc_cpu(node.pid) - cpu0) / empty_window
        yield node.ask("baseline")
        start = time.perf_counter()
        shares = [n // args.clients + (i < n % args.clients) for i in range(args.clients)]
        firsts = [sum(shares[:i]) for i in range(args.clients)]
        for i, (first, count) in enumerate(zip(firsts, shares)):
            options = ["--tcp", ports["tcp"], "--websocket", ports["websocket"], "--first", first, "--count", count]
            options += ["--concurrency", args.concurrency, "--keepalive", k] + ([] if args.paired else ["--unpaired"])
            options += ["--only", args.only] if args.only else []
            children.append(Child.spawn(reactor, f"clients {i}", "sessions", *options, nice=args.nice))
        workers = children[1:]
        for i, hello in enumerate((yield gather(w.next(60) for w in workers))):
            out(f"client process {i}: RLIMIT_NOFILE soft {hello['nofile'][0]}, hard {hello['nofile'][1]}")
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
        cpu0, t0 = proc_cpu(node.pid), time.perf_counter()
        yield sleep(reactor, args.window)
        cpu, wall = proc_cpu(node.pid) - cpu0, time.perf_counter() - t0
        after = yield node.ask("stats")
        last = proc_memory(node.pid)
        clients = yield gather(w.ask("stats") for w in workers)
        report_idle(args, opened, after, empty, full, last, empty_cpu, cpu, wall, before, clients)
        if args.tracemalloc or args.types:
            report_memory((yield node.ask("top", timeout=600, limit=args.top)), opened)

    return with_children(reactor, run, children)


def report_idle(args, opened, stats, empty, full, last, empty_cpu, cpu, wall, before, clients):
    grown = full["VmRSS"] - empty["VmRSS"]
    per = grown / opened if opened else float("nan")
    verdict = "met" if last["VmRSS"] < RSS_TARGET else "MISSED"
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(stats["transports"].items()))
    out(f"idle: node holds {stats['sessions']} sessions, {stats['attached']} attached ({kinds})")
    out(
        f"idle: node RSS {megabytes(empty['VmRSS'])} with no session -> {megabytes(full['VmRSS'])} "
        f"with {opened} (+{megabytes(grown)}, {per:,.0f} bytes per session); after the window "
        f"{megabytes(last['VmRSS'])}, peak {megabytes(last['VmHWM'])}; target < {megabytes(RSS_TARGET)}: {verdict}"
    )
    if opened:
        scaled = empty["VmRSS"] + per * 10_000
        out(f"  at that rate 10,000 sessions would take {megabytes(scaled)}")
    sent = stats["sent"] - before["sent"]
    received = stats["received"] - before["received"]
    handled = sent + received
    expected = 2 * opened * wall / args.keepalive
    share = cpu / wall * 100
    per_keepalive = cpu / handled * 1e6 if handled else float("nan")
    out(
        f"idle: keepalive CPU on the node: {share:.1f}% of a core over {wall:.1f} s "
        f"(no session: {empty_cpu * 100:.1f}%); {handled:,} keepalives handled ({sent:,} sent, "
        f"{received:,} received; {expected:,.0f} expected): {per_keepalive:.0f} us each"
    )
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
        node, ports = yield start_node(reactor, children, args, "--pair", *backlog)
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
    overflows = listen_overflows()
    times = []
    retries = Counter()
    start = time.perf_counter()

    @defer.inlineCallbacks
    def resume(client, session):
        for _ in range(args.attempts):
            try:
                # A WebSocket whose opening handshake times out never
                # fails resume() (see the README): time each attempt out.
                yield client.resume(session).addTimeout(args.attempt_timeout, reactor)
            except Exception:
                retries[failure_name(Failure())] += 1
                continue
            times.append(time.perf_counter() - start)
            return
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


def gather_limited(deferreds, limit: int):
    """Wait for every Deferred that C{deferreds} makes, drawing at most C{limit} at a time."""
    left = iter(deferreds)

    @defer.inlineCallbacks
    def worker():
        # Each worker waits for one Deferred at a time; all share the iterator.
        yield from left

    return gather(worker() for _ in range(limit))


@defer.inlineCallbacks
def poll(reactor, predicate, timeout: float, start: float = None, every: float = 0.01):
    """Fire with the seconds since C{start} (default: now) once C{predicate()} is true."""
    start = time.perf_counter() if start is None else start
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not done after {timeout:g} s")
        yield sleep(reactor, every)
    return time.perf_counter() - start


@defer.inlineCallbacks
def wait_for(reactor, node, predicate, timeout: float, start: float = None):
    """L{poll} on the node's stats: fire once C{predicate(stats)} is true."""
    start = time.perf_counter() if start is None else start
    while not predicate(stats := (yield node.ask("stats"))):
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"the node was not there after {timeout:g} s: {stats}")
        yield sleep(reactor, 0.02)
    return time.perf_counter() - start


class Load:
    """
    Echo requests on established sessions at a fixed total rate: each
    session sends its next request every C{period} seconds unless its last
    one is still unanswered (then the turn counts as missed).
    """

    def __init__(self, reactor, channels, rate: float):
        self.reactor = reactor
        self.channels = channels
        self.period = len(channels) / rate
        self.window = None
        self.latencies = {}
        self.missed = Counter()
        self.sent = Counter()
        self._waiting = set()
        self._loops = []

    def start(self):
        for i, channel in enumerate(self.channels):
            channel.on_data = lambda data, channel=channel: self._answered(channel, data)
            loop = task.LoopingCall(self._send, channel)
            loop.clock = self.reactor
            self._loops.append(loop)
            self.reactor.callLater(i * self.period / len(self.channels), loop.start, self.period)

    def stop(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()

    def _send(self, channel):
        if channel in self._waiting:
            self.missed[self.window] += 1
            return
        self._waiting.add(channel)
        self.sent[self.window] += 1
        channel.send(struct.pack("!d", time.perf_counter()) + b"\0" * 56)

    def _answered(self, channel, data):
        self._waiting.discard(channel)
        sent = struct.unpack("!d", data[:8])[0]
        self.latencies.setdefault(self.window, []).append(time.perf_counter() - sent)


def flood(reactor, args):
    children = []

    @defer.inlineCallbacks
    def run():
        k = fd_budget(args.sessions)
        out(
            f"== capacity: flood ({k} established sessions, {args.rate:g} echo requests/s in all; "
            f"new TCP handshakes, {args.concurrency} in flight, for {args.seconds:g} s) =="
        )
        node, ports = yield start_node(reactor, children, args, "--pair")
        targets = addresses(ports)
        failures = Counter()

        def prepare(client, session):
            channel = session.open_channel("echo")
            answered = defer.Deferred()
            channel.on_data = answered.callback
            channel.send(b"warm-up")
            return answered

        # At most 8 at a time: under the node's default per-source limit.
        opened = yield open_sessions(reactor, targets, range(k), 8, failures, prepare)
        if failures:
            out(f"  failures opening the established sessions: {dict(failures)}")
        load = Load(reactor, [session.open_channel("echo") for _, _, session in opened], args.rate)
        load.start()
        yield sleep(reactor, min(1.0, args.before))
        windows = []

        @defer.inlineCallbacks
        def window(name, wait):
            load.window = name
            stats, cpu, start = (yield node.ask("stats")), proc_cpu(node.pid), time.perf_counter()
            result = yield wait()
            after = yield node.ask("stats")
            wall = time.perf_counter() - start
            load.window = None
            windows.append((name, wall, after["established"] - stats["established"], proc_cpu(node.pid) - cpu))
            return result

        yield window("before", lambda: sleep(reactor, args.before))
        options = ["--address", targets[0], "--concurrency", args.concurrency, "--seconds", args.seconds]
        flooder = Child.spawn(reactor, "flood", "handshakes", *options, nice=args.nice)
        children.append(flooder)
        yield flooder.next(60)
        result = yield window("during", lambda: flooder.next(args.seconds + 120))
        yield window("after", lambda: sleep(reactor, args.after))
        load.stop()
        report_flood(args, load, windows, result)

    return with_children(reactor, run, children)


def churn(reactor, args):
    children = []

    @defer.inlineCallbacks
    def run():
        bounds = "3600:1000000000:1000000000" if args.legacy else args.bounds
        policy = "bounds lifted, detached TTL 3600 s (before issue 13)" if args.legacy else "default unpaired bounds"
        if args.bounds and not args.legacy:
            policy = "unpaired TTL:total:per-source " + args.bounds
        out(f"== capacity: churn ({args.cycles} handshake-and-drop cycles of fresh unpaired identities; {policy}) ==")
        options = ["--unpaired-limits", bounds] if bounds else []
        node, ports = yield start_node(reactor, children, args, *options)
        yield sleep(reactor, 1.0)
        empty = proc_memory(node.pid)
        address = addresses(ports)[0]
        options = ["--address", address, "--concurrency", args.concurrency, "--seconds", 3600]
        options += ["--cycles", args.cycles, "--fresh", "--drop"]
        churner = Child.spawn(reactor, "churn", "handshakes", *options, nice=args.nice)
        children.append(churner)
        yield churner.next(60)
        start = time.perf_counter()
        result = yield churner.next(3600)
        wall = time.perf_counter() - start
        yield sleep(reactor, 1.0)
        full, stats = proc_memory(node.pid), (yield node.ask("stats"))
        grown = full["VmRSS"] - empty["VmRSS"]
        per = grown / stats["sessions"] if stats["sessions"] else float("nan")
        out(
            f"churn: {result.get('done', 0)} cycles in {wall:.1f} s (failures: "
            f"{ {k: v for k, v in result.items() if k.startswith('failed')} or 'none'}); node holds "
            f"{stats['sessions']} sessions ({stats['closed']} closed by it)"
        )
        out(
            f"churn: node RSS {megabytes(empty['VmRSS'])} before -> {megabytes(full['VmRSS'])} after "
            f"(+{megabytes(grown)}; {per:,.0f} bytes per session held; peak {megabytes(full['VmHWM'])})"
        )
        if not args.legacy:
            yield sleep(reactor, args.wait)
            later, stats = proc_memory(node.pid), (yield node.ask("stats"))
            out(
                f"churn: {args.wait:g} s later (unpaired TTL passed): node holds {stats['sessions']} sessions, "
                f"RSS {megabytes(later['VmRSS'])}"
            )

    return with_children(reactor, run, children)


def report_flood(args, load, windows, flood_result):
    done = flood_result.pop("done", 0)
    seconds = flood_result.pop("seconds")
    cpu = flood_result.pop("cpu")
    out(
        f"flood: {done / seconds:,.0f} handshakes/s completed by the flooding process ({done} in {seconds:g} s; "
        f"its CPU {cpu / seconds * 100:.0f}% of a core); other outcomes: {flood_result}"
    )
    served = {}
    for name, wall, established, cpu in windows:
        latencies = load.latencies.get(name, [])
        served[name] = len(latencies) / wall
        out(
            f"flood: {name:>6}: {served[name]:,.1f} requests/s served of {args.rate:g} offered "
            f"({load.missed[name]} turns missed, a request still unanswered); latency median "
            f"{percentile(latencies, 0.5) * 1e3:.1f} ms, p99 {percentile(latencies, 0.99) * 1e3:.1f} ms, "
            f"max {max(latencies, default=float('nan')) * 1e3:.1f} ms; node accepted {established / wall:,.0f} "
            f"sessions/s, node CPU {cpu / wall * 100:.0f}% of a core"
        )
    if served.get("before"):
        out(f"flood: served during / before = {served['during'] / served['before']:.2f} (must not starve: > 0)")


# Command line


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
    s.add_argument("--window", type=float, default=20.0, help="CPU measurement window (s)")
    s.add_argument("--open-timeout", type=float, default=900.0, help="give up opening after this (s)")
    s.add_argument("--unpaired", dest="paired", action="store_false", help="do not pair the sessions' peers first")
    s.add_argument("--tracemalloc", action="store_true", help="report where the node's memory went")
    s.add_argument("--types", action="store_true", help="report the node's new objects by type")
    s.add_argument("--top", type=int, default=25, help="lines per memory report")
    s.add_argument("--only", choices=("tcp", "websocket"), help="open sessions of this transport only")
    s.add_argument("--nice", **nice)
    s.add_argument("--per-source", **lifted)

    s = roles.add_parser("storm", help="reconnect storm: all sessions drop and resume at once")
    s.add_argument("--sessions", type=int, default=2000)
    s.add_argument("--messages", type=int, default=1, help="mailbox messages queued per session")
    s.add_argument("--data", type=int, default=1, help="Data queued per session in its resend buffer")
    s.add_argument("--concurrency", type=int, default=32, help="sessions opened (and forwards sent) at a time")
    s.add_argument("--attempts", type=int, default=5, help="resume attempts per session")
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
    s.add_argument("--unpaired-limits", default=None, help="TTL:TOTAL:PER_SOURCE of unpaired sessions")

    s = roles.add_parser("sessions", help=argparse.SUPPRESS)
    for name in ("--tcp", "--websocket", "--first", "--count", "--concurrency"):
        s.add_argument(name, type=int, required=True)
    s.add_argument("--keepalive", type=float, required=True)
    s.add_argument("--unpaired", dest="paired", action="store_false")
    s.add_argument("--only", choices=("tcp", "websocket"), default=None)

    s = roles.add_parser("handshakes", help=argparse.SUPPRESS)
    s.add_argument("--address", required=True)
    s.add_argument("--concurrency", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--cycles", type=int, default=0, help="stop after this many (0: only the time limit)")
    s.add_argument("--fresh", action="store_true", help="a new identity per handshake")
    s.add_argument("--drop", action="store_true", help="abort the transport instead of closing the session")

    args = p.parse_args(argv)
    if args.role in ("node", "sessions", "handshakes"):
        role = {"node": node_role, "sessions": sessions_role, "handshakes": handshakes_role}[args.role]
        run_child(lambda reactor, control: role(reactor, control, args))
        return
    scenario = {"idle": idle, "storm": storm, "flood": flood, "churn": churn}[args.role]
    log_warnings_only()
    task.react(lambda reactor: scenario(reactor, args))


if __name__ == "__main__":
    main()
