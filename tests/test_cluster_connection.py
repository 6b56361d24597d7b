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
