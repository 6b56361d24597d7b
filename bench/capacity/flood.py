"""C{flood} and C{churn}: handshakes against established sessions, and handshake-and-drop cycles."""

import struct
import time
from collections import Counter

from twisted.internet import defer, task

from bench._common import megabytes, out, proc_cpu, proc_memory, sleep
from bench.capacity.children import Child, start_node, with_children
from bench.capacity.clients import addresses, open_sessions
from bench.capacity.common import percentile
from bench.capacity.limits import fd_budget


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
            f"{ {k: v for k, v in result.items() if k.startswith('failed')} or 'none' }); node holds "
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
