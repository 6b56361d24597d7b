"""
A real C{twistd -n cairn} process, driven by the client over TCP and
WebSocket on 127.0.0.1, stopped with SIGTERM and started again.
"""

import os
import re
import sys

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from cairn.client import Client
from cairn.crypto.identity import load_or_create
from cairn.pairing.client import pair_psk
from cairn.session import store
from tests._harness import eventually, track_connections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LISTENING = re.compile(r"listening: (\w+) on 127\.0\.0\.1:(\d+)")


class TwistdProcess(protocol.ProcessProtocol):
    """Collects the log and fires C{listening} with {name: port} once all are up."""

    def __init__(self, expected):
        self.expected = expected
        self.ports = {}
        self.output = []
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()
        self._waiting = []

    def wait_for(self, text, count=1):
        """A Deferred firing once C{text} has appeared C{count} times in the log."""
        d = defer.Deferred()
        self._waiting.append((text, count, d))
        self._check()
        return d

    def _check(self):
        log = "".join(self.output)
        for item in list(self._waiting):
            text, count, d = item
            if log.count(text) >= count:
                self._waiting.remove(item)
                d.callback(None)

    def outReceived(self, data):
        text = data.decode("utf-8", "replace")
        self.output.append(text)
        for name, port in _LISTENING.findall(text):
            self.ports[name] = int(port)
        if set(self.ports) >= self.expected and not self.listening.called:
            self.listening.callback(dict(self.ports))
        self._check()

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError("twistd ended early:\n" + "".join(self.output)))
        self.ended.callback((reason.value.exitCode, reason.value.signal))


@defer.inlineCallbacks
def paired_by_psk(client, address, psk):
    """A session of C{client} with the node at C{address}, paired by C{psk}."""
    session = yield eventually(client.connect(address))
    yield eventually(pair_psk(session, psk))
    return session


def kill_at_end(proc):
    """
    For C{addCleanup}: kill -9 C{proc} (a L{TwistdProcess}) if it still
    runs, and wait for it; CAIRN_TEST_SHOW=1 prints its output first.
    """
    if os.environ.get("CAIRN_TEST_SHOW"):
        print("".join(proc.output))
    if not proc.ended.called:
        proc.transport.signalProcess("KILL")
        return proc.ended


def start_twistd(data_dir, expected=("tcp", "websocket"), nofile=None, **settings):
    """
    Start C{twistd -n cairn} on loopback port 0; C{settings} are extra
    CAIRN_* variables; C{nofile} lowers the child's RLIMIT_NOFILE (and
    keeps it there: the node, root here, would otherwise raise it to
    fs.nr_open at start-up).
    """
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        CAIRN_DATA_DIR=data_dir,
        CAIRN_LISTEN="tcp:0:interface=127.0.0.1",
        CAIRN_WS_LISTEN="tcp:0:interface=127.0.0.1",
        CAIRN_MGMT_LISTEN="none",
    )
    env.update(settings)
    proc = TwistdProcess(set(expected))
    code = "from twisted.scripts.twistd import run; run()"
    if nofile is not None:
        code = (
            f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
            f"import cairn.fdlimit; cairn.fdlimit.kernel_ceiling = lambda: None; {code}"
        )
    argv = [
        sys.executable,
        "-c",
        code,
        "--nodaemon",
        "--pidfile=",
        "--logfile=-",
        "cairn",
    ]
    reactor.spawnProcess(proc, sys.executable, argv, env=env, path=REPO)
    return proc


class TwistdTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_real_twistd_serves_and_resumes(self):
        """A twistd-run node accepts TCP and WebSocket sessions and, after SIGTERM and restart, resumes both."""
        data_dir = os.path.abspath(self.mktemp())
        psk = "a pre-shared key for the twistd test only"
        proc = start_twistd(data_dir, CAIRN_PSK=psk)
        self.addCleanup(self._kill, proc)
        ports = yield eventually(proc.listening, 60)
        expected_peer = load_or_create(data_dir).peer_id

        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, [])
        over_tcp = yield eventually(client.connect(f"tcp:host=127.0.0.1:port={ports['tcp']}"))
        over_ws = yield eventually(client.connect(f"ws://127.0.0.1:{ports['websocket']}/"))
        self.assertEqual(over_tcp.remote_peer_id, expected_peer)
        self.assertEqual(over_ws.remote_peer_id, expected_peer)
        # Paired: only paired peers' sessions are saved at a stop (§16).
        yield eventually(pair_psk(over_tcp, psk))
        over_tcp.send(0xF000, b"x")  # an application message: no handler, ignored
        yield eventually(proc.wait_for(" established with ", 2), 30)
        lost = [over_tcp.connection.lost, over_ws.connection.lost]

        proc.transport.signalProcess("TERM")
        yield self.stopped_cleanly(proc)
        yield eventually(defer.gatherResults(lost))
        self.assertIn("saved 2 session(s)", "".join(proc.output))
        self.assertTrue(os.path.exists(os.path.join(data_dir, store.FILE_NAME)))

        proc = start_twistd(data_dir)
        self.addCleanup(self._kill, proc)
        ports = yield eventually(proc.listening, 60)
        yield eventually(client.resume(over_tcp, f"tcp:host=127.0.0.1:port={ports['tcp']}"))
        yield eventually(client.resume(over_ws, f"ws://127.0.0.1:{ports['websocket']}/"))
        self.assertTrue(over_tcp.attached and over_ws.attached)
        lost = [over_tcp.connection.lost, over_ws.connection.lost]
        proc.transport.signalProcess("TERM")
        yield self.stopped_cleanly(proc)
        yield eventually(defer.gatherResults(lost))
        log = "".join(proc.output)
        self.assertIn("restored 2 session(s)", log)
        self.assertIn("file descriptors: RLIMIT_NOFILE ", log)  # one start-up line
        self.assertNotIn("Traceback", log)

    @defer.inlineCallbacks
    def stopped_cleanly(self, proc):
        """Wait for a SIGTERM'd twistd; it re-raises the signal after a clean shutdown."""
        status = yield eventually(proc.ended, 60)
        log = "".join(proc.output)
        self.assertIn(status, [(0, None), (None, 15)], log)
        self.assertIn("Server Shut Down.", log)

    def _kill(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("KILL")
            return proc.ended
