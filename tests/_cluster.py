"""
Several real cairn nodes as one deployment, for the multi-node tests and
C{bench/cluster.py}: a 3-server NATS JetStream cluster (L{tests._nats})
and N C{twistd -n cairn} processes (L{tests.test_twistd.start_twistd})
on 127.0.0.1, ports picked free, each node with its own data directory
under the test's temp dir, one shared identity key (C{CAIRN_IDENTITY_FILE},
as a deployment's secret), its own C{CAIRN_NODE_NAME}, and its cairn TCP
address as C{CAIRN_RELAY_ATTACH_ADDRESS} (attached relay circuits across
nodes); the TCP port is chosen before the start, so a restarted node keeps
its address.

Every process is stopped by its PID in the test's cleanup (SIGKILL: the
tests are about what survives that anyway); every wait is bounded
(L{tests._harness.eventually}) and driven by the processes' own log
lines, never by sleeps.

A node can be given its NATS servers through L{NatsProxy} forwarders
that the test cuts and heals, to partition that node (and only it) from
NATS: the servers are then started with C{no_advertise}, so that nats-py
does not learn their direct addresses and go around the proxies.
"""

import glob
import json
import os
import signal

import treq
from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cairn.client import Client
from cairn.crypto.identity import load_or_create_file
from cairn.pairing import client as pairing
from cairn.relay import client as relay
from tests._harness import drop_all, eventually, one_person, track_connections
from tests._nats import free_port, start_nats_cluster
from tests.test_twistd import start_twistd

PSK = "a long pre-shared key for the multi-node tests"
TOKEN = "a management token for the multi-node tests"


class _Splice(protocol.Protocol):
    """One side of a proxied connection; what it reads goes to its C{other}."""

    other = None

    def __init__(self, proxy):
        self.proxy = proxy
        self.buffered = []

    def dataReceived(self, data):
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)
        else:
            self.buffered.append(data)

    def connectionLost(self, reason=None):
        self.proxy.open.discard(self)
        if self.other is not None and self.other.transport is not None:
            self.other.transport.loseConnection()


class _FromNats(_Splice):
    """
    The NATS side of a proxied connection. While the proxy holds
    deliveries (L{NatsProxy.hold_deliveries}) it reads what NATS sends
    frame by frame (the NATS protocol: a line, and for MSG/HMSG the
    payload its last field sizes) and keeps the messages on the held
    subjects until L{NatsProxy.release_deliveries}; the rest goes on.
    """

    pending = b""

    def dataReceived(self, data):
        if self.proxy.held_prefix is None and not self.pending:
            return super().dataReceived(data)
        self.pending += data
        while True:
            frame = _nats_frame(self.pending)
            if frame is None:
                return None
            self.pending = self.pending[len(frame) :]
            prefix = self.proxy.held_prefix
            if prefix is not None and _subject(frame).startswith(prefix):
                self.proxy.held.append((self, frame))
            else:
                super().dataReceived(frame)


