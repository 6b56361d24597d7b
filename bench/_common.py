"""
What the benches share: the node configuration, the server child process,
CPU accounting, option parsing and output formatting.

The node under test always runs in a separate process (L{ServerProcess}
starts C{python -m bench._server}) so that client and server each get a
core of their own; the benches read the child's CPU time before and after
each measurement, so every figure can also be given per CPU-second.
"""

import argparse
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time

import attr
from twisted.internet import defer, task

#: Every listener of the benches: an ephemeral port on the loopback only.
LOCAL_ENDPOINT = "tcp:0:interface=127.0.0.1"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class _StandInConfig:
    """The settings L{cairn.service.make_node} reads, when L{cairn.config} is absent."""

    data_dir: str
    listen: str = LOCAL_ENDPOINT
    ws_listen: str = LOCAL_ENDPOINT
    mgmt_listen: str = None
    max_payload: int = 1_000_000
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 90.0
    handshake_timeout: float = 10.0
    session_ttl: float = 3600.0


#: The bench node's pre-shared key: a node serves channels to paired peers
#: only (docs/protocol.md §10), so the data bench pairs its clients first.
BENCH_PSK = "bench pre-shared key, long enough not to be weak"


def node_config(data_dir: str):
    """The server node's config: defaults, both listeners on 127.0.0.1 port 0, the bench PSK."""
    listeners = dict(data_dir=data_dir, listen=LOCAL_ENDPOINT, ws_listen=LOCAL_ENDPOINT)
    try:
        from cairn.config import Config
    except ImportError:
        return _StandInConfig(**listeners)
    # Every bench client dials from 127.0.0.1, many handshakes at once: the
    # per-source limit against floods (default 16) would refuse them.
    return Config.from_env(
        {}, mgmt_listen=None, max_handshakes_per_source=1_000_000, psk=BENCH_PSK, **listeners
    )


def log_warnings_only() -> None:
    """Send warnings and errors to stderr and drop the rest (no buffering)."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class ServerError(Exception):
    """The server child did not start or stopped answering."""


class ServerProcess:
    """
    A C{python -m bench._server} child on 127.0.0.1: a cairn node, or
    with C{bare} the bare echo/sink servers (autobahn as shipped: the child
    imports no cairn module, and says so).

    The child prints one JSON line with its ports, then answers C{cpu}
    on stdin with its CPU seconds. Closing its stdin stops it; L{stop}
    also kills it if it lingers. Talking to it blocks, which is fine
    between measurements, when the reactor has nothing else to do.

    @param profile: write a cProfile of the child to this file (default:
        C{$CAIRN_BENCH_SERVER_PROFILE}, if set).
    """

    def __init__(self, timeout: float = 60.0, profile: str = None, bare: bool = False):
        self.timeout = timeout
        self.profile = profile or os.environ.get("CAIRN_BENCH_SERVER_PROFILE")
        if self.profile and bare:
            self.profile += ".bare"  # the node's child writes the named file
        self.bare = bare
        self.ports = None
        self._process = None

    def start(self) -> dict:
        # CPU-time profile (bench/_cpuprofile.py says why not cProfile's wall clock).
        profiler = ["-m", "bench._cpuprofile", self.profile] if self.profile else ["-m"]
        self._process = subprocess.Popen(
            [sys.executable, *profiler, "bench._server", *(["--bare"] if self.bare else [])],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.ports = self._read()
        if self.ports.pop("autobahn_patched") and self.bare:
            self.stop()
            raise ServerError("the bare servers' child has cairn's autobahn patches installed: it imported cairn")
        return self.ports

    def cpu(self) -> float:
        """The child's CPU seconds (user + system) so far."""
        self._process.stdin.write(b"cpu\n")
        self._process.stdin.flush()
        return self._read()["cpu"]

    def _read(self) -> dict:
        out = self._process.stdout
        ready, _, _ = select.select([out], [], [], self.timeout)
        line = out.readline() if ready else b""
        if not line:
            process = self._process
            self.stop()
            raise ServerError(f"bench server gave no answer in {self.timeout:g} s (exit code {process.returncode})")
        return json.loads(line)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


