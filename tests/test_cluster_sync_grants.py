"""
A sync access grant made on one node holds on another at once (issue 15):
two JetStream sync stores on one NATS server, as two nodes would be,
C{here}'s watch held back so that its cache learns nothing by itself while
C{elsewhere} (the node whose API was asked) writes grants. Before refusing,
C{here} reads the device's grant (L{ISyncStore.catch_up_access}) and never
rolls one back; the sync service on C{here} serves the device at once,
its later requests waiting behind the read, and answers what a device
tries again when the grant cannot be read.
"""

import asyncio
import json
import os

from twisted.internet import defer, task
from twisted.trial import unittest

from cairn.cluster.sync import JetStreamSyncStore
from cairn.crypto.identity import Identity
from cairn.pairing.trust import MemoryTrustStore
from cairn.session.peer import Peer
from cairn.sync import access
from cairn.sync.access import Access
from cairn.sync.service import SyncService
from cairn.wire.constants import CloseCode, MessageType, SyncStatus
from tests import _jetstream
from tests._harness import Conditions
from tests.test_mailbox_vectors import RecordingSession

DEVICE = Identity.from_seed(b"\x07" * 32)
NOTES = Access(("notes",), ("notes",))


class HeldBack(unittest.TestCase):
    """C{here}'s watch reads nothing until the test releases it; C{elsewhere} writes grants."""

    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.here, self.elsewhere = JetStreamSyncStore(self.jet), JetStreamSyncStore(self.jet)
        self.conditions = Conditions()
        follow, self.gate = self.here._follow, None

        async def held_back():  # on the NATS loop: the watches start when released
            self.gate = asyncio.get_running_loop().create_future()
            self.jet.thread.to_reactor(self.conditions.changed)
            await self.gate
            await follow()

        self.here._follow = held_back
        granted = self.here._granted_elsewhere
        self.here._granted_elsewhere = lambda *a: self.conditions.changed(granted(*a))
        # start() waits for _follow: let it start, and hold the watch only.
        self.here_started = self.here.start()
        self.addCleanup(self.release)
        yield self.conditions.until(lambda: self.gate is not None)
        yield self.elsewhere.start()

    @defer.inlineCallbacks
    def release(self):
        """Let the watch of C{here} start (it reads what it missed)."""

        async def open_gate():
            if not self.gate.done():
                self.gate.set_result(None)

        yield self.jet.run(open_gate)
        yield self.here_started


class GrantBeforeTheWatchTests(HeldBack):
    """The store's read of a device's grant."""

    @defer.inlineCallbacks
    def test_a_grant_made_elsewhere_is_read(self):
        """A grant stored elsewhere, not yet seen by the watch, is read and applied; a reset to the default too."""
        self.patch(self.jet, "clock", task.Clock())
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        self.assertEqual(self.here.access(), {})
        checked = yield self.here.catch_up_access(DEVICE.peer_id)
        self.assertEqual((checked, self.here.access()), (True, {DEVICE.peer_id: NOTES}))
        yield self.elsewhere.set_access(DEVICE.peer_id, None)
        self.jet.clock.advance(1.0)  # a device's grant is read once a second at most
        checked = yield self.here.catch_up_access(DEVICE.peer_id)
        self.assertEqual((checked, self.here.access()), (True, {}))

    @defer.inlineCallbacks
    def test_never_rolls_back(self):
        """A read older than what the store holds (the watch applied a newer grant meanwhile) changes nothing."""
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        newer = Access(("*",), ())
        self.here._grant_revisions[DEVICE.peer_id] = 10_000  # as if the watch had applied a later write
        self.here._set_access(DEVICE.peer_id, newer)
        checked = yield self.here.catch_up_access(DEVICE.peer_id)
        self.assertEqual((checked, self.here.access()), (True, {DEVICE.peer_id: newer}))

    @defer.inlineCallbacks
    def test_the_watch_after_the_read(self):
        """The watch, released after a read, applies the later grants only (in order), not the one read again."""
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        yield self.here.catch_up_access(DEVICE.peer_id)
        applied = []
        granted = self.here._granted_elsewhere
        self.here._granted_elsewhere = lambda device, grant: granted(device, applied.append(grant) or grant)
        narrower = Access(("notes",), ())
        yield self.elsewhere.set_access(DEVICE.peer_id, narrower)
        yield self.release()
        yield self.conditions.until(lambda: self.here.access() == {DEVICE.peer_id: narrower})
        self.assertEqual(applied, [narrower.to_json()])

    @defer.inlineCallbacks
    def test_not_connected(self):
        """NATS not connected: not read, so not known current (False); the cache is left as it was."""
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        self.patch(self.jet, "state", "degraded")
        checked = yield self.here.catch_up_access(DEVICE.peer_id)
        self.assertEqual((checked, self.here.access()), (False, {}))


