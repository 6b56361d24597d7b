"""
The mailbox service end to end: library clients over real loopback
sessions (TCP and WebSocket), the node's clock a L{task.Clock}.
"""

import os
import time

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent
from twisted.trial import unittest

from cairn.db import Database
from cairn.mailbox import client as mailbox
from cairn.mailbox import delivery
from cairn.mailbox.client import ForwardRejected, UnknownRecipient, uuid7
from cairn.mailbox.interfaces import MAILBOX_SCHEMA, Limits, PartlyRemoved, PartlyStored, StoreFull
from cairn.mailbox.service import MailboxService
from cairn.mailbox.store import ACK_GATHER, MemoryMailboxStore, SQLiteMailboxStore
from cairn.management.metrics import Metrics
from cairn.pairing.service import PairingService
from cairn.pairing.trust import MemoryTrustStore
from cairn.wire.constants import CloseCode, ForwardStatus, MessageType, ReceiptStatus
from tests._harness import SETTINGS, Conditions, ScenarioMixin, closed, eventually, observe_logs
from tests.test_mailbox_store import hold_syncs

MAX_AGE = 3600.0


class Inbox:
    """Collects what a client peer's mailbox hands the application."""

    def __init__(self, peer):
        self.messages, self.receipts = [], []
        self._waiters = []
        mailbox.set_inbox(peer, lambda sender, mid, data: self._add(self.messages, (sender, mid, data)))
        mailbox.set_receipts(peer, lambda receipt: self._add(self.receipts, receipt))

    def _add(self, into, value):
        into.append(value)
        for waiter in list(self._waiters):
            self._check(*waiter)

    def _check(self, d, into, count):
        if len(into) >= count and not d.called:
            self._waiters.remove((d, into, count))
            d.callback(list(into))

    def wait(self, into, count):
        d = defer.Deferred()
        self._waiters.append((d, into, count))
        self._check(d, into, count)
        return eventually(d)


class MailboxHarness(ScenarioMixin):
    """A node peer with pairing (memory trust store) and a mailbox; C{self.clock} drives the mailbox."""

    sqlite = False
    limits = Limits(max_per_peer=100, max_total=10**6, max_age=MAX_AGE)
    enabled = True
    #: Further MailboxService arguments (e.g. bus=, recheck=).
    service_options = {}

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = task.Clock()
        self.clock.advance(time.time())  # message ids carry wall-clock time
        self.trust = MemoryTrustStore()
        self.pairing = PairingService(self.server, self.trust, self.clock)
        self.store = yield self.make_store()
        self.mailbox = MailboxService(
            self.server,
            self.trust,
            self.store,
            self.clock,
            enabled=self.enabled,
            limits=self.limits,
            max_payload=SETTINGS["max_payload"],
            sweep_interval=60.0,
            **self.service_options,
        )
        self.pairing.add_purge_hook(self.mailbox.purge)
        yield self.mailbox.start()
        self.addCleanup(self.mailbox.stop)
        # Waits re-check when deliveries are acknowledged or receipts dropped.
        self.conditions = Conditions()
        acknowledged = self.mailbox._acknowledged
        self.mailbox._acknowledged = lambda receipts: self.conditions.changed(acknowledged(receipts))
        self.receipts_dropped = {}
        drop = self.store.drop_receipts

        def drop_receipts(sender, rseqs):
            def dropped(result):
                self.receipts_dropped[sender] = self.receipts_dropped.get(sender, 0) + len(rseqs)
                return self.conditions.changed(result)

            return drop(sender, rseqs).addBoth(dropped)

        self.store.drop_receipts = drop_receipts

    @defer.inlineCallbacks
    def make_store(self):
        """The store under test (a Deferred): memory, or SQLite when C{sqlite} is set."""
        if not self.sqlite:
            return MemoryMailboxStore()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.db_path = os.path.join(directory, "cairn.sqlite")
        self.db = Database(reactor, self.db_path, [MAILBOX_SCHEMA])
        yield self.db.start()
        self.addCleanup(self.db.stop)
        return SQLiteMailboxStore(self.db, **self.store_options())

    def store_options(self):
        """Further SQLiteMailboxStore arguments."""
        return {}

    def peer(self, paired=True):
        client = self.make_client()
        if paired:
            self.successResultOf(self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0))
        return client, Inbox(client.peer)

    @defer.inlineCallbacks
    def forward_raw(self, session, body):
        """Send a raw ForwardRequest entry alone; fires with the status of its ack."""
        d = mailbox.mailbox(session.local)._acks.add(session.session_id, body["id"])
        session.send(MessageType.FORWARD_REQUEST, {"messages": [body]})
        try:
            yield eventually(d)
        except ForwardRejected as e:
            return e.code
        return ForwardStatus.STORED

    def until(self, predicate):
        """Fires once C{predicate()} holds (re-checked on mailbox events)."""
        return self.conditions.until(predicate)