def _nats_frame(buffer):
    """The first whole frame NATS sent in C{buffer}, or None (more is needed)."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    if not _subject(buffer[:end]):
        return buffer[: end + 2]
    total = end + 2 + int(buffer[:end].rsplit(b" ", 1)[1]) + 2
    return buffer[:total] if len(buffer) >= total else None


def _subject(frame):
    """The subject of a MSG or HMSG frame (or its line), else b""."""
    op, _, rest = frame.partition(b" ")
    return rest.split(b" ", 1)[0] if op.upper() in (b"MSG", b"HMSG") else b""


class _Inbound(_Splice):
    tail = b""

    def dataReceived(self, data):
        marker = self.proxy.marker
        if marker is not None:
            if self.proxy.passed.called:
                return  # held: what the node sends after the marker never reaches NATS
            seen, self.tail = self.tail + data, (self.tail + data)[-len(marker) :]
            if marker in seen:
                super().dataReceived(data)
                self.proxy.passed.callback(None)
                return
        super().dataReceived(data)

    def connectionMade(self):
        if self.proxy.refusing:
            self.transport.abortConnection()
            return
        self.proxy.open.add(self)
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target, timeout=5)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _FromNats(self.proxy)))
        d.addCallbacks(self._connected, lambda _: self.transport.abortConnection())

    def _connected(self, outbound):
        if self.transport.disconnected:
            outbound.transport.abortConnection()
            return
        self.proxy.open.add(outbound)
        self.other, outbound.other = outbound, self
        for data in self.buffered:
            outbound.transport.write(data)
        self.buffered = []
        self.transport.resumeProducing()


class NatsProxy:
    """
    A TCP forwarder to one NATS server on a port of its own, so that a test
    can drop one node's NATS connections (L{cut}: every connection aborted,
    new ones refused) and restore them (L{heal}, same port).

    The port stays bound while cut (new connections are aborted at once
    rather than refused by a closed port): released, another process on a
    shared machine could take it before L{heal} listens again.

    Hand-written rather than L{twisted.protocols.portforward}: that one
    cannot abort what it forwards, which is the point here.
    """

    def __init__(self, target, login=""):
        self.target = target
        self.port = free_port()
        self.url = f"nats://{login}127.0.0.1:{self.port}"  # C{login}: "user:password@" of the server's account
        self.open = set()
        self.listening = None
        self.refusing = False
        self.marker = self.passed = None  # L{hold_after}
        self.held_prefix, self.held = None, []  # L{hold_deliveries}

    def hold_after(self, marker):
        """
        Forward what the node sends up to and including the first read that
        holds C{marker} (bytes of the NATS protocol, e.g. a subject), and
        nothing it sends after that, its connections left open: its next
        requests never reach NATS. Fires once the marker has passed.
        """
        self.marker, self.passed = marker, defer.Deferred()
        return self.passed

    def hold_deliveries(self, prefix):
        """
        Keep from the node the messages NATS sends it on subjects starting
        with C{prefix} (bytes; e.g. what a watch of some keys is delivered),
        everything else passing: its watch stalls, its requests are answered.
        """
        self.held_prefix = prefix

    def release_deliveries(self):
        """Pass the held messages on, in order, and hold no more."""
        self.held_prefix, held, self.held = None, self.held, []
        for side, frame in held:
            if side.other is not None and side.other.transport is not None:
                side.other.transport.write(frame)

    @defer.inlineCallbacks
    def heal(self):
        """Listen on the proxy's port (the first time) and forward again (whatever was held too)."""
        self.refusing = False
        self.marker = None
        if self.listening is None:
            endpoint = TCP4ServerEndpoint(reactor, self.port, interface="127.0.0.1")
            self.listening = yield endpoint.listen(protocol.Factory.forProtocol(lambda: _Inbound(self)))

    def cut(self):
        """Abort every connection through the proxy and each new one."""
        self.refusing = True
        for side in list(self.open):
            if side.transport is not None:
                side.transport.abortConnection()
        return defer.succeed(None)

    @defer.inlineCallbacks
    def close(self):
        """Cut, and stop listening for good (the test's clean-up)."""
        yield self.cut()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            yield listening.stopListening()


def libfaketime():
    """
    The path of libfaketime's multi-threaded library (Debian's C{libfaketime}
    package); without it the test skips, or fails under CI=true (.ci/run
    installs it with apt-get).
    """
    found = sorted(
        glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1") + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1")
    )
    if not found:
        if os.environ.get("CI") == "true":
            raise AssertionError("libfaketime not found under CI=true (.ci/run installs it with apt-get)")
        raise unittest.SkipTest("libfaketime not found (apt-get install libfaketime)")
    return found[0]


