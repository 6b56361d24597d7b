"""
The disk reserve (L{cairn.diskspace}): at the low-water mark new forwards
and publishes are refused while deliveries, acknowledgements and receipts
go on. The node scenario runs on a simulated small disk (a C{statvfs}
stand-in counting the data directory's files) and on a real one (a tmpfs
of a few MiB mounted for the test, where mounting is permitted).
"""

import os
import shutil
import sqlite3
import subprocess
import tempfile
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.db import DB_FILE_NAME
from cairn.diskspace import ITEM_OVERHEAD, FreeSpace, LowDiskSpace, guarded_batch
from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected
from cairn.mailbox.interfaces import Incoming, StoreFull
from cairn.service import make_node
from cairn.startup import disk_warnings
from cairn.sync import client as sync
from cairn.sync.client import PublishRejected
from cairn.wire.constants import ForwardStatus, ReceiptStatus, SyncStatus
from tests._harness import Conditions, RealNodeClients, drop_all, eventually, observe_logs
from tests.test_faults import FullDisk
from tests.test_service import config_for

PSK = "a long pre-shared key for the disk tests"
MiB = 2**20
PAYLOAD = 32 * 1024


def fake_statvfs(free):
    """A C{statvfs} stand-in reporting C{free()} bytes available."""
    return lambda path: SimpleNamespace(f_bavail=max(free(), 0) // 4096, f_frsize=4096)


def small_disk(data_dir, capacity):
    """A C{statvfs} stand-in: a disk of C{capacity} bytes holding only C{data_dir}'s files."""

    def used():
        return sum(os.path.getsize(os.path.join(data_dir, name)) for name in os.listdir(data_dir))

    return fake_statvfs(lambda: capacity - used())


class FreeSpaceTests(unittest.TestCase):
    """The reserve check, on a cursor of an in-memory database."""

    def setUp(self):
        self.free = 10 * MiB
        self.space = FreeSpace("/data", 4 * MiB, statvfs=fake_statvfs(lambda: self.free), report=self.report)
        self.reports = []
        self.cursor = sqlite3.connect(":memory:").cursor()

    def report(self, fmt, **fields):
        self.reports.append(fmt)

    def test_writes_fit_in_order(self):
        """Writes are admitted in order while they leave the reserve free; a later small one may still fit."""
        fits = self.space.check(self.cursor, [3 * MiB, 4 * MiB, 0, 2 * MiB])
        self.assertEqual(fits, [True, False, True, True])
        self.assertTrue(self.space.low)
        self.assertEqual(len(self.reports), 1)

    def test_no_growth_always_fits(self):
        """A write that stores nothing (a deletion) fits even below the reserve."""
        self.free = MiB
        self.assertEqual(self.space.check(self.cursor, [0, 0]), [True, True])
        self.assertTrue(self.space.is_low())

    def test_logged_once_with_hysteresis(self):
        """One line when refusals start, one when a reserve's worth is free again -- not one per refusal."""
        for _ in range(5):
            self.space.check(self.cursor, [7 * MiB])
        self.assertEqual(len(self.reports), 1)
        self.free = 8 * MiB
        self.space.check(self.cursor, [MiB])  # fits, but leaves less than a reserve's worth above it
        self.assertTrue(self.space.low)
        self.free = 20 * MiB
        self.space.check(self.cursor, [MiB])
        self.assertFalse(self.space.low)
        self.assertEqual(len(self.reports), 2)

    def test_reusable_pages_count(self):
        """Pages on the database's free list count as free: a drained database can be refilled."""
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (b BLOB)")
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,)] * 2000)
        conn.execute("DELETE FROM t")
        self.free = 3 * MiB
        self.assertEqual(self.space.check(conn.cursor(), [4 * MiB]), [True])
        self.assertGreater(self.space.reusable, 7 * MiB)

    def test_write_ahead_log_on_disk_counted_once(self):
        """A log grown past its checkpoint size is counted once: a drained database on a small disk takes writes."""
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        conn = sqlite3.connect(os.path.join(data_dir, "db"), isolation_level=None)
        self.addCleanup(conn.close)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (b BLOB)")
        # One 6 MiB transaction: the log grows past its 4 MiB checkpoint
        # size (as it does under load) and keeps that size on disk.
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,)] * 1536)
        conn.execute("DELETE FROM t")
        self.assertGreater(os.path.getsize(os.path.join(data_dir, "db-wal")), 5 * MiB)
        space = FreeSpace(data_dir, 2 * MiB, statvfs=small_disk(data_dir, 20 * MiB), report=self.report)
        # About 5 MiB free on the disk and 6 MiB reusable in the database,
        # less the reserve and the log's 4 MB: about 5 MiB of room.
        self.assertEqual(space.check(conn.cursor(), [4 * MiB]), [True])
        self.assertEqual(space.check(conn.cursor(), [12 * MiB]), [False])

    def test_unreadable_file_system_counts_as_full(self):
        """If statvfs fails, nothing that grows is admitted."""

        def broken(path):
            raise OSError(5, "I/O error")

        self.space.statvfs = broken
        self.assertEqual(self.space.free(), 0)
        self.assertEqual(self.space.check(self.cursor, [1]), [False])

    def test_guarded_batch_refuses_only_growing_calls(self):
        """Only the calls of the growing txn are refused, with LowDiskSpace, in place."""

        def grow(cursor, items):
            return items

        def shrink(cursor, items):
            return items

        calls = []

        def batch_txn(cursor, given):
            calls.append(given)
            return [(True, txn.__name__) for txn, _ in given]

        item = SimpleNamespace(payload=b"x" * (3 * MiB))
        batch = guarded_batch(batch_txn, self.space, {grow})
        out = batch(self.cursor, [(grow, ([item],)), (shrink, ([item],)), (grow, ([item],))])
        self.assertEqual(out[:2], [(True, "grow"), (True, "shrink")])
        self.assertFalse(out[2][0])
        self.assertIsInstance(out[2][1], LowDiskSpace)
        self.assertEqual(calls, [[(grow, ([item],)), (shrink, ([item],))]])
        self.assertEqual(self.space.refused, 1)
        self.assertEqual(len(item.payload) + ITEM_OVERHEAD, 3 * MiB + ITEM_OVERHEAD)

    def test_guarded_batch_refusal_answers(self):
        """
        A refused call's hook may answer it instead: counted as refused only
        if it says some item was still refused (a retry of what is held is not).
        """

        def grow(cursor, items):
            return items

        def held(cursor, items):
            names = [item.name for item in items]
            if "new" not in names:
                return names, False  # all held: answered, nothing refused
            if names != ["new"]:
                return names, True  # some held, some refused
            return None  # nothing held: the call fails

        def batch_txn(cursor, given):
            return [(True, "stored") for _ in given]

        def item(name):
            return SimpleNamespace(name=name, payload=b"x" * (7 * MiB))

        batch = guarded_batch(batch_txn, self.space, {grow: held})
        out = batch(self.cursor, [(grow, ([item("old")],)), (grow, ([item("old"), item("new")],))])
        self.assertEqual(out, [(True, ["old"]), (True, ["old", "new"])])
        self.assertEqual(self.space.refused, 1)
        [(ok, error)] = batch(self.cursor, [(grow, ([item("new")],))])
        self.assertFalse(ok)
        self.assertIsInstance(error, LowDiskSpace)
        self.assertEqual(self.space.refused, 2)

    def test_disk_warnings(self):
        """A mailbox limit the disk cannot hold, and a disk already below the reserve, are warned about."""
        self.assertEqual(disk_warnings("/data", 10**10, 0, 64 * MiB, 10**9), [])
        [line] = disk_warnings("/data", 500 * 10**6, 10**6, 64 * MiB, 10**9)
        self.assertIn("CAIRN_FORWARD_MAX_TOTAL (1000.0 MB) is more than /data can hold", line)
        lines = disk_warnings("/data", MiB, 0, 64 * MiB, 10**9)
        self.assertEqual(len(lines), 2)
        self.assertIn("below CAIRN_DISK_RESERVE", lines[0])


