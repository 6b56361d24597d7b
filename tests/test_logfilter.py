"""
The log gate (L{cairn.logfilter}): libraries' lines without peer
addresses unless the operator opts in, repeats aggregated per interval on
the injected clock, and both in a real twistd node.
"""

import os

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, LogPublisher, formatEvent
from twisted.trial import unittest

from cairn import logfilter
from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.websocket import server_factory
from tests._harness import eventually
from tests.test_twistd import kill_at_end, start_twistd


class _Transport(StringTransport):
    def unregisterProducer(self):
        self.producer = None


class RedactTests(unittest.TestCase):
    def test_autobahn_drop_line(self):
        """autobahn's real "dropping connection to peer tcp4:IP:port" line reaches the log without the address."""
        events = []
        publisher = LogPublisher(events.append)
        gate = logfilter.install(task.Clock(), publisher=publisher)
        factory = server_factory(Peer(Identity.generate(), task.Clock()))
        proto = factory.buildProtocol(IPv4Address("TCP", "198.51.100.23", 4321))
        proto.makeConnection(_Transport(peerAddress=IPv4Address("TCP", "198.51.100.23", 4321)))
        # autobahn logs through the global publisher: hand its event to ours.
        proto.log._logger.observer = publisher
        proto.wasNotCleanReason = "bad frame"
        proto.dropConnection(abort=True)
        texts = [formatEvent(e) for e in events if "dropping connection" in str(e.get("log_format"))]
        self.assertEqual(len(texts), 1)
        self.assertNotIn("198.51.100.23", texts[0])
        self.assertIn("tcp4:<address>", texts[0])
        logfilter.uninstall(gate, publisher)
        self.assertEqual(publisher._observers, [events.append])

    def test_twisted_emfile_line(self):
        """Twisted's "EMFILE recovery: Closed socket from (IP, port)" loses its address."""
        event = {
            "log_namespace": "twisted.internet.tcp.Port",
            "log_format": "EMFILE recovery: Closed socket from {address}",
            "address": ("2001:db8::7", 5555, 0, 0),
            "log_level": LogLevel.info,
        }
        self.assertEqual(formatEvent(logfilter.redact(event)), "EMFILE recovery: Closed socket from <address>")

    def test_legacy_system_and_text(self):
        """A legacy event's system prefix and text lose addresses; cairn's own fields are kept."""
        legacy = {
            "log_namespace": "log_legacy",
            "log_format": "{log_text}",
            "log_text": "Unhandled error from 203.0.113.4:7400 and [2001:db8::1]:80",
            "log_system": "StreamProtocol,7,203.0.113.4",
        }
        redacted = logfilter.redact(legacy)
        self.assertEqual(redacted["log_text"], "Unhandled error from <address> and <address>")
        self.assertEqual(redacted["log_system"], "StreamProtocol,7,<address>")
        ours = {"log_namespace": "cairn.service", "log_format": "listening on {host}", "host": "127.0.0.1"}
        self.assertIs(logfilter.redact(ours), ours)

    def test_opt_in_keeps_addresses(self):
        """With CAIRN_LOG_ADDRESSES the gate forwards addresses as they are."""
        seen = []
        gate = logfilter.LogGate([seen.append], task.Clock(), log_addresses=True)
        gate({"log_namespace": "autobahn.x", "log_format": "peer {peer}", "peer": "tcp4:192.0.2.1:1"})
        self.assertEqual(formatEvent(seen[0]), "peer tcp4:192.0.2.1:1")


class AggregateTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.seen = []
        self.gate = logfilter.LogGate([self.seen.append], self.clock, burst=20, interval=60.0)
        self.log = Logger(namespace="cairn.session.connection", observer=self.gate)

    def test_flood_of_one_kind(self):
        """100,000 warnings of one kind give 20 lines and, after the interval, one summary with the rest's count."""
        for i in range(100_000):
            self.log.warn("closing connection: code {code} ({reason})", code=3, reason=f"bad input {i}")
        self.assertEqual(len(self.seen), 20)
        self.clock.advance(60)
        self.assertEqual(len(self.seen), 21)
        summary = formatEvent(self.seen[-1])
        self.assertIn("99980 more like this in the last 60 s", summary)
        self.assertIn("closing connection: code {code} ({reason})", summary)
        self.assertEqual(self.seen[-1]["log_level"], LogLevel.warn)

    def test_kinds_counted_apart_and_window_restarts(self):
        """Each kind has its own budget; after the interval a kind gets a new one."""
        for _ in range(30):
            self.log.info("one {x}", x=1)
            self.log.info("two {x}", x=2)
        self.assertEqual(len(self.seen), 40)
        self.clock.advance(60)
        self.assertEqual(len(self.seen), 42)  # two summaries
        self.log.info("one {x}", x=1)
        self.assertEqual(len(self.seen), 43)

    def test_quiet_interval_no_summary(self):
        """A kind that stayed within its budget leaves no summary line."""
        self.log.info("rare {x}", x=1)
        self.clock.advance(60)
        self.assertEqual(len(self.seen), 1)

    def test_critical_always_passes(self):
        """Critical events are never held back."""
        for _ in range(50):
            self.log.critical("disk on fire")
        self.assertEqual(len(self.seen), 50)

    def test_flush_writes_open_summaries(self):
        """flush() (at a stop) writes the summaries of intervals still open."""
        for _ in range(25):
            self.log.info("again")
        self.gate.flush()
        self.assertIn("5 more like this", formatEvent(self.seen[-1]))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_observer_does_not_stop_others(self):
        """An observer that raises does not keep the event from the next one."""
        seen = []
        gate = logfilter.LogGate([lambda e: 1 / 0, seen.append], self.clock)
        gate({"log_namespace": "x", "log_format": "y", "log_level": LogLevel.info})
        self.assertEqual(len(seen), 1)


class Raw(protocol.Protocol):
    def __init__(self, request):
        self.request = request
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def connectionLost(self, reason=None):
        self.lost.callback(None)


class TwistdLogTests(unittest.TestCase):
    BAD = 30

    @defer.inlineCallbacks
    def test_no_addresses_and_repeats_aggregated(self):
        """A real node refusing 30 bad upgrades logs autobahn's drop line 20 times, without address, then a count."""
        data_dir = os.path.abspath(self.mktemp())
        proc = start_twistd(data_dir, CAIRN_MAX_HANDSHAKES_PER_SOURCE="100")
        self.addCleanup(kill_at_end, proc)
        ports = yield eventually(proc.listening, 60)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ports["websocket"])
        request = (
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        clients = []
        for _ in range(self.BAD):
            client = Raw(request)
            yield endpoint.connect(protocol.Factory.forProtocol(lambda c=client: c))
            clients.append(client)
        yield eventually(defer.gatherResults([c.lost for c in clients]), 30)
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 60)
        lines = "".join(proc.output).splitlines()
        drops = [line for line in lines if "dropping connection to peer" in line and "more like this" not in line]
        self.assertEqual(len(drops), logfilter.BURST, "\n".join(lines))
        self.assertTrue(all("tcp4:<address>" in line and "127.0.0.1" not in line for line in drops))
        summaries = [line for line in lines if "more like this" in line and "dropping connection" in line]
        self.assertEqual(len(summaries), 1)
        self.assertIn(f"{self.BAD - logfilter.BURST} more like this", summaries[0])
        # The node's own listening addresses (its "listening:" lines and the
        # settings in the start-up summary) are not peers' addresses.
        own = ("listening:", "CAIRN_")
        peer_lines = [line for line in lines if "127.0.0.1" in line and not any(word in line for word in own)]
        self.assertEqual(peer_lines, [])

