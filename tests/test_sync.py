"""
The sync hub end to end: library devices over real loopback sessions (TCP
and WebSocket), the node's clock a L{task.Clock}.
"""

import json
import os
import sqlite3

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.db import Database
from cairn.mailbox.interfaces import Limits, StoreFull
from cairn.management.metrics import Metrics
from cairn.pairing.interfaces import UnknownPeer
from cairn.pairing.service import PairingService
from cairn.pairing.trust import MemoryTrustStore
from cairn.sync import access, sealing
from cairn.sync import client as sync
from cairn.sync.interfaces import SYNC_SCHEMA, ISyncHub
from cairn.sync.service import SyncService
from cairn.sync.store import MemorySyncStore, SQLiteSyncStore
from cairn.wire.constants import CloseCode, MessageType, SyncStatus
from tests._harness import SETTINGS, Conditions, ScenarioMixin, closed, eventually, observe_logs
from tests.test_management import Node as ManagementNode

DAY = 86400.0
MAX_AGE = 7 * DAY


class Device:
    """A paired library client and what its sync subscription was given."""

    def __init__(self, harness, client):
        self.harness = harness
        self.client = client
        self.peer_id = client.peer_id
        self.updates, self.resets = [], []
        self.session = None

    def got(self, topic, seq, sender, data):
        self.updates.append((topic, seq, sender, data))
        self.harness.conditions.changed()

    def reset(self, topic, oldest_seq, reason):
        self.resets.append((topic, oldest_seq))
        self.harness.conditions.changed()

    @defer.inlineCallbacks
    def connect(self, topics=None):
        """Connect; subscribe to C{topics} on the first session (later ones subscribe by themselves)."""
        self.session = yield self.harness.connect(self.client)
        if topics is not None:
            sync.subscribe(self.session, topics, self.got, on_reset=self.reset)
        return self.session

    @defer.inlineCallbacks
    def disconnect(self):
        """End the session cleanly and wait until the node has closed it too."""
        server_side = self.harness.server_session(self.session)
        self.session.close()
        yield closed(server_side)

    def data(self, topic="notes"):
        return [d for t, _, _, d in self.updates if t == topic]


class SyncHarness(ScenarioMixin):
    """A node peer with pairing (memory trust store) and a sync hub; C{self.clock} drives the hub."""

    sqlite = False
    limits = Limits(max_total=10**6, max_age=MAX_AGE)

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.trust = MemoryTrustStore()
        self.pairing = PairingService(self.server, self.trust, self.clock)
        self.store = yield self.make_store()
        self.hub = SyncService(
            self.server, self.trust, self.store, self.clock, limits=self.limits, max_payload=SETTINGS["max_payload"]
        )
        self.pairing.add_purge_hook(self.hub.purge)
        yield self.hub.start()
        self.addCleanup(self.hub.stop)
        # Waits re-check whenever the store changes.
        self.conditions = Conditions()
        for name in ("subscribe", "set_cursor", "publish", "purge"):
            setattr(self.store, name, self._watched(getattr(self.store, name)))

    @defer.inlineCallbacks
    def make_store(self):
        """The store under test (a Deferred): memory, or SQLite when C{sqlite} is set."""
        if not self.sqlite:
            return MemorySyncStore()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.db_path = os.path.join(directory, "cairn.sqlite")
        self.db = Database(reactor, self.db_path, [SYNC_SCHEMA])
        yield self.db.start()
        self.addCleanup(self.db.stop)
        return SQLiteSyncStore(self.db)

    def _watched(self, method):
        return lambda *args: method(*args).addBoth(self.conditions.changed)

    def device(self, paired=True):
        client = self.make_client()
        # One person's devices share a group key (§24.10).
        if not hasattr(self, "keyring"):
            self.keyring = sealing.Keyring.generate()
        sync.set_keyring(client.peer, self.keyring)
        if paired:
            self.successResultOf(self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0))
        return Device(self, client)

    def until(self, predicate):
        return self.conditions.until(predicate)

    def cursor(self, device, topic="notes"):
        return self.store.cursors().get(device.peer_id, {}).get(topic)

    @defer.inlineCallbacks
    def subscribed(self, *devices, topic="notes"):
        """Wait until the node holds a cursor on C{topic} for every one of C{devices}."""
        yield self.until(lambda: all(self.cursor(d, topic) is not None for d in devices))

    def sweep(self):
        """Run the retention sweep on the node's clock; fires once it is done."""
        self.clock.advance(self.hub.sweep_interval)
        return self.hub.sweep()


