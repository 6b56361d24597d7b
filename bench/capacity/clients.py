"""Client children: sessions held (C{sessions}) and handshake floods (C{handshakes})."""

import os
import time
from collections import Counter

from twisted.internet import defer
from twisted.python.failure import Failure

from bench._common import gather, proc_memory
from bench.capacity.common import CONNECT_TIMEOUT, PSK, failure_name, poll, resume_like_a_fleet
from bench.capacity.limits import raise_descriptors
from bench.capacity.probe import Stalls


def addresses(ports, source: str = None) -> list:
    """
    The node's TCP and WebSocket addresses: session C{i} uses
    C{addresses[i % 2]}; C{source}: the TCP one binds its socket there
    (the WebSocket one through L{SourceClient}).
    """
    bind = f":bindAddress={source}" if source else ""
    return [f"tcp:host=127.0.0.1:port={ports['tcp']}{bind}", f"ws://127.0.0.1:{ports['websocket']}/"]


def source_client(reactor, source: str = None, **settings):
    """
    A L{Client} whose sockets (TCP and WebSocket) are bound to the loopback
    address C{source}, so that one source's ephemeral ports do not bound the
    run. L{Client} has no public option for a WebSocket's local address:
    the bench overrides its (private) endpoint lookup for C{ws://} URLs.
    """
    from urllib.parse import urlsplit

    from twisted.internet.endpoints import TCP4ClientEndpoint

    from cairn.client import Client

    client = Client(reactor, **settings)
    if source:
        lookup = client._endpoint

        def endpoint(address, websocket):
            if websocket:
                url = urlsplit(address)
                return TCP4ClientEndpoint(reactor, url.hostname, url.port, bindAddress=(source, 0))
            return lookup(address, websocket)

        client._endpoint = endpoint
    return client


@defer.inlineCallbacks
def open_sessions(
    reactor, targets, indices, concurrency, failures, prepare=None, paired=True, sources=(None,), **settings
):
    """
    Open one session per index, each from a new L{Client} (identity) to
    C{targets[i % 2]}, C{concurrency} at a time; C{prepare(client, session)}
    may add work (a Deferred) to each. Failures are counted by reason.

    @param paired: first pair the identity with the node's PSK in a session
        of its own, closed then, as a device does once: the session kept is
        one of a paired peer, like those of the devices a node serves.
    @param sources: session C{i}'s sockets are bound to
        C{sources[i // 2 % len(sources)]} (None: the kernel's choice); its
        TCP target must name the same (L{addresses}).
    @return: a list of (index, client, session).
    """
    from cairn.pairing.client import pair_psk

    opened = []
    left = iter(indices)

    @defer.inlineCallbacks
    def worker():
        for i in left:
            source = sources[i // 2 % len(sources)]
            target = targets[source][i % 2] if isinstance(targets, dict) else targets[i % 2]
            client = source_client(reactor, source, **settings)
            try:
                if paired:
                    session = yield client.connect(target).addTimeout(CONNECT_TIMEOUT, reactor)
                    yield pair_psk(session, PSK)
                    session.close()
                session = yield client.connect(target).addTimeout(CONNECT_TIMEOUT, reactor)
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
    """
    Idle clients: open sessions, report, keep them until stdin closes. In
    between, L{Held} answers the bench (C{stats}, and the storm's C{drop}
    and C{resume}).
    """
    from cairn.mailbox import client as mailbox

    nofile = raise_descriptors()
    control.send({"nofile": nofile.after, "nofile_line": nofile.line()})
    failures = Counter()
    start = time.perf_counter()
    timeout = args.keepalive_timeout or args.keepalive * 4
    settings = dict(keepalive_interval=args.keepalive, keepalive_timeout=timeout)
    ports = {"tcp": args.tcp, "websocket": args.websocket}
    sources = args.source or [None]
    targets = {source: addresses(ports, source) for source in sources}
    if args.only:
        # One session type only (per-type memory): both slots dial it.
        targets = {source: [pair[0 if args.only == "tcp" else 1]] * 2 for source, pair in targets.items()}
    indices = range(args.first, args.first + args.count)
    held = Held(reactor)

    def prepare(client, session):
        mailbox.set_inbox(client.peer, held.arrived)

    opened = yield open_sessions(
        reactor, targets, indices, args.concurrency, failures, prepare, args.paired, sources, **settings
    )
    held.opened = opened
    control.handle = held
    control.send({"opened": len(opened), "failed": dict(failures), "seconds": time.perf_counter() - start})
    yield control.done


class Held:
    """What a C{sessions} child answers: its sessions' state, and the storm's drop and resume."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.stalls = Stalls(reactor).start()
        self.opened = []
        self.dropped = []
        self.messages = 0
        self.last = None

    def __call__(self, command, **arguments):
        return getattr(self, "do_" + command)(**arguments)

    def arrived(self, sender, message_id, data):
        self.messages += 1
        self.last = time.perf_counter()

    def do_stalls(self, reset=False):
        summary = self.stalls.summary()
        if reset:
            self.stalls.reset()
        return summary

    def do_stats(self):
        sessions = [s for _, _, s in self.opened]
        return {
            "attached": sum(s.attached for s in sessions),
            "ended": sum(s.closed is not None for s in sessions),
            "rss": proc_memory(os.getpid())["VmRSS"],
        }

    @defer.inlineCallbacks
    def do_drop(self, count):
        """Abort the sockets of C{count} sessions at once; fire with their peers' ids once all are detached."""
        # Of the sessions still attached (a session can end or detach while held).
        self.dropped = [opened for opened in self.opened if opened[2].attached][:count]
        for _, _, session in self.dropped:
            # Under the cairn transport (TCP stream or WebSocket): the socket.
            session.connection.transport.transport.abortConnection()
        yield poll(self.reactor, lambda: not any(s.attached for _, _, s in self.dropped), 120, every=0.1)
        return {"peers": [client.peer_id for _, client, _ in self.dropped]}

    @defer.inlineCallbacks
    def do_resume(self, expect, within, attempts, attempt_timeout, lockstep=False):
        """
        Resume every dropped session as a fleet of clients would (L{resume_like_a_fleet};
        C{lockstep}: all at once); fire once all are resumed and
        C{expect} mailbox messages have arrived (or C{within} seconds passed).
        """
        self.messages, self.last = 0, None
        times, retries = [], Counter()
        start = time.perf_counter()

        @defer.inlineCallbacks
        def resume(client, session):
            failed = lambda name: retries.update([name])  # noqa: E731
            if (yield resume_like_a_fleet(self.reactor, client, session, attempts, attempt_timeout, lockstep, failed)):
                times.append(time.perf_counter() - start)
            else:
                retries["gave up"] += 1

        for _, client, session in self.dropped:
            resume(client, session)
        done = lambda: len(times) + retries["gave up"] >= len(self.dropped) and self.messages >= expect  # noqa: E731
        try:
            yield poll(self.reactor, done, within, start, every=0.05)
        except TimeoutError:
            pass
        return {
            "resumed": len(times),
            "times": times,
            "retries": dict(retries),
            "messages": self.messages,
            "last": self.last - start if self.last is not None else None,
            "attached": sum(s.attached for _, _, s in self.dropped),
        }


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
