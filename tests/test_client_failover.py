"""
Client failover between the nodes of one deployment (issue 15): several
node addresses in C{cairn.client}, resume tried at each in turn with
backoff on the client's clock, a refused Reconnect (Close 9) answered by a
new handshake, the node pin checked at every address, and C{--server}
taking several addresses in the device CLIs.

The nodes share one identity key (as a cluster's do) and run on SQLite:
the refusal a device meets at another node is the same Close 9 either way.
Each node's trust store is its own here, so a device pairs with each.
"""

import os
import shutil

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from cairn.cli import mailbox as mailbox_cli
from cairn.cli import relay as relay_cli
from cairn.cli.device import server_addresses
from cairn.client import Client
from cairn.crypto.identity import load_or_create
from cairn.dial import Unreachable, node_addresses
from cairn.failover import RESUME_BACKOFF
from cairn.mailbox import client as mailbox
from cairn.pairing import client as pairing
from cairn.pins import MemoryPins, NodeMismatch
from cairn.service import make_node
from cairn.wire.constants import CloseCode
from tests._harness import Conditions, closed, drop_all, eventually, track_connections
from tests.test_service import config_for
from tests.test_twistd import kill_at_end, start_twistd

PSK = "a pre-shared key for the failover tests only"


def share_identity(source_dir, data_dir):
    """Give the node of C{data_dir} the identity of C{source_dir}'s (created there if absent)."""
    os.makedirs(source_dir, mode=0o700, exist_ok=True)
    load_or_create(source_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    target = os.path.join(data_dir, "identity.key")
    shutil.copyfile(os.path.join(source_dir, "identity.key"), target)
    os.chmod(target, 0o600)


def detached(client, session):
    """A Deferred firing once C{client} sees C{session}'s transport gone."""
    d = defer.Deferred()

    class Watch:
        @staticmethod
        def session_detached(s):
            if s is session and not d.called:
                d.callback(s)

    client.peer.add_observer(Watch())
    return eventually(d, 30)


@defer.inlineCallbacks
def closed_port_address():
    """A loopback TCP address where nothing listens (a node that is down)."""
    port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
    number = port.getHost().port
    yield port.stopListening()
    return f"tcp:host=127.0.0.1:port={number}"


class AddressTests(unittest.TestCase):
    def test_one_or_several(self):
        """connect() takes one address string or a list of them; duplicates and blanks around are dropped."""
        self.assertEqual(node_addresses("tcp:host=a:port=1"), ("tcp:host=a:port=1",))
        self.assertEqual(node_addresses(["ws://a:1/", " ws://b:1/", "ws://a:1/"]), ("ws://a:1/", "ws://b:1/"))

    def test_bad_lists(self):
        """An empty list or a non-string entry is a ValueError naming it."""
        self.assertRaises(ValueError, node_addresses, [])
        error = self.assertRaises(ValueError, node_addresses, ["ws://a:1/", 7])
        self.assertIn("7", str(error))

    def test_connect_bad_list_fails_deferred(self):
        """connect([]) fails its Deferred with ValueError (nothing raised synchronously)."""
        client = Client(reactor, clock=task.Clock())
        return self.assertFailure(client.connect([]), ValueError)

    def test_cli_server_repeated_or_commas(self):
        """--server may be repeated and may hold comma-separated addresses; order kept, duplicates dropped."""
        for tool in (mailbox_cli, relay_cli):
            argv = ["--server", "tcp:host=a:port=1,ws://b:2/", "--server", "tcp:host=c:port=3", "--server", "ws://b:2/"]
            command = ["whoami"] if tool is mailbox_cli else ["listen"]
            args = tool.parser().parse_args(argv + command)
            self.assertEqual(server_addresses(args), ["tcp:host=a:port=1", "ws://b:2/", "tcp:host=c:port=3"])

    def test_cli_server_required(self):
        """Without --server the device CLIs stop with a usage error, as before."""
        for tool in (mailbox_cli, relay_cli):
            self.assertRaises(SystemExit, tool.parser().parse_args, ["whoami"])


class TwoNodes:
    """Two in-process nodes sharing one identity; C{self.addresses} are their TCP addresses."""

    def setUp(self):
        self.connections = []
        self.node_connections = {}
        self.nodes = []
        self.conditions = Conditions()
        first = os.path.abspath(self.mktemp())
        second = os.path.abspath(self.mktemp())
        share_identity(first, second)
        self.identity = load_or_create(first).peer_id
        return self._start_all([first, second])

    @defer.inlineCallbacks
    def _start_all(self, dirs):
        self.addresses, self.ws_addresses = [], []
        for data_dir in dirs:
            node = make_node(config_for(data_dir, psk=PSK), reactor)
            self.node_connections[node] = []
            track_connections(node.peer, self.node_connections[node])
            node.startService()
            ports = yield eventually(node.ready, 30)
            self.nodes.append(node)
            self.addresses.append(f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}")
            self.ws_addresses.append(f"ws://127.0.0.1:{ports['websocket'].getHost().port}/")

    @defer.inlineCallbacks
    def tearDown(self):
        yield drop_all(self.connections)
        for node in self.nodes:
            if node.running:
                yield node.stopService()

    def client(self, **kwargs):
        client = Client(reactor, clock=task.Clock(), **kwargs)
        track_connections(client.peer, self.connections)
        return client

    @defer.inlineCallbacks
    def pair_everywhere(self, client):
        """Pair C{client} with each node (their trust stores are separate here); fires when done."""
        for address in self.addresses:
            session = yield eventually(client.connect(address))
            yield eventually(pairing.pair_psk(session, PSK))
            yield eventually(client.close(session))

    def server_session(self, node):
        """A Deferred firing with the next session C{node} establishes."""
        d = defer.Deferred()

        class Watch:
            @staticmethod
            def session_established(session):
                if not d.called:
                    d.callback(session)

        node.peer.add_observer(Watch())
        return eventually(d)

    @defer.inlineCallbacks
    def connected(self, client, addresses, **kwargs):
        """C{client.connect(addresses)}, firing once node 0 has the session too (not only the client)."""
        established = self.server_session(self.nodes[0])
        session = yield eventually(client.connect(addresses, **kwargs))
        server = yield established
        self.assertEqual(server.session_id, session.session_id)
        return session

    @defer.inlineCallbacks
    def stop_node(self, index):
        """Stop node C{index}: its sessions' transports drop without a Close, its port refuses."""
        node = self.nodes[index]
        yield eventually(node.stopService(), 30)
        lost = [c.lost for c in self.node_connections[node] if not c.lost.called and c.transport is not None]
        yield eventually(defer.gatherResults(lost))


class FailoverTests(TwoNodes, unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_connect_tries_addresses_in_order(self):
        """connect() with a dead address first reaches the node at the next one."""
        dead = yield closed_port_address()
        client = self.client()
        session = yield eventually(client.connect([dead, self.addresses[1]]))
        self.assertEqual(session.remote_peer_id, self.identity)
        self.assertEqual(client._addresses[session.session_id], self.addresses[1])

    @defer.inlineCallbacks
    def test_connect_none_answers(self):
        """With several addresses and none answering, connect() fails with Unreachable naming each."""
        dead = []
        for _ in range(2):
            dead.append((yield closed_port_address()))
        client = self.client()
        error = yield self.assertFailure(client.connect(dead), Unreachable)
        self.assertEqual([address for address, _ in error.errors], dead)
        self.assertTrue(all(isinstance(e, ConnectionRefusedError) for _, e in error.errors))
        for address in dead:
            self.assertIn(address, str(error))
        # One address: its own error, as before.
        yield self.assertFailure(client.connect(dead[:1]), ConnectionRefusedError)

    @defer.inlineCallbacks
    def test_refused_reconnect_runs_new_handshake(self):
        """A Reconnect refused with Close 9 is followed by a new handshake; the old session ends with 9, replaced."""
        client = self.client(auto_resume=True)
        yield self.pair_everywhere(client)
        session = yield self.connected(client, self.addresses)
        server = self.nodes[0].peer.sessions[session.session_id]
        replaced = defer.Deferred()
        client.on_session_replaced = lambda old, new: replaced.callback((old, new))
        lost = server.connection.lost
        session.connection.drop_transport()
        yield eventually(lost)
        server.close()  # the node forgets it: a Reconnect gets Close 9
        ended = closed(session)
        client.clock.advance(RESUME_BACKOFF[0])
        old, new = yield eventually(replaced)
        self.assertIs(old, session)
        self.assertEqual((yield ended).code, CloseCode.UNKNOWN_SESSION)
        self.assertIsNot(new, session)
        self.assertTrue(new.attached)
        self.assertIs(client.current(session), new)
        self.assertEqual(new.remote_peer_id, self.identity)
        # The device carries on: the new session is served (paired, mailbox).
        result = yield eventually(mailbox.forward(new, client.peer_id, b"after the new handshake"))
        self.assertFalse(result.duplicate)

    def test_node_stops_device_moves_to_other_node(self):
        """Node 1 stops: the session is resumed nowhere, so it is replaced by a new one with node 2, which serves it."""
        return self.node_stops(self.addresses)

    def test_node_stops_websocket(self):
        """Node 1 stops: a session made over WebSocket is replaced by a new one with node 2, over WebSocket."""
        return self.node_stops(self.ws_addresses)

    @defer.inlineCallbacks
    def node_stops(self, addresses):
        alice, bob = self.client(auto_resume=True), self.client()
        received = []
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: self.conditions.changed(received.append(data)))
        yield self.pair_everywhere(alice)
        yield self.pair_everywhere(bob)
        session = yield eventually(alice.connect(addresses))
        self.assertEqual(alice._addresses[session.session_id], addresses[0])
        yield eventually(mailbox.forward(session, bob.peer_id, b"before"))
        replaced = defer.Deferred()
        alice.on_session_replaced = lambda old, new: replaced.callback(new)

        gone = detached(alice, session)
        yield self.stop_node(0)
        yield gone
        alice.clock.advance(RESUME_BACKOFF[0])
        new = yield eventually(replaced, 30)
        self.assertEqual(alice._addresses[new.session_id], addresses[1])
        self.assertEqual(session.closed.code, CloseCode.UNKNOWN_SESSION)
        self.assertEqual(new.remote_peer_id, self.identity)
        yield eventually(mailbox.forward(alice.current(session), bob.peer_id, b"after"))
        yield eventually(bob.connect(addresses))
        yield self.conditions.until(lambda: b"after" in received, 30)

    @defer.inlineCallbacks
    def test_backoff_rounds_on_the_clock(self):
        """With every node down, each round tries every address once, then waits 1 s, 2 s, 4 s ... (client clock)."""
        client = self.client(auto_resume=True, resume_jitter=0)  # the exact waits
        yield self.pair_everywhere(client)  # a node ends unpaired sessions when it stops
        session = yield self.connected(client, self.addresses)
        scheduled = []
        schedule = client._schedule_resume

        def recording(s, delay):
            scheduled.append(delay)
            schedule(s, delay)
            self.conditions.changed()

        client._schedule_resume = recording
        dials = []
        dial = client._dial
        client._dial = lambda address, connection: dials.append(address) or dial(address, connection)
        yield self.stop_node(0)
        yield self.stop_node(1)
        yield self.conditions.until(lambda: scheduled == [1.0])
        client.clock.advance(0.99)
        self.assertEqual(dials, [])
        client.clock.advance(0.01)
        # Round 1: the node that served it first, then the other; then 2 s.
        yield self.conditions.until(lambda: scheduled == [1.0, 2.0])
        self.assertEqual(dials, self.addresses)
        client.clock.advance(1.99)
        self.assertEqual(len(dials), 2)
        client.clock.advance(0.01)
        yield self.conditions.until(lambda: scheduled == [1.0, 2.0, 4.0])
        self.assertEqual(dials, self.addresses * 2)
        self.assertIsNone(session.closed)
        self.assertFalse(session.attached)
        # The session's own end (here: the application closes it) stops the retries.
        session.close()
        self.assertEqual(client._retries, {})

    @defer.inlineCallbacks
    def test_backoff_ceiling(self):
        """The delay between rounds doubles up to 60 s and stays there."""
        client = self.client(auto_resume=True)
        yield self.pair_everywhere(client)
        session = yield self.connected(client, self.addresses[:1])
        scheduled = []
        schedule = client._schedule_resume

        def recording(s, delay):
            scheduled.append(delay)
            schedule(s, delay)
            self.conditions.changed()

        client._schedule_resume = recording
        yield self.stop_node(0)
        for rounds in range(1, 9):
            yield self.conditions.until(lambda rounds=rounds: len(scheduled) == rounds)
            client.clock.advance(scheduled[-1])
        yield self.conditions.until(lambda: len(scheduled) == 9)
        self.assertEqual(scheduled, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0])
        session.close()

    @defer.inlineCallbacks
    def test_pin_covers_every_address(self):
        """Pairing pins the node under every address connected with; an impostor at another is skipped, or refused."""
        pins = MemoryPins()
        client = self.client(auto_resume=True, pins=pins)
        session = yield eventually(client.connect(self.addresses))
        yield eventually(pairing.pair_psk(session, PSK))
        self.assertEqual(pins.items(), {a: self.identity for a in self.addresses})

        # An impostor (another identity) at a third address of the list.
        fake, impostor_id = yield self.impostor()
        other = yield eventually(client.connect([fake, self.addresses[1]]))
        self.assertEqual(other.remote_peer_id, self.identity)  # the impostor was skipped
        # No node of the deployment answering: the mismatch is the error, not "unreachable".
        yield self.stop_node(0)
        error = yield self.assertFailure(client.connect([fake, self.addresses[0]]), NodeMismatch)
        self.assertEqual((error.expected, error.actual), (self.identity, impostor_id))

    @defer.inlineCallbacks
    def impostor(self):
        """Start a node with an identity of its own; fires with (its address, its peer id)."""
        node = make_node(config_for(os.path.abspath(self.mktemp()), ws_listen="none"), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        ports = yield eventually(node.ready, 30)
        return f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}", node.peer.peer_id

    def test_failover_refuses_impostor_expected(self):
        """A failover's new handshake answered by another identity than expect_peer_id is refused; the session waits."""
        return self.failover_to_impostor(expect_peer_id=self.identity)

    def test_failover_refuses_impostor_pinned(self):
        """A failover's new handshake at an unpinned address is checked against the pin of the others: refused."""
        return self.failover_to_impostor()

    @defer.inlineCallbacks
    def failover_to_impostor(self, **kwargs):
        client = self.client(auto_resume=True, pins=MemoryPins())
        yield self.pair_everywhere(client)  # pins the two nodes' addresses, each on its own
        fake, _ = yield self.impostor()
        self.assertIsNone(client.pins.get(fake))
        session = yield self.connected(client, [self.addresses[0], fake], **kwargs)
        scheduled = []
        schedule = client._schedule_resume

        def recording(s, delay):
            scheduled.append(delay)
            schedule(s, delay)
            self.conditions.changed()

        client._schedule_resume = recording
        replaced = []
        client.on_session_replaced = lambda old, new: replaced.append(new)
        yield self.stop_node(0)
        client.clock.advance(RESUME_BACKOFF[0])
        # Node 1 refuses the connection, the impostor refuses the Reconnect
        # (Close 9) and answers the new handshake with its own id: refused.
        yield self.conditions.until(lambda: scheduled == [1.0, 2.0], 30)
        self.assertEqual(replaced, [])
        self.assertIsNone(session.closed)
        self.assertEqual(self.flushLoggedErrors(), [])
        session.close()


