"""
The node's NATS connection (L{cairn.cluster.connection.JetStream}) across
a reconnection, with a real nats-server restarted under it.
"""

import os

from twisted.internet import defer, reactor
from twisted.logger import LogLevel
from twisted.trial import unittest

from cairn.cluster.connection import JetStream, Settings
from tests._harness import Conditions, eventually, observe_logs
from tests._nats import NatsServer

#: nats-server's default max_payload (1 MiB).
NATS_DEFAULT = 1024 * 1024


class _Server(NatsServer):
    """A L{NatsServer} whose C{max_payload} can be set before a (re)start."""

    max_payload = None

    def config(self):
        text = super().config()
        if self.max_payload is not None:
            text += f"max_payload: {self.max_payload}\n"
        return text


class ReconnectTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_reconnect_to_a_smaller_max_payload_refused(self):
        """
        A reconnection to a server whose max_payload is below
        CAIRN_MAX_PAYLOAD is refused as at start: the client is closed, the
        node degraded for good with the same one line, logged once.
        """
        server = _Server(os.path.abspath(self.mktemp()))
        self.addCleanup(server.kill)
        yield server.start()
        jet = JetStream(reactor, Settings((server.url,), 1, "cairn", max_payload=NATS_DEFAULT))
        self.addCleanup(jet.close)
        yield eventually(jet.connect(), 90)
        self.assertEqual(jet.health(), (True, None))

        conditions, events = Conditions(), []

        def observe(event):
            if event.get("log_namespace", "").startswith("cairn.cluster.connection"):
                conditions.changed(events.append(event))

        observe_logs(self, observe)
        yield server.kill()
        server.max_payload = 64 * 1024
        yield server.start()

        def said(level):
            return [e for e in events if e["log_level"] == level]

        yield conditions.until(lambda: said(LogLevel.error) or "reconnected to NATS" in str(events), 60)
        expected = (
            f"CAIRN_MAX_PAYLOAD ({NATS_DEFAULT}) is above the NATS server's max_payload ({64 * 1024}):"
            f" lower CAIRN_MAX_PAYLOAD or set max_payload to at least {NATS_DEFAULT} in nats-server.conf"
        )
        self.assertEqual([e["reason"] for e in said(LogLevel.error)], [expected])

        async def closed():
            await jet._closing

        yield eventually(jet.run(closed), 30)  # its disconnection is reported by now, and changes nothing
        self.assertTrue(jet.nc.is_closed)
        self.assertEqual((jet.state, jet.health()), ("degraded", (False, expected)))
        self.assertEqual(len(said(LogLevel.error)), 1)
        self.assertNotIn("reconnected to NATS", str(events))


class CloseTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_clean_close_is_not_a_disconnection(self):
        """The node's own close (a clean stop) logs no "disconnected from NATS; reconnecting" warning."""
        server = _Server(os.path.abspath(self.mktemp()))
        self.addCleanup(server.kill)
        yield server.start()
        jet = JetStream(reactor, Settings((server.url,), 1, "cairn"))
        yield eventually(jet.connect(), 90)
        events = []
        observe_logs(self, lambda event: events.append(event))
        yield eventually(jet.close(), 30)
        said = [e for e in events if e.get("log_namespace", "").startswith("cairn.cluster.connection")]
        self.assertEqual([e for e in said if e["log_level"] >= LogLevel.warn], [])


class HarnessTests(unittest.TestCase):
    """tests._nats: a wait for a server's log line that times out says which server and what it logged."""

    @defer.inlineCallbacks
    def test_timed_out_wait_names_the_server(self):
        from tests._nats import NatsNotReady, start_nats

        server = yield start_nats(self)
        error = yield self.assertFailure(server.until(lambda line: False, timeout=0.2), NatsNotReady)
        self.assertIn(f"nats-server {server.name} (running)", str(error))
        self.assertIn("Server is ready", str(error))
        self.assertEqual(server._waiting, [])


class _Noticed(list):
    """A list that re-checks a test's conditions whenever something is appended."""

    def __init__(self, changed):
        super().__init__()
        self.changed = changed

    def append(self, item):
        super().append(item)
        self.changed()


