"""
A clean restart under load, with real processes (docs/protocol.md §16):
SIGTERM a C{twistd -n cairn} node while a sender keeps 64 forwards in
flight, start it again on the same data directory and ports, and let the
clients resume by themselves (C{auto_resume}). Every forward in flight
gets its ForwardAck (or an error), later ones keep flowing, and a
subscriber's resumed session gets the updates published after the
restart without subscribing again.
"""

import os
import threading

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.client import Client
from cairn.mailbox import client as mailbox
from cairn.mailbox.client import uuid7
from cairn.pairing import client as pairing
from cairn.service import make_node
from cairn.session import store
from cairn.sync import client as sync
from tests._harness import Conditions, ScenarioMixin, drop_all, eventually, one_person, resumed, track_connections
from tests._nats import free_port
from tests.test_relay import RelayHarness
from tests.test_service import config_for
from tests.test_twistd import paired_by_psk, start_twistd

PSK = "a long pre-shared key for the clean restart tests"
IN_FLIGHT = 64


class CleanRestartTests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.connections = []
        self.conditions = Conditions()
        tcp, ws = free_port(), free_port()
        self.listen = {
            "CAIRN_LISTEN": f"tcp:{tcp}:interface=127.0.0.1",
            "CAIRN_WS_LISTEN": f"tcp:{ws}:interface=127.0.0.1",
        }
        self.tcp = f"tcp:host=127.0.0.1:port={tcp}"
        self.ws = f"ws://127.0.0.1:{ws}/"

    def tearDown(self):
        return drop_all(self.connections)

    @defer.inlineCallbacks
    def start(self):
        proc = start_twistd(self.data_dir, CAIRN_PSK=PSK, **self.listen)
        self.addCleanup(self._kill, proc)
        yield eventually(proc.listening, 60)
        return proc

    def _kill(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("KILL")
            return proc.ended

    def client(self):
        client = Client(reactor, clock=task.Clock(), auto_resume=True)
        track_connections(client.peer, self.connections)
        return client

    def paired(self, client, address):
        return paired_by_psk(client, address, PSK)

    @defer.inlineCallbacks
    def test_sigterm_under_load_answers_everything_in_flight(self):
        """After SIGTERM under load and a restart: every forward in flight answered, later ones and new updates flow."""
        proc = yield self.start()
        sender, watcher, publisher, bob = self.client(), self.client(), self.client(), self.client()
        one_person(watcher, publisher)
        s = yield self.paired(sender, self.tcp)
        w = yield self.paired(watcher, self.ws)
        p = yield self.paired(publisher, self.tcp)
        b = yield self.paired(bob, self.tcp)
        yield eventually(bob.close(b))
        updates = []

        def got(topic, seq, sender_id, data):
            updates.append(data)
            self.conditions.changed()

        sync.subscribe(w, ["notes"], got)
        yield eventually(sync.sync_publish(p, "notes", b"before"))
        yield self.conditions.until(lambda: updates == [b"before"], 30)

        # The load: IN_FLIGHT forwards in flight, one more sent as each is answered.
        outcome = {}  # message id -> "acked" | "error" | None while in flight
        running = [True]

        def lane():
            while running[0]:
                mid = uuid7()
                outcome[mid] = None

                def answered(result, mid=mid):
                    outcome[mid] = "acked" if not isinstance(result, Exception) else "error"
                    self.conditions.changed()

                d = mailbox.forward(s, bob.peer_id, b"load", mid)
                d.addCallbacks(answered, lambda f, mid=mid: answered(f.value, mid))
                yield d

        for _ in range(IN_FLIGHT):
            task.cooperate(lane())
        yield self.conditions.until(lambda: sum(v == "acked" for v in outcome.values()) >= 300, 60)

        lost = [c.lost for c in self.connections if not c.lost.called]
        proc.transport.signalProcess("TERM")  # the load goes on: the sender does not know
        yield eventually(proc.ended, 60)
        yield eventually(defer.gatherResults(lost), 30)
        log = "".join(proc.output)
        self.assertIn("saved 3 session(s)", log)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, store.FILE_NAME)))
        in_flight = [mid for mid, v in outcome.items() if v is None]
        self.assertEqual(len(in_flight), IN_FLIGHT)  # each lane waits for an answer

        proc = yield self.start()
        sessions = [s, w, p]
        back = [resumed(x) for x in sessions]
        for client in (sender, watcher, publisher):
            client.clock.advance(1.0)  # the auto-resume's first attempt
        yield eventually(defer.gatherResults(back), 30)
        self.assertIn("restored 3 session(s)", "".join(proc.output))

        # Every forward that was in flight is answered, on the same session,
        # and the load keeps flowing after them.
        yield self.conditions.until(lambda: all(outcome[mid] is not None for mid in in_flight), 60)
        total = len(outcome)
        yield self.conditions.until(lambda: len(outcome) >= total + 200, 60)
        running[0] = False
        yield self.conditions.until(lambda: None not in outcome.values(), 60)
        self.assertEqual(set(outcome.values()), {"acked"})
        # The subscriber's resumed session gets what is published now, without subscribing again.
        yield eventually(sync.sync_publish(p, "notes", b"after"))
        yield self.conditions.until(lambda: updates == [b"before", b"after"], 30)
        self.assertTrue(all(x.attached and x.closed is None for x in sessions))
        self.assertNotIn("Traceback", "".join(proc.output))