class FakeClock:
    """
    A node's wall clock, moved by the test: libfaketime (preloaded into the
    node's process only, never the NATS servers) adds the offset written in
    a file of the test's to what the process reads as the time of day.

    A real C{twistd} has no injectable clock; this is its stand-in for
    "days later" (retention, expiry). Only the real-time clock moves
    (C{FAKETIME_DONT_FAKE_MONOTONIC}): asyncio's loop and so nats-py keep
    their timers, while Twisted's reactor, on the time of day, runs every
    timer a jump passes (the nodes' sweeps among them) at its next turn.
    The file is re-read at each read of the clock (C{FAKETIME_NO_CACHE}),
    and replaced whole (written aside, renamed), so a node never reads a
    half-written offset.
    """

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.set(0)

    def set(self, seconds):
        """The node's clock is now C{seconds} ahead of the real one (forward only)."""
        if seconds < self.offset:
            raise ValueError("a node's clock only moves forward")
        self.offset = seconds
        with open(self.path + ".new", "w") as f:
            f.write(f"+{int(seconds)}\n")
        os.replace(self.path + ".new", self.path)

    def environment(self):
        return dict(
            LD_PRELOAD=libfaketime(),
            FAKETIME_TIMESTAMP_FILE=self.path,
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )


class Node:
    """
    One C{twistd -n cairn} process of a L{Deployment}.

    @ivar proc: its L{tests.test_twistd.TwistdProcess} (log in C{proc.output}).
    @ivar address: its cairn TCP listener, as a client endpoint string.
    @ivar mgmt: its management API base URL.
    """

    def __init__(self, deployment, name, data_dir, nats_urls):
        self.deployment = deployment
        self.name = name
        self.data_dir = data_dir
        self.nats_urls = nats_urls
        self.tcp_port = free_port()
        self.proc = None
        self.ports = {}
        self.runs = []  # every process this node ran, for the log
        #: A L{FakeClock} when the deployment was started with C{clocks}, else None.
        self.clock = None

    @property
    def address(self):
        return f"tcp:host=127.0.0.1:port={self.ports['tcp']}"

    @property
    def ws_address(self):
        return f"ws://127.0.0.1:{self.ports['websocket']}/"

    @property
    def mgmt(self):
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def log(self):
        return "".join("".join(proc.output) for proc in self.runs)

    def start(self, **settings):
        """
        Start the process (again: same data directory); fires with its ports
        once all listen. The cairn port is chosen before the first start (a
        restart keeps it, so that devices find the node again): if another
        process took it meanwhile, the first start tries a new one.
        """
        d = self._start(settings)
        if len(self.runs) == 1:

            def taken(failure, attempts):
                if attempts and "Address already in use" in str(failure.value) and "CAIRN_LISTEN" in str(failure.value):
                    self.runs.clear()
                    self.tcp_port = free_port()
                    return self._start(settings).addErrback(taken, attempts - 1)
                return failure

            d.addErrback(taken, 3)
        return d

    def _start(self, settings):
        env = dict(
            CAIRN_LISTEN=f"tcp:{self.tcp_port}:interface=127.0.0.1",
            CAIRN_RELAY_ATTACH_ADDRESS=f"tcp://127.0.0.1:{self.tcp_port}",
            CAIRN_IDENTITY_FILE=self.deployment.identity_file,
            CAIRN_PSK=PSK,
            CAIRN_MGMT_LISTEN="tcp:0:interface=127.0.0.1",
            CAIRN_MGMT_TOKEN=TOKEN,
            CAIRN_NODE_NAME=self.name,
            CAIRN_CLUSTER_NATS=",".join(self.nats_urls),
            CAIRN_CLUSTER_REPLICAS=str(self.deployment.replicas),
        )
        env.update(self.deployment.settings)
        if self.clock is not None:
            env.update(self.clock.environment())
        env.update(settings)
        self.proc = start_twistd(self.data_dir, expected=("tcp", "websocket", "management"), **env)
        self.runs.append(self.proc)

        def listening(ports):
            self.ports = ports
            return ports

        return eventually(self.proc.listening, 90).addCallback(listening)

    def kill(self, sig=signal.SIGKILL):
        """Signal the process by its PID; fires once it has ended."""
        proc = self.proc
        if proc is None or proc.ended.called:
            return defer.succeed(None)
        try:
            proc.transport.signalProcess({signal.SIGKILL: "KILL", signal.SIGTERM: "TERM"}.get(sig, sig))
        except error.ProcessExitedAlready:
            pass
        return eventually(proc.ended, 60)

    def wait_for(self, text, count=1, timeout=30):
        """Fires once C{text} appeared C{count} times in this run's log."""
        return eventually(self.proc.wait_for(text, count), timeout)

    @defer.inlineCallbacks
    def api(self, method, path, body=None):
        """Call the node's management API; fires with (status code, decoded JSON body)."""
        headers = {b"Authorization": [b"Bearer " + TOKEN.encode()]}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers[b"Content-Type"] = [b"application/json"]
        response = yield eventually(
            treq.request(method, self.mgmt + path, data=data, headers=headers, pool=self.deployment.pool), 30
        )
        content = yield eventually(response.content(), 30)
        return response.code, json.loads(content) if content else None

    @defer.inlineCallbacks
    def api_text(self, path):
        """GET C{path} of the node's management API (e.g. C{/metrics}); fires with the body as text (200 only)."""
        headers = {b"Authorization": [b"Bearer " + TOKEN.encode()]}
        response = yield eventually(treq.get(self.mgmt + path, headers=headers, pool=self.deployment.pool), 30)
        content = yield eventually(response.content(), 30)
        if response.code != 200:
            raise AssertionError(f"{self.name} GET {path}: {response.code}")
        return content.decode()


