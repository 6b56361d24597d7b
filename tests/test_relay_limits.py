"""
Per-peer relay limits: the token bucket on its own, rate limits through
real circuits on the relay's L{task.Clock}, the management API, and the
persistence of limits and byte counts across a node restart.
"""

import os
import sqlite3

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.client import Client
from cairn.db import DB_FILE_NAME, Database
from cairn.pairing import client as pairing
from cairn.relay import client as relay
from cairn.relay.interfaces import RELAY_SCHEMA, IRelayStore, RelayLimits
from cairn.relay.messages import WINDOW
from cairn.relay.pacing import Pacer
from cairn.relay.reports import parse_limits
from cairn.relay.store import MemoryRelayStore, SQLiteRelayStore
from cairn.service import make_node
from cairn.wire.constants import RouteStatus
from tests._harness import Conditions, drop_all, eventually, track_connections
from tests.test_relay import RelayHarness
from tests.test_service import config_for

CHUNK = 16000


class PacerTests(unittest.TestCase):
    """The token bucket alone, on a task.Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.sent = []

    def feed(self, pacer, count, size=1000, key="c"):
        for i in range(count):
            pacer.submit(key, size, lambda i=i: self.sent.append((self.clock.seconds(), i)))

    def test_rate_over_time(self):
        """A saturated bucket forwards one burst, then the rate, within one message over any span."""
        pacer = Pacer(self.clock, rate=10_000)
        self.feed(pacer, 500)
        self.assertEqual(len(self.sent), 11)  # the 10 000-byte burst, plus the one that went into debt
        for _ in range(200):
            self.clock.advance(0.05)
        # 10 s at 10 000 B/s after the burst: 100 more messages of 1000 bytes.
        self.assertEqual(len(self.sent), 111)
        self.assertEqual([i for _, i in self.sent], list(range(111)))
        self.assertEqual(pacer.queued, (500 - 111) * 1000)

    def test_idle_bucket_caps_at_burst(self):
        """An idle bucket saves at most one burst."""
        pacer = Pacer(self.clock, rate=1000, burst=2000)
        self.clock.advance(3600)
        self.feed(pacer, 10)
        self.assertEqual(len(self.sent), 3)

    def test_discard_and_drain(self):
        """Discard drops one circuit's waiting bytes; drain forwards the rest at once, in order."""
        pacer = Pacer(self.clock, rate=1000)
        self.feed(pacer, 5, key="a")
        self.feed(pacer, 5, key="b")
        self.assertEqual(len(self.sent), 2)
        pacer.discard("a")
        self.assertEqual(pacer.queued, 5000)
        pacer.drain()
        self.assertEqual([i for _, i in self.sent], [0, 1, 0, 1, 2, 3, 4])
        self.assertEqual((pacer.queued, self.clock.getDelayedCalls()), (0, []))

    def test_set_rate(self):
        """A new rate applies from now on."""
        pacer = Pacer(self.clock, rate=1000)
        self.feed(pacer, 200)
        self.assertEqual(len(self.sent), 2)  # 1000 bytes of burst, then 1000 of debt
        pacer.set_rate(100_000)
        self.clock.advance(0.5)
        # The debt is paid, then 49 000 bytes go, the last one into debt again.
        self.assertEqual(len(self.sent), 2 + 50)

    def test_large_messages_go_into_debt(self):
        """A message larger than the bucket still goes, and the debt delays the next."""
        pacer = Pacer(self.clock, rate=1000)
        self.feed(pacer, 2, size=5000)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(3.9)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sent), 2)


class ParseTests(unittest.TestCase):
    def test_parse_limits(self):
        """Limits bodies are checked key by key, naming the bad one; absent keys are no change."""
        self.assertEqual(parse_limits({}), ({}, False))
        self.assertEqual(
            parse_limits({"max_bytes": 0, "max_rate": None, "reset_bytes": True}),
            ({"max_bytes": 0, "max_rate": None}, True),
        )
        for body, word in [
            ([], "object"),
            ({"max_rate": 0}, "max_rate"),
            ({"max_rate": 1.5}, "max_rate"),
            ({"max_bytes": -1}, "max_bytes"),
            ({"max_bytes": True}, "max_bytes"),
            ({"reset_bytes": 1}, "reset_bytes"),
            ({"rate": 5}, "rate"),
        ]:
            e = self.assertRaises(ValueError, parse_limits, body)
            self.assertIn(word, str(e))


