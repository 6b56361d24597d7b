"""
What an idle node and an idle session hold (issue 19: 10,000 TCP and
WebSocket sessions in under 128 MB of node RSS).
"""

import gc
import os
import sys
import tracemalloc
import weakref

import attr
from twisted.internet import defer, reactor, task, tcp, utils
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.trial import unittest

from cairn.crypto.handshake import HandshakeResult, NoiseHandshake
from cairn.crypto.identity import Identity
from cairn.pairing.interfaces import PeerRecord
from cairn.session import opening
from cairn.session.peer import Peer
from cairn.transport import shared_keys
from cairn.transport.limits import OutputGuard, SourceLimiter
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory
from cairn.transport.websocket import ServerProtocol, server_factory
from tests._harness import eventually, handshake_in_memory

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Made in a fresh interpreter: what a node without the management API imports.
_IMPORTS = """
import sys
from cairn.node import CairnNode
print(" ".join(sorted(name for name in sys.modules if name.split(".")[0] in ("klein", "werkzeug", "segno")
                      or name == "cairn.management.app")))
"""


class LazyImportTests(unittest.TestCase):
    timeout = 60

    def test_management_api_modules_not_imported_without_it(self):
        """
        Building a node imports the management API's modules (klein,
        werkzeug, segno: about 7 MB of RSS) only for a node that serves it.
        """
        env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        d = utils.getProcessOutputAndValue(sys.executable, ["-c", _IMPORTS], env=env, path=REPO_ROOT)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            self.assertEqual(out.decode().strip(), "")

        return d.addCallback(check)


class HeldAfterHandshakeTests(unittest.TestCase):
    """What an established session's connection and transport no longer hold."""

    def handshake(self, limiter):
        clock = task.Clock()
        node = Peer(Identity.generate(), clock)
        factory = StreamFactory(node, limiter=limiter, settings=TransportSettings.for_peer(node))
        address = IPv4Address("TCP", "203.0.113.1", 40000)
        server = factory.buildProtocol(address)
        connection, _, _, sessions = handshake_in_memory(server, Peer(Identity.generate(), clock), address)
        self.assertEqual(sessions, [connection.session])
        return server, connection

    def test_responder_connection_has_no_ready_deferred(self):
        """A responder's connection holds no Deferred (nothing waits on it); an initiator's fires with its session."""
        server, initiator = self.handshake(SourceLimiter())
        self.assertIsNone(server.sink.ready)
        self.assertIsNotNone(server.sink.session)
        self.assertTrue(initiator.ready.called)

    def test_tcp_transport_drops_its_ticket_once_established(self):
        """Once the handshake completes, the TCP transport releases its per-source ticket and holds it no longer."""
        limiter = SourceLimiter()
        server, _ = self.handshake(limiter)
        self.assertIsNone(server._ticket)
        self.assertEqual(limiter.pending, {})

    def test_websocket_transport_drops_its_ticket_once_established(self):
        """Once the handshake completes, the WebSocket transport releases its per-source ticket and drops it."""
        limiter = SourceLimiter()
        ticket = limiter.admit(IPv4Address("TCP", "203.0.113.1", 40000))
        protocol = ServerProtocol()
        protocol.ticket = ticket
        protocol.sink = _EstablishedSink()
        protocol._envelope_handled()
        self.assertIsNone(protocol.ticket)
        self.assertEqual(limiter.pending, {})


class _EstablishedSink:
    session = object()


class NoiseStateFreedTests(unittest.TestCase):
    """The Noise objects of a handshake are freed by reference counting, not left to the cyclic collector."""

    def setUp(self):
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        gc.collect()

    def test_forget_frees_a_finished_handshake(self):
        """After forget(), a finished handshake's Noise connection is freed at once."""
        i = NoiseHandshake(Identity.generate(), initiator=True, session_id=b"\x01" * 16)
        r = NoiseHandshake(Identity.generate(), initiator=False, session_id=b"\x01" * 16)
        r.read_init(i.write_init())
        i.read_response(r.write_response())
        r.read_final(i.write_final())
        self.assertEqual(i.result().send_key, r.result().recv_key)
        refs = [weakref.ref(i._noise), weakref.ref(r._noise)]
        i.forget()
        r.forget()
        self.assertEqual([ref() for ref in refs], [None, None])

    def test_forget_frees_an_abandoned_handshake(self):
        """After forget(), a handshake given up half-way is freed at once."""
        i = NoiseHandshake(Identity.generate(), initiator=True, session_id=b"\x01" * 16)
        i.write_init()
        ref = weakref.ref(i._noise)
        i.forget()
        self.assertIsNone(ref())

    def test_connections_free_their_handshakes(self):
        """Both ends of an established session have freed their Noise objects without a garbage collection."""
        made = []

        class Recorded(NoiseHandshake):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(weakref.ref(self._noise))

        self.patch(opening, "NoiseHandshake", Recorded)
        HeldAfterHandshakeTests.handshake(self, SourceLimiter())
        self.assertEqual(len(made), 2)
        self.assertEqual([ref() for ref in made], [None, None])


class ClosedConnectionFreedTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_lost_tcp_connection_freed_without_collection(self):
        """Once its TCP connection is lost, the node's Connection and transport are freed by reference counting."""
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        node = Peer(Identity.generate(), reactor)
        self.addCleanup(node.freeze)  # the detached sessions' timers
        established = defer.Deferred()
        node.on_session = established.callback
        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(StreamFactory(node))
        self.addCleanup(port.stopListening)
        client = Peer(Identity.generate(), reactor)
        self.addCleanup(client.freeze)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        protocol = yield endpoint.connect(StreamFactory(client, initiator=True))
        session = yield eventually(established)
        server_connection = session.connection
        lost = server_connection.when_lost()
        refs = [weakref.ref(server_connection), weakref.ref(server_connection.transport)]
        del server_connection
        protocol.transport.loseConnection()
        yield eventually(lost)
        yield task.deferLater(reactor, 0, lambda: None)  # out of the reactor's call that lost it
        self.assertEqual([ref() for ref in refs], [None, None])


class SlottedRecordsTests(unittest.TestCase):
    def test_per_session_records_have_no_instance_dict(self):
        """The handshake result each session keeps and the record of each known peer are slotted."""
        result = HandshakeResult(b"i" * 32, b"h" * 32, b"k" * 32, b"l" * 32, True)
        record = PeerRecord("peer", b"i" * 32, "paired")
        for value in (result, record):
            self.assertFalse(hasattr(value, "__dict__"), type(value).__name__)
        self.assertEqual(attr.evolve(result, key_i2r=None).key_i2r, None)


def _growth_of_late_names(cls, late):
    """Bytes allocated when one of 40 instances of C{cls}, made first, sets the names C{late}."""
    made = []
    for _ in range(40):
        instance = cls.__new__(cls)
        instance.early = None
        made.append(instance)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in late:
            setattr(made[0], name, None)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


class SharedNamesTests(unittest.TestCase):
    """Twisted's TCP transports keep their attributes without a dict of their own."""

    LATE = ("dataBuffer", "offset", "producerPaused")

    def test_names_set_late_need_no_dict_once_shared(self):
        """Names shared before any instance is made cost no dict when set late, where unshared ones cost one."""

        class Unshared(tcp.Server):
            pass

        class Shared(tcp.Server):
            pass

        unshared = _growth_of_late_names(Unshared, self.LATE)
        if unshared < 100:
            raise unittest.SkipTest(f"this interpreter gives late names no dict ({unshared} bytes)")
        shared_keys.share_names(Shared, ("early",) + self.LATE)
        self.assertLess(_growth_of_late_names(Shared, self.LATE), 64)

    def test_listeners_share_the_names_as_they_start(self):
        """The TCP and WebSocket listeners' factories share tcp.Server's names when they start, once."""
        self.patch(shared_keys, "_shared", set())
        node = Peer(Identity.generate(), task.Clock())
        for factory in (StreamFactory(node), server_factory(node)):
            shared_keys._shared.clear()
            factory.doStart()
            self.addCleanup(factory.doStop)
            self.assertEqual(shared_keys._shared, {tcp.Server})

    @defer.inlineCallbacks
    def test_a_connection_sets_no_other_name(self):
        """A node's TCP transport, established, writing, then closed or aborted, sets only the shared names."""
        node = Peer(Identity.generate(), reactor)
        self.addCleanup(node.freeze)
        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(StreamFactory(node))
        self.addCleanup(port.stopListening)
        client = Peer(Identity.generate(), reactor)
        self.addCleanup(client.freeze)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        names = set()
        for abort in (False, True):
            established = defer.Deferred()
            node.on_session = established.callback
            protocol = yield endpoint.connect(StreamFactory(client, initiator=True))
            session = yield eventually(established)
            connection = session.connection
            transport = connection.transport.transport
            lost = connection.when_lost()
            if abort:
                connection.drop_transport()
            else:
                protocol.transport.loseConnection()
            yield eventually(lost)
            names |= set(vars(transport))
        self.assertEqual(names - set(shared_keys.TCP_SERVER_NAMES), set())


class _Consumer:
    """A socket transport's buffer counters and producer registration, for an L{OutputGuard}."""

    dataBuffer = b""
    offset = 0
    _tempDataLen = 0
    producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer


class _Owner:
    def __init__(self):
        self.reasons = []

    def output_overflow(self, reason):
        self.reasons.append(reason)


class OutputGuardTests(unittest.TestCase):
    """The output guard each connection keeps: slotted, holding its owner, not a bound method of it."""

    def guard(self):
        clock = task.Clock()
        settings = TransportSettings(max_payload=1024, clock=clock, keepalive_timeout=90.0, write_limit=100)
        transport, owner = _Consumer(), _Owner()
        return OutputGuard(transport, settings, owner), transport, owner, clock

    def test_slotted_and_keeps_its_owner(self):
        """The guard has no instance dict and refers to its owner itself."""
        guard, transport, owner, _ = self.guard()
        self.assertFalse(hasattr(guard, "__dict__"))
        self.assertIs(guard._owner, owner)
        self.assertIs(transport.producer, guard)

    def test_owner_told_once_past_the_limit(self):
        """A buffer past the write limit tells the owner once, with the byte counts."""
        guard, transport, owner, _ = self.guard()
        transport.dataBuffer = b"x" * 101
        guard.check()
        guard.check()
        self.assertEqual(owner.reasons, ["peer not reading: 101 bytes queued, above 100"])
        self.assertEqual(guard.high_water, 101)

    def test_owner_told_when_not_drained_in_the_window(self):
        """A buffer paused for the whole keepalive timeout tells the owner; one resumed in time does not."""
        guard, transport, owner, clock = self.guard()
        guard.pauseProducing()
        clock.advance(89)
        guard.resumeProducing()
        clock.advance(10)
        self.assertEqual(owner.reasons, [])
        guard.pauseProducing()
        clock.advance(90)
        self.assertEqual(owner.reasons, ["peer not reading: output not drained in 90 s"])
        self.assertTrue(guard.overflowed)
