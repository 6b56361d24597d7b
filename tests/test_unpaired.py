"""
What peers that are not paired can hold on a node (docs/reliability.md,
"Unpaired peers"): sessions capped in all and per source, resumable for
seconds, never saved; the approval queue still takes a genuine request
during a flood of throw-away identities.

Handshakes run in memory (L{twisted.test.iosim}) through the node's real
TCP factory, with every timer on a L{task.Clock}.
"""

import os

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.pairing.client import pair_psk, request_approval
from cairn.pairing.interfaces import PENDING
from cairn.pairing.service import PairingService
from cairn.pairing.trust import MemoryTrustStore
from cairn.session import store
from cairn.session.peer import Peer
from cairn.session.unpaired import UnpairedSessions
from cairn.transport.fds import DescriptorGauge
from cairn.transport.limits import SourceLimiter, source_key
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory
from cairn.wire.constants import CloseCode
from tests._harness import drop_all, eventually, handshake_in_memory, track_connections

PSK = "unpaired tests' pre-shared key, long enough"
SESSION_TTL = 3600.0
UNPAIRED_TTL = 10.0


class Node:
    """A node's peer, trust store, pairing service and unpaired-session bounds, in memory."""

    def __init__(self, clock, max_total=20, max_per_source=5, gauge=None, max_pending=100, max_pending_per_source=10):
        self.clock = clock
        self.trust = MemoryTrustStore()
        self.peer = Peer(
            Identity.generate(),
            clock,
            session_ttl=SESSION_TTL,
            unpaired_session_ttl=UNPAIRED_TTL,
            is_trusted=self.trust.is_paired,
        )
        self.pairing = PairingService(
            self.peer,
            self.trust,
            clock,
            psk=PSK,
            max_pending=max_pending,
            max_pending_per_source=max_pending_per_source,
        )
        self.pairing.start()
        self.unpaired = UnpairedSessions(self.peer, self.trust.is_paired, max_total, max_per_source, gauge)
        self.factory = StreamFactory(self.peer, settings=TransportSettings.for_peer(self.peer))
        self.port = 40000

    def dial(self, host="203.0.113.1", identity=None):
        """A handshake from a fresh (or given) identity at C{host}; returns (client session, pump, client transport)."""
        self.port += 1
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, self.port)
        client_peer = Peer(identity or Identity.generate(), self.clock)
        server = self.factory.buildProtocol(address)
        _, pump, client_transport, sessions = handshake_in_memory(server, client_peer, address)
        return (sessions[0] if sessions else None), pump, client_transport

    def dial_and_drop(self, host="203.0.113.1"):
        session, pump, transport = self.dial(host)
        transport.abortConnection()
        pump.flush()
        return session


class UnpairedSessionTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_flood_of_dropped_handshakes_is_bounded(self):
        """A flood of fresh identities that handshake and drop leaves at most the cap held, and none after the TTL."""
        node = Node(self.clock, max_total=20, max_per_source=5)
        held = []
        for i in range(200):
            self.assertIsNotNone(node.dial_and_drop(host=f"203.0.113.{i % 8}"))
            held.append(len(node.peer.sessions))
        self.assertLessEqual(max(held), 20)
        self.assertEqual(len(node.peer.sessions), len(node.unpaired))
        self.assertGreater(node.unpaired.evicted, 0)
        self.clock.advance(UNPAIRED_TTL)
        self.assertEqual(len(node.peer.sessions), 0)
        self.assertEqual(len(node.unpaired), 0)

    def test_per_source_cap_drops_oldest_idle(self):
        """One source past its cap loses its oldest detached session first, then its oldest attached one."""
        node = Node(self.clock, max_total=100, max_per_source=3)
        attached_old, old_pump, _ = node.dial()
        detached = node.dial_and_drop()
        attached_new, _, _ = node.dial()
        newest, _, _ = node.dial()
        self.assertIsNotNone(newest)
        self.assertEqual(detached.closed, None)  # the client's end never learns: it was dropped by then
        ids = set(node.peer.sessions)
        self.assertNotIn(detached.session_id, ids)
        self.assertEqual(ids, {attached_old.session_id, attached_new.session_id, newest.session_id})
        node.dial()
        old_pump.flush()
        self.assertNotIn(attached_old.session_id, node.peer.sessions)
        self.assertEqual(attached_old.closed.code, CloseCode.LIMIT_REACHED)
        other, _, _ = node.dial(host="198.51.100.9")
        self.assertIn(other.session_id, node.peer.sessions)

    def test_ipv6_grouped_by_64(self):
        """Addresses of one IPv6 /64 share one per-source cap; another /64 has its own."""
        node = Node(self.clock, max_total=100, max_per_source=2)
        for i in range(5):
            node.dial(host=f"2001:db8:1:2::{i + 1}")
        node.dial(host="2001:db8:1:3::1")
        self.assertEqual(node.unpaired.per_source("2001:db8:1:2::/64"), 2)
        self.assertEqual(node.unpaired.per_source("2001:db8:1:3::/64"), 1)
        self.assertEqual(source_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(source_key("192.0.2.7"), "192.0.2.7")

    def test_handshake_limit_groups_ipv6(self):
        """The per-source handshake limit counts one IPv6 /64 as one source."""
        limiter = SourceLimiter(2)
        self.assertIsNotNone(limiter.admit(IPv6Address("TCP", "2001:db8:1:2::1", 1)))
        self.assertIsNotNone(limiter.admit(IPv6Address("TCP", "2001:db8:1:2::ffff", 2)))
        self.assertIsNone(limiter.admit(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 3)))
        self.assertIsNotNone(limiter.admit(IPv6Address("TCP", "2001:db8:1:3::1", 4)))

    def test_paired_sessions_not_capped(self):
        """Sessions of paired peers never count against the caps and are never dropped by them."""
        node = Node(self.clock, max_total=2, max_per_source=2)
        identity = Identity.generate()
        session, pump, _ = node.dial(identity=identity)
        paired = pair_psk(session, PSK)
        pump.flush()
        self.successResultOf(paired)
        friends = [node.dial(identity=identity)[0] for _ in range(3)]
        for _ in range(5):
            node.dial_and_drop()
        for friend in [session, *friends]:
            self.assertIn(friend.session_id, node.peer.sessions)
        self.assertLessEqual(len(node.unpaired), 2)

    def test_unpaired_resumable_for_seconds_paired_for_the_ttl(self):
        """A detached unpaired session ends after the unpaired TTL; a paired one stays for the session TTL."""
        node = Node(self.clock)
        stranger = node.dial_and_drop()
        identity = Identity.generate()
        friend, pump, transport = node.dial(identity=identity)
        paired = pair_psk(friend, PSK)
        pump.flush()
        self.successResultOf(paired)
        transport.abortConnection()
        pump.flush()
        self.clock.advance(UNPAIRED_TTL)
        self.assertNotIn(stranger.session_id, node.peer.sessions)
        self.assertIn(friend.session_id, node.peer.sessions)
        self.clock.advance(SESSION_TTL)
        self.assertNotIn(friend.session_id, node.peer.sessions)

    def test_unpaired_never_saved(self):
        """Snapshots for a clean restart hold sessions of paired peers only."""
        node = Node(self.clock)
        for _ in range(5):
            node.dial_and_drop()
        identity = Identity.generate()
        friend, pump, _ = node.dial(identity=identity)
        paired = pair_psk(friend, PSK)
        pump.flush()
        self.successResultOf(paired)
        snapshots = node.peer.snapshot_sessions()
        self.assertEqual([s["session_id"] for s in snapshots], [friend.session_id])

    def test_restored_sessions_keep_full_ttl(self):
        """Sessions restored at start (before the trust store is loaded) stay resumable for CAIRN_SESSION_TTL."""
        node = Node(self.clock)
        identity = Identity.generate()
        friend, pump, _ = node.dial(identity=identity)
        self.successResultOf(_flushed(pair_psk(friend, PSK), pump))
        snapshots = node.peer.snapshot_sessions()
        restarted = Peer(
            node.peer.identity,
            self.clock,
            session_ttl=SESSION_TTL,
            unpaired_session_ttl=UNPAIRED_TTL,
            is_trusted=MemoryTrustStore().is_paired,  # not loaded yet: knows nobody
        )
        restarted.restore_sessions(snapshots)
        self.clock.advance(UNPAIRED_TTL * 2)
        self.assertIn(friend.session_id, restarted.sessions)

    def test_genuine_approval_filed_during_flood(self):
        """During a flood of fresh identities asking for approval, a genuine request from elsewhere is filed."""
        node = Node(self.clock, max_total=50, max_per_source=10, max_pending=20, max_pending_per_source=5)
        for i in range(100):
            session, pump, transport = node.dial(host=f"203.0.113.{i % 3}")
            request_approval(session)
            pump.flush()
            transport.abortConnection()
            pump.flush()
        genuine, pump, _ = node.dial(host="192.0.2.44")
        approved = request_approval(genuine, name="kitchen tablet")
        pump.flush()
        for i in range(100):
            node.dial_and_drop(host=f"203.0.113.{i % 3}")
        pending = self.successResultOf(node.trust.list(PENDING))
        self.assertLessEqual(len(pending), 20)
        self.assertIn(genuine.local.peer_id, [r.peer_id for r in pending])
        self.assertLessEqual(len(node.peer.sessions), 50)
        node.pairing.approve(genuine.local.peer_id)
        pump.flush()
        self.assertEqual(self.successResultOf(approved).method, "approval")