class RateScenarioMixin(RelayHarness):
    """A rate-limited circuit and an unlimited one through the same node."""

    @defer.inlineCallbacks
    def bulk(self, a, b):
        """A channel from C{a} to C{b}; fires with (a's channel, the list b receives into)."""
        received = []
        opened = defer.Deferred()

        def on_channel(channel):
            channel.on_data = lambda data: self.conditions.changed(received.append(data))
            opened.callback(channel)

        b.on_channel = on_channel
        channel = a.open_channel("bulk")
        channel.send(b"start")
        yield eventually(opened)
        yield self.until(lambda: received)
        del received[:]
        return channel, received

    def circuit_of(self, peer_id):
        for circuit in self.relay.circuits.values():
            if circuit.a.remote_peer_id == peer_id:
                return circuit
        raise AssertionError(f"no circuit from {peer_id}")

    @defer.inlineCallbacks
    def test_rate_limit(self):
        """A limited peer gets its rate (within 5%), an unlimited one full speed, the node a window at most."""
        rate = 64 * 1024
        alice, bob, carol, dave = self.peer(), self.peer(), self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        c, d, _, _ = yield self.circuit(carol, dave)
        to_alice_channel, to_b = yield self.bulk(a, b)
        to_carol_channel, to_d = yield self.bulk(c, d)
        yield self.relay.set_limits(alice.peer_id, RelayLimits(max_rate=rate))
        slow, fast = self.circuit_of(alice.peer_id), self.circuit_of(carol.peer_id)
        sa = slow.a
        pacer = self.relay.accounts.pacers[alice.peer_id]
        total = 100  # 1.6 MB: more than the 18 simulated seconds let through
        for i in range(total):
            to_alice_channel.send(i.to_bytes(4, "big") + b"a" * CHUNK)
        for i in range(64):
            to_carol_channel.send(i.to_bytes(4, "big") + b"c" * CHUNK)
        # The unlimited circuit runs at full speed with the relay's clock standing still.
        yield self.until(lambda: len(to_d) == 64)
        self.assertEqual(self.clock.seconds(), 0)
        self.assertEqual(fast.queued[fast.a], 0)
        # Meanwhile the limited one got one burst through, at most.
        self.assertLessEqual(slow.forwarded[sa], rate + CHUNK + 512)
        step, marks = 0.25, {}
        for n in range(1, 73):
            yield self.until(lambda: pacer.queued >= 2 * CHUNK)
            self.clock.advance(step)
            self.assertLessEqual(slow.in_flight(sa), WINDOW)
            self.assertLessEqual(slow.queued[sa], WINDOW)
            self.assertLessEqual(pacer.queued, WINDOW)
            if n in (8, 72):
                marks[n] = slow.forwarded[sa]
        measured = (marks[72] - marks[8]) / (64 * step)
        self.assertApproximates(measured, rate, 0.05 * rate)
        self.assertLess(len(to_b), total)
        stats = {c["requester"]: c for c in self.relay.stats()["open"]}
        self.assertEqual(stats[alice.peer_id]["queued"], pacer.queued)
        self.assertEqual(self.relay.peer_stats(alice.peer_id)["max_rate"], rate)
        # Lifting the limit lets the rest through at once, all of it in order.
        yield self.relay.set_limits(alice.peer_id, RelayLimits())
        yield self.until(lambda: len(to_b) == total)
        self.assertEqual([int.from_bytes(m[:4], "big") for m in to_b], list(range(total)))
        self.assertEqual(self.relay.accounts.pacers, {})
        self.assertEqual(slow.queued[sa], 0)

    @defer.inlineCallbacks
    def test_closing_drops_queued_bytes(self):
        """Closing a rate-limited circuit drops what waited for the bucket and cancels its timer."""
        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        channel, _ = yield self.bulk(a, b)
        yield self.relay.set_limits(alice.peer_id, RelayLimits(max_rate=1000))
        pacer = self.relay.accounts.pacers[alice.peer_id]
        for _ in range(8):
            channel.send(b"x" * CHUNK)
        yield self.until(lambda: pacer.queued >= 4 * CHUNK)
        self.relay.close(self.circuit_of(alice.peer_id), "test")
        self.assertEqual(pacer.queued, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)  # nothing left to forward


class TCPRateTests(RateScenarioMixin, unittest.TestCase):
    pass


class WebSocketRateTests(RateScenarioMixin, unittest.TestCase):
    websocket = True


