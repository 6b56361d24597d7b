"""
A session is served by every service from the moment its peer pairs on
it (docs/protocol.md §20.1): mailbox deliveries (§21.4), DELIVERED
receipts (§21.6) and sync updates (§24.5) arrive on the session that
paired, for each pairing method, over TCP and WebSocket; an unpairing
stops every push at once.
"""

import time

import attr
from twisted.internet import defer, task
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.interfaces import Limits
from cairn.mailbox.service import MailboxService
from cairn.mailbox.store import MemoryMailboxStore
from cairn.pairing.client import pair_link, pair_pin, pair_psk, request_approval
from cairn.pairing.interfaces import REVOKED
from cairn.pairing.service import PairingService
from cairn.pairing.trust import MemoryTrustStore
from cairn.sync import client as sync
from cairn.sync.service import SyncService
from cairn.sync.store import MemorySyncStore
from cairn.wire.constants import ReceiptStatus
from tests._harness import SETTINGS, Conditions, ScenarioMixin, eventually, one_person
from tests.test_mailbox import Inbox

PSK = "a long random pre-shared key used by these tests"


class PushHarness(ScenarioMixin):
    """A node with pairing (PSK, PIN, link, approval), a mailbox and a sync hub, all in memory."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = task.Clock()
        self.clock.advance(time.time())  # message ids carry wall-clock time
        self.trust = MemoryTrustStore()
        self.pairing = PairingService(self.server, self.trust, self.clock, psk=PSK, link_addresses=[self.address])
        yield self.pairing.start()
        self.addCleanup(self.pairing.stop)
        limits = Limits(max_per_peer=100, max_total=10**6, max_age=3600.0)
        max_payload = SETTINGS["max_payload"]
        self.mailbox = MailboxService(
            self.server, self.trust, MemoryMailboxStore(), self.clock, limits=limits, max_payload=max_payload
        )
        self.hub = SyncService(self.server, self.trust, MemorySyncStore(), self.clock, limits=limits)
        for service in (self.mailbox, self.hub):
            yield service.start()
            self.addCleanup(service.stop)
        # Waits re-check whenever the sync store changes.
        self.conditions = Conditions()
        store = self.hub.store
        for name in ("subscribe", "set_cursor", "publish"):
            method = getattr(store, name)
            setattr(store, name, lambda *args, method=method: method(*args).addBoth(self.conditions.changed))

    @defer.inlineCallbacks
    def paired_device(self):
        """A peer paired before it connects: (client, session, Inbox)."""
        client = self.make_client()
        inbox = Inbox(client.peer)
        yield self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0)
        session = yield self.connect(client)
        return client, session, inbox

    # The pairing methods, each run on a fresh client's first session

    @defer.inlineCallbacks
    def pair(self, method, client):
        if method == "link":
            uri = self.pairing.create_link()["link"]
            server_side = self.wait_for_session()
            session, _ = yield eventually(pair_link(client, uri))
            yield server_side
            return session
        session = yield self.connect(client)
        if method == "psk":
            yield eventually(pair_psk(session, PSK))
        elif method == "pin":
            yield eventually(pair_pin(session, self.pairing.create_pin()["pin"]))
        else:
            filed = defer.Deferred()
            approved = request_approval(session, on_pending=lambda: filed.callback(None))
            yield eventually(filed)
            yield self.pairing.approve(client.peer_id)
            yield eventually(approved)
        return session

    @defer.inlineCallbacks
    def check_served_after_pairing(self, method):
        """Pair C{method} on a session, then stay on it: deliveries, receipts and sync updates all arrive there."""
        alice_client, alice, alice_box = yield self.paired_device()
        bob = self.make_client()
        one_person(alice_client, bob)
        bob_box = Inbox(bob.peer)
        updates = []

        def got(topic, seq, sender, data):
            updates.append(data)
            self.conditions.changed()

        session = yield self.pair(method, bob)
        self.assertTrue(self.trust.is_paired(bob.peer_id))
        # Mail for bob, sent after he paired, reaches him on this session.
        yield eventually(mailbox.forward(alice, bob.peer_id, b"for bob"))
        [(sender, _, data)] = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual((sender, data), (alice.local.peer_id, b"for bob"))
        # Bob's own message to alice is delivered; its receipt comes back here.
        sent = yield eventually(mailbox.forward(session, alice.local.peer_id, b"for alice"))
        yield alice_box.wait(alice_box.messages, 1)
        [receipt] = yield bob_box.wait(bob_box.receipts, 1)
        self.assertEqual((receipt.message_id, receipt.status), (sent.message_id, ReceiptStatus.DELIVERED))
        # Bob subscribes; alice's update reaches him on this session.
        sync.subscribe(session, ["notes"], got)
        yield self.conditions.until(lambda: self._subscribed(bob.peer_id))
        yield eventually(sync.sync_publish(alice, "notes", b"update"))
        yield self.conditions.until(lambda: updates == [b"update"])
        self.assertIs(session.closed, None)

    def _subscribed(self, peer_id):
        return "notes" in self.hub.store.cursors().get(peer_id, {})


class PushScenarioMixin(PushHarness):
    def test_psk(self):
        """A peer paired by PSK is pushed to on the session that paired."""
        return self.check_served_after_pairing("psk")

    def test_pin(self):
        """A peer paired by PIN is pushed to on the session that paired."""
        return self.check_served_after_pairing("pin")

    def test_link(self):
        """A peer paired by a link is pushed to on the session that paired."""
        return self.check_served_after_pairing("link")

    def test_approval(self):
        """A peer paired by operator approval is pushed to on the session that asked."""
        return self.check_served_after_pairing("approval")

    @defer.inlineCallbacks
    def test_unpairing_stops_pushes_at_once(self):
        """Once trust is revoked, not one more update is pushed, even before the session is closed."""
        alice_client, alice, _ = yield self.paired_device()
        bob, session, _ = yield self.paired_device()
        one_person(alice_client, bob)
        updates = []
        sync.subscribe(session, ["notes"], lambda topic, seq, sender, data: updates.append(data))
        yield self.conditions.until(lambda: self._subscribed(bob.peer_id))
        # The in-memory flip (what an unpairing does first), before its sessions are closed.
        self.trust._records[bob.peer_id] = attr.evolve(self.trust._records[bob.peer_id], state=REVOKED)
        sent = []
        watched = self.server.sessions[session.session_id]
        original = type(watched).send
        # Sessions have no instance dict: the method is patched on the class, for this session alone.
        self.patch(
            type(watched), "send", lambda s, t, b: (s is watched and sent.append(t)) or original(s, t, b)
        )
        yield eventually(sync.sync_publish(alice, "notes", b"after"))
        yield eventually(mailbox.forward(alice, bob.peer_id, b"after")).addErrback(lambda _: None)
        self.assertEqual(sent, [])
        self.assertEqual(updates, [])


class TCPPushTests(PushScenarioMixin, unittest.TestCase):
    pass


class WebSocketPushTests(PushScenarioMixin, unittest.TestCase):
    websocket = True
