"""
The relay's part of the pairing purge (a peer's limits and byte counts)
when the store is full: tried again by the relay's sweep until it
succeeds, as the mailbox's and the sync hub's parts are.
"""

import sqlite3

from twisted.internet import defer, task
from twisted.logger import formatEvent
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.mailbox.interfaces import StoreFull
from cairn.pairing.interfaces import REVOKED
from cairn.pairing.trust import MemoryTrustStore
from cairn.relay.interfaces import RelayLimits
from cairn.relay.service import SWEEP_INTERVAL, RelayService
from cairn.relay.store import MemoryRelayStore, SQLiteRelayStore
from cairn.session.peer import Peer
from tests._harness import observe_logs
from tests.test_management import Node, new_peer_id

FULL = "database or disk is full"


class FullOnce(MemoryRelayStore):
    """A relay store whose next C{fail} purges, and next C{fail_usage} writes of counts, meet a full disk."""

    fail = fail_usage = 0

    def purge(self, peer_id):
        if self.fail:
            self.fail -= 1
            return defer.fail(StoreFull(FULL))
        return super().purge(peer_id)

    def save_usage(self, usage):
        if self.fail_usage:
            self.fail_usage -= 1
            return defer.fail(StoreFull(FULL))
        return super().save_usage(usage)


class RetryTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.trust = MemoryTrustStore()
        self.store = FullOnce()
        self.peers = {}

    def pair(self, name):
        peer_id, key = new_peer_id()
        self.peers[name] = key
        self.successResultOf(self.trust.set_paired(peer_id, key, name, "psk", 0.0))
        return peer_id

    def start(self):
        relay = RelayService(Peer(Identity.generate(), clock=self.clock), self.trust, self.clock, store=self.store)
        self.successResultOf(relay.start())
        self.addCleanup(relay.stop)
        return relay

    def test_failed_purge_retried_by_the_sweep(self):
        """
        A purge that meets a full store fails (DELETE /peers/{id} answers
        507); the sweep tries again until the store forgets the peer's
        limits and counts (they stayed for good, and came back at the
        next start).
        """
        alice, bob = self.pair("alice"), self.pair("bob")
        relay = self.start()
        self.successResultOf(relay.set_limits(alice, RelayLimits(1000, None)))
        self.successResultOf(relay.set_limits(bob, RelayLimits(2000, None)))
        self.store.fail = 2
        events = observe_logs(self)
        self.successResultOf(self.trust.revoke(alice, 1.0))
        self.failureResultOf(relay.purge(alice), StoreFull)
        self.assertIn(alice, self.store.limits)
        self.clock.advance(SWEEP_INTERVAL)  # the first retry meets the full store again: one line
        self.assertIn(alice, self.store.limits)
        [line] = [e for e in events if "purging" in e.get("log_format", "")]
        self.assertIn(FULL, formatEvent(line))
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(set(self.store.limits), {bob})
        self.assertEqual(relay.purges_pending, set())

    def test_found_again_after_a_restart(self):
        """
        Limits and counts still held for a revoked peer whose failed purge
        this process does not remember (a restart, another node) are
        purged by the sweep; a peer paired again meanwhile keeps its own.
        """
        alice, bob, carol = self.pair("alice"), self.pair("bob"), self.pair("carol")
        for peer_id in (alice, bob, carol):
            self.store.limits[peer_id] = RelayLimits(1000, None)
            self.store.usage[peer_id] = (10, 20)
        for peer_id in (alice, carol):
            self.successResultOf(self.trust.revoke(peer_id, 1.0))
        self.successResultOf(self.trust.set_paired(carol, self.peers["carol"], "carol", "psk", 2.0))
        self.assertEqual(self.successResultOf(self.trust.get(alice)).state, REVOKED)
        relay = self.start()
        self.assertIn(alice, relay.bytes_sent)
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(set(self.store.limits), {bob, carol})
        self.assertEqual(set(self.store.usage), {bob, carol})
        self.assertNotIn(alice, relay.bytes_sent)


class _FullDatabase:
    def run(self, txn, *args):
        return defer.fail(sqlite3.OperationalError(FULL))


class SQLiteStoreTests(unittest.TestCase):
    def test_full_disk_is_store_full(self):
        """The SQLite relay store's writes fail with StoreFull on a full disk, as the other stores' do (a 507)."""
        store = SQLiteRelayStore(_FullDatabase())
        for d in (store.purge("p"), store.set_limits("p", RelayLimits(1, None)), store.save_usage({"p": (1, 2)})):
            self.assertIn(FULL, str(self.failureResultOf(d, StoreFull).value))

    def test_quota_on_a_full_store_is_507(self):
        """PUT /relay/{peer}/quota on a full store answers 507 with a JSON error, not a 500."""
        clock, trust = task.Clock(), MemoryTrustStore()
        peer_id, key = new_peer_id()
        self.successResultOf(trust.set_paired(peer_id, key, "", "psk", 0.0))
        store = SQLiteRelayStore(_FullDatabase())
        relay = RelayService(Peer(Identity.generate(), clock=clock), trust, clock, store=store)
        api = Node(self, relay=relay)
        body = api.json("PUT", f"/relay/{peer_id}/quota", expected_code=507, json={"max_bytes": 5})
        self.assertIn(FULL, body["error"])


class FlushTests(unittest.TestCase):
    def test_full_store_is_one_line(self):
        """Byte counts that a full store refuses are logged in one line (no traceback) and written at the next flush."""
        from cairn.relay.accounts import Accounts

        clock, store = task.Clock(), FullOnce()
        store.fail_usage = 1
        accounts = Accounts(clock, store, flush_interval=10.0)
        events = observe_logs(self)
        clock.advance(10)
        accounts.sent("p", 5)  # the first count after the interval writes: refused
        [line] = [e for e in events if "byte counts" in e.get("log_format", "")]
        self.assertIn(FULL, formatEvent(line))
        self.assertNotIn("log_failure", line)
        self.assertEqual(self.flushLoggedErrors(), [])
        clock.advance(10)
        accounts.sent("p", 1)
        self.assertEqual(store.usage, {"p": (6, 0)})