class QuotaTests(RelayHarness, unittest.TestCase):
    @defer.inlineCallbacks
    def test_used_up_quota_refuses_circuits(self):
        """A peer whose byte quota is used up is refused new circuits with a reason."""
        alice, bob = self.peer(), self.peer()
        node_a = yield self.connect(alice)
        yield self.connect(bob)
        yield self.relay.set_quota(alice.peer_id, 0)
        status, reason = yield self.refused(relay.relay_to(alice, node_a, bob.peer_id))
        self.assertEqual(status, RouteStatus.REFUSED)
        self.assertIn("quota used up", reason)
        self.assertEqual(self.relay.circuits, {})

    @defer.inlineCallbacks
    def test_exceeded_quota_is_final(self):
        """Sending past the quota closes the circuit as final: both ends end their sessions, no re-establishing."""
        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        yield self.relay.set_quota(alice.peer_id, self.relay.bytes_sent[alice.peer_id] + 100)
        ended_a, ended_b = eventually(defer.Deferred()), eventually(defer.Deferred())
        a.on_close, b.on_close = ended_a.callback, ended_b.callback
        a.open_channel("chat").send(b"z" * 1000)
        why_a, why_b = yield defer.gatherResults([ended_a, ended_b])
        self.assertIn("quota exceeded", why_a.reason)
        self.assertIn("quota exceeded", why_b.reason)
        self.assertEqual(relay.relay_endpoint(alice).relayed, {})


class ApiTests(RelayHarness, unittest.TestCase):
    """PUT /relay/{peer_id}/quota with limits bodies through the management API."""

    def api(self):
        from tests.test_management import Node

        return Node(self, relay=self.relay)

    def put(self, api, peer_id, body, **kwargs):
        return api.json("PUT", f"/relay/{peer_id}/quota", json=body, **kwargs)

    def test_limits_body(self):
        """PUT sets and stores the quota and the rate; absent keys are kept, null removes one."""
        alice = self.peer()
        store = self.relay.accounts.store
        api = self.api()
        body = self.put(api, alice.peer_id, {"max_bytes": 5000, "max_rate": 2048})
        self.assertEqual((body["quota"], body["max_rate"]), (5000, 2048))
        self.assertEqual(store.limits[alice.peer_id], RelayLimits(5000, 2048))
        self.assertIn(alice.peer_id, self.relay.accounts.pacers)
        peers = {p["peer_id"]: p for p in api.json("GET", "/relay")["peers"]}
        self.assertEqual((peers[alice.peer_id]["quota"], peers[alice.peer_id]["max_rate"]), (5000, 2048))
        # The quota alone, as before rate limits existed: the rate is kept.
        body = self.put(api, alice.peer_id, {"max_bytes": 7000})
        self.assertEqual((body["quota"], body["max_rate"]), (7000, 2048))
        body = self.put(api, alice.peer_id, {"max_rate": None})
        self.assertEqual((body["quota"], body["max_rate"]), (7000, None))
        self.assertEqual(self.relay.accounts.pacers, {})
        body = self.put(api, alice.peer_id, {"max_bytes": None})
        self.assertEqual((body["quota"], body["max_rate"]), (None, None))
        self.assertEqual((store.limits, self.relay.accounts.limits), ({}, {}))

    def test_reset_bytes(self):
        """reset_bytes zeroes the peer's persisted byte counts."""
        alice = self.peer()
        self.relay.accounts.sent(alice.peer_id, 1234)
        self.successResultOf(self.relay.accounts.flush())
        body = self.put(self.api(), alice.peer_id, {"max_bytes": 10, "reset_bytes": True})
        self.assertEqual((body["bytes_sent"], body["quota"]), (0, 10))
        self.assertEqual(self.relay.accounts.store.usage[alice.peer_id], (0, 0))

    def test_bad_bodies(self):
        """Bad limits bodies give 400 naming the key, an unpaired peer 404, and nothing changes."""
        from tests.test_management import new_peer_id

        alice = self.peer()
        api = self.api()
        for body, word in [({"max_rate": 0}, "max_rate"), ({"max_rate": "1"}, "max_rate"),
                           ({"max_bytes": -5}, "max_bytes"), ({"reset_bytes": "yes"}, "reset_bytes"),
                           ({"x": 1}, "x")]:
            error = self.put(api, alice.peer_id, body, expected_code=400)
            self.assertIn(word, error["error"])
        stranger, _ = new_peer_id()
        self.put(api, stranger, {"max_rate": 5}, expected_code=404)
        self.assertEqual(self.relay.accounts.limits, {})


class FlushTests(unittest.TestCase):
    """When byte counts are written."""

    def test_counts_written_in_groups(self):
        """Counts are written by the first count after the interval, by a flush, and not before."""
        from cairn.relay.accounts import Accounts

        clock = task.Clock()
        store = MemoryRelayStore()
        accounts = Accounts(clock, store, flush_interval=10.0)
        self.successResultOf(accounts.start())
        accounts.sent("p", 100)
        accounts.received("q", 100)
        self.assertEqual(store.usage, {})
        clock.advance(10.0)
        accounts.sent("p", 1)
        self.assertEqual(store.usage, {"p": (101, 0), "q": (0, 100)})
        accounts.sent("p", 1)
        self.assertEqual(store.usage["p"], (101, 0))
        self.successResultOf(accounts.stop())
        self.assertEqual(store.usage["p"], (102, 0))
        self.assertEqual(clock.getDelayedCalls(), [])