class AwayTests(unittest.TestCase):
    """A node cut from NATS (through a proxy) and back: what it may have missed while away."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        from tests import _jetstream
        from tests._cluster import NatsProxy, _login
        from tests._nats import start_nats

        server = yield start_nats(self)
        self.proxy = NatsProxy(server.port, _login(server.url))
        self.addCleanup(self.proxy.close)
        yield self.proxy.heal()
        self.jet = yield _jetstream.connect(self, [self.proxy.url])
        self.conditions = Conditions()

    @defer.inlineCallbacks
    def test_write_in_flight_fails_at_the_disconnection(self):
        """A write whose PubAck has not come when the connection is lost fails at once, not after the PubAck timeout."""
        self.proxy.held = _Noticed(self.conditions.changed)
        self.proxy.hold_deliveries(self.jet.acks._prefix.encode())  # its PubAck, once JetStream stored it

        async def write():
            return await (await self.jet.acks.publish(self.jet.subject("mbox", "r", "s", "00"), b"x", {}))

        written = self.jet.run(write)
        yield self.conditions.until(lambda: self.proxy.held, 20)
        yield self.proxy.cut()
        failure = yield self.assertFailure(eventually(written, 10), TimeoutError)  # 30 s before
        self.assertEqual(type(failure).__name__, "Disconnected")

    @defer.inlineCallbacks
    def test_bus_rechecks_after_a_reconnection(self):
        """Once the node is back on NATS, its services re-check at once: what other nodes told it meanwhile is lost."""
        from twisted.internet import task

        from cairn.cluster.nats_bus import NatsBus
        from cairn.cluster.presence import LocalPresence

        bus = NatsBus(self.jet, LocalPresence(None, "n1"), "n1", clock=task.Clock())
        yield bus.start()
        self.addCleanup(bus.stop)
        missed, note = [], self.jet._note
        bus.on_missed(lambda: self.conditions.changed(missed.append(self.jet.state)))
        self.patch(self.jet, "_note", lambda *args: self.conditions.changed(note(*args)))
        yield self.proxy.cut()
        yield self.conditions.until(lambda: self.jet.state != "ok", 20)
        self.assertEqual(missed, [])
        yield self.proxy.heal()
        yield self.conditions.until(lambda: missed, 30)
        self.assertEqual(missed, ["ok"])


class ReconnectedInPlaceTests(unittest.TestCase):
    """
    What L{JetStream._on_reconnected} relies on: nats-py calls its
    C{reconnected_cb} only once the server has every subscription it sent
    again, on a server (L{tests._lazy_nats}) that registers a SUB no sooner
    than NATS must. A nats-py that stops awaiting a round trip behind them
    fails here, and the reconnection must then prove them itself.
    """

    @defer.inlineCallbacks
    def test_subscriptions_in_place_when_reconnected(self):
        """At nats-py's reconnected_cb, the server has the subscriptions made before the disconnection."""
        import nats
        from twisted.internet import threads

        from cairn.cluster.common import subscribe_in_place
        from cairn.cluster.loop import AsyncioThread
        from tests._lazy_nats import LazyNats

        server = LazyNats()
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: eventually(server.all_lost(), 20))
        thread = AsyncioThread(reactor)
        thread.start()
        self.addCleanup(thread.stop)
        seen = defer.Deferred()

        async def reconnected():
            subjects = threads.blockingCallFromThread(reactor, server.subjects)  # the server's, at this moment
            thread.to_reactor(seen.callback, subjects)

        async def quiet(error):
            pass  # the connection lost, as the test means

        url = f"nats://127.0.0.1:{port.getHost().port}"
        options = dict(servers=[url], reconnected_cb=reconnected, error_cb=quiet, reconnect_time_wait=0.1)
        options["max_reconnect_attempts"] = -1
        nc = yield eventually(thread.run(nats.connect, **options), 20)
        self.addCleanup(lambda: thread.run(nc.close))

        async def nothing(msg):
            pass

        yield eventually(thread.run(subscribe_in_place, nc, "cairn.node.n1.>", nothing), 20)
        for connection in list(server.connections):
            connection.transport.loseConnection()
        subjects = yield eventually(seen, 20)
        self.assertIn("cairn.node.n1.>", subjects)
