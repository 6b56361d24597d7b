"""
Telling systemd how the start and the stop go (L{cairn.sdnotify}): the
datagrams on a socket of the test's own, and what a node sends when its
process is the node's (C{Process(tell_systemd=True)}, as under twistd).
"""

import os
import shutil
import socket
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import formatEvent
from twisted.trial import unittest

from cairn import sdnotify
from cairn.node import Process
from cairn.service import make_node
from tests._harness import eventually, observe_logs
from tests.test_service import config_for


def socket_path(testcase):
    """
    A path for a Unix socket of the test's own, in a short temporary
    directory: one under trial's working directory can pass the 108 bytes
    a socket address holds when the checkout's path is long.
    """
    directory = tempfile.mkdtemp(prefix="cairn-sd-")
    testcase.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "notify")


class Listener:
    """A Unix datagram socket standing in for systemd's notification socket."""

    def __init__(self, testcase, path=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.sock.close)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def received(self):
        """Every datagram waiting, decoded."""
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return found


class NotifyTests(unittest.TestCase):
    def test_sent_to_the_socket(self):
        """NOTIFY_SOCKET a path: the state arrives as one datagram."""
        path = socket_path(self)
        listener = Listener(self, path)
        self.assertTrue(sdnotify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path}))
        self.assertEqual(listener.received(), ["READY=1\nSTATUS=up"])

    def test_abstract_socket(self):
        """NOTIFY_SOCKET starting with @: Linux's abstract namespace."""
        name = f"cairn-test-{os.getpid()}-{id(self)}"
        listener = Listener(self, "\0" + name)
        self.assertTrue(sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(listener.received(), ["STOPPING=1"])

    def test_not_under_systemd(self):
        """No NOTIFY_SOCKET: nothing sent."""
        self.assertFalse(sdnotify.notify("READY=1", {}))
        self.assertFalse(sdnotify.notify("READY=1", {"NOTIFY_SOCKET": ""}))

    def test_socket_gone(self):
        """A socket that is not there: a warning, never an exception."""
        events = observe_logs(self)
        self.assertFalse(sdnotify.notify("READY=1", {"NOTIFY_SOCKET": os.path.abspath(self.mktemp())}))
        self.assertTrue(any("could not tell systemd 'READY=1'" in formatEvent(e) for e in events))


class NodeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def run_node(self, process):
        path = socket_path(self)
        listener = Listener(self, path)
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET=path))
        node = make_node(config_for(os.path.abspath(self.mktemp())), reactor, process)
        node.startService()
        started = listener.received()
        yield node.ready
        serving = listener.received()
        yield node.stopService()
        return started, serving, listener.received()

    @defer.inlineCallbacks
    def test_ready_serving_stopping(self):
        """
        The node's own process: READY=1 once started (SIGHUP handled,
        listeners bound), STATUS=serving once it serves, STOPPING=1 at its stop.
        """
        started, serving, stopping = yield self.run_node(Process(tell_systemd=True))
        self.assertTrue(started and started[0].startswith("READY=1"), started)
        self.assertIn("STATUS=serving", started + serving)
        self.assertEqual(stopping, ["STOPPING=1"])

    @defer.inlineCallbacks
    def test_embedded_node_says_nothing(self):
        """A node embedded in an application (the default Process) sends systemd nothing: the process is not its."""
        started, serving, stopping = yield self.run_node(Process())
        self.assertEqual((started, serving, stopping), ([], [], []))


class Datagrams(DatagramProtocol):
    """What a twistd node sends to the stand-in notification socket, with a Deferred per awaited state."""

    def __init__(self):
        self.states, self._waiting = [], []

    def datagramReceived(self, data, address):
        self.states.append(data.decode())
        for item in list(self._waiting):
            if any(item[0] in state.split("\n") for state in self.states):
                self._waiting.remove(item)
                item[1].callback(None)

    def until(self, line):
        d = defer.Deferred()
        self._waiting.append((line, d))
        self.datagramReceived(b"", None)  # (already there?)
        self.states.pop()
        return d


class TwistdTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_ready_then_a_reload_at_once(self):
        """
        A real twistd -n cairn under a NOTIFY_SOCKET: READY=1, and a SIGHUP
        sent the moment it arrives is handled (the node lives; under
        Type=simple a reload at start could kill it); STOPPING=1 on SIGTERM.
        """
        from tests.test_twistd import kill_at_end, start_twistd

        path = socket_path(self)
        datagrams = Datagrams()
        port = reactor.listenUNIXDatagram(path, datagrams)
        self.addCleanup(port.stopListening)
        proc = start_twistd(os.path.abspath(self.mktemp()), NOTIFY_SOCKET=path)
        self.addCleanup(kill_at_end, proc)
        yield eventually(datagrams.until("READY=1"), 60)
        proc.transport.signalProcess("HUP")
        yield eventually(proc.wait_for("SIGHUP:"), 60)
        yield eventually(datagrams.until("STATUS=serving"), 60)
        self.assertFalse(proc.ended.called)
        proc.transport.signalProcess("TERM")
        yield eventually(datagrams.until("STOPPING=1"), 60)
        yield eventually(proc.ended, 60)
