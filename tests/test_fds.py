"""
Descriptor pressure (docs/reliability.md, "File descriptors"): the gauge's
marks, the listeners' refusals, and a real twistd child with a lowered
RLIMIT_NOFILE flooded with connections whose management API still answers.
"""

import json
import os

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport import fds
from cairn.transport.tcp import StreamFactory
from cairn.transport.websocket import server_factory
from tests._harness import eventually
from tests.test_twistd import kill_at_end, start_twistd

TOKEN = "descriptor tests' management token"


class GaugeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.used = 10
        self.gauge = fds.DescriptorGauge(self.clock, reserve=20, limit=100, count=lambda: self.used)

    def test_marks(self):
        """The state is ok below limit - reserve, high from there, critical from limit - reserve/2."""
        self.assertEqual((self.gauge.high_water, self.gauge.critical_water), (80, 90))
        for used, state in ((79, fds.OK), (80, fds.HIGH), (89, fds.HIGH), (90, fds.CRITICAL)):
            self.used = used
            self.clock.advance(fds.RECOUNT_EVERY)
            self.assertEqual(self.gauge.state(), state)

    def test_counts_at_most_once_a_second_and_estimates_between(self):
        """Between two counts every admitted connection is added to the last count."""
        counts = []
        self.gauge._count = lambda: counts.append(1) or 70
        for _ in range(15):
            self.assertTrue(self.gauge.admit())
        self.assertEqual(len(counts), 1)
        self.assertEqual(self.gauge.in_use(), 85)
        self.assertEqual(self.gauge.state(), fds.HIGH)
        self.clock.advance(fds.RECOUNT_EVERY)
        self.assertEqual(self.gauge.in_use(), 70)
        self.assertEqual(len(counts), 2)

    def test_critical_refuses_and_counts(self):
        """At the critical mark admit() refuses and counts the refusal."""
        self.used = 95
        self.assertFalse(self.gauge.admit())
        self.assertEqual(self.gauge.refused, 1)
        self.assertEqual(self.gauge.report()["state"], fds.CRITICAL)

    def test_lowest_free_descriptor_is_a_floor(self):
        """The lowest free descriptor counts as in use below it, whatever the last count said."""
        self.used = 0
        floor = os.open(os.devnull, os.O_RDONLY)
        os.close(floor)
        self.assertGreaterEqual(self.gauge.in_use(), floor)

    def test_no_file_opened_per_admission(self):
        """
        The floor is learnt without opening a file for every connection:
        C{/dev/null} is opened at most once (per process) and duplicated.
        """
        opened = []
        real_open = os.open

        def counting_open(*args, **kwargs):
            opened.append(args[0])
            return real_open(*args, **kwargs)

        self.patch(fds.os, "open", counting_open)
        for _ in range(10):
            self.assertTrue(self.gauge.admit())
            self.assertFalse(self.gauge.short())
        self.assertLessEqual(len(opened), 1)

    def test_probe_descriptor_closed_behind_its_back(self):
        """If the held descriptor was closed by someone else, it is opened again."""
        fds._lowest_free_descriptor()
        os.close(fds._probe)
        floor = os.open(os.devnull, os.O_RDONLY)
        os.close(floor)
        self.used = 0
        self.assertGreaterEqual(self.gauge.in_use(), floor)
        os.fstat(fds._probe)  # open again

    def test_reserve_at_most_half(self):
        """A reserve above half the limit is cut to half, with a warning."""
        gauge = fds.DescriptorGauge(self.clock, reserve=500, limit=100, count=lambda: 0)
        self.assertEqual(gauge.reserve, 50)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_real_count(self):
        """The default count reads this process's open descriptors."""
        self.assertGreater(fds._count_open(), 2)
        self.assertGreater(fds.soft_limit(), 2)


class CriticalGauge:
    refused = 0

    def admit(self):
        self.refused += 1
        return False


