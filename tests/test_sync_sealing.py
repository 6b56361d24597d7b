"""
Sync payloads sealed end to end among one person's devices
(docs/protocol.md §24.10): the keyring, its vector, and group keys shared
through the mailbox between real devices of a real node.
"""

import os
import sqlite3
import stat

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.client import Client
from cairn.db import DB_FILE_NAME
from cairn.mailbox import client as mailbox
from cairn.pairing import client as pairing
from cairn.service import make_node
from cairn.sync import client as sync
from cairn.sync import sealing
from tests._harness import Conditions, drop_all, eventually, track_connections
from tests.test_service import config_for

PSK = "sync-sealing-test-psk-0123456789"
PUBLISHER = "QmX94g6gcY7xsJ5GXACF2WnXUykf2ue3BnCDcmGmEHAXK7"

#: The §24.10 vector: its inputs and the values the reference code gives.
VECTOR_KEY = bytes(range(0x40, 0x60))
VECTOR_ID = bytes(range(0x10, 0x20))
VECTOR_NONCE = bytes(range(0xA0, 0xAC))


def vector_lines():
    """The §24.10 vector block as the reference code computes it."""
    ring = sealing.Keyring()
    ring.add(VECTOR_KEY)
    payload = ring.seal("notes", PUBLISHER, VECTOR_ID, b"hello sync", nonce=VECTOR_NONCE)
    return [
        f"key_id: {sealing.key_id(VECTOR_KEY).hex()}",
        f"topic_key: {sealing.topic_key(VECTOR_KEY, 'notes').hex()}",
        f"associated_data: {sealing.associated_data('notes', PUBLISHER, VECTOR_ID).hex()}",
        f"payload: {payload.hex()}",
    ]


def document_lines():
    """The vector block of docs/protocol.md §24.10."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "protocol.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- sync-vector-begin -->", 1)[1].split("<!-- sync-vector-end -->", 1)[0]
    return [line for line in block.splitlines() if ": " in line]


class KeyringTests(unittest.TestCase):
    def setUp(self):
        self.ring = sealing.Keyring.generate()
        self.update_id = os.urandom(16)
        self.sealed = self.ring.seal("notes", PUBLISHER, self.update_id, b"secret")

    def test_round_trip_hides_data(self):
        """A sealed payload opens to its data and does not contain it."""
        self.assertNotIn(b"secret", self.sealed)
        self.assertEqual(len(self.sealed), len(b"secret") + sealing.OVERHEAD)
        self.assertEqual(self.ring.open("notes", PUBLISHER, self.update_id, self.sealed), b"secret")

    def test_bound_to_topic_publisher_and_id(self):
        """A node cannot move an update to another topic, publisher or id, nor change a byte of it."""
        other = str(Client(reactor, clock=task.Clock()).peer_id)
        tampered = self.sealed[:-1] + bytes([self.sealed[-1] ^ 1])
        for args in [
            ("other", PUBLISHER, self.update_id, self.sealed),
            ("notes", other, self.update_id, self.sealed),
            ("notes", PUBLISHER, os.urandom(16), self.sealed),
            ("notes", PUBLISHER, self.update_id, tampered),
            ("notes", PUBLISHER, self.update_id, b"plain"),
        ]:
            self.assertRaises(sealing.SealError, self.ring.open, *args)

    def test_unknown_key_refused_older_key_kept(self):
        """A payload under a key the device lacks does not open; after a new key, older payloads still do."""
        self.assertRaises(
            sealing.SealError, sealing.Keyring.generate().open, "notes", PUBLISHER, self.update_id, self.sealed
        )
        self.ring.add(os.urandom(32), make_current=True)
        self.assertEqual(self.ring.open("notes", PUBLISHER, self.update_id, self.sealed), b"secret")

    def test_file_private_and_reloaded(self):
        """A keyring file is created 0600 and loads back the same keys; a corrupt one is named."""
        path = self.mktemp()
        ring = sealing.Keyring.load_or_create(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        ring.add(os.urandom(32), make_current=True)
        again = sealing.Keyring.load_or_create(path)
        self.assertEqual((again.keys, again.current), (ring.keys, ring.current))
        with open(path, "wb") as f:
            f.write(b"\xa0")
        error = self.assertRaises(ValueError, sealing.Keyring.load_or_create, path)
        self.assertIn(path, str(error))

    def test_key_share_message(self):
        """A key-share message carries exactly one 32-byte key; other data carries none."""
        key = os.urandom(32)
        self.assertEqual(sealing.shared_key(sealing.share_key_message(key)), key)
        self.assertIsNone(sealing.shared_key(b"hello"))
        self.assertIsNone(sealing.shared_key(sealing.share_key_message(key) + b"x"))

    def test_vector_matches_document(self):
        """docs/protocol.md §24.10's vector is what the code computes."""
        self.assertEqual(document_lines(), vector_lines())


