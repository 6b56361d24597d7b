"""
A full disk under a whole node (make_node, real sockets on 127.0.0.1):
every transaction that writes fails the way SQLite fails on a full disk
(C{sqlite3.OperationalError: database or disk is full} at commit, the
transaction rolled back), while reads still work. See also
tests/test_crash.py (C{kill -9}) and docs/reliability.md, "Faults".
"""

import os
import sqlite3

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected, uuid7
from cairn.mailbox.interfaces import StoreFull
from cairn.service import make_node
from cairn.sync import client as sync
from cairn.sync import sealing
from cairn.sync.client import PublishRejected
from cairn.wire.constants import ForwardStatus, ReceiptStatus, SyncStatus
from tests._harness import Conditions, RealNodeClients, drop_all, eventually
from tests.test_service import config_for

PSK = "a long pre-shared key for the fault tests"


class FullDisk:
    """
    Makes the writing transactions of a L{cairn.db.Database} fail as on a
    full disk while C{full} is true: the transaction runs, then instead of
    its COMMIT it is rolled back and C{database or disk is full} raised.
    Transactions that change nothing (reads) still succeed.
    """

    def __init__(self, db):
        self.db = db
        self.full = False
        self.refused = 0
        #: Called (in the reactor thread) after each refused transaction.
        self.on_refused = lambda: None
        self._original = db._commit
        db._commit = self._commit

    def _commit(self, cursor, changed):
        if not (self.full and changed):
            return self._original(cursor, changed)
        cursor.execute("ROLLBACK")
        self.refused += 1
        reactor.callFromThread(self.on_refused)
        raise sqlite3.OperationalError("database or disk is full")


class DiskFullTests(RealNodeClients, unittest.TestCase):
    psk = PSK

    @defer.inlineCallbacks
    def setUp(self):
        self.connections = []
        self.keyring = sealing.Keyring.generate()
        self.data_dir = os.path.abspath(self.mktemp())
        self.node = make_node(config_for(self.data_dir, psk=PSK), reactor)
        self.disk = FullDisk(self.node.db)
        self.node.startService()
        ports = yield self.node.ready
        self.address = f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"
        self.conditions = Conditions()
        self.disk.on_refused = self.conditions.changed

    @defer.inlineCallbacks
    def tearDown(self):
        yield drop_all(self.connections)
        yield self.node.stopService()

    @defer.inlineCallbacks
    def test_mailbox_on_full_disk(self):
        """
        On a full disk new forwards get STORAGE_ERROR with its reason, stored
        mail is still delivered, nothing acknowledged is lost, and all
        recovers once space returns.
        """
        alice, bob = self.client(), self.client()
        received, receipts = [], []
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        mailbox.set_receipts(alice.peer, lambda r: self.conditions.changed(receipts.append(r)))
        a = yield self.paired(alice)
        b = yield self.paired(bob)
        b.close()
        acked = []
        for i in range(5):
            result = yield eventually(mailbox.forward(a, bob.peer_id, b"before %d" % i))
            acked.append(result.message_id)

        self.disk.full = True
        refused_id = uuid7()
        failure = yield self.assertFailure(
            eventually(mailbox.forward(a, bob.peer_id, b"refused", refused_id)), ForwardRejected
        )
        self.assertEqual(failure.code, ForwardStatus.STORAGE_ERROR)
        self.assertEqual(failure.reason, "the node cannot store messages now")
        self.assertEqual(self.node.mailbox.statuses["STORAGE_ERROR"], 1)

        # Deliveries go on (reads work); their deletion cannot be written.
        yield eventually(bob.connect(self.address))
        yield self.conditions.until(lambda: len(received) == 5)
        self.assertEqual(received, acked)
        yield self.conditions.until(lambda: self.disk.refused >= 2)  # the forward, then bob's ForwardPurge
        yield self.node.mailbox.store.flushed()
        self.assertEqual(self.held(), set(acked))
        self.assertNotIn(refused_id, self.held())

        # Space returns: the refused message goes through on retry, and the
        # deletions (with their DELIVERED receipts) are written on the next sweep.
        self.disk.full = False
        result = yield eventually(mailbox.forward(a, bob.peer_id, b"refused", refused_id))
        self.assertFalse(result.duplicate)
        yield self.conditions.until(lambda: refused_id in received)
        yield self.node.mailbox.sweep()
        yield self.conditions.until(lambda: len(receipts) == 6)
        self.assertEqual({r.message_id for r in receipts}, set(acked) | {refused_id})
        self.assertEqual({r.status for r in receipts}, {ReceiptStatus.DELIVERED})
        self.assertEqual(self.held(), set())
        # An expected condition: warned about in a line, never a traceback.
        self.assertEqual(self.flushLoggedErrors(StoreFull), [])

    @defer.inlineCallbacks
    def test_sync_on_full_disk(self):
        """
        On a full disk publishes get STORAGE_ERROR with its reason; once
        space returns publishing works and a device gets every acknowledged update.
        """
        phone, laptop = self.client(), self.client()
        updates = []
        p = yield self.paired(phone)
        lap = yield self.paired(laptop)
        sync.subscribe(lap, ["notes"], lambda topic, seq, sender, data: self.conditions.changed(updates.append(data)))
        first = yield eventually(sync.sync_publish(p, "notes", b"one"))
        yield self.conditions.until(lambda: updates == [b"one"])
        lap.close()
        second = yield eventually(sync.sync_publish(p, "notes", b"two"))

        self.disk.full = True
        failure = yield self.assertFailure(eventually(sync.sync_publish(p, "notes", b"three")), PublishRejected)
        self.assertEqual(failure.code, SyncStatus.STORAGE_ERROR)
        self.assertEqual(failure.reason, "the node cannot store updates now")

        # A device coming back while the disk is full still gets its replay
        # (its unchanged cursor is not written).
        lap = yield eventually(laptop.connect(self.address))
        yield self.conditions.until(lambda: updates == [b"one", b"two"])
        lap.close()

        self.disk.full = False
        third = yield eventually(sync.sync_publish(p, "notes", b"three"))
        self.assertEqual((second, third), (first + 1, first + 2))
        yield eventually(laptop.connect(self.address))
        yield self.conditions.until(lambda: updates[-1:] == [b"three"])
        self.assertEqual(sorted(set(updates)), [b"one", b"three", b"two"])
        self.flushLoggedErrors(StoreFull, sqlite3.OperationalError)