class SyncScenarioMixin(SyncHarness):
    """The scenarios, run over TCP, WebSocket and with the SQLite store."""

    def test_interface(self):
        """The service provides ISyncHub."""
        verifyObject(ISyncHub, self.hub)

    @defer.inlineCallbacks
    def test_fan_out_to_online_devices(self):
        """An update is acked once durable and reaches every other subscribed device at once, not its publisher."""
        phone, laptop, tablet = self.device(), self.device(), self.device()
        for d in (phone, laptop, tablet):
            yield d.connect(["notes"])
        yield self.subscribed(phone, laptop, tablet)
        seq = yield eventually(sync.sync_publish(phone.session, "notes", b"sealed-1"))
        self.assertEqual(seq, 1)
        yield self.until(lambda: laptop.updates and tablet.updates)
        self.assertEqual(laptop.updates, [("notes", 1, phone.peer_id, b"sealed-1")])
        self.assertEqual(tablet.updates, laptop.updates)
        # Cursors are acknowledged by the client library; the publisher's moves over its own update.
        yield self.until(lambda: [self.cursor(d) for d in (phone, laptop, tablet)] == [1, 1, 1])
        self.assertEqual(phone.updates, [])

    @defer.inlineCallbacks
    def test_outbox_made_by_first_subscribe(self):
        """A paired device's session has no outbox until it subscribes (issue 20); it is connected either way."""
        phone, laptop = self.device(), self.device()
        yield phone.connect()
        yield laptop.connect(["notes"])
        yield self.subscribed(laptop)
        # Acknowledged after the hub has taken the subscription in.
        yield eventually(sync.sync_publish(laptop.session, "notes", b"first"))
        sessions = {self.server_session(d.session).session_id: d for d in (phone, laptop)}
        self.assertEqual([sessions[sid] for sid in self.hub._outboxes], [laptop])
        self.assertEqual(self.hub._connected(), {phone.peer_id, laptop.peer_id})
        sync.subscribe(phone.session, ["notes"], phone.got, on_reset=phone.reset)
        yield self.subscribed(phone)
        yield eventually(sync.sync_publish(laptop.session, "notes", b"late"))
        yield self.until(lambda: len(phone.updates) == 2)
        self.assertEqual(phone.data(), [b"first", b"late"])

    @defer.inlineCallbacks
    def test_offline_for_days_gets_everything_in_order(self):
        """A device offline for simulated days gets every update, in order, at its next session."""
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        yield laptop.disconnect()
        for i in range(30):
            yield eventually(sync.sync_publish(phone.session, "notes", b"u%d" % i))
            self.clock.advance(4 * 3600)  # five days in all, within retention
            if i % 6 == 0:
                yield self.sweep()
        self.assertEqual(self.cursor(laptop), 0)
        yield laptop.connect()  # resubscribes by itself
        yield self.until(lambda: len(laptop.updates) == 30)
        self.assertEqual(laptop.data(), [b"u%d" % i for i in range(30)])
        self.assertEqual([seq for _, seq, _, _ in laptop.updates], list(range(1, 31)))
        self.assertEqual(laptop.resets, [])
        yield self.until(lambda: self.cursor(laptop) == 30)

    @defer.inlineCallbacks
    def test_per_device_cursors_independent(self):
        """Each device has its own durable cursor: one catching up does not move another's."""
        phone, laptop, tablet = self.device(), self.device(), self.device()
        for d in (phone, laptop, tablet):
            yield d.connect(["notes", "photos"])
        yield self.subscribed(phone, laptop, tablet, topic="photos")
        yield tablet.disconnect()
        for i in range(3):
            yield eventually(sync.sync_publish(phone.session, "notes", b"n%d" % i))
        yield eventually(sync.sync_publish(laptop.session, "photos", b"p"))
        yield self.until(lambda: self.cursor(laptop) == 3 and self.cursor(phone, "photos") == 1)
        self.assertEqual(self.store.cursors()[tablet.peer_id], {"notes": 0, "photos": 0})
        self.assertEqual(laptop.data(), [b"n0", b"n1", b"n2"])
        self.assertEqual(phone.data("photos"), [b"p"])
        yield tablet.connect()
        yield self.until(lambda: len(tablet.updates) == 4)
        self.assertEqual(tablet.data(), [b"n0", b"n1", b"n2"])
        self.assertEqual(tablet.data("photos"), [b"p"])
        yield self.until(lambda: self.store.cursors()[tablet.peer_id] == {"notes": 3, "photos": 1})

    @defer.inlineCallbacks
    def test_retention_sweep_and_reset(self):
        """A device whose cursor fell behind retention is sent SyncReset, then the updates still held."""
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        yield laptop.disconnect()
        for i in range(3):
            yield eventually(sync.sync_publish(phone.session, "notes", b"old%d" % i))
        self.clock.advance(MAX_AGE + 1)
        for i in range(2):
            yield eventually(sync.sync_publish(phone.session, "notes", b"new%d" % i))
        yield self.sweep()
        topic = self.store.topics()["notes"]
        self.assertEqual((topic.floor, topic.head, topic.updates), (3, 5, 2))
        behind = {d["peer_id"]: d["behind_retention"] for d in self.hub.stats()["topics"][0]["devices"]}
        self.assertEqual(behind, {phone.peer_id: False, laptop.peer_id: True})
        yield laptop.connect()
        yield self.until(lambda: len(laptop.updates) == 2)
        self.assertEqual(laptop.resets, [("notes", 4)])
        self.assertEqual(laptop.data(), [b"new0", b"new1"])
        self.assertEqual(self.hub.resets, 1)
        yield self.until(lambda: self.cursor(laptop) == 5)

    @defer.inlineCallbacks
    def test_retention_reset_while_online(self):
        """A connected device behind a sweep (its window full) is told with SyncReset too."""
        self.hub.window = 0  # nothing is sent: the device stays behind
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        yield eventually(sync.sync_publish(phone.session, "notes", b"gone"))
        self.clock.advance(MAX_AGE + 1)
        yield eventually(sync.sync_publish(phone.session, "notes", b"kept"))
        yield self.sweep()
        self.hub.window = 64
        self.hub._pump_all()
        yield self.until(lambda: laptop.resets and laptop.updates)
        self.assertEqual(laptop.resets, [("notes", 2)])
        self.assertEqual(laptop.data(), [b"kept"])

    @defer.inlineCallbacks
    def test_replay_from_given_cursor(self):
        """A device that lost its state replays a topic from the cursor it gives in SyncSubscribe."""
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        for i in range(3):
            yield eventually(sync.sync_publish(phone.session, "notes", b"u%d" % i))
        yield self.until(lambda: self.cursor(laptop) == 3)
        sync.subscribe(laptop.session, ["notes"], laptop.got, cursors={"notes": 1})
        yield self.until(lambda: len(laptop.updates) == 5)
        self.assertEqual(laptop.data(), [b"u0", b"u1", b"u2", b"u1", b"u2"])
        yield self.until(lambda: self.cursor(laptop) == 3)

    @defer.inlineCallbacks
    def test_invalid_publish_and_storage_error(self):
        """A bad SyncPublish is acked INVALID; a store failure is acked STORAGE_ERROR and the session goes on."""
        phone = self.device()
        yield phone.connect(["notes"])
        client = sync.sync_client(phone.client.peer)
        d = client._acks.add(phone.session.session_id, b"\x03" * 16)
        phone.session.send(MessageType.SYNC_PUBLISH, {"topic": "", "id": b"\x03" * 16, "payload": b"x"})
        failure = yield self.assertFailure(eventually(d), sync.PublishRejected)
        self.assertEqual(failure.code, SyncStatus.INVALID)
        publish = self.store.publish
        self.store.publish = lambda *args: defer.fail(StoreFull("disk full"))
        failure = yield self.assertFailure(
            eventually(sync.sync_publish(phone.session, "notes", b"x")), sync.PublishRejected
        )
        self.assertEqual(failure.code, SyncStatus.STORAGE_ERROR)
        self.store.publish = publish
        self.assertEqual((yield eventually(sync.sync_publish(phone.session, "notes", b"y"))), 1)

    @defer.inlineCallbacks
    def test_unpair_drops_cursors(self):
        """Unpairing a device drops its cursors; the others keep theirs."""
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        yield self.pairing.unpair(laptop.peer_id)
        self.assertEqual(list(self.store.cursors()), [phone.peer_id])

    @defer.inlineCallbacks
    def test_unpair_purge_on_full_store_retried_by_the_sweep(self):
        """
        A purge that meets a full store (DELETE /peers/{id} answers 507) is
        tried again at each sweep until it succeeds: the revoked device's
        cursors do not stay for good (only the mailbox's part was retried).
        """
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        purge, failures = self.store.purge, [StoreFull("database or disk is full")] * 2

        def full_then_working(device):
            return defer.fail(failures.pop()) if failures else purge(device)

        self.store.purge = full_then_working
        events = observe_logs(self)
        yield self.assertFailure(self.pairing.unpair(laptop.peer_id), StoreFull)
        self.assertIn(laptop.peer_id, self.store.cursors())
        yield self.hub.sweep()  # the first retry meets the full store again: one line
        self.assertIn(laptop.peer_id, self.store.cursors())
        [line] = [e for e in events if "purging" in e.get("log_format", "")]
        self.assertIn("database or disk is full", formatEvent(line))
        yield self.hub.sweep()
        self.assertEqual(list(self.store.cursors()), [phone.peer_id])
        self.assertEqual(self.hub.purges_pending, set())
        self.assertEqual(self.flushLoggedErrors(StoreFull), [])

    @defer.inlineCallbacks
    def test_failed_purge_found_again_after_a_restart(self):
        """
        Cursors still held for a revoked device whose failed purge this
        process does not remember (a restart, another node) are dropped by
        the sweep; a device paired again meanwhile keeps its own.
        """
        phone, laptop, tablet = self.device(), self.device(), self.device()
        for device in (phone, laptop, tablet):
            yield device.connect(["notes"])
        yield self.subscribed(phone, laptop, tablet)
        purge = self.store.purge
        self.store.purge = lambda device: defer.fail(StoreFull("database or disk is full"))
        yield self.assertFailure(self.pairing.unpair(laptop.peer_id), StoreFull)
        yield self.assertFailure(self.pairing.unpair(tablet.peer_id), StoreFull)
        self.store.purge = purge
        self.hub.purges_pending.clear()  # as after a restart
        key = tablet.client.peer.identity.public_key
        self.successResultOf(self.trust.set_paired(tablet.peer_id, key, "", "psk", 0.0))
        yield self.hub.sweep()
        self.assertEqual(set(self.store.cursors()), {phone.peer_id, tablet.peer_id})

    @defer.inlineCallbacks
    def test_paired_during_session_gets_updates(self):
        """A device that pairs after its session began (a first run) gets live updates on that session."""
        phone, laptop = self.device(), self.device(paired=False)
        yield phone.connect(["notes"])
        yield laptop.connect()
        key = laptop.client.peer.identity.public_key
        self.successResultOf(self.trust.set_paired(laptop.peer_id, key, "", "psk", 0.0))
        sync.subscribe(laptop.session, ["notes"], laptop.got, on_reset=laptop.reset)
        yield self.subscribed(phone, laptop)
        yield eventually(sync.sync_publish(phone.session, "notes", b"sealed-1"))
        yield self.until(lambda: laptop.updates)
        self.assertEqual(laptop.data(), [b"sealed-1"])

    @defer.inlineCallbacks
    def test_unpaired_device_refused(self):
        """A SyncPublish or SyncSubscribe from an unpaired device closes its session with NOT_PAIRED."""
        for type_code, body in [
            (MessageType.SYNC_PUBLISH, {"topic": "notes", "id": b"\x01" * 16, "payload": b"x"}),
            (MessageType.SYNC_SUBSCRIBE, {"topics": ["notes"]}),
        ]:
            stranger = self.device(paired=False)
            session = yield stranger.connect()
            session.send(type_code, body)
            ended = yield closed(session)
            self.assertEqual(ended.code, CloseCode.NOT_PAIRED)
        self.assertEqual(self.store.topics(), {})
        self.assertEqual(self.store.cursors(), {})

    @defer.inlineCallbacks
    def test_access_limits_publish_and_subscribe(self):
        """Outside its grant a device's publish is FORBIDDEN and its subscription denied; inside, both work."""
        phone, laptop = self.device(), self.device()
        yield self.hub.set_access(laptop.peer_id, {"read": ["notes"], "write": []})
        denied = []
        laptop.session = yield self.connect(laptop.client)
        sync.subscribe(laptop.session, ["notes", "secrets"], laptop.got, on_denied=lambda t, r: denied.append(t))
        yield phone.connect(["notes"])
        yield self.subscribed(laptop, phone)
        failure = yield self.assertFailure(
            eventually(sync.sync_publish(laptop.session, "notes", b"x")), sync.PublishRejected
        )
        self.assertEqual(failure.code, SyncStatus.FORBIDDEN)
        self.assertEqual((yield eventually(sync.sync_publish(phone.session, "notes", b"ok"))), 1)
        yield self.until(lambda: laptop.updates)
        self.assertEqual((denied, laptop.data()), (["secrets"], [b"ok"]))
        self.assertNotIn("secrets", self.store.cursors()[laptop.peer_id])
        self.assertNotIn("secrets", sync.sync_client(laptop.client.peer).topics)

    @defer.inlineCallbacks
    def test_access_withdrawn_ends_subscription(self):
        """Withdrawing a topic ends the device's live subscription with SyncDenied; later updates do not reach it."""
        phone, laptop = self.device(), self.device()
        denied = []
        yield phone.connect(["notes"])
        laptop.session = yield self.connect(laptop.client)
        sync.subscribe(
            laptop.session, ["notes"], laptop.got, on_denied=lambda t, r: (denied.append(t), self.conditions.changed())
        )
        yield self.subscribed(laptop, phone)
        yield eventually(sync.sync_publish(phone.session, "notes", b"before"))
        yield self.until(lambda: laptop.updates)
        report = yield self.hub.set_access(laptop.peer_id, {"read": ["other"], "write": ["*"]})
        self.assertEqual(report, {"peer_id": laptop.peer_id, "default": False, "read": ["other"], "write": ["*"]})
        yield self.until(lambda: denied)
        yield eventually(sync.sync_publish(phone.session, "notes", b"after"))
        yield eventually(sync.sync_publish(laptop.session, "notes", b"mine"))
        self.assertEqual(laptop.data(), [b"before"])
        back = yield self.hub.set_access(laptop.peer_id, None)
        self.assertEqual(back["default"], True)

    def test_access_needs_paired_peer_and_valid_body(self):
        """Setting access names the bad input: an unpaired peer is unknown, a bad pattern a ValueError."""
        stranger, phone = self.device(paired=False), self.device()
        self.assertRaises(UnknownPeer, self.hub.set_access, stranger.peer_id, {"read": ["*"]})
        self.assertRaises(UnknownPeer, self.hub.access_report, stranger.peer_id)
        for body in ({"read": "notes"}, {"read": ["a*b"]}, {"read": [""]}, {"mode": []}, []):
            self.assertRaises(ValueError, self.hub.set_access, phone.peer_id, body)

    @defer.inlineCallbacks
    def test_default_none_denies_until_granted(self):
        """With CAIRN_SYNC_ACCESS=none a device can do nothing until the operator grants it a topic."""
        self.hub.default_access = access.NONE
        phone = self.device()
        yield phone.connect()
        failure = yield self.assertFailure(
            eventually(sync.sync_publish(phone.session, "notes", b"x")), sync.PublishRejected
        )
        self.assertEqual(failure.code, SyncStatus.FORBIDDEN)
        yield self.hub.set_access(phone.peer_id, {"write": ["notes"]})
        self.assertEqual((yield eventually(sync.sync_publish(phone.session, "notes", b"x"))), 1)

    @defer.inlineCallbacks
    def test_bad_subscribe_closes(self):
        """A malformed SyncSubscribe closes the session with BAD_CBOR."""
        phone = self.device()
        session = yield phone.connect()
        session.send(MessageType.SYNC_SUBSCRIBE, {"topics": "notes"})
        ended = yield closed(session)
        self.assertEqual(ended.code, CloseCode.BAD_CBOR)

    @defer.inlineCallbacks
    def test_too_large_and_duplicate(self):
        """An oversized payload is refused TOO_LARGE; a retried id is acked again with the same seq."""
        phone = self.device()
        sync.use_plaintext(phone.client.peer)  # the node's limit on the payload as sent
        yield phone.connect(["notes"])
        big = b"x" * (SETTINGS["max_payload"] - 100)
        publishing = eventually(sync.sync_publish(phone.session, "notes", big))
        failure = yield self.assertFailure(publishing, sync.PublishRejected)
        self.assertEqual(failure.code.name, "TOO_LARGE")
        first = yield eventually(sync.sync_publish(phone.session, "notes", b"a", update_id=b"\x02" * 16))
        again = yield eventually(sync.sync_publish(phone.session, "notes", b"a", update_id=b"\x02" * 16))
        self.assertEqual((first, again), (1, 1))
        self.assertEqual(self.store.topics()["notes"].updates, 1)

    @defer.inlineCallbacks
    def test_same_id_twice_in_flight(self):
        """An update id published again before its SyncAck: both publishes fire, with the one seq it got."""
        phone = self.device()
        yield phone.connect(["notes"])
        update_id = b"\x04" * 16
        first = sync.sync_publish(phone.session, "notes", b"a", update_id=update_id)
        again = sync.sync_publish(phone.session, "notes", b"a", update_id=update_id)
        seqs = yield eventually(defer.gatherResults([first, again]))
        self.assertEqual(seqs, [1, 1])
        self.assertEqual(self.store.topics()["notes"].updates, 1)

    @defer.inlineCallbacks
    def test_stats_and_metrics(self):
        """GET /sync's data and the Prometheus gauges show topics, per-device cursors and lag."""
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        yield laptop.disconnect()
        yield eventually(sync.sync_publish(phone.session, "notes", b"abc"))
        yield eventually(sync.sync_publish(phone.session, "notes", b"de"))
        yield self.until(lambda: self.cursor(phone) == 2)
        stats = self.hub.stats()
        (topic,) = stats["topics"]
        sealed = 5 + 2 * sealing.OVERHEAD  # the node counts the sealed payloads' bytes
        self.assertEqual((topic["topic"], topic["head"], topic["updates"], topic["bytes"]), ("notes", 2, 2, sealed))
        devices = {d["peer_id"]: d for d in topic["devices"]}
        self.assertEqual((devices[laptop.peer_id]["cursor"], devices[laptop.peer_id]["lag"]), (0, 2))
        self.assertEqual((devices[phone.peer_id]["lag"], devices[phone.peer_id]["connected"]), (0, True))
        self.assertFalse(devices[laptop.peer_id]["connected"])
        self.assertEqual(stats["bytes"], sealed)
        metrics = Metrics(self.server, self.clock, 0.0, process_metrics=False)
        metrics.add_collector(self.hub.collect_metrics)
        text = metrics.exposition().decode()
        self.assertIn(f'cairn_sync_cursor_lag{{peer="{laptop.peer_id}",topic="notes"}} 2.0', text)
        self.assertIn('cairn_sync_topic_head{topic="notes"} 2.0', text)
        self.assertIn('cairn_sync_publish_total{status="committed"} 2.0', text)
        # The same figures through the management API.
        response, body = ManagementNode(self, sync=self.hub).call("GET", "/sync")
        self.assertEqual(response.code, 200)
        served = json.loads(body)
        self.assertEqual(served["topics"][0]["head"], 2)
        lags = {d["peer_id"]: d["lag"] for d in served["topics"][0]["devices"]}
        self.assertEqual(lags, {phone.peer_id: 0, laptop.peer_id: 2})