class SharedKeyTests(unittest.TestCase):
    """Two devices of one person and a stranger, paired by PSK with a real node."""

    @defer.inlineCallbacks
    def setUp(self):
        self.connections = []
        self.data_dir = os.path.abspath(self.mktemp())
        self.node = make_node(config_for(self.data_dir, psk=PSK), reactor)
        self.node.startService()
        ports = yield self.node.ready
        self.address = f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"
        self.conditions = Conditions()

    @defer.inlineCallbacks
    def tearDown(self):
        yield drop_all(self.connections)
        yield self.node.stopService()

    @defer.inlineCallbacks
    def device(self):
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        session = yield eventually(client.connect(self.address))
        yield eventually(pairing.pair_psk(session, PSK))
        session.close()
        session = yield eventually(client.connect(self.address))
        client.updates, client.unreadable = [], []
        return client, session

    def subscribe(self, client, session):
        sync.sync_client(client.peer).on_unreadable = lambda *args: self.conditions.changed(
            client.unreadable.append(args)
        )
        sync.subscribe(
            session, ["notes"], lambda topic, seq, sender, data: self.conditions.changed(client.updates.append(data))
        )

    def stored_payloads(self):
        conn = sqlite3.connect(os.path.join(self.data_dir, DB_FILE_NAME))
        try:
            return [bytes(r[0]) for r in conn.execute("SELECT payload FROM sync_log ORDER BY seq")]
        finally:
            conn.close()

    @defer.inlineCallbacks
    def test_key_shared_through_mailbox(self):
        """
        Without the group key a device cannot read an update (it is told);
        once the other device shares it through the mailbox, it reads the
        next one; the node holds only sealed payloads.
        """
        (phone, p), (laptop, lap) = (yield self.device()), (yield self.device())
        self.subscribe(laptop, lap)
        yield eventually(sync.sync_publish(p, "notes", b"before the key"))
        yield self.conditions.until(lambda: laptop.unreadable)
        adopted = []
        sync.accept_keys_from(
            laptop.peer, [phone.peer_id], on_key=lambda *a: self.conditions.changed(adopted.append(a))
        )
        yield eventually(sync.share_key(p, laptop.peer_id))
        yield self.conditions.until(lambda: adopted)
        yield eventually(sync.sync_publish(p, "notes", b"after the key"))
        yield self.conditions.until(lambda: laptop.updates)
        self.assertEqual(laptop.updates, [b"after the key"])
        self.assertEqual(laptop.unreadable[0][:3], ("notes", 1, phone.peer_id))
        self.assertEqual(sync.sync_client(laptop.peer).keyring.current, sync.sync_client(phone.peer).keyring.current)
        for payload in self.stored_payloads():
            self.assertNotIn(b"the key", payload)

    @defer.inlineCallbacks
    def test_key_from_untrusted_device_dropped(self):
        """A group key from a device not on the trusted list is dropped, not adopted, not given to the inbox."""
        (laptop, _), (_, s) = (yield self.device()), (yield self.device())
        inbox = []
        mailbox.set_inbox(laptop.peer, lambda sender, mid, data: self.conditions.changed(inbox.append(data)))
        before = sync.sync_client(laptop.peer).keyring.current
        sync.accept_keys_from(laptop.peer, ["QmSomeOtherDeviceOfMine"])
        yield eventually(sync.share_key(s, laptop.peer_id))
        yield eventually(mailbox.forward(s, laptop.peer_id, b"plain hello"))
        yield self.conditions.until(lambda: inbox)
        self.assertEqual(inbox, [b"plain hello"])
        self.assertEqual(sync.sync_client(laptop.peer).keyring.current, before)