class Deployment:
    """
    3 NATS servers and N cairn nodes sharing one identity; library clients of it.

    @ivar nats: the L{tests._nats.NatsCluster}.
    @ivar nodes: the L{Node}s, by index (C{nodes[0]} is "node1").
    @ivar proxies: node name -> its L{NatsProxy}s, for the nodes started behind proxies.
    """

    def __init__(self, testcase, nats, directory, replicas=3, settings=None):
        self.testcase = testcase
        self.nats = nats
        self.directory = directory
        self.replicas = replicas
        self.settings = dict(settings or {})
        self.nodes = []
        self.proxies = {}
        self.connections = []
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # One identity for every node: peers see one server whichever they reach.
        self.identity_file = os.path.join(directory, "deployment-identity.key")
        self.peer_id = load_or_create_file(self.identity_file).peer_id

    @defer.inlineCallbacks
    def add_node(self, proxied=False, **settings):
        """A new node (not started) with a data directory of its own."""
        name = f"node{len(self.nodes) + 1}"
        data_dir = os.path.join(self.directory, name)
        os.makedirs(data_dir, mode=0o700)
        urls = self.nats.urls
        if proxied:
            proxies = [NatsProxy(server.port, _login(server.url)) for server in self.nats.servers]
            for proxy in proxies:
                self.testcase.addCleanup(proxy.close)
                yield proxy.heal()
            self.proxies[name] = proxies
            urls = [p.url for p in proxies]
        node = Node(self, name, data_dir, urls)
        self.nodes.append(node)
        self.testcase.addCleanup(node.kill)
        return node

    def cut(self, node):
        """Drop C{node}'s NATS connections and refuse new ones (it must have been added C{proxied})."""
        return defer.gatherResults([p.cut() for p in self.proxies[node.name]])

    def heal(self, node):
        return defer.gatherResults([p.heal() for p in self.proxies[node.name]])

    def hold(self, node, marker):
        """Pass what C{node} sends NATS up to C{marker}, nothing after it (L{NatsProxy.hold_after}); fires then."""
        passed = [p.hold_after(marker) for p in self.proxies[node.name]]
        return defer.DeferredList(passed, fireOnOneCallback=True, consumeErrors=True)

    def hold_deliveries(self, node, prefix):
        """Keep from C{node} what NATS delivers it on subjects starting with C{prefix}."""
        for proxy in self.proxies[node.name]:
            proxy.hold_deliveries(prefix)

    def release_deliveries(self, node):
        for proxy in self.proxies[node.name]:
            proxy.release_deliveries()

    # Clients

    def client(self, failover=False):
        """
        A new device of one person (one sync group key). Its sessions' timers
        are on a Clock of its own, or with C{failover} on the reactor: it
        resumes a dropped session by itself and, refused by a node that does
        not know it, moves to the deployment's next address (L{Client}
        C{auto_resume}); its sessions are closed before the nodes stop.
        """
        if failover:
            client = Client(reactor, auto_resume=True)
            self.testcase.addCleanup(self._close_sessions, client)
        else:
            client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        self.keyring = one_person(client, keyring=getattr(self, "keyring", None))
        return client

    @staticmethod
    def _close_sessions(client):
        for session in list(client.peer.sessions.values()):
            if session.closed is None:
                session.close()

    @staticmethod
    def _addresses(nodes):
        return [n.address for n in nodes] if isinstance(nodes, (list, tuple)) else nodes.address

    @defer.inlineCallbacks
    def paired(self, client, nodes):
        """Pair C{client} by PSK through C{nodes} (a node or a list, first answering used); fires with the session."""
        session = yield eventually(client.connect(self._addresses(nodes)), 30)
        yield eventually(pairing.pair_psk(session, PSK), 30)
        return session

    def connect(self, client, nodes):
        return eventually(client.connect(self._addresses(nodes)), 30)

    @defer.inlineCallbacks
    def circuit(self, first, second, attach):
        """
        Alice paired on C{first}, Bob on C{second}, and a relay circuit from
        Alice to Bob (owned by C{first}); fires with (alice, bob, Alice's
        end-to-end session, Bob's, Alice's node session, Bob's).
        """
        alice, bob = self.client(), self.client()
        for client in (alice, bob):
            relay.relay_endpoint(client).attach = attach
        node_b = yield self.paired(bob, second)
        node_a = yield self.paired(alice, first)
        yield self.known(first, bob.peer_id, connected=True)
        accepted = defer.Deferred()
        relay.relay_endpoint(bob).on_session = accepted.callback
        a = yield eventually(relay.relay_to(alice, node_a, bob.peer_id), 30)
        b = yield eventually(accepted, 30)
        self.testcase.assertEqual((a.remote_peer_id, b.remote_peer_id), (bob.peer_id, alice.peer_id))
        return alice, bob, a, b, node_a, node_b

    @defer.inlineCallbacks
    def known(self, node, *peer_ids, connected=False):
        """
        Fires once C{node} lists every one of C{peer_ids} as paired (and with
        C{connected}, as connected to some node): a pairing or a session made
        on another node reaches it through the trust bucket's watch and the
        deployment's presence, a moment later. Asked again after each
        answer, never on a timer.
        """
        for _ in range(1000):
            code, peers = yield node.api("GET", "/peers")
            if code == 200:
                listed = {p["peer_id"] for p in peers if p["connected"] or not connected}
                if set(peer_ids) <= listed:
                    return
        raise AssertionError(f"{node.name} never listed {peer_ids} as paired (connected: {connected})")

    def show_logs(self):
        """Print every node's log (set C{CAIRN_TEST_SHOW} to see them after each test)."""
        for node in self.nodes:
            print(f"===== {node.name}\n{node.log}")