class TCPSyncTests(SyncScenarioMixin, unittest.TestCase):
    pass


class WebSocketSyncTests(SyncScenarioMixin, unittest.TestCase):
    websocket = True


class SQLiteSyncTests(SyncScenarioMixin, unittest.TestCase):
    sqlite = True

    def rows(self, sql):
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute(sql).fetchall()

    @defer.inlineCallbacks
    def test_storage_does_not_grow_with_devices(self):
        """With N devices subscribed, the database holds one log row per update and one cursor per device."""
        devices = [self.device() for _ in range(6)]
        for d in devices:
            yield d.connect(["notes"])
        yield self.subscribed(*devices)
        yield devices[3].disconnect()
        yield devices[4].disconnect()
        for i in range(4):
            yield eventually(sync.sync_publish(devices[0].session, "notes", b"u%d" % i))
        yield self.until(lambda: all(self.cursor(d) == 4 for d in devices if d not in devices[3:5]))
        yield self.store.flushed()
        self.assertEqual(self.rows("SELECT COUNT(*) FROM sync_log"), [(4,)])
        self.assertEqual(self.rows("SELECT COUNT(*) FROM sync_cursors"), [(6,)])
        self.assertEqual(self.rows("SELECT COUNT(*) FROM sync_topics"), [(1,)])

    @defer.inlineCallbacks
    def test_cursors_survive_restart(self):
        """A new hub on the same database replays from each device's durable cursor."""
        phone, laptop = self.device(), self.device()
        yield phone.connect(["notes"])
        yield laptop.connect(["notes"])
        yield self.subscribed(phone, laptop)
        yield laptop.disconnect()
        yield eventually(sync.sync_publish(phone.session, "notes", b"kept"))
        again = SQLiteSyncStore(self.db)
        yield again.start()
        self.assertEqual(again.cursors()[laptop.peer_id], {"notes": 0})
        (kept,) = yield again.fetch("notes", 0, 10)
        self.assertEqual(self.keyring.open("notes", kept.sender, kept.update_id, kept.payload), b"kept")
