"""The bench's child processes: JSON lines on stdin and stdout."""

import json
import os
import shutil
import sys
from collections import deque

from twisted.internet import defer, stdio, task
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols.basic import LineReceiver

from bench._common import REPO_ROOT, ServerError, log_warnings_only, out


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
    out(f"node (pid {node.pid}): {hello['nofile_line']}{limit}")
    return node, hello