@attr.s(auto_attribs=True)
class Measurement:
    """Wall time and CPU time on each side for C{count} operations."""

    count: int
    wall: float
    client_cpu: float
    server_cpu: float = None

    @property
    def rate(self) -> float:
        return self.count / self.wall

    def per_op_us(self, cpu: float) -> float:
        return cpu / self.count * 1e6

    def cpu_line(self, unit: str) -> str:
        """The CPU cost per operation on each side, and what one core could do."""
        parts = [f"client {self.per_op_us(self.client_cpu):.0f} us"]
        if self.server_cpu is not None:
            parts.append(f"server {self.per_op_us(self.server_cpu):.0f} us")
        text = "CPU per " + unit + ": " + ", ".join(parts)
        limits = [f"client core {rate(self.count, self.client_cpu)}"]
        if self.server_cpu is not None:
            limits.append(f"server core {rate(self.count, self.server_cpu)}")
        return text + " (one " + "; ".join(limits) + ")"


class Stopwatch:
    """Wall clock plus CPU time of this process and, if given, the server's."""

    def __init__(self, server: ServerProcess = None):
        self.server = server

    def start(self) -> None:
        self._server_cpu = self.server.cpu() if self.server is not None else None
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def stop(self, count: int) -> Measurement:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        server_cpu = None
        if self.server is not None:
            server_cpu = self.server.cpu() - self._server_cpu
        return Measurement(count, wall, cpu, server_cpu)


def measure_in_process(operation, count: int) -> Measurement:
    """Run C{operation()} C{count} times on this thread and time it."""
    watch = Stopwatch()
    watch.start()
    for _ in range(count):
        operation()
    return watch.stop(count)


def rate(count: float, seconds: float, unit: str = "/s") -> str:
    """C{count / seconds} written for people, e.g. C{'1,234/s'}."""
    if seconds <= 0:
        return "inf" + unit
    value = count / seconds
    if value >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:,.1f}{unit}"


def ratio(measured: float, anchor: float) -> str:
    return f"{measured / anchor:.2f}" if anchor else "n/a"


def sleep(reactor, seconds: float = 0.0):
    """Let the reactor run for a while (0: one iteration)."""
    return task.deferLater(reactor, seconds, lambda: None)


def with_timeout(d, reactor, seconds: float):
    """Fail C{d} if it has not fired in C{seconds}, so that a stall cannot hang a run."""
    return d.addTimeout(seconds, reactor)


def gather(deferreds):
    return defer.gatherResults(list(deferreds), consumeErrors=True)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    return p


def pick(value, quick: bool, full, small):
    """An explicit option wins; otherwise the full or the quick default."""
    if value is not None:
        return value
    return small if quick else full


def out(line: str = "") -> None:
    print(line, flush=True)


def raise_nofile() -> tuple:
    """
    Raise this process's soft file-descriptor limit to its hard limit.

    @return: C{(soft, hard)} as they are afterwards (soft may stay lower if
        the system refuses).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_memory(pid: int) -> dict:
    """C{VmRSS} and C{VmHWM} of process C{pid} in bytes, from C{/proc/PID/status}."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) * 1024
    return found


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process C{pid} so far, from C{/proc/PID/stat}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def megabytes(size: float) -> str:
    return f"{size / 2**20:,.1f} MB"


def listen_overflows() -> int:
    """The kernel's C{TcpExtListenOverflows} (system-wide; -1 if unreadable)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = [line.split() for line in f]
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2]):
        if names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return -1


def callgrind_instructions(module, *args):
    """
    Total instructions of C{python -m module --child *args} run under
    valgrind's callgrind (the figure the machine's load does not move).
    """
    with tempfile.TemporaryDirectory() as tmp:
        outfile = os.path.join(tmp, "callgrind.out")
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={outfile}", sys.executable, "-m", module]
        result = subprocess.run([*argv, "--child", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"callgrind run failed: {result.stderr[-2000:]}")
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError("no instruction count in callgrind's output")
    return int(match.group(1))