class MailboxScenarioMixin(MailboxHarness):
    """The scenarios, run over TCP, WebSocket and with the SQLite store."""

    @defer.inlineCallbacks
    def test_online_delivery_and_receipt(self):
        """A message to an online peer is acked stored, delivered at once, deleted, and receipted to the sender."""
        alice, alice_box = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        yield self.connect(bob)
        result = yield eventually(mailbox.forward(a, bob.peer_id, b"hello bob"))
        self.assertFalse(result.duplicate)
        (got,) = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual(got, (alice.peer_id, result.message_id, b"hello bob"))
        (receipt,) = yield alice_box.wait(alice_box.receipts, 1)
        self.assertEqual(
            (receipt.message_id, receipt.recipient, receipt.status),
            (result.message_id, bob.peer_id, ReceiptStatus.DELIVERED),
        )
        self.assertEqual(self.store.depths(), {})
        self.assertEqual(self.mailbox.delivered, 1)

    @defer.inlineCallbacks
    def test_offline_delivery_in_order_and_receipts_later(self):
        """Messages to an offline peer arrive in order at its next session; the sender's receipts at its next one."""
        alice, alice_box = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        for i in range(5):
            yield eventually(mailbox.forward(a, bob.peer_id, b"m%d" % i))
        a.close()
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 5)
        yield self.connect(bob)
        got = yield bob_box.wait(bob_box.messages, 5)
        self.assertEqual([data for _, _, data in got], [b"m%d" % i for i in range(5)])
        yield self.until(lambda: self.mailbox.delivered == 5)
        self.assertEqual(alice_box.receipts, [])
        yield self.connect(alice)
        receipts = yield alice_box.wait(alice_box.receipts, 5)
        self.assertEqual({r.status for r in receipts}, {ReceiptStatus.DELIVERED})
        # The receipts are dropped once acknowledged.
        yield self.until(lambda: self.receipts_dropped.get(alice.peer_id, 0) >= 5)
        self.assertEqual((yield self.store.receipts(alice.peer_id, 0, 10)), [])

    @defer.inlineCallbacks
    def test_redelivery_until_acknowledged(self):
        """An unacknowledged delivery stays stored and comes again next session; the client drops the duplicate."""
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        sent = yield eventually(mailbox.forward(a, bob.peer_id, b"once"))
        raw = []
        deliver = MessageType.FORWARD_DELIVER
        handler = bob.peer.handler_for(deliver)  # the client library's own
        bob.peer.register_handler(deliver, lambda s, body: self.conditions.changed(raw.append(body)))
        b = yield self.connect(bob)
        yield self.until(lambda: raw)
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 1)
        # The transport drops and the session ends before the acknowledgement.
        lost = b.connection.lost
        b.connection.transport.lose(abort=True)
        yield lost
        b.close()
        handler(b, raw[0])  # the application saw it once already (the purge is not sent: session closed)
        bob.peer.register_handler(MessageType.FORWARD_DELIVER, handler)
        yield self.connect(bob)
        yield self.until(lambda: self.mailbox.delivered == 1)
        self.assertEqual(bob_box.messages, [(alice.peer_id, sent.message_id, b"once")])
        self.assertEqual(self.store.depths(), {})

    @defer.inlineCallbacks
    def test_retry_is_duplicate_until_expiry(self):
        """A retried id is acked as a duplicate and stored once, even after delivery; once expired it is too old."""
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        message_id = uuid7()
        first = yield eventually(mailbox.forward(a, bob.peer_id, b"x", message_id))
        again = yield eventually(mailbox.forward(a, bob.peer_id, b"x", message_id))
        self.assertEqual((first.duplicate, again.duplicate), (False, True))
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 1)
        yield self.connect(bob)
        yield bob_box.wait(bob_box.messages, 1)
        yield self.until(lambda: self.mailbox.delivered == 1)
        after = yield eventually(mailbox.forward(a, bob.peer_id, b"x", message_id))
        self.assertTrue(after.duplicate)
        self.clock.advance(MAX_AGE + 61)
        failure = yield self.assertFailure(
            eventually(mailbox.forward(a, bob.peer_id, b"x", message_id)), ForwardRejected
        )
        self.assertEqual(failure.code, ForwardStatus.INVALID)
        self.assertEqual(len(bob_box.messages), 1)

    @defer.inlineCallbacks
    def test_per_peer_limit_and_override(self):
        """Over the per-recipient count the request is refused MAILBOX_FULL; an operator override applies at once."""
        self.mailbox.limits = Limits(max_per_peer=2, max_total=10**6, max_age=MAX_AGE)
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        for _ in range(2):
            yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        failure = yield self.assertFailure(eventually(mailbox.forward(a, bob.peer_id, b"x")), ForwardRejected)
        self.assertEqual(failure.code, ForwardStatus.MAILBOX_FULL)
        shown = yield self.mailbox.set_peer_limits(bob.peer_id, {"max_messages": 3})
        self.assertEqual(shown["limits"]["max_messages"], 3)
        yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        self.assertEqual(self.mailbox.peer_stats(bob.peer_id)["messages"], 3)
        self.assertRaises(ValueError, self.mailbox.set_peer_limits, bob.peer_id, {"max_messages": 0})

    @defer.inlineCallbacks
    def test_total_limit(self):
        """Over the total bytes the request is refused STORAGE_FULL."""
        self.mailbox.limits = Limits(max_per_peer=100, max_total=500, max_age=MAX_AGE)
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        failure = yield self.assertFailure(eventually(mailbox.forward(a, bob.peer_id, b"x" * 600)), ForwardRejected)
        self.assertEqual(failure.code, ForwardStatus.STORAGE_FULL)

    @defer.inlineCallbacks
    def test_age_sweep_with_expired_receipt(self):
        """A message older than the maximum age is swept and its online sender gets an EXPIRED receipt."""
        alice, alice_box = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        sent = yield eventually(mailbox.forward(a, bob.peer_id, b"late"))
        self.clock.advance(MAX_AGE + 60)
        (receipt,) = yield alice_box.wait(alice_box.receipts, 1)
        self.assertEqual((receipt.message_id, receipt.status), (sent.message_id, ReceiptStatus.EXPIRED))
        self.assertEqual(self.store.depths(), {})

    @defer.inlineCallbacks
    def test_sweep_logs_its_errors_and_goes_on(self):
        """A failing sweep is logged and the next one still runs; a full store is one line each time, no traceback."""
        calls = []
        errors = iter([StoreFull("database or disk is full"), RuntimeError("boom")])

        def broken(now, limit, ttl):
            calls.append(now)
            return defer.fail(next(errors))

        self.store.expire = broken
        events = self.log_events()
        self.clock.advance(60)
        self.clock.advance(60)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.flushLoggedErrors(StoreFull), [])
        [line] = [e for e in events if "database or disk is full" in formatEvent(e)]
        self.assertNotIn("log_failure", line)
        yield None

    @defer.inlineCallbacks
    def test_full_store_dropping_receipts_is_one_line(self):
        """A receipt purge the full store cannot write is logged in one line, without a traceback."""
        alice, alice_box = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        attempted = defer.Deferred()

        def full(sender, rseqs):
            # Fired on the next turn: once the failure below has been handled.
            reactor.callLater(0, attempted.callback, None)
            return defer.fail(StoreFull("database or disk is full"))

        self.store.drop_receipts = full
        events = self.log_events()
        yield self.connect(bob)
        yield alice_box.wait(alice_box.receipts, 1)
        yield eventually(attempted)
        self.assertEqual(self.flushLoggedErrors(StoreFull), [])
        [line] = [e for e in events if "database or disk is full" in formatEvent(e)]
        self.assertNotIn("log_failure", line)

    def log_events(self):
        """Every log event from now until the test ends."""
        return observe_logs(self)

    @defer.inlineCallbacks
    def test_unpaired_recipient(self):
        """A recipient that is not paired gets NOT_PAIRED, from the key look-up and from the node's ack."""
        alice, _ = self.peer()
        stranger, _ = self.peer(paired=False)
        a = yield self.connect(alice)
        failure = yield self.assertFailure(eventually(mailbox.forward(a, stranger.peer_id, b"x")), UnknownRecipient)
        self.assertEqual(failure.code, ForwardStatus.NOT_PAIRED)
        status = yield self.forward_raw(a, {"to": stranger.peer_id, "id": uuid7(), "payload": b"x"})
        self.assertEqual(status, ForwardStatus.NOT_PAIRED)

    @defer.inlineCallbacks
    def test_unpaired_sender_closed(self):
        """A ForwardRequest from an unpaired peer closes its session with NOT_PAIRED."""
        stranger, _ = self.peer(paired=False)
        bob, _ = self.peer()
        s = yield self.connect(stranger)
        s.send(MessageType.FORWARD_REQUEST, {"messages": [{"to": bob.peer_id, "id": uuid7(), "payload": b"x"}]})
        ended = yield closed(s)
        self.assertEqual(ended.code, CloseCode.NOT_PAIRED)

    @defer.inlineCallbacks
    def test_bad_bodies(self):
        """A body without a usable id closes the session BAD_CBOR; other defects are acked INVALID or TOO_LARGE."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        self.assertEqual(
            (yield self.forward_raw(a, {"to": "nope", "id": uuid7(), "payload": b"x"})), ForwardStatus.INVALID
        )
        self.assertEqual(
            (yield self.forward_raw(a, {"to": bob.peer_id, "id": b"\0" * 16, "payload": b"x"})), ForwardStatus.INVALID
        )
        big = b"x" * (SETTINGS["max_payload"] - 200)
        self.assertEqual(
            (yield self.forward_raw(a, {"to": bob.peer_id, "id": uuid7(), "payload": big})), ForwardStatus.TOO_LARGE
        )
        a.send(MessageType.FORWARD_REQUEST, {"messages": [{"to": bob.peer_id, "id": b"short"}]})
        ended = yield closed(a)
        self.assertEqual(ended.code, CloseCode.BAD_CBOR)

    @defer.inlineCallbacks
    def test_storage_error_rejects_but_delivery_continues(self):
        """When the store cannot write, requests are refused STORAGE_ERROR and what is stored is still delivered."""
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, bob.peer_id, b"before"))
        self.store.enqueue = lambda items, now, limits: defer.fail(StoreFull("database or disk is full"))
        failure = yield self.assertFailure(eventually(mailbox.forward(a, bob.peer_id, b"after")), ForwardRejected)
        self.assertEqual(failure.code, ForwardStatus.STORAGE_ERROR)
        yield self.connect(bob)
        got = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual(got[0][2], b"before")

    @defer.inlineCallbacks
    def test_partly_stored_is_delivered(self):
        """
        A store call that failed after storing some of its messages
        (L{PartlyStored}, JetStream at its limit): STORAGE_ERROR to the
        sender, and the recipient woken for what is held (a retry is
        DUPLICATE, which wakes no one: it waited for another wake-up).
        """
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        yield self.connect(bob)
        enqueue, wakes = self.store.enqueue, []

        def partly(items, now, limits):
            return enqueue(items, now, limits).addCallback(
                lambda results: defer.fail(PartlyStored("JetStream did not store the message", results))
            )

        wake = self.mailbox.bus.wake
        self.mailbox.bus.wake = lambda recipient: (wakes.append(recipient), wake(recipient))
        self.store.enqueue = partly
        failure = yield self.assertFailure(eventually(mailbox.forward(a, bob.peer_id, b"held")), ForwardRejected)
        self.assertEqual(failure.code, ForwardStatus.STORAGE_ERROR)
        self.assertEqual(wakes, [bob.peer_id])
        got = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual(got[0][2], b"held")

    @defer.inlineCallbacks
    def test_partly_removed_receipts_owed(self):
        """
        An acknowledgement that failed after removing some of its messages
        (L{PartlyRemoved}, JetStream at its limit): their receipts go to
        the online sender at once, not after the sweep's retry.
        """
        alice, alice_box = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        acknowledge = self.store.acknowledge

        def partly(*args):
            self.store.acknowledge = acknowledge  # the sweep's retry would succeed
            return acknowledge(*args).addCallback(
                lambda receipts: defer.fail(PartlyRemoved("JetStream did not store a tombstone", receipts))
            )

        self.store.acknowledge = partly
        result = yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        yield self.connect(bob)
        yield bob_box.wait(bob_box.messages, 1)
        (receipt,) = yield alice_box.wait(alice_box.receipts, 1)
        self.assertEqual((receipt.message_id, receipt.status), (result.message_id, ReceiptStatus.DELIVERED))

    @defer.inlineCallbacks
    def test_empty_window_filled_by_several_reads(self):
        """A session's empty window is filled by reads of at most READ_ROWS, each delivered before the next."""
        self.patch(delivery, "READ_ROWS", 3)
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        for i in range(8):
            yield eventually(mailbox.forward(a, bob.peer_id, b"m%d" % i))
        fetch, limits = self.store.fetch, []

        def recorded(recipient, after_seq, limit):
            limits.append(limit)
            return fetch(recipient, after_seq, limit)

        self.store.fetch = recorded
        yield self.connect(bob)
        got = yield bob_box.wait(bob_box.messages, 8)
        self.assertEqual([data for _, _, data in got], [b"m%d" % i for i in range(8)])
        self.assertEqual(limits[:3], [3, 3, 3])
        self.assertLessEqual(max(limits), 3)

    @defer.inlineCallbacks
    def test_failed_delivery_read_is_retried(self):
        """A delivery read that fails (store unavailable) is tried again on the clock, without a new session."""
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, bob.peer_id, b"held"))
        fetch, failures = self.store.fetch, []

        def unavailable(*args):
            failures.append(args)
            return defer.fail(StoreFull("the store is unavailable"))

        self.store.fetch = unavailable
        yield self.connect(bob)
        self.assertEqual((len(failures), bob_box.messages), (1, []))
        self.store.fetch = fetch
        self.clock.advance(delivery.READ_RETRY)
        got = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual(got[0][2], b"held")

    @defer.inlineCallbacks
    def test_unpair_purges_and_evicts(self):
        """Unpairing a peer purges its mailbox and the senders get EVICTED receipts."""
        alice, alice_box = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        sent = yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        yield self.pairing.unpair(bob.peer_id)
        self.assertEqual(self.store.depths(), {})
        (receipt,) = yield alice_box.wait(alice_box.receipts, 1)
        self.assertEqual((receipt.message_id, receipt.status), (sent.message_id, ReceiptStatus.EVICTED))

    @defer.inlineCallbacks
    def test_unpair_purge_on_full_store_retried_by_the_sweep(self):
        """
        A purge that meets a full store (DELETE /peers/{id} answers 507) is
        tried again at each sweep until it succeeds; the senders then get
        their EVICTED receipts, long before the messages would expire.
        """
        alice, alice_box = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        sent = yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        purge, failures = self.store.purge, [StoreFull("database or disk is full")] * 2

        def full_then_working(*args):
            return defer.fail(failures.pop()) if failures else purge(*args)

        self.store.purge = full_then_working
        events = self.log_events()
        yield self.assertFailure(self.pairing.unpair(bob.peer_id), StoreFull)
        self.assertIn(bob.peer_id, self.store.depths())
        self.clock.advance(60)  # the sweep's first retry meets the full store again: one line
        yield self.mailbox.store.flushed()
        self.assertIn(bob.peer_id, self.store.depths())
        [line] = [e for e in events if "purging" in e.get("log_format", "")]
        self.assertIn("database or disk is full", formatEvent(line))
        self.clock.advance(60)
        yield eventually(self.store.flushed())
        self.assertEqual(self.store.depths(), {})
        self.assertEqual(self.mailbox.purges_pending, set())
        (receipt,) = yield alice_box.wait(alice_box.receipts, 1)
        self.assertEqual((receipt.message_id, receipt.status), (sent.message_id, ReceiptStatus.EVICTED))
        self.assertEqual(self.flushLoggedErrors(StoreFull), [])

    @defer.inlineCallbacks
    def test_failed_purge_found_again_after_a_restart(self):
        """
        Mail still held for a revoked peer whose failed purge this process
        does not remember (a restart, another node) is purged by the sweep;
        a peer paired again meanwhile keeps its mail.
        """
        alice, _ = self.peer()
        bob, _ = self.peer()
        carol, _ = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        yield eventually(mailbox.forward(a, carol.peer_id, b"y"))
        purge = self.store.purge
        self.store.purge = lambda *args: defer.fail(StoreFull("database or disk is full"))
        yield self.assertFailure(self.pairing.unpair(bob.peer_id), StoreFull)
        yield self.assertFailure(self.pairing.unpair(carol.peer_id), StoreFull)
        self.store.purge = purge
        self.mailbox.purges_pending.clear()  # as after a restart
        self.successResultOf(self.trust.set_paired(carol.peer_id, carol.peer.identity.public_key, "", "psk", 0.0))
        self.clock.advance(60)
        yield eventually(self.store.flushed())
        self.assertEqual(set(self.store.depths()), {carol.peer_id})

    @defer.inlineCallbacks
    def test_stats_and_metrics(self):
        """GET /mailbox's data and the Prometheus gauges show depth, bytes and oldest age per peer and in total."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, bob.peer_id, b"x"))
        self.clock.advance(30)
        stats = self.mailbox.stats()
        self.assertEqual(stats["messages"], 1)
        (entry,) = stats["peers"]
        self.assertEqual((entry["peer_id"], entry["messages"], entry["oldest_age"]), (bob.peer_id, 1, 30.0))
        self.assertEqual(stats["bytes"], entry["bytes"])
        self.assertIsNone(self.mailbox.peer_stats(alice.peer_id)["oldest_age"])
        self.assertIsNone(self.mailbox.peer_stats("QmNotPairedAtAll"))
        metrics = Metrics(self.server, self.clock, 0.0, process_metrics=False)
        metrics.add_collector(self.mailbox.collect_metrics)
        text = metrics.exposition().decode()
        self.assertIn(f'cairn_mailbox_messages{{peer="{bob.peer_id}"}} 1.0', text)
        self.assertIn(f'cairn_mailbox_oldest_age_seconds{{peer="{bob.peer_id}"}} 30.0', text)
        self.assertIn("cairn_mailbox_total_messages 1.0", text)
        self.assertIn('cairn_mailbox_requests_total{status="stored"} 1.0', text)


class BatchingMixin:
    """Batches on the wire: requests, acks, deliveries and cumulative purges (docs/protocol.md §21)."""

    def record(self, peer, type_code, into, what=lambda body: body):
        """Record C{what(body)} of every C{type_code} envelope C{peer} gets, then hand it on."""
        inner = peer.handler_for(type_code)

        def recording(session, body):
            into.append(what(body))
            self.conditions.changed()
            if inner is not None:
                inner(session, body)

        peer.register_handler(type_code, recording)

    @defer.inlineCallbacks
    def test_requests_batched_while_one_awaits_its_ack(self):
        """Forwards made while a ForwardRequest awaits its ack (or from its callbacks) go together in the next one."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, bob.peer_id, b"first"))  # the recipient's key is fetched
        # Still inside the first ack's callbacks: these queue, and go as one.
        sizes = []
        self.record(self.server, MessageType.FORWARD_REQUEST, sizes, lambda body: len(body["messages"]))
        results = yield eventually(defer.gatherResults([mailbox.forward(a, bob.peer_id, b"%d" % i) for i in range(10)]))
        self.assertEqual(len({r.message_id for r in results}), 10)
        self.assertEqual(sizes, [10])
        yield task.deferLater(reactor, 0, lambda: None)  # out of every callback: the first goes at once
        yield eventually(defer.gatherResults([mailbox.forward(a, bob.peer_id, b"%d" % i) for i in range(5)]))
        self.assertEqual(sizes, [10, 1, 4])
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 16)

    @defer.inlineCallbacks
    def test_several_requests_in_flight(self):
        """ForwardRequests sent back to back on one session, none awaited: each gets its own ForwardAck."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        acks = []
        self.record(alice.peer, MessageType.FORWARD_ACK, acks, lambda body: [e["id"] for e in body["acks"]])
        requests = [[uuid7() for _ in range(3)] for _ in range(4)]
        handled = self.mailbox.requests
        for ids in requests:
            entries = [{"to": bob.peer_id, "id": i, "payload": b"x"} for i in ids]
            a.send(MessageType.FORWARD_REQUEST, {"messages": entries})
        yield self.until(lambda: len(acks) == 4)
        self.assertEqual(sorted(acks), sorted(requests))
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 12)
        self.assertEqual(self.mailbox.requests - handled, 4)  # counted for the bench's entries per request

    @defer.inlineCallbacks
    def test_same_id_in_two_requests_in_flight(self):
        """An id in two ForwardRequests in flight at once is stored once; the other is answered DUPLICATE."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        acks = []
        self.record(alice.peer, MessageType.FORWARD_ACK, acks, lambda body: [e["status"] for e in body["acks"]])
        same = uuid7()
        for _ in range(2):
            a.send(MessageType.FORWARD_REQUEST, {"messages": [{"to": bob.peer_id, "id": same, "payload": b"x"}]})
        yield self.until(lambda: len(acks) == 2)
        self.assertEqual(sorted(acks), [[ForwardStatus.STORED], [ForwardStatus.DUPLICATE]])
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 1)

    @defer.inlineCallbacks
    def test_client_window_of_full_requests(self):
        """The client keeps several full ForwardRequests in flight (its window); every message is stored once."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, bob.peer_id, b"first"))  # the recipient's key is fetched
        yield task.deferLater(reactor, 0, lambda: None)  # out of the first ack's callbacks
        sizes = []
        self.record(self.server, MessageType.FORWARD_REQUEST, sizes, lambda body: len(body["messages"]))
        data = b"y" * 20_000  # three to a ForwardRequest
        forwards = [mailbox.forward(a, bob.peer_id, data) for _ in range(16)]
        # One alone, then full ones as they fill, up to the window; the rest on the acks.
        results = yield eventually(defer.gatherResults(forwards))
        self.assertEqual(len({r.message_id for r in results}), 16)
        self.assertEqual(sorted(sizes), [1, 3, 3, 3, 3, 3])
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 17)

    @defer.inlineCallbacks
    def test_one_ack_per_request_in_entry_order(self):
        """A ForwardRequest mixing good and bad entries gets one ForwardAck with each entry's status, in order."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        stranger, _ = self.peer(paired=False)
        a = yield self.connect(alice)
        acks = []
        self.record(alice.peer, MessageType.FORWARD_ACK, acks)
        first, other = uuid7(), uuid7()
        entries = [
            {"to": bob.peer_id, "id": first, "payload": b"x"},
            {"to": bob.peer_id, "id": b"\0" * 16, "payload": b"x"},  # not a UUIDv7
            {"to": bob.peer_id, "id": first, "payload": b"x"},  # the first again
            {"to": stranger.peer_id, "id": other, "payload": b"x"},
        ]
        a.send(MessageType.FORWARD_REQUEST, {"messages": entries})
        yield self.until(lambda: acks)
        (body,) = acks
        self.assertEqual(
            [(e["id"], e["status"]) for e in body["acks"]],
            [
                (first, ForwardStatus.STORED),
                (b"\0" * 16, ForwardStatus.INVALID),
                (first, ForwardStatus.DUPLICATE),
                (other, ForwardStatus.NOT_PAIRED),
            ],
        )
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 1)

    @defer.inlineCallbacks
    def test_deliveries_batched_and_acknowledged_cumulatively(self):
        """Held messages reach the recipient several to a ForwardDeliver, each acknowledged by one upto."""
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        yield eventually(defer.gatherResults([mailbox.forward(a, bob.peer_id, b"m%d" % i) for i in range(12)]))
        batches, purges = [], []
        self.record(bob.peer, MessageType.FORWARD_DELIVER, batches, lambda body: [e["seq"] for e in body["messages"]])
        self.record(self.server, MessageType.FORWARD_PURGE, purges)
        yield self.connect(bob)
        got = yield bob_box.wait(bob_box.messages, 12)
        self.assertEqual([data for _, _, data in got], [b"m%d" % i for i in range(12)])
        yield self.until(lambda: self.mailbox.delivered == 12)
        self.assertLess(len(batches), 12)
        self.assertEqual(purges, [{"upto": seqs[-1]} for seqs in batches])
        self.assertEqual(self.store.depths(), {})

    @defer.inlineCallbacks
    def test_upto_deletes_only_what_the_session_was_sent(self):
        """A cumulative purge past what the session was sent deletes only what it was sent."""
        self.mailbox.window = 2
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        yield eventually(defer.gatherResults([mailbox.forward(a, bob.peer_id, b"m%d" % i) for i in range(5)]))
        batches = []
        bob.peer.register_handler(
            MessageType.FORWARD_DELIVER, lambda s, body: self.conditions.changed(batches.append(body))
        )
        b = yield self.connect(bob)
        yield self.until(lambda: batches)
        self.assertEqual(sum(len(body["messages"]) for body in batches), 2)
        b.send(MessageType.FORWARD_PURGE, {"upto": 2**62})
        yield self.until(lambda: self.mailbox.delivered == 2)
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 3)

    @defer.inlineCallbacks
    def test_signed_sealing(self):
        """A message sealed with signed=True is delivered and opened like any other."""
        alice, _ = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        sent = yield eventually(mailbox.forward(a, bob.peer_id, b"signed hello", signed=True))
        yield self.connect(bob)
        (got,) = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual(got, (alice.peer_id, sent.message_id, b"signed hello"))