def _login(url):
    """The C{user:password@} of a C{nats://} URL, or ""."""
    rest = url.split("://", 1)[1]
    return rest.split("@", 1)[0] + "@" if "@" in rest else ""


@defer.inlineCallbacks
def start_deployment(testcase, nodes=2, proxied=(), replicas=3, clocks=False, **settings):
    """
    A 3-server NATS cluster and C{nodes} started cairn nodes (those whose
    index is in C{proxied} reach NATS through L{NatsProxy}s; with C{clocks},
    each node's wall clock is a L{FakeClock} of its own, C{node.clock});
    fires with the L{Deployment}. Everything is stopped by PID in
    C{testcase}'s cleanup.
    """
    nats = yield start_nats_cluster(testcase, advertise=not proxied)
    deployment = Deployment(testcase, nats, os.path.abspath(testcase.mktemp()), replicas, settings)
    testcase.addCleanup(lambda: drop_all(deployment.connections))
    if os.environ.get("CAIRN_TEST_SHOW"):
        testcase.addCleanup(deployment.show_logs)
    for index in range(nodes):
        node = yield deployment.add_node(proxied=index in proxied)
        if clocks:
            node.clock = FakeClock(os.path.join(deployment.directory, f"{node.name}.faketime"))
    # One at a time: the first sets the JetStream layout up, the others find it.
    for node in deployment.nodes:
        yield node.start()
    return deployment