class StopOrderTests(unittest.TestCase):
    """The stop order of an in-process node (L{make_node}), with a store commit held at will."""

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.connections = []
        self.address = None
        self.listen = f"tcp:{free_port()}:interface=127.0.0.1"

    def tearDown(self):
        return drop_all(self.connections)

    @defer.inlineCallbacks
    def start(self):
        node = make_node(config_for(self.data_dir, psk=PSK, listen=self.listen, ws_listen="none"), reactor)
        node.startService()
        ports = yield eventually(node.ready)
        self.address = f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"
        return node

    @defer.inlineCallbacks
    def test_commit_in_progress_is_answered_after_resume(self):
        """A forward whose commit is still running when the stop begins gets its ForwardAck on the resumed session."""
        node = yield self.start()
        alice, bob = Client(reactor, clock=task.Clock(), auto_resume=True), Client(reactor, clock=task.Clock())
        for client in (alice, bob):
            track_connections(client.peer, self.connections)
        a = yield eventually(alice.connect(self.address))
        yield eventually(pairing.pair_psk(a, PSK))
        b = yield eventually(bob.connect(self.address))
        yield eventually(pairing.pair_psk(b, PSK))
        yield eventually(bob.close(b))

        # Hold the store's commit until the mailbox is told to stop.
        held, enqueued = [], defer.Deferred()
        enqueue, stop = node.mailbox.store.enqueue, node.mailbox.stop

        def holding(*args):
            d = defer.Deferred()
            held.append((d, args))
            enqueued.callback(None)
            return d

        def stopping():
            for d, args in held:
                enqueue(*args).chainDeferred(d)
            return stop()

        node.mailbox.store.enqueue = holding
        node.mailbox.stop = stopping
        forwarded = mailbox.forward(a, bob.peer_id, b"in flight")
        yield eventually(enqueued)
        gone = a.connection.lost
        yield eventually(node.stopService())
        yield eventually(gone)

        node = yield self.start()
        back = resumed(a)
        alice.clock.advance(1.0)
        yield back
        result = yield eventually(forwarded)
        self.assertFalse(result.duplicate)
        self.assertEqual(node.mailbox.stats()["messages"], 1)
        # The session goes on: a later forward is answered too.
        yield eventually(mailbox.forward(a, bob.peer_id, b"later"))
        yield node.stopService()


    @defer.inlineCallbacks
    def test_a_failed_step_is_logged_and_the_stop_goes_on(self):
        """A stop step that fails is logged (twistd would drop it silently) and the later steps still run."""
        node = yield self.start()
        closed = []
        stop_db, stop_mailbox = node.db.stop, node.mailbox.stop

        def failing():
            return stop_mailbox().addCallback(lambda _: defer.fail(RuntimeError("a mailbox that cannot stop")))

        def closing():
            closed.append(True)
            return stop_db()

        node.mailbox.stop = failing
        node.db.stop = closing
        yield eventually(node.stopService())
        self.assertEqual(closed, [True])
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(logged.value), "a mailbox that cannot stop")

    @defer.inlineCallbacks
    def test_pairing_being_recorded_is_confirmed_after_resume(self):
        """A PSK pairing whose trust write is still queued when the stop begins gets its PairConfirm after resume."""
        node = yield self.start()
        alice = Client(reactor, clock=task.Clock(), auto_resume=True)
        track_connections(alice.peer, self.connections)
        a = yield eventually(alice.connect(self.address))
        # The database thread is held until the services are told to stop.
        gate = threading.Event()
        blocked = node.db.run(lambda cursor: gate.wait(30))
        stop = node.mailbox.stop

        def stopping():
            gate.set()
            return stop()

        node.mailbox.stop = stopping
        queued, set_paired = defer.Deferred(), node.pairing.trust.set_paired

        def recording(*args):
            d = set_paired(*args)
            queued.callback(None)
            return d

        node.pairing.trust.set_paired = recording
        paired = pairing.pair_psk(a, PSK)
        yield eventually(queued)
        gone = a.connection.lost
        yield eventually(node.stopService())
        yield blocked
        yield eventually(gone)

        node = yield self.start()
        back = resumed(a)
        alice.clock.advance(1.0)
        yield back
        result = yield eventually(paired)
        self.assertEqual(result.method, "psk")
        self.assertTrue(node.pairing.trust.is_paired(alice.peer_id))
        yield node.stopService()