class DescriptorShortTests(unittest.TestCase):
    def test_unpaired_closed_when_descriptors_short(self):
        """Past the high-water mark a session of an unpaired peer is closed with Close 12; a paired peer's is served."""
        clock = task.Clock()
        used = [10]
        gauge = DescriptorGauge(clock, reserve=20, limit=100, count=lambda: used[0])
        node = Node(clock, gauge=gauge)
        identity = Identity.generate()
        friend, pump, _ = node.dial(identity=identity)
        self.successResultOf(_flushed(pair_psk(friend, PSK), pump))
        used[0] = 85
        clock.advance(2)  # the gauge recounts
        stranger, _, _ = node.dial()
        self.assertEqual(stranger.closed.code, CloseCode.LIMIT_REACHED)
        self.assertEqual(node.unpaired.refused, 1)
        again, _, _ = node.dial(identity=identity)
        self.assertIsNone(again.closed)
        self.assertIn(again.session_id, node.peer.sessions)


def _flushed(d, pump):
    pump.flush()
    return d


class RealNodeTests(unittest.TestCase):
    """The same bounds on a whole node (make_node) over real loopback sockets."""

    @defer.inlineCallbacks
    def test_flood_bounded_and_nothing_saved(self):
        """Fresh identities handshaking and dropping leave at most the per-source cap, and a stop saves none of them."""
        from cairn.client import Client
        from cairn.service import make_node
        from tests.test_service import config_for

        data_dir = self.mktemp()
        config = config_for(data_dir, max_unpaired_per_source=5, max_handshakes_per_source=100)
        node = make_node(config, reactor)
        connections = []
        track_connections(node.peer, connections)
        node.startService()
        ports = yield node.ready
        self.addCleanup(drop_all, connections)
        address = f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"
        held = []
        for _ in range(40):
            client = Client(reactor, clock=task.Clock())
            established = defer.Deferred()
            node.peer.on_session = established.callback
            session = yield eventually(client.connect(address))
            yield eventually(established)
            lost = session.connection.when_lost()
            session.connection.drop_transport()
            yield eventually(lost)
            held.append(len(node.peer.sessions))
        self.assertLessEqual(max(held), 5)
        self.assertEqual(len(node.unpaired), len(node.peer.sessions))
        yield node.stopService()
        self.assertFalse(os.path.exists(os.path.join(data_dir, store.FILE_NAME)))