class KillTests(unittest.TestCase):
    """Two real C{twistd -n cairn} processes sharing one identity; one is killed with SIGKILL."""

    timeout = 240

    def setUp(self):
        self.connections = []
        self.conditions = Conditions()

    def tearDown(self):
        return drop_all(self.connections)

    @defer.inlineCallbacks
    def test_kill_9_device_moves_on(self):
        """kill -9 of the node holding a session: the device gets a new session at the other node and carries on."""
        first, second = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        share_identity(first, second)
        procs = [start_twistd(d, expected=("tcp",), CAIRN_PSK=PSK, CAIRN_WS_LISTEN="none") for d in (first, second)]
        for proc in procs:
            self.addCleanup(kill_at_end, proc)
        ports = yield eventually(defer.gatherResults([p.listening for p in procs]), 90)
        addresses = [f"tcp:host=127.0.0.1:port={p['tcp']}" for p in ports]

        alice = Client(reactor, clock=task.Clock(), auto_resume=True)
        bob = Client(reactor, clock=task.Clock())
        received = []
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: self.conditions.changed(received.append(data)))
        for client in (alice, bob):
            track_connections(client.peer, self.connections)
            for address in addresses:
                session = yield eventually(client.connect(address))
                yield eventually(pairing.pair_psk(session, PSK))
                yield eventually(client.close(session))
        session = yield eventually(alice.connect(addresses))
        yield eventually(mailbox.forward(session, bob.peer_id, b"before"))
        replaced = defer.Deferred()
        alice.on_session_replaced = lambda old, new: replaced.callback(new)
        gone = detached(alice, session)

        procs[0].transport.signalProcess("KILL")
        yield eventually(procs[0].ended, 30)
        yield gone
        alice.clock.advance(RESUME_BACKOFF[0])
        new = yield eventually(replaced, 30)
        self.assertEqual(alice._addresses[new.session_id], addresses[1])
        self.assertEqual(session.closed.code, CloseCode.UNKNOWN_SESSION)
        yield eventually(mailbox.forward(alice.current(session), bob.peer_id, b"after"))
        yield eventually(bob.connect(addresses))
        yield self.conditions.until(lambda: b"after" in received, 30)


class SuccessorTests(unittest.TestCase):
    def test_chain_forgotten_when_last_session_ends(self):
        """current() follows every replacement; once the last session of a chain ends, the chain is forgotten."""
        from cairn.session.session import SessionClosed

        client = Client(reactor, clock=task.Clock())

        class Fake:
            def __init__(self, sid):
                self.session_id = sid
                self.closed = None

        a, b, c = Fake(b"a"), Fake(b"b"), Fake(b"c")
        client._successors.update({b"a": b, b"b": c})
        self.assertIs(client.current(a), c)
        self.assertIs(client.current(b), c)
        c.closed = SessionClosed(CloseCode.NORMAL, "")
        client.session_closed(c)
        self.assertEqual(client._successors, {})
        self.assertIs(client.current(a), a)