class DrainTests(ScenarioMixin, unittest.TestCase):
    """L{Peer.drain}, the first step of a stop, on a live session."""

    @defer.inlineCallbacks
    def test_envelope_arriving_while_draining_is_not_claimed(self):
        """An envelope reaching a draining peer is dropped unopened: not handled, its sequence number not accepted."""
        handled = []
        self.server.register_handler(0xF001, lambda session, body: handled.append(body))
        client_session = yield self.connect()
        server_session = self.server_session(client_session)
        [connection] = [c for c in self.connections if c.session is server_session]
        arrived = defer.Deferred()
        receive = connection.envelope_received

        def received(envelope):
            receive(envelope)
            if envelope.type == 0xF001 and not arrived.called:
                arrived.callback(None)

        connection.envelope_received = received
        client_session.send(0xF001, "before")
        yield eventually(arrived)
        accepted = server_session.recv_seq
        self.server.drain()
        arrived = defer.Deferred()
        client_session.send(0xF001, "while draining")
        yield eventually(arrived)
        self.assertEqual(handled, ["before"])
        self.assertEqual(server_session.recv_seq, accepted)
        self.assertIs(server_session.closed, None)


class RelayStopTests(RelayHarness, unittest.TestCase):
    """Relay circuits do not survive a restart (docs/protocol.md §16.3): the stop closes them all."""

    @defer.inlineCallbacks
    def test_stop_closes_every_circuit_and_tells_both_ends(self):
        """At a stop an open RelayData circuit is closed and both ends' relayed sessions learn it at once."""
        a, b, _, _ = yield self.circuit()
        transports = [a.connection.transport, b.connection.transport]
        detached = []
        for session in (a, b):
            self.addCleanup(session.close)
            d = defer.Deferred()
            gone = {"session_detached": lambda _, s, me=session, d=d: s is me and d.callback(s)}
            session.local.add_observer(type("Observer", (), gone)())
            detached.append(d)
        yield self.relay.stop()
        self.assertEqual(self.relay.circuits, {})
        yield eventually(defer.gatherResults(detached))
        self.assertEqual([t.closed for t in transports], ["the node is stopping"] * 2)
