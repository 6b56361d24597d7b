"""The node child (C{python -m bench.capacity node}): a node under test that answers the bench."""

import ctypes
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections import Counter

import attr
from twisted.internet import defer

from bench._common import LOCAL_ENDPOINT, REPO_ROOT
from bench.capacity.common import PSK
from bench.capacity.limits import raise_descriptors
from bench.capacity.probe import Stalls


def _module_of(transport) -> str:
    return type(transport).__module__.rpartition(".")[2]


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


class NodeControl:
    """What the bench asks the node child: its counters, and where its memory went."""

    def __init__(self, node, counter, events, stalls):
        self.node = node
        self.counter = counter
        self.events = events
        self.stalls = stalls
        self._snapshot = None
        self._types = None
        self._profile = None

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

    def do_stalls(self, reset=False):
        """The node's collections and reactor lateness (L{Stalls}) since the last reset."""
        summary = self.stalls.summary()
        if reset:
            self.stalls.reset()
        return summary

    def do_profile(self, path=None):
        """
        Start a cProfile of the node (its reactor thread, CPU time as the
        clock: bench/_cpuprofile.py says why); with C{path}, stop it and
        write its stats there.
        """
        import cProfile

        if path is None:
            self._profile = cProfile.Profile(time.process_time)
            self._profile.enable()
            return {"profiling": True}
        self._profile.disable()
        self._profile.dump_stats(path)
        self._profile = None
        return {"written": path}

    def do_heap(self, trim=False):
        """
        Where the node's heap stands: glibc's C{mallinfo2} (bytes in use
        and free in its arenas, and in C{mmap}ed blocks), the RSS, and with
        C{trim} the RSS after C{malloc_trim(0)} (the free memory glibc could
        give back). RSS above what is in use is the allocator's, not the
        sessions' (L{bench.capacity.idle}'s C{--heap}).
        """
        return heap_figures(trim)

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def heap_figures(trim=False) -> dict:
    """L{NodeControl.do_heap}: glibc's figures, in bytes (empty where glibc lacks C{mallinfo2})."""
    gc.collect()
    libc = ctypes.CDLL(None)
    answer = {"rss": _rss()}
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        answer.update(
            in_use=info.uordblks, free=info.fordblks, mmapped=info.hblkhd, arena=info.arena, top=info.keepcost
        )
    answer.update(pymalloc_figures())
    if trim and hasattr(libc, "malloc_trim"):
        started = time.perf_counter()
        libc.malloc_trim(0)
        answer.update(rss_trimmed=_rss(), trim_seconds=time.perf_counter() - started)
    return answer


#: C{sys._debugmallocstats} lines read by L{pymalloc_figures}: name, its key.
_PYMALLOC = {
    "# bytes in allocated blocks": "py_in_use",
    "# bytes in available blocks": "py_free_blocks",
    "unused pools * 16384 bytes": "py_free_pools",
    "arenas * 1048576 bytes/arena": "py_arenas",
}


def pymalloc_figures() -> dict:
    """CPython's small-object allocator (C{sys._debugmallocstats}, which writes to file descriptor 2): bytes."""
    if not hasattr(sys, "_debugmallocstats"):
        return {}
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode("ascii", "replace")
    found = {}
    for line in text.splitlines():
        name, _, value = line.rpartition("=")
        for pattern, key in _PYMALLOC.items():
            if pattern in name:
                found[key] = int(value.strip().replace(",", ""))
    return found


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


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
    from cairn.node import Process
    from cairn.service import make_node

    nofile = raise_descriptors()
    if args.tracemalloc:
        tracemalloc.start()
    listen = LOCAL_ENDPOINT + (f":backlog={args.backlog}" if args.backlog else "")
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-capacity-")
    limits = {}
    if args.per_source and "max_handshakes_per_source" in attr.fields_dict(Config):
        limits["max_handshakes_per_source"] = args.per_source
    if args.unpaired_limits and "max_unpaired_sessions" in attr.fields_dict(Config):
        ttl, total, per_source = args.unpaired_limits.split(":")
        limits.update(max_unpaired_sessions=int(total), max_unpaired_per_source=int(per_source))
        if ttl:  # else the node's default
            limits.update(unpaired_session_ttl=float(ttl))
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
    # As the twistd plugin does (cairn/tap.py): the process is the node's.
    node = make_node(config, reactor, Process(freeze_gc=True))
    counter = SinkCounter()
    serve_channels(node.peer, counter)
    events = SessionEvents()
    node.peer.add_observer(events)
    try:
        node.startService()
        ports = yield node.ready
        stalls = Stalls(reactor).start()
        control.handle = NodeControl(node, counter, events, stalls)
        numbers = {name: port.getHost().port for name, port in ports.items()}
        control.send({**numbers, "nofile": nofile.after, "nofile_line": nofile.line(), "pid": os.getpid()})
        yield control.done
    finally:
        if node.running:
            yield node.stopService()
        shutil.rmtree(data_dir, ignore_errors=True)
