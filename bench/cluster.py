"""
Cluster bench: two real C{twistd -n cairn} nodes sharing one identity on
a 3-server NATS JetStream cluster (R3, C{sync_interval: always}), all on
this machine's loopback, measured from one client process (issue 15):

    python -m bench.cluster [--latency N] [--messages M] [--senders S]
                            [--inflight F] [--relay-bytes B] [--relay-repeat R]
                            [--quick] [--latency-only] [--relay-only]
                            [--chunk N] [--window W]

- B{cross-node delivery latency}: a sender on node 1 forwards 1 KiB
  messages one at a time to a recipient whose session is on node 2; the
  time from the forward call to the recipient's inbox callback, p50 and
  p99 (target p50 <= 5 ms). The same with both on node 1 is printed as
  its anchor (what one node gives on the same cluster).
- B{aggregate enqueue rate}: S senders with F messages in flight each
  (the next sent from the previous one's ForwardAck), spread over both
  nodes, against the same senders all on node 1 alone, same cluster, same
  run: the scaling ratio.
- B{relay throughput}: bytes per second through a circuit between two
  peers on different nodes against one between two peers on the same
  node, for attached circuits (raw bytes over the spliced connections,
  as C{bench/relay.py} measures) and RelayData circuits (channel messages
  of the end-to-end session); target >= 0.9x. A kind of circuit the
  deployment cannot give across nodes is reported as such, with the
  node's answer. With each, the CPU time both nodes spent per MiB relayed
  (from /proc): a figure the machine's load hardly moves, unlike the
  rates on a shared machine. For RelayData, the ceiling the window
  allows across nodes: raw nats-py carrying one chunk between two of the
  cluster's servers and its credit back (C{--relay-floor N} round trips,
  p50) added to the one-node circuit's round trip (L{relaydata_ceiling}).
  And the CPU the NATS servers and this (client) process spent per MiB,
  so that every process of the path is counted: on a machine of two
  cores a RelayData circuit is bound by their sum as much as by its
  round trip (docs/scaling.md, "RelayData across nodes: a larger window").
  C{--window W} measures with another relay window W (docs/protocol.md
  §25.3) in both nodes and the bench's clients: a measurement only.

The nodes are started as C{twistd -n cairn} processes (the installed
command, from the repository root), NATS by L{bench._jetstream.Servers};
everything is stopped by PID at the end. Figures are wall-clock on a
shared machine: read them as ratios against the anchors of the same run.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet import defer, task

from bench._jetstream import Servers, writable
from bench._ports import free_port
from bench.relay import CHUNK, CIRCUIT_CHUNK, Pusher, Tally

#: docs/protocol.md §25.3: W, the bytes of RelayData sent and not yet credited.
RELAY_WINDOW = 262144

PSK = "bench pre-shared key, long enough to not be weak"
SIZE = 1024
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LISTENING = re.compile(r"listening: tcp on 127\.0\.0\.1:(\d+)")
#: Longest one measurement may take before it is abandoned (seconds).
TIMEOUT = 300.0


def _with_window(window):
    """
    Python that sets the relay window W (docs/protocol.md §25.3) to
    C{window} before anything imports it (C{--window}: a measurement only;
    W is the protocol's, and a node and its clients must agree on it), or
    nothing.
    """
    if window is None:
        return ""
    return f"import cairn.relay.messages as m; m.WINDOW = {int(window)}; "


class Node:
    """One C{twistd -n cairn} child; its log is read by a thread (kept: the last lines, for errors)."""

    def __init__(self, name, data_dir, nats_urls, identity_file, window=None):
        port = free_port()
        env = dict(
            os.environ,
            PYTHONPATH=REPO_ROOT,
            CAIRN_DATA_DIR=data_dir,
            CAIRN_IDENTITY_FILE=identity_file,
            CAIRN_LISTEN=f"tcp:{port}:interface=127.0.0.1",
            # Attached circuits between peers on different nodes attach here.
            CAIRN_RELAY_ATTACH_ADDRESS=f"tcp://127.0.0.1:{port}",
            CAIRN_WS_LISTEN="none",
            CAIRN_MGMT_LISTEN="none",
            CAIRN_PSK=PSK,
            CAIRN_NODE_NAME=name,
            CAIRN_CLUSTER_NATS=",".join(nats_urls),
            CAIRN_CLUSTER_REPLICAS="3",
            # Every bench client dials from 127.0.0.1.
            CAIRN_MAX_HANDSHAKES_PER_SOURCE="1000000",
            CAIRN_MAX_PENDING_PER_SOURCE="1000000",
        )
        argv = [
            sys.executable,
            "-c",
            _with_window(window) + "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "cairn",
        ]
        self.name = name
        self.lines = []
        self.port = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(90) or self.port is None:
            self.stop()
            raise SystemExit(f"bench: {name} did not start:\n" + "".join(self.lines[-30:]))

    def _read(self):
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            del self.lines[:-200]
            found = _LISTENING.search(line)
            if found and self.port is None:
                self.port = int(found.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def address(self):
        return f"tcp:host=127.0.0.1:port={self.port}"

    def stop(self):
        self.process.kill()
        self.process.wait()


class Deployment:
    """3 NATS servers and C{count} cairn nodes with one identity."""

    def __init__(self, count=2, window=None):
        from cairn.crypto.identity import load_or_create_file

        self.directory = tempfile.mkdtemp(prefix="cairn-bench-cluster-")
        self.nats = Servers(3)
        self.nodes = []
        try:
            # The deployment's one identity, as its secret (CAIRN_IDENTITY_FILE).
            identity_file = os.path.join(self.directory, "identity.key")
            load_or_create_file(identity_file)
            for i in range(count):
                data_dir = os.path.join(self.directory, f"node{i + 1}")
                os.makedirs(data_dir, mode=0o700)
                # One at a time: the first sets the JetStream layout up.
                self.nodes.append(Node(f"node{i + 1}", data_dir, self.nats.urls, identity_file, window))
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for node in self.nodes:
            node.stop()
        self.nats.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# Clients


@defer.inlineCallbacks
def paired(reactor, address):
    """A new PSK-paired client and its session with the node at C{address}."""
    from cairn.client import Client
    from cairn.pairing import client as pairing

    client = Client(reactor)
    session = yield client.connect(address)
    yield pairing.pair_psk(session, PSK)
    return client, session


@defer.inlineCallbacks
def know(reactor, session, peer_id):
    """
    Fetch C{peer_id}'s key through C{session}, again until its node knows
    the peer: a pairing made on another node reaches this one by the trust
    bucket's watch, a moment later.
    """
    from cairn.mailbox import client as mailbox
    from cairn.mailbox.client import UnknownRecipient

    for _ in range(100):
        try:
            yield mailbox.mailbox(session.local).peer_key(session, peer_id)
            return
        except UnknownRecipient:
            yield task.deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError(f"{peer_id} never became known to the sender's node")


# Measurements


@defer.inlineCallbacks
def latency(reactor, sender_address, recipient_address, count, warm=20, patience=1.0):
    """
    Seconds from forward to the recipient's inbox, C{count} messages one at
    a time (after C{warm}), and how many of them were not delivered within
    C{patience} seconds: the next message is then sent anyway (its store
    wakes the delivery up again) and the late one's latency counts when it
    arrives, so a missed wake-up shows in the p99 instead of stalling the
    bench.
    """
    from cairn.mailbox import client as mailbox
    from cairn.mailbox.client import uuid7

    bob, b = yield paired(reactor, recipient_address)
    alice, a = yield paired(reactor, sender_address)
    yield know(reactor, a, bob.peer_id)
    sent, samples, late = {}, [], []
    current = [None]

    def arrived(sender, mid, data):
        start = sent.pop(mid, None)
        if start is not None and start[1] >= warm:
            samples.append(time.perf_counter() - start[0])
        if current[0] is not None and not current[0].called and mid == current[0].mid:
            current[0].callback(None)

    mailbox.set_inbox(bob.peer, arrived)
    payload = os.urandom(SIZE)
    for i in range(warm + count):
        mid = uuid7()
        delivered = current[0] = defer.Deferred()
        delivered.mid = mid
        sent[mid] = (time.perf_counter(), i)
        yield mailbox.forward(a, bob.peer_id, payload, mid)
        try:
            yield delivered.addTimeout(patience, reactor)
        except defer.TimeoutError:
            late.append(i)
    while sent:  # the last ones, if late, are woken by one more message
        waiting = len(sent)
        yield mailbox.forward(a, bob.peer_id, b"wake-up", uuid7())
        yield task.deferLater(reactor, patience, lambda: None)
        if len(sent) == waiting:
            raise RuntimeError(f"{waiting} message(s) never delivered")
    a.close()
    b.close()
    return samples, len([i for i in late if i >= warm])


@defer.inlineCallbacks
def enqueue_rate(reactor, addresses, messages, senders, inflight):
    """Messages acknowledged per second: C{senders} sessions, the i-th on C{addresses[i % len]}, F lanes each."""
    from cairn.mailbox import client as mailbox

    bob, b = yield paired(reactor, addresses[0])
    b.close()  # offline: every message is stored, none delivered meanwhile
    sessions = []
    for i in range(senders):
        _, session = yield paired(reactor, addresses[i % len(addresses)])
        sessions.append(session)
    payload = os.urandom(SIZE)
    lanes = senders * inflight
    share, extra = divmod(messages, lanes)

    @defer.inlineCallbacks
    def lane(session, count):
        for _ in range(count):
            yield mailbox.forward(session, bob.peer_id, payload)

    # The recipient's key is fetched once per sender before the clock starts.
    yield defer.gatherResults([know(reactor, s, bob.peer_id) for s in sessions], consumeErrors=True)
    start = time.perf_counter()
    yield defer.gatherResults(
        [lane(sessions[n % senders], share + (1 if n < extra else 0)) for n in range(lanes)], consumeErrors=True
    ).addTimeout(TIMEOUT, reactor)
    rate = messages / (time.perf_counter() - start)
    for session in sessions:
        session.close()
    return rate


@defer.inlineCallbacks
def relay_rate(reactor, address_a, address_b, size, mode, chunk=CIRCUIT_CHUNK):
    """
    Bytes per second through one circuit from a peer on C{address_a} to one
    on C{address_b}; C{mode} C{raw} (attached circuit, raw bytes over its
    two spliced connections) or C{relaydata} (RelayData circuit, channel
    messages). Fires with the rate, or with the refusal as text.
    """
    from cairn.relay.attached import AttachProtocol
    from cairn.relay.client import RouteRefused, relay_endpoint, relay_to
    from cairn.wire.constants import RouteStatus

    bob, node_b = yield paired(reactor, address_b)
    alice, node_a = yield paired(reactor, address_a)
    relay_endpoint(alice).attach = mode == "raw"
    relay_endpoint(bob).attach = mode == "raw"
    accepted = defer.Deferred()
    relay_endpoint(bob).on_session = accepted.callback
    tally = Tally(size)
    try:
        # The target's node session reaches the requester's node through the
        # deployment's presence, a moment after it is made: ask again meanwhile.
        for attempt in range(100):
            try:
                a = yield relay_to(alice, node_a, bob.peer_id).addTimeout(60, reactor)
                break
            except RouteRefused as e:
                if e.status != RouteStatus.OFFLINE or attempt == 99:
                    raise
                yield task.deferLater(reactor, 0.05, lambda: None)
        b = yield accepted.addTimeout(60, reactor)
    except RouteRefused as e:
        return f"refused ({e})"
    except defer.TimeoutError:
        return "no circuit within 60 s"
    except Exception as e:  # a measurement that cannot be made is reported, not fatal
        return f"no circuit ({type(e).__name__}: {e})"
    if mode == "raw":
        sender, receiver = a.connection.transport, b.connection.transport
        if not isinstance(sender, AttachProtocol):
            return "the node gave a RelayData circuit, not an attached one"
        receiver.dataReceived = tally.add
        pusher = Pusher(sender.transport.write, size, b"\x00" * CHUNK)
        sender.transport.registerProducer(pusher, True)
    else:
        b.on_channel = lambda channel: setattr(channel, "on_data", tally.add)
        pusher = Pusher(a.open_channel("bulk").send, size, b"\x00" * chunk)
        a.connection.transport.registerProducer(pusher, True)
    start = time.perf_counter()
    pusher.resumeProducing()
    try:
        yield tally.done.addTimeout(TIMEOUT, reactor)
    except defer.TimeoutError:
        return f"did not complete ({tally.got} of {size} bytes in {TIMEOUT:.0f} s)"
    rate = size / (time.perf_counter() - start)
    for session in (a, b, node_a, node_b):
        session.close()
    return rate


def relay_floor(urls, count, warm=20, size=CIRCUIT_CHUNK):
    """
    The anchor of RelayData across nodes, on the same cluster in the same
    run: seconds for raw nats-py to carry one C{size}-byte chunk (the
    bench's RelayData) from a connection to one server of the cluster to a
    connection to another, and a 64-byte answer (its RelayAck) back, one
    at a time. A circuit's credit has to make that trip on top of what a
    circuit on one node does, whatever the nodes' own code costs.
    """
    import asyncio

    return asyncio.run(_relay_floor(urls, count, warm, size))


async def _relay_floor(urls, count, warm, size):
    import asyncio

    import nats

    a = await nats.connect(urls[0])
    b = await nats.connect(urls[1 % len(urls)])
    answers = asyncio.Queue()

    async def credit(msg):
        await b.publish("bench.relay.floor.ack", msg.data[:8] + bytes(56))

    async def credited(msg):
        answers.put_nowait(msg.data[:8])

    await b.subscribe("bench.relay.floor.data", cb=credit)
    await a.subscribe("bench.relay.floor.ack", cb=credited)
    await b.flush()
    await a.flush()
    filler = bytes(size - 8)

    async def trip(seq, timeout):
        """Send chunk C{seq}; wait for its own answer (a late answer to an earlier one is skipped)."""
        tag = seq.to_bytes(8, "big")
        await a.publish("bench.relay.floor.data", tag + filler)
        while await asyncio.wait_for(answers.get(), timeout) != tag:
            pass

    # b's interest reaches a's server over the cluster's route a moment
    # after b's flush: until then core NATS drops what a publishes, so the
    # first trip is tried again until one is answered.
    seq = 0
    for seq in range(100):
        try:
            await trip(seq, 0.2)
            break
        except TimeoutError:
            continue
    else:
        raise RuntimeError("relay floor: no answer across the NATS cluster in 20 s")
    samples = []
    for i in range(warm + count):
        seq += 1
        start = time.perf_counter()
        await trip(seq, 10)
        if i >= warm:
            samples.append(time.perf_counter() - start)
    await a.close()
    await b.close()
    return samples


def raw_latency(urls, count, warm=20, size=SIZE):
    """
    The anchor of the delivery latencies, on the same cluster in the same
    run: seconds for raw nats-py to publish 1 KiB to an R3 stream, await its
    PubAck and read it back by a direct get, one at a time (what a node does
    at the least per message: store it, read it to deliver).
    """
    import asyncio

    return asyncio.run(_raw_latency(urls, count, warm, size))


async def _raw_latency(urls, count, warm, size):
    import json

    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(urls)
    js = nc.jetstream()
    name = "bench_latency"
    await js.add_stream(
        StreamConfig(
            name=name, subjects=["bench.latency.>"], num_replicas=3, storage=StorageType.FILE, allow_direct=True
        )
    )
    await writable(nc, name, "bench.latency.probe")
    payload, samples = os.urandom(size), []
    for i in range(warm + count):
        start = time.perf_counter()
        ack = await js.publish(f"bench.latency.{i}", payload)
        request = json.dumps({"seq": ack.seq, "next_by_subj": "bench.latency.>", "batch": 16}).encode()
        box = nc.new_inbox()
        sub = await nc.subscribe(box)
        await nc.publish(f"$JS.API.DIRECT.GET.{name}", request, reply=box)
        while not ((await sub.next_msg(timeout=10)).headers or {}).get("Status"):
            pass
        await sub.unsubscribe()
        if i >= warm:
            samples.append(time.perf_counter() - start)
    await js.delete_stream(name)
    await nc.close()
    return samples


def cpu_seconds(pids):
    """CPU seconds (user + system) the processes C{pids} used so far; None where /proc cannot tell."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# Report


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def show_latency(label, samples):
    p50, p99 = percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3
    return f"{label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, mean {statistics.mean(samples) * 1e3:.2f} ms"


def show_rate(value, unit="MiB/s"):
    if isinstance(value, str):
        return value
    return f"{value / 2**20:.1f} {unit}"


def run(args):
    from twisted.internet import reactor

    deployment = Deployment(2, args.window)
    node1, node2 = deployment.nodes
    results = {}
    try:
        results["raw"] = raw_latency(deployment.nats.urls, args.latency)
        if not args.latency_only:
            results["floor"] = relay_floor(deployment.nats.urls, args.relay_floor, size=args.chunk)
    except BaseException:
        deployment.stop()
        raise

    @defer.inlineCallbacks
    def measure(reactor):
        results["cross"] = yield latency(reactor, node1.address, node2.address, args.latency)
        results["same"] = yield latency(reactor, node1.address, node1.address, args.latency)
        if args.latency_only:
            return
        if not args.relay_only:
            yield rates(reactor)
        yield relays(reactor)

    @defer.inlineCallbacks
    def rates(reactor):
        one = [node1.address]
        spread = [node1.address, node2.address]
        results["one"] = yield enqueue_rate(reactor, one, args.messages, args.senders, args.inflight)
        results["spread"] = yield enqueue_rate(reactor, spread, args.messages, args.senders, args.inflight)

    @defer.inlineCallbacks
    def relays(reactor):
        # Alternating, so that a change of the machine's load hits both alike; the median of each.
        # The nodes' CPU time per relayed byte is also taken: unlike the
        # rates, it hardly moves with the machine's load.
        # The NATS servers' and this (client) process's CPU too: on a shared
        # machine with two cores, what every process of the path spends per
        # MiB bounds the rate as much as any round trip does.
        groups = {
            "nodes": [node.process.pid for node in deployment.nodes],
            "nats": [process.pid for process in deployment.nats.processes],
            "client": [os.getpid()],
        }
        for mode in ("raw", "relaydata"):
            runs = {"same": [], "cross": []}
            cpu = {(where, group): [] for where in runs for group in groups}
            for _ in range(args.relay_repeat):
                for where, target in (("same", node1), ("cross", node2)):
                    before = {group: cpu_seconds(pids) for group, pids in groups.items()}
                    rate = yield relay_rate(reactor, node1.address, target.address, args.relay_bytes, mode, args.chunk)
                    after = {group: cpu_seconds(pids) for group, pids in groups.items()}
                    runs[where].append(rate)
                    for group in groups:
                        if before[group] is not None and after[group] is not None:
                            cpu[where, group].append(after[group] - before[group])
            for where, rates in runs.items():
                failed = [r for r in rates if isinstance(r, str)]
                results[mode, where] = failed[0] if failed else statistics.median(rates)
                results[mode, where, "all"] = rates
                for group in groups:
                    spent = cpu[where, group]
                    key = (mode, where, "cpu") if group == "nodes" else (mode, where, "cpu", group)
                    results[key] = statistics.median(spent) if spent else None

    failures = []

    def go():
        d = measure(reactor)
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(go)
        reactor.run()
    finally:
        deployment.stop()
    if failures:
        for node in deployment.nodes:
            print(f"===== {node.name} (last lines)\n" + "".join(node.lines[-40:]), file=sys.stderr)
        failures[0].raiseException()
    return results


def report(results, args):
    print("cluster: 2 cairn nodes (twistd -n cairn, one identity) + 3 NATS (R3, sync_interval: always), loopback")
    (cross, cross_late), (same, same_late) = results["cross"], results["same"]
    print(
        show_latency(f"cross-node delivery latency ({len(cross)} x 1 KiB, one at a time)", cross)
        + f"; {cross_late} not delivered within 1 s (until a later message)"
    )
    print(
        show_latency("same-node delivery latency (anchor)", same)
        + f"; {same_late} not delivered within 1 s (until a later message)"
    )
    raw = results["raw"]
    print(show_latency("raw nats-py publish-with-ack + direct get, one at a time, same R3 cluster (anchor)", raw))
    print(
        f"cross-node p50 {percentile(cross, 50) * 1e3:.2f} ms (target <= 5 ms);"
        f" ratio cross/same p50 = {percentile(cross, 50) / percentile(same, 50):.2f};"
        f" p50 ratios to the raw anchor: cross {percentile(cross, 50) / percentile(raw, 50):.1f}x,"
        f" same {percentile(same, 50) / percentile(raw, 50):.1f}x"
    )
    if args.latency_only:
        return
    if not args.relay_only:
        spread, one = results["spread"], results["one"]
        print(
            f"enqueue ({args.messages} x 1 KiB, {args.senders} senders x {args.inflight} in flight):"
            f" spread over 2 nodes {spread:.0f} msg/s, all on node 1 {one:.0f} msg/s,"
            f" scaling ratio spread/one = {spread / one:.2f}"
        )
    for mode, label in (("raw", "attached"), ("relaydata", "RelayData")):
        cross, same = results[mode, "cross"], results[mode, "same"]
        size = show_rate(args.relay_bytes, "MiB")
        line = f"relay {label} ({size}, median of {args.relay_repeat}): across nodes {show_rate(cross)}"
        line += f", one node {show_rate(same)}"
        if isinstance(cross, float) and isinstance(same, float):
            line += f", ratio across/one = {cross / same:.2f} (target >= 0.9)"
            runs = [
                (show_rate(c), show_rate(o))
                for c, o in zip(results[mode, "cross", "all"], results[mode, "same", "all"])
            ]
            line += "; runs (across, one): " + ", ".join(f"({c}, {o})" for c, o in runs)
        if mode == "relaydata":
            line += f"; Data messages of {args.chunk:,} B"
        print(line)
        if mode == "relaydata" and isinstance(same, float):
            print(relaydata_ceiling(results["floor"], same, args.chunk, args.window or RELAY_WINDOW))
        cross_cpu, same_cpu = results[mode, "cross", "cpu"], results[mode, "same", "cpu"]
        if cross_cpu and same_cpu:
            mib = args.relay_bytes / 2**20
            print(
                f"nodes' CPU for relay {label} (both nodes, median): across nodes {cross_cpu / mib * 1e3:.1f} ms/MiB,"
                f" one node {same_cpu / mib * 1e3:.1f} ms/MiB, ratio across/one = {cross_cpu / same_cpu:.2f}"
            )
            line = all_cpu(results, mode, mib)
            if line:
                print(f"all processes' CPU for relay {label} (median, ms/MiB): {line}")


def all_cpu(results, mode, mib):
    """
    What every process of the path spent per MiB, across nodes and on one
    node: both nodes, the NATS servers and the bench's client; None if
    /proc could not tell.
    """
    parts = []
    for where, label in (("cross", "across nodes"), ("same", "one node")):
        nodes = results.get((mode, where, "cpu"))
        nats = results.get((mode, where, "cpu", "nats"))
        client = results.get((mode, where, "cpu", "client"))
        if None in (nodes, nats, client):
            return None
        ms = [spent / mib * 1e3 for spent in (nodes + nats + client, nats, client)]
        parts.append(f"{label} {ms[0]:.1f} (NATS {ms[1]:.1f}, client {ms[2]:.1f})")
    return ", ".join(parts)


def relaydata_ceiling(floor, same, chunk=CIRCUIT_CHUNK, window=RELAY_WINDOW):
    """
    What a RelayData circuit across nodes can reach against one on one
    node (rate C{same}), with the window of docs/protocol.md §25.3: the
    window holds two of the bench's chunks, so the one-node circuit's
    round trip is two chunks over its rate; across nodes the credit also
    makes the raw NATS trip (C{floor}, its p50), so at best the ratio is
    that round trip over the sum.
    """
    one = (window // chunk) * chunk / same  # the bytes the window lets be in flight, over the rate
    hop = percentile(floor, 50)
    return (
        f"ceiling for RelayData across nodes: one node's round trip (window's chunks / rate) {one * 1e3:.2f} ms;"
        f" raw nats-py chunk + credit between two servers (anchor) p50 {hop * 1e3:.2f} ms,"
        f" p99 {percentile(floor, 99) * 1e3:.2f} ms; so across/one <= {one / (one + hop):.2f}"
        " before the nodes' own cost"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=int, default=200, help="messages timed one at a time")
    parser.add_argument("--messages", type=int, default=4000, help="messages per enqueue measurement")
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--inflight", type=int, default=8, help="messages in flight per sender")
    parser.add_argument("--relay-bytes", type=int, default=64 * 2**20, help="bytes through each circuit")
    parser.add_argument("--relay-repeat", type=int, default=3, help="circuits of each kind measured (median)")
    parser.add_argument(
        "--relay-floor", type=int, default=200, help="raw NATS chunk + credit round trips timed (RelayData anchor)"
    )
    parser.add_argument(
        "--chunk", type=int, default=CIRCUIT_CHUNK, help="bytes of each Data message on a RelayData circuit"
    )
    parser.add_argument("--relay-only", action="store_true", help="skip the enqueue rates")
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="measure with this relay window W in the nodes and the bench's clients (default: the protocol's)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run, figures meaningless)")
    parser.add_argument("--latency-only", action="store_true", help="only the delivery latencies (cross and same node)")
    args = parser.parse_args(argv)
    if args.quick:
        args.latency, args.messages, args.senders, args.inflight = 20, 200, 4, 2
        args.relay_bytes, args.relay_repeat, args.relay_floor = 2**20, 1, 20
    if args.window is not None:
        if args.window < 4 * args.chunk:
            parser.error(f"--window must hold at least four Data messages of --chunk ({4 * args.chunk} bytes)")
        # Before any module of cairn.relay takes W (they bind it when imported).
        import cairn.relay.messages

        cairn.relay.messages.WINDOW = args.window
    report(run(args), args)


if __name__ == "__main__":
    main()