class ListenerRefusalTests(unittest.TestCase):
    def setUp(self):
        self.peer = Peer(Identity.generate(), task.Clock())

    def test_refused_at_once(self):
        """While descriptors are critical both listeners close a new connection as soon as it is accepted."""
        for factory in (
            StreamFactory(self.peer, gauge=CriticalGauge()),
            server_factory(self.peer, gauge=CriticalGauge()),
        ):
            self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)))
            self.assertEqual(factory.gauge.refused, 1)


class Idle(protocol.Protocol):
    """A raw client that sends nothing and notes when the node closes it."""

    def __init__(self):
        self.lost = defer.Deferred()
        self.received = b""

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=None):
        self.lost.callback(None)


class FloodTests(unittest.TestCase):
    """A real twistd node with RLIMIT_NOFILE 100 flooded with 200 connections."""

    NOFILE = 100
    FLOOD = 200

    @defer.inlineCallbacks
    def test_health_answers_at_the_descriptor_limit(self):
        """Flooded past its descriptor limit the node refuses cairn connections; /health and /metrics report it."""
        import treq
        from twisted.web.client import HTTPConnectionPool

        data_dir = os.path.abspath(self.mktemp())
        proc = start_twistd(
            data_dir,
            expected=("tcp", "websocket", "management"),
            nofile=self.NOFILE,
            CAIRN_MGMT_LISTEN="tcp:0:interface=127.0.0.1",
            CAIRN_MGMT_TOKEN=TOKEN,
            # A backlog for the whole flood: none of it waits on SYN retries.
            CAIRN_LISTEN=f"tcp:0:interface=127.0.0.1:backlog={self.FLOOD * 2}",
            CAIRN_FD_RESERVE="40",
            CAIRN_MAX_HANDSHAKES_PER_SOURCE=str(self.FLOOD * 2),
            CAIRN_HANDSHAKE_TIMEOUT="600s",
        )
        self.addCleanup(kill_at_end, proc)
        ports = yield eventually(proc.listening, 60)
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = f"http://127.0.0.1:{ports['management']}"

        clients, dials = [], []
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ports["tcp"])
        for _ in range(self.FLOOD):
            client = Idle()
            clients.append(client)
            dials.append(endpoint.connect(protocol.Factory.forProtocol(lambda c=client: c)))
            dials[-1].addErrback(lambda f: None)

        def abort_all():
            for dial in dials:
                dial.cancel()  # still dialling: the node's backlog is full
            for client in clients:
                if client.transport is not None and not client.lost.called:
                    client.transport.abortConnection()
            return defer.gatherResults([c.lost for c in clients if c.transport is not None])

        self.addCleanup(abort_all)
        # The node's first refusal at the critical mark is logged: wait for it.
        yield eventually(proc.wait_for("refused 1 connection(s) so far"), 120)
        response = yield eventually(treq.get(url + "/health", pool=pool), 30)
        self.assertEqual(response.code, 200)
        health = json.loads((yield eventually(response.content(), 30)))
        descriptors = health["descriptors"]
        self.assertEqual(descriptors["limit"], self.NOFILE)
        # Refusals start at the critical mark as estimated between counts,
        # which errs high: a fresh count may find the node just below it.
        self.assertIn(descriptors["state"], ("high", "critical"))
        self.assertGreaterEqual(descriptors["in_use"], descriptors["high_water"])
        self.assertGreater(descriptors["refused"], 0)
        self.assertLess(descriptors["in_use"], self.NOFILE)

        self.assertTrue(all(c.received == b"" for c in clients))

        response = yield eventually(
            treq.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, pool=pool), 30
        )
        text = (yield eventually(response.content(), 30)).decode()
        self.assertRegex(text, r"\ncairn_fd_pressure [12]\.0\n")
        self.assertRegex(text, r"\ncairn_fd_refused_total [1-9]")
        self.assertIn(f"cairn_fd_limit {float(self.NOFILE)}", text)
        yield abort_all()
        log = "".join(proc.output)
        self.assertNotIn("EMFILE", log)
        self.assertNotIn("Traceback", log)