class ServedBeforeTheWatchTests(HeldBack):
    """The sync service on C{here} (default access: none), a device's session, and grants made elsewhere."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        trust = MemoryTrustStore()
        trust.set_paired(DEVICE.peer_id, DEVICE.public_key, "", "psk", 0.0)
        clock = task.Clock()
        self.hub = SyncService(
            Peer(Identity.from_seed(bytes(32)), clock), trust, self.here, clock, default_access=access.NONE
        )
        self.session = RecordingSession(self.hub.peer, DEVICE.peer_id)
        self.session.close = lambda code, reason="": self.conditions.changed(setattr(self.session, "closed", code))
        send, apply = self.session.send, self.here._apply
        self.here._apply = lambda changes: self.conditions.changed(apply(changes))
        self.session.send = lambda *a: self.conditions.changed(send(*a))

    def request(self, type_code, body):
        self.hub.peer.handler_for(type_code)(self.session, body)

    def publish(self, topic="notes"):
        update_id = os.urandom(16)
        self.request(MessageType.SYNC_PUBLISH, {"topic": topic, "id": update_id, "payload": b"sealed"})
        return update_id

    def acks(self):
        return [(b["status"], b["seq"]) for b in self.session.bodies(MessageType.SYNC_ACK)]

    @defer.inlineCallbacks
    def test_publish_granted_elsewhere(self):
        """
        A publish the cache forbids, granted elsewhere a moment ago: committed;
        the session's next publish, sent while the grant is read, is answered after it.
        """
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        self.publish()
        self.publish()
        yield self.conditions.until(lambda: len(self.acks()) == 2)
        self.assertEqual(self.acks(), [(SyncStatus.COMMITTED, 1), (SyncStatus.COMMITTED, 2)])

    @defer.inlineCallbacks
    def test_publish_still_forbidden(self):
        """A publish the grant it reads forbids too: FORBIDDEN."""
        yield self.elsewhere.set_access(DEVICE.peer_id, Access(("notes",), ()))
        self.publish()
        yield self.conditions.until(lambda: self.acks())
        self.assertEqual(self.acks(), [(SyncStatus.FORBIDDEN, None)])
        self.assertEqual(self.here.access(), {DEVICE.peer_id: Access(("notes",), ())})  # decided on the grant read

    @defer.inlineCallbacks
    def test_subscribe_granted_elsewhere(self):
        """A subscription the cache refuses, granted elsewhere: served (a cursor, no SyncDenied); the rest denied."""
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        self.request(MessageType.SYNC_SUBSCRIBE, {"topics": ["notes", "secret"]})
        yield self.conditions.until(lambda: self.session.bodies(MessageType.SYNC_DENIED))
        self.assertEqual([b["topic"] for b in self.session.bodies(MessageType.SYNC_DENIED)], ["secret"])
        self.assertEqual(self.here.access(), {DEVICE.peer_id: NOTES})
        self.assertIsNone(self.session.closed)
        yield self.conditions.until(lambda: DEVICE.peer_id in self.here.cursors())
        self.assertEqual(self.here.cursors(), {DEVICE.peer_id: {"notes": 0}})

    @defer.inlineCallbacks
    def test_grant_unreadable(self):
        """
        The grant cannot be read (NATS not connected): the publish is answered
        STORAGE_ERROR and the subscribing session closed GOING_AWAY -- what a
        device tries again -- never FORBIDDEN or SyncDenied.
        """
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        self.patch(self.jet, "state", "degraded")
        self.publish()
        self.assertEqual(self.acks(), [(SyncStatus.STORAGE_ERROR, None)])
        self.assertIn("cannot check this device's access", self.session.bodies(MessageType.SYNC_ACK)[0]["reason"])
        self.request(MessageType.SYNC_SUBSCRIBE, {"topics": ["notes"]})
        self.assertEqual(self.session.closed, CloseCode.GOING_AWAY)
        self.assertEqual(self.session.bodies(MessageType.SYNC_DENIED), [])

    @defer.inlineCallbacks
    def test_narrowed_elsewhere_ends_the_subscription(self):
        """A read grant narrowed elsewhere (seen by the watch) ends a running subscription at its next push."""
        yield self.elsewhere.set_access(DEVICE.peer_id, NOTES)
        yield self.release()
        yield self.conditions.until(lambda: self.here.access() == {DEVICE.peer_id: NOTES})
        self.request(MessageType.SYNC_SUBSCRIBE, {"topics": ["notes"]})
        yield self.here.flushed()
        self.assertEqual(len(self.hub._outboxes), 1)
        yield self.elsewhere.set_access(DEVICE.peer_id, Access((), ("notes",)))
        yield self.conditions.until(lambda: self.here.access()[DEVICE.peer_id].read == ())
        self.hub._fan_out("notes")  # another node's update (as its fan-out would)
        self.assertEqual([b["topic"] for b in self.session.bodies(MessageType.SYNC_DENIED)], ["notes"])
        self.assertEqual(self.session.bodies(MessageType.SYNC_UPDATE), [])


class OwnWriteTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_newer_grant_from_elsewhere_stays(self):
        """
        A grant set here, then one set through another node before this
        node's answer (its watch applied it already): the newer one stays
        (this node applied its own older grant over it at the answer).
        """
        _, jet = yield _jetstream.single(self)
        here = JetStreamSyncStore(jet)
        yield here.start()
        kv, photos = jet.kv["cursors"], Access(("photos",), ("photos",))
        put, seen, calls = kv.put, here._grant_seen, []
        watched = asyncio.Event()

        def grant_seen(device, revision, grant):
            seen(device, revision, grant)
            watched.set()

        async def put_then_another(key, value):
            revision = await put(key, value)
            calls.append(key)
            if len(calls) == 1:  # this node's write: another node's follows it, and the watch applies that
                newer = await put(key, json.dumps(photos.to_json()).encode())
                while here._grant_revisions.get(DEVICE.peer_id, 0) < newer:
                    watched.clear()
                    await watched.wait()
            return revision

        self.patch(here, "_grant_seen", grant_seen)
        self.patch(kv, "put", put_then_another)
        yield here.set_access(DEVICE.peer_id, NOTES)
        yield here.flushed()
        self.assertEqual(here.access(), {DEVICE.peer_id: photos})