class ReserveScenario(RealNodeClients):
    """
    A whole node (make_node, sockets on 127.0.0.1) on a small disk with a
    reserve; subclasses make the disk (L{make_disk}).
    """

    psk = PSK

    reserve = 2 * MiB
    capacity = 16 * MiB

    def make_disk(self):
        """Return (data directory, statvfs stand-in or None for the real one)."""
        raise NotImplementedError

    @defer.inlineCallbacks
    def setUp(self):
        self.connections = []
        self.events = observe_logs(self)
        self.data_dir, statvfs = self.make_disk()
        self.node = make_node(config_for(self.data_dir, psk=PSK, disk_reserve=self.reserve), reactor)
        if statvfs is not None:
            self.node.db.space.statvfs = statvfs
        self.space = self.node.db.space
        # Every seq the node puts in a ForwardDeliver, in order.
        self.delivered_seqs = []
        deliver_batch = self.node.mailbox._deliver_batch

        def recording(outbox, batch):
            sent = deliver_batch(outbox, batch)
            if sent:
                self.delivered_seqs.extend(m.seq for m in batch)
            return sent

        self.node.mailbox._deliver_batch = recording
        self.node.startService()
        # Cleanups run before tearDown, last first: the node stops before the disk goes.
        self.addCleanup(self.stop)
        ports = yield self.node.ready
        self.address = f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"
        self.conditions = Conditions()

    @defer.inlineCallbacks
    def stop(self):
        yield drop_all(self.connections)
        yield self.node.stopService()

    def held_seqs(self):
        """Server seqs of the messages on disk."""
        conn = sqlite3.connect(os.path.join(self.data_dir, DB_FILE_NAME))
        try:
            return {r[0] for r in conn.execute("SELECT seq FROM mailbox_messages")}
        finally:
            conn.close()

    @defer.inlineCallbacks
    def fill(self, session, recipient):
        """Forward messages, 16 at a time, until the node refuses some; return the ids it stored."""
        stored = []
        for _ in range(200):
            wave = [mailbox.forward(session, recipient, os.urandom(PAYLOAD)) for _ in range(16)]
            results = yield eventually(defer.DeferredList(wave, consumeErrors=True), 30)
            refused = [r.value for ok, r in results if not ok]
            if os.environ.get("DISKDEBUG"):
                sizes = {n: os.path.getsize(os.path.join(self.data_dir, n)) for n in os.listdir(self.data_dir)}
                print("WAVE", len(stored), self.space.free(), self.space.reusable, sizes, len(refused))
            stored.extend(r.message_id for ok, r in results if ok)
            if refused:
                for error in refused:
                    self.assertIsInstance(error, ForwardRejected)
                    self.assertEqual(
                        (error.code, error.reason), (ForwardStatus.STORAGE_ERROR, "the node cannot store messages now")
                    )
                return stored
        self.fail("the node never refused a message")

    @defer.inlineCallbacks
    def keep_sending(self, session, recipient, outcome):
        """Forward one message after another until C{self.sending} is false, counting outcomes."""
        while self.sending:
            try:
                result = yield eventually(mailbox.forward(session, recipient, os.urandom(PAYLOAD)), 30)
            except ForwardRejected as e:
                self.assertEqual(e.code, ForwardStatus.STORAGE_ERROR)
                outcome["refused"] += 1
            else:
                outcome["stored"].append(result.message_id)
            self.conditions.changed()

    @defer.inlineCallbacks
    def test_acks_delete_at_the_reserve(self):
        """
        With the disk at the reserve and the sender still sending, the
        recipient's acknowledgements delete, DELIVERED receipts flow, nothing
        is delivered twice across a reconnect, and the mailbox shrinks.
        """
        alice, bob = self.client(), self.client()
        received, receipts = [], []
        mailbox.set_inbox(bob.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        mailbox.set_receipts(alice.peer, lambda r: self.conditions.changed(receipts.append(r)))
        a = yield self.paired(alice)
        b = yield self.paired(bob)
        b.close()

        before = yield self.fill(a, bob.peer_id)
        self.assertGreater(len(before), 50)
        self.assertTrue(self.space.low)
        self.assertEqual(self.held(), set(before))
        free_at_mark = self.space.free()
        # What is left is the reserve (less at most what the last group took).
        self.assertGreater(free_at_mark + self.space.reusable, self.reserve - 16 * (PAYLOAD + 4096))

        # The sender carries on while the recipient comes back.
        self.sending = True
        outcome = {"stored": [], "refused": 0}
        sender = self.keep_sending(a, bob.peer_id, outcome)
        b = yield eventually(bob.connect(self.address))
        wanted = set(before)
        yield self.conditions.until(lambda: wanted <= set(received), 60)
        yield self.conditions.until(
            lambda: wanted <= {r.message_id for r in receipts if r.status == ReceiptStatus.DELIVERED}, 60
        )
        yield self.node.mailbox.store.flushed()
        self.assertFalse(wanted & self.held(), "delivered messages still held")

        # The recipient reconnects: nothing it acknowledged is sent again
        # (only what its session was sent and had not acknowledged yet may be).
        # Five more stored for it meanwhile, or fewer if the disk is back at
        # the reserve (the node refuses again): either way some are held.
        b.close()
        seen, refused = len(outcome["stored"]), outcome["refused"]
        yield self.conditions.until(
            lambda: len(outcome["stored"]) >= seen + 5 or outcome["refused"] > refused and outcome["stored"], 60
        )
        yield self.node.mailbox.store.flushed()
        unacknowledged = set(self.delivered_seqs) & self.held_seqs()
        b = yield eventually(bob.connect(self.address))
        self.sending = False
        yield sender
        everything = wanted | set(outcome["stored"])
        yield self.conditions.until(lambda: everything <= set(received), 60)
        # Every DELIVERED receipt in (events the test hears of), then the
        # store settled: waiting on the depths alone could miss the moment
        # they empty, which no event announces.
        yield self.conditions.until(
            lambda: everything <= {r.message_id for r in receipts if r.status == ReceiptStatus.DELIVERED}, 60
        )
        yield self.node.mailbox.store.flushed()
        self.assertEqual(self.node.mailbox.store.depths(), {})
        twice = {seq for seq in self.delivered_seqs if self.delivered_seqs.count(seq) > 1}
        self.assertLessEqual(twice, unacknowledged)
        self.assertEqual(len(self.delivered_seqs), len(everything) + len(twice))
        self.assertEqual(len(received), len(everything))
        self.assertEqual(self.held(), set())
        self.assertEqual(self.node.mailbox._unpurged, {})
        warned = [e for e in self.events if "down to the reserve" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_unpair_purge_retried_after_a_full_disk(self):
        """
        Unpairing while the disk is full: the purge fails (DELETE /peers/{id}
        answers 507), the peer is revoked all the same, and the next mailbox
        sweep once the disk has room purges its mail and the sender gets
        EVICTED receipts (before, the mail stayed until it expired).
        """
        alice, bob = self.client(), self.client()
        receipts = []
        mailbox.set_receipts(alice.peer, lambda r: self.conditions.changed(receipts.append(r)))
        a = yield self.paired(alice)
        b = yield self.paired(bob)
        b.close()
        sent = []
        for _ in range(3):
            result = yield eventually(mailbox.forward(a, bob.peer_id, os.urandom(PAYLOAD)))
            sent.append(result.message_id)
        disk = FullDisk(self.node.db)
        # The revocation is written (a small record) and then the disk is full.
        trust = self.node.pairing.trust
        revoke = trust.revoke

        def revoke_then_full(*args):
            return revoke(*args).addCallback(lambda record: setattr(disk, "full", True) or record)

        self.patch(trust, "revoke", revoke_then_full)
        yield self.assertFailure(self.node.pairing.unpair(bob.peer_id), StoreFull)
        self.assertEqual(self.held(), set(sent))
        yield self.node.mailbox.sweep()  # still full: kept for the next sweep
        self.assertEqual(self.held(), set(sent))
        disk.full = False
        yield self.node.mailbox.sweep()
        self.assertEqual(self.held(), set())
        yield self.conditions.until(lambda: len(receipts) == len(sent), 30)
        self.assertEqual({(r.message_id, r.status) for r in receipts}, {(m, ReceiptStatus.EVICTED) for m in sent})
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_stored_message_acknowledged_at_the_reserve(self):
        """At the reserve a message already stored, sent again, is acknowledged DUPLICATE, not refused."""
        alice, bob = self.client(), self.client()
        a = yield self.paired(alice)
        yield self.paired(bob)
        before = yield self.fill(a, bob.peer_id)
        self.assertTrue(self.space.low)
        # Sent again as a client retries: the same size (a few bytes may fit under the
        # reserve and so not meet the refusal at all).
        result = yield eventually(mailbox.forward(a, bob.peer_id, os.urandom(PAYLOAD), message_id=before[0]))
        self.assertEqual(result, mailbox.ForwardResult(before[0], duplicate=True))
        # In one request with a new message: that one alone is refused.
        fresh = mailbox.uuid7()
        items = [Incoming(alice.peer_id, bob.peer_id, mid, os.urandom(PAYLOAD)) for mid in (before[1], fresh)]
        results = yield self.node.mailbox.store.enqueue(items, reactor.seconds(), self.node.mailbox.limits)
        self.assertEqual([status for status, _ in results], [ForwardStatus.DUPLICATE, ForwardStatus.STORAGE_ERROR])
        self.assertEqual(self.held(), set(before))

    @defer.inlineCallbacks
    def test_duplicate_is_not_counted_refused(self):
        """A message already stored, sent again at the reserve, is not counted in cairn_disk_refused."""
        alice, bob = self.client(), self.client()
        a = yield self.paired(alice)
        yield self.paired(bob)
        before = yield self.fill(a, bob.peer_id)
        refused = self.space.refused
        self.assertGreater(refused, 0)
        # Sent again as a client retries: the same size (a few bytes would fit).
        result = yield eventually(mailbox.forward(a, bob.peer_id, os.urandom(PAYLOAD), message_id=before[0]))
        self.assertEqual(result, mailbox.ForwardResult(before[0], duplicate=True))
        self.assertEqual(self.space.refused, refused)
        # A request with a new message beside it is still one refusal.
        items = [Incoming(alice.peer_id, bob.peer_id, mid, os.urandom(PAYLOAD)) for mid in (before[1], mailbox.uuid7())]
        yield self.node.mailbox.store.enqueue(items, reactor.seconds(), self.node.mailbox.limits)
        self.assertEqual(self.space.refused, refused + 1)

    @defer.inlineCallbacks
    def test_stored_update_acknowledged_at_the_reserve(self):
        """
        At the reserve an update already stored, published again, is
        acknowledged DUPLICATE with its seq (protocol.md §24.3), not
        refused, and not counted in cairn_disk_refused.
        """
        phone = self.client()
        p = yield self.paired(phone)
        published = yield self.publish_until_refused(p, "notes")
        self.assertTrue(self.space.low)
        refused = self.space.refused
        update_id, seq = published[3]
        # Published again as a client retries: the same size (a few bytes would fit).
        again = yield eventually(sync.sync_publish(p, "notes", os.urandom(PAYLOAD), update_id))
        self.assertEqual(again, seq)
        self.assertEqual(self.node.sync.statuses["DUPLICATE"], 1)
        self.assertEqual(self.space.refused, refused)
        self.assertEqual(self.node.sync.store.topics()["notes"].head, published[-1][1])

    @defer.inlineCallbacks
    def publish_until_refused(self, session, topic):
        """Publish updates on C{topic} one by one until the node refuses one; return [(id, seq)] of those stored."""
        published = []
        for _ in range(2000):
            update_id = os.urandom(16)
            try:
                seq = yield eventually(sync.sync_publish(session, topic, os.urandom(PAYLOAD), update_id))
            except PublishRejected as e:
                self.assertEqual((e.code, e.reason), (SyncStatus.STORAGE_ERROR, "the node cannot store updates now"))
                return published
            published.append((update_id, seq))
        self.fail("the node never refused an update")

    @defer.inlineCallbacks
    def test_sync_publish_refused_at_the_reserve(self):
        """At the reserve publishes get STORAGE_ERROR while a device still gets its replay and moves its cursor."""
        phone, laptop = self.client(), self.client()
        p = yield self.paired(phone)
        yield self.paired(laptop)
        published = [seq for _, seq in (yield self.publish_until_refused(p, "notes"))]
        self.assertGreater(len(published), 50)
        updates = []
        store = self.node.sync.store
        set_cursor = store.set_cursor
        store.set_cursor = lambda *args: set_cursor(*args).addBoth(self.conditions.changed)
        lap = yield eventually(laptop.connect(self.address))
        sync.subscribe(lap, ["notes"], lambda topic, seq, sender, data: self.conditions.changed(updates.append(seq)))
        yield self.conditions.until(lambda: updates == published, 60)
        # Its cursor reached the last update: a write that still commits at the reserve.
        yield self.conditions.until(lambda: store.cursors()[laptop.peer_id]["notes"] == published[-1])
        self.assertEqual(self.flushLoggedErrors(), [])


class SimulatedDiskTests(ReserveScenario, unittest.TestCase):
    """The scenario on a simulated 16 MiB disk (hermetic: a statvfs stand-in)."""

    def make_disk(self):
        data_dir = os.path.abspath(self.mktemp())
        return data_dir, small_disk_later(data_dir, self.capacity)


def small_disk_later(data_dir, capacity):
    """L{small_disk} for a directory that make_node has yet to create."""
    os.makedirs(data_dir, mode=0o700)
    return small_disk(data_dir, capacity)


class RealDiskTests(ReserveScenario, unittest.TestCase):
    """The scenario on a real 16 MiB tmpfs (needs root and mount permission)."""

    def make_disk(self):
        return os.path.join(small_tmpfs(self, self.capacity), "data"), None


def small_tmpfs(testcase, capacity):
    """
    A tmpfs of C{capacity} bytes mounted for C{testcase} (skipped where
    mounting is not permitted); its mount point. Unmounted in cleanup,
    after whatever the test started on it later has stopped (cleanups run
    last-in first-out).
    """
    mount_point = tempfile.mkdtemp(prefix="cairn-disk-")
    testcase.addCleanup(shutil.rmtree, mount_point, True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={capacity // 1024}k,mode=0700", "tmpfs", mount_point],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise unittest.SkipTest(f"cannot mount a small tmpfs here: {getattr(e, 'stderr', b'') or e}") from None
    testcase.addCleanup(subprocess.run, ["umount", "-l", mount_point], check=False)
    return mount_point


def fill_file_system(testcase, directory):
    """
    Another program fills the file system of C{directory}: a file there
    written until ENOSPC, to the last byte (a partly used page of another
    file could otherwise still take a small write); removed in
    C{testcase}'s cleanup. Returns its path.
    """
    path = os.path.join(directory, "filler")
    testcase.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 1):
            chunk = b"\0" * size
            try:
                while f.write(chunk):
                    pass
            except OSError:
                pass
    return path


class ReportTests(unittest.TestCase):
    """Free space in GET /health and /metrics, and the start-up warning."""

    def node(self, **settings):
        data_dir = os.path.abspath(self.mktemp())
        settings.setdefault("mgmt_listen", "tcp:0:interface=127.0.0.1")
        settings.setdefault("mgmt_token", "a-token-for-the-disk-tests")
        node = make_node(config_for(data_dir, **settings), reactor)
        self.free = 100 * MiB
        node.db.space.statvfs = fake_statvfs(lambda: self.free)
        return node

    def get(self, node, path):
        from treq.testing import StubTreq

        site = node.listeners["management"].factory
        stub = StubTreq(site.resource)
        d = stub.get(f"http://localhost{path}", headers={b"Authorization": [b"Bearer a-token-for-the-disk-tests"]})
        stub.flush()
        response = self.successResultOf(d)
        return self.successResultOf(response.content())

    def test_health_and_metrics(self):
        """GET /health and /metrics show the free bytes, the reserve and whether writes are refused."""
        import json

        node = self.node(disk_reserve=64 * MiB)
        disk = json.loads(self.get(node, "/health"))["disk"]
        self.assertEqual(disk, {"free_bytes": 100 * MiB, "reusable_bytes": 0, "reserve_bytes": 64 * MiB, "low": False})
        self.free = 10 * MiB
        self.assertTrue(json.loads(self.get(node, "/health"))["disk"]["low"])
        metrics = self.get(node, "/metrics").decode()
        self.assertIn("cairn_disk_free_bytes 1.048576e+07", metrics)
        self.assertIn("cairn_disk_reserve_bytes 6.7108864e+07", metrics)
        self.assertIn("cairn_disk_low 1.0", metrics)
        self.assertIn("cairn_disk_refused_total 0.0", metrics)

    @defer.inlineCallbacks
    def test_start_up_warning(self):
        """A mailbox limit larger than the disk is warned about in one line when the node starts."""
        events = observe_logs(self)
        node = self.node(forward_max_total=10**9, mgmt_listen="none")
        node.startService()
        yield node.ready
        yield node.stopService()
        [line] = [e["line"] for e in events if "line" in e and "CAIRN_FORWARD_MAX_TOTAL" in e["line"]]
        self.assertIn("is more than", line)
        self.assertNotIn("\n", line)