class DisabledMixin:
    enabled = False

    @defer.inlineCallbacks
    def test_disabled(self):
        """With CAIRN_FORWARD_ENABLED=false every request is refused DISABLED."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        failure = yield self.assertFailure(eventually(mailbox.forward(a, bob.peer_id, b"x")), ForwardRejected)
        self.assertEqual(failure.code, ForwardStatus.DISABLED)


class TCPMailboxTests(MailboxScenarioMixin, BatchingMixin, unittest.TestCase):
    pass


class WebSocketMailboxTests(MailboxScenarioMixin, BatchingMixin, unittest.TestCase):
    websocket = True


class SQLiteMailboxTests(MailboxScenarioMixin, BatchingMixin, unittest.TestCase):
    sqlite = True

    @defer.inlineCallbacks
    def test_no_plaintext_on_disk(self):
        """The database file and its WAL hold only ciphertext of a forwarded message."""
        alice, _ = self.peer()
        bob, _ = self.peer()
        a = yield self.connect(alice)
        secret = b"attack at dawn, the secret phrase 0123456789"
        yield eventually(mailbox.forward(a, bob.peer_id, secret))
        held = b""
        for suffix in ("", "-wal"):
            if os.path.exists(self.db_path + suffix):
                with open(self.db_path + suffix, "rb") as f:
                    held += f.read()
        self.assertGreater(len(held), 0)
        self.assertNotIn(secret, held)
        self.assertNotIn(b"attack at dawn", held)


class GatheredAcknowledgementTests(MailboxHarness, unittest.TestCase):
    """The SQLite store gathering acknowledgements on the node's L{task.Clock} (issue 19)."""

    sqlite = True

    def store_options(self):
        return {"clock": self.clock}

    @defer.inlineCallbacks
    def delivered_and_acknowledged(self):
        """Alice forwards to Bob, both online; fires once Bob's acknowledgement is with the store, gathered."""
        alice, alice_box = self.peer()
        bob, bob_box = self.peer()
        a = yield self.connect(alice)
        yield self.connect(bob)
        acknowledged = []
        delete = self.mailbox._delete_delivered

        def record(*args):
            delete(*args)  # the store's Deferred is tracked by now (for the stop to wait for)
            self.conditions.changed(acknowledged.append(args))

        self.mailbox._delete_delivered = record
        yield eventually(mailbox.forward(a, bob.peer_id, b"for bob"))
        yield bob_box.wait(bob_box.messages, 1)
        yield self.until(lambda: acknowledged)
        self.assertEqual(self.store.depths()[bob.peer_id].messages, 1)  # gathered, not written
        return alice_box

    @defer.inlineCallbacks
    def test_clean_stop_writes_gathered_acknowledgements(self):
        """The service's stop writes the gathered acknowledgements without waiting for the interval."""
        yield self.delivered_and_acknowledged()
        yield eventually(self.mailbox.stop())
        self.assertEqual(self.store.depths(), {})
        self.assertEqual(self.mailbox.delivered, 1)

    @defer.inlineCallbacks
    def test_receipt_sent_only_once_the_deletion_is_durable(self):
        """
        The DELIVERED receipt goes to the sender only once the gathered
        acknowledgement's transaction is synced: not during the interval,
        not while its sync is held.
        """
        alice_box = yield self.delivered_and_acknowledged()
        gates, requested = hold_syncs(self.db)
        self.assertEqual((self.mailbox.delivered, alice_box.receipts), (0, []))
        self.clock.advance(ACK_GATHER)
        yield requested.until(lambda: gates)  # written, its sync held
        self.assertEqual((self.mailbox.delivered, alice_box.receipts), (0, []))
        for gate in gates:
            gate.callback(None)
        (receipt,) = yield alice_box.wait(alice_box.receipts, 1)
        self.assertEqual(receipt.status, ReceiptStatus.DELIVERED)
        self.assertEqual(self.store.depths(), {})


class DisabledTests(DisabledMixin, MailboxHarness, unittest.TestCase):
    pass


class DeliverBatchTests(unittest.TestCase):
    def test_a_node_packs_256_kib_per_forward_deliver(self):
        """
        At the default maximum payload a ForwardDeliver carries up to 256
        KiB of deliveries (docs/protocol.md §21.4): a drain's envelopes, each
        with its ForwardPurge, are a quarter as many as with 64 KiB (issue 19).
        """
        from cairn.crypto.identity import Identity
        from cairn.mailbox.service import BATCH_BYTES
        from cairn.session.peer import Peer

        clock = task.Clock()
        node = Peer(Identity.generate(), clock)
        service = MailboxService(node, MemoryTrustStore(), MemoryMailboxStore(), clock)
        self.assertEqual((BATCH_BYTES, service.batch_bytes), (256 * 1024, 256 * 1024))
        small = Peer(Identity.generate(), clock, max_payload=64 * 1024)
        service = MailboxService(small, MemoryTrustStore(), MemoryMailboxStore(), clock, max_payload=64 * 1024)
        self.assertEqual(service.batch_bytes, 64 * 1024 - 256)  # within the node's own envelope limit