class StoreTests(unittest.TestCase):
    """Both stores, the SQLite one on a real database file."""

    @defer.inlineCallbacks
    def check(self, store):
        verifyObject(IRelayStore, store)
        yield store.set_limits("p1", RelayLimits(10, None))
        yield store.set_limits("p2", RelayLimits(None, 5))
        yield store.save_usage({"p1": (3, 4), "p3": (1, 2)})
        yield store.save_usage({"p1": (30, 40)})
        yield store.set_limits("p2", RelayLimits())
        limits, usage = yield store.load()
        self.assertEqual(limits, {"p1": RelayLimits(10, None)})
        self.assertEqual(usage, {"p1": (30, 40), "p3": (1, 2)})
        yield store.purge("p1")
        limits, usage = yield store.load()
        self.assertEqual((limits, usage), ({}, {"p3": (1, 2)}))

    def test_memory_store(self):
        """The in-memory store keeps limits and counts, and purges them."""
        return self.check(MemoryRelayStore())

    @defer.inlineCallbacks
    def test_sqlite_store(self):
        """The SQLite store keeps limits and counts in its schema, and purges them."""
        db = Database(reactor, os.path.abspath(self.mktemp()), [RELAY_SCHEMA])
        yield db.start()
        try:
            yield self.check(SQLiteRelayStore(db))
        finally:
            yield db.stop()


PSK = "a long pre-shared key for the relay node tests"


class RestartTests(unittest.TestCase):
    """Limits and byte counts survive a clean restart of a whole node; unpairing forgets them."""

    #: Extra settings of the node (the JetStream variant sets its NATS).
    node_settings = {}

    def setUp(self):
        self.connections = []
        self.data_dir = os.path.abspath(self.mktemp())

    def tearDown(self):
        return drop_all(self.connections)

    @defer.inlineCallbacks
    def start(self):
        node = make_node(config_for(self.data_dir, psk=PSK, **self.node_settings), reactor)
        node.startService()
        ports = yield node.ready
        return node, f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"

    def stored_peers(self):
        """The peer ids the relay store holds a row for (a Deferred)."""
        with sqlite3.connect(os.path.join(self.data_dir, DB_FILE_NAME)) as conn:
            rows = conn.execute(
                "SELECT peer_id FROM relay_limits UNION ALL SELECT peer_id FROM relay_usage"
            ).fetchall()
        return defer.succeed([row[0] for row in rows])

    @defer.inlineCallbacks
    def paired(self, address):
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        session = yield eventually(client.connect(address))
        yield eventually(pairing.pair_psk(session, PSK))
        return client, session

    @defer.inlineCallbacks
    def test_restart_keeps_limits_and_counts(self):
        """A restart keeps limits and byte counts (a used-up quota stays used up); unpairing drops both."""
        node, address = yield self.start()
        alice, node_a = yield self.paired(address)
        bob, _ = yield self.paired(address)
        conditions = Conditions()
        accepted = defer.Deferred()
        relay.relay_endpoint(bob).on_session = accepted.callback
        a = yield eventually(relay.relay_to(alice, node_a, bob.peer_id))
        b = yield eventually(accepted)
        got = []
        b.on_channel = lambda channel: setattr(channel, "on_data", lambda d: conditions.changed(got.append(d)))
        a.open_channel("chat").send(b"q" * 5000)
        yield conditions.until(lambda: got)
        sent = node.relay.bytes_sent[alice.peer_id]
        self.assertGreater(sent, 5000)
        yield node.relay.put_quota(alice.peer_id, {"max_bytes": sent, "max_rate": 4096})
        a.close()
        yield node.stopService()

        node, address = yield self.start()
        stats = node.relay.peer_stats(alice.peer_id)
        self.assertEqual((stats["bytes_sent"], stats["quota"], stats["max_rate"]), (sent, sent, 4096))
        self.assertEqual(node.relay.bytes_received[bob.peer_id], sent)
        self.assertIn(alice.peer_id, node.relay.accounts.pacers)
        node_a = yield eventually(alice.connect(address))
        yield eventually(bob.connect(address))
        try:
            yield eventually(relay.relay_to(alice, node_a, bob.peer_id))
        except relay.RouteRefused as e:
            self.assertEqual(e.status, RouteStatus.REFUSED)
            self.assertIn("quota", e.reason)
        else:
            self.fail("a used-up quota was reset by the restart")
        yield node.pairing.unpair(alice.peer_id)
        self.assertEqual(node.relay.peer_stats(alice.peer_id)["quota"], None)
        yield node.stopService()
        self.assertEqual((yield self.stored_peers()), [bob.peer_id])
