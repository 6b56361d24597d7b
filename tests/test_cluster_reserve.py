"""
Full mode at JetStream's storage limit (L{cairn.cluster.reserve.Reserve}),
on a L{task.Clock} with an in-memory reserve stream (L{FakeBallast}); the
real thing at a real nats-server's limit is in
C{tests/test_cluster_full_disk.py} (C{NatsStorageLimitTests}) and
C{tests/test_cluster_reserve_nodes.py}.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from cairn.cluster.mailbox import JetStreamMailboxStore
from cairn.cluster.reserve import POLL, STUCK_AFTER, Reserve
from cairn.cluster.sync import JetStreamSyncStore
from cairn.diskspace import LowDiskSpace
from cairn.wire.constants import ForwardStatus, SyncStatus

R = 1000


class FakeBallast:
    """
    The reserve stream of a deployment in memory (shared by the nodes'
    L{Reserve}s), and the bytes of the other streams (C{other}).
    """

    def __init__(self, other=50 * R):
        self.first, self.last, self.messages = 1, 1, 1
        self.other = other
        self.room = True  # whether a write of the ballast is accepted
        self.releases = self.writes = 0

    def state(self):
        return defer.succeed((self.first, self.last, self.messages))

    def release(self):
        self.releases += 1
        self.messages, self.first = 0, self.last + 1
        return defer.succeed(self.last)

    def write(self, size):
        self.writes += 1
        if not self.room:
            return defer.succeed(False)
        self.last += 1
        self.first, self.messages = self.last, 1
        return defer.succeed(True)

    def used(self):
        return defer.succeed(self.other)


class ReserveTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ballast = FakeBallast()

    def node(self, present=True):
        reserve = Reserve(self.ballast, R, self.clock, now=self.clock.seconds)
        reserve.begin(present)
        self.addCleanup(reserve.stop)
        return reserve

    def test_enters_on_no_room_and_releases_once(self):
        """A refusal makes the node full and releases the ballast, once however many refusals follow."""
        reserve = self.node()
        self.assertFalse(reserve.full)
        reserve.no_room("insufficient resources")
        self.assertTrue(reserve.full)
        self.assertEqual(self.ballast.messages, 0)
        for _ in range(5):
            reserve.no_room("insufficient resources")
            self.clock.advance(POLL)
        self.assertEqual((self.ballast.releases, reserve.releases), (1, 1))
        self.assertIn("insufficient resources", reserve.reason())
        self.assertIn("CAIRN_CLUSTER_RESERVE", reserve.reason())

    def test_growth_refused_while_full(self):
        """While full, the error the stores fail growth with is the SQLite reserve's (STORAGE_ERROR), counted."""
        reserve = self.node()
        reserve.no_room("insufficient resources")
        self.assertIsInstance(reserve.refuse(), LowDiskSpace)
        self.assertEqual(reserve.refused, 1)

    def test_leaves_once_twice_the_reserve_is_freed(self):
        """The ballast is written again, and full mode left, only once the other streams shrank by 2 R."""
        reserve = self.node()
        reserve.no_room("insufficient resources")
        self.ballast.other -= 2 * R - 1
        self.clock.advance(POLL)
        self.assertTrue(reserve.full)
        self.assertEqual(self.ballast.writes, 0)
        self.ballast.other -= 1
        self.clock.advance(POLL)
        self.assertFalse(reserve.full)
        self.assertEqual((self.ballast.writes, self.ballast.messages), (1, 1))

    def test_stays_full_while_buried_removals_owe_tombstones(self):
        """Room freed, the node stays full (the ballast not written) while its settle says removals are owed."""
        reserve = self.node()
        owed = [2]
        reserve.settle = lambda: defer.succeed(owed[0])
        reserve.no_room("resource limits exceeded for account")
        self.ballast.other -= 3 * R
        self.clock.advance(POLL)
        self.clock.advance(POLL)
        self.assertTrue(reserve.full)
        self.assertEqual(self.ballast.writes, 0)
        owed[0] = 0
        self.clock.advance(POLL)
        self.assertFalse(reserve.full)
        self.assertEqual(self.ballast.writes, 1)

    def test_no_flapping(self):
        """Left full mode, a refusal soon after enters it again, and leaving takes 2 R more freed."""
        reserve = self.node()
        reserve.no_room("insufficient resources")
        self.ballast.other -= 2 * R
        self.clock.advance(POLL)
        self.assertFalse(reserve.full)
        self.ballast.other += R  # senders refill what was freed
        reserve.no_room("insufficient resources")
        self.assertTrue(reserve.full)
        for _ in range(10):
            self.clock.advance(POLL)
        self.assertTrue(reserve.full)
        self.assertEqual((self.ballast.writes, self.ballast.releases), (1, 2))

    def test_stuck_full_tries_the_reserve_after_a_while(self):
        """
        Full again just after leaving, with nothing more to free (the
        mailbox drained): after STUCK_AFTER s the ballast is written anyway,
        and full mode left if JetStream takes it (it stayed full for good).
        """
        reserve = self.node()
        reserve.no_room("insufficient resources")
        self.clock.advance(POLL)
        for _ in range(int(STUCK_AFTER / POLL) - 2):
            self.clock.advance(POLL)
        self.assertTrue(reserve.full)
        self.assertEqual(self.ballast.writes, 0)
        self.clock.advance(2 * POLL)
        self.assertFalse(reserve.full)
        self.assertEqual((self.ballast.writes, self.ballast.messages), (1, 1))

    def test_stuck_full_and_refused_tries_again_as_late(self):
        """A ballast refused after STUCK_AFTER s: still full, and the next try STUCK_AFTER s later, not at each poll."""
        reserve = self.node()
        self.ballast.room = False
        reserve.no_room("insufficient resources")
        self.clock.advance(STUCK_AFTER + POLL)
        self.assertTrue(reserve.full)
        self.assertEqual(self.ballast.writes, 1)
        for _ in range(int(STUCK_AFTER / POLL) - 3):
            self.clock.advance(POLL)
        self.assertEqual(self.ballast.writes, 1)
        self.ballast.room = True
        for _ in range(5):
            self.clock.advance(POLL)
        self.assertFalse(reserve.full)
        self.assertEqual(self.ballast.writes, 2)

    def test_write_refused_stays_full(self):
        """A ballast the limit does not take again: still full, and what was written of it released again."""
        reserve = self.node()
        reserve.no_room("insufficient resources")
        self.ballast.room = False
        self.ballast.other -= 3 * R
        self.clock.advance(POLL)
        self.assertTrue(reserve.full)
        self.ballast.room = True
        self.clock.advance(POLL)
        self.assertFalse(reserve.full)

    def test_restart_while_full(self):
        """The ballast missing at start-up: full, nothing released, until 2 R are freed from then."""
        self.ballast.release()
        reserve = self.node(present=False)
        self.assertTrue(reserve.full)
        self.assertIn("found released at start-up", reserve.why)
        self.ballast.other -= R
        for _ in range(3):
            self.clock.advance(POLL)
        self.assertTrue(reserve.full)
        self.ballast.other -= R
        self.clock.advance(POLL)
        self.assertFalse(reserve.full)
        self.assertEqual(self.ballast.releases, 1)  # the one before the restart

    def test_other_node_learns_by_its_poll(self):
        """A node that saw no refusal is full within one poll of the release, and leaves once the ballast is back."""
        one, two = self.node(), self.node()
        one.no_room("insufficient resources")
        self.assertFalse(two.full)
        self.clock.advance(POLL)
        self.assertTrue(two.full)
        self.assertEqual(two.why, "another node released the reserve")
        self.assertEqual(self.ballast.releases, 1)
        # Node two measured later, so node one's criterion is met first: its ballast frees node two.
        self.ballast.other -= 2 * R
        self.clock.advance(POLL)
        self.clock.advance(POLL)
        self.assertEqual((one.full, two.full), (False, False))
        self.assertEqual(self.ballast.writes, 1)

    def test_other_node_told_enters_at_once(self):
        """
        A node entering full mode announces it (L{Reserve.on_change}); one
        told enters at once, without announcing, and is told again when
        the first leaves by writing the ballast: it leaves at once too.
        """
        one, two = self.node(), self.node()
        said = []
        one.on_change = lambda full: (said.append(full), two.told(full, "n1"))
        two.on_change = lambda full: self.fail("a node told does not announce")
        one.no_room("insufficient resources")
        self.assertEqual(said, [True])
        self.assertTrue(two.full)  # no poll in between
        self.assertIn("'n1' met it", two.why)
        self.assertEqual((one.releases, two.releases), (1, 0))  # the node that told released it
        self.ballast.other -= 2 * R
        self.clock.advance(POLL)  # node one's poll: the criterion met, the ballast written, told
        self.assertEqual((said, one.full, two.full), ([True, False], False, False))
        self.assertEqual(self.ballast.writes, 1)

    def test_stale_notice_takes_no_ballast(self):
        """
        A C{full} notice come after its node wrote the ballast again: the
        node told refuses growth until its next look, never releases the
        ballast, and leaves when it finds it still there.
        """
        reserve = self.node()
        reserve.told(True, "n1")
        self.assertTrue(reserve.full)
        self.clock.advance(POLL)
        self.assertFalse(reserve.full)
        self.assertEqual((self.ballast.releases, self.ballast.messages), (0, 1))

    def test_told_looks_again_before_the_release_lands(self):
        """
        Told, and asked to look again at once (an acknowledgement's retry)
        before the telling node's purge has landed: still full, not left
        as if the notice were stale (three nodes' senders then stored the
        whole reserve); full after the purge lands and at the next poll.
        """
        reserve = self.node()
        reserve.told(True, "n1")
        self.successResultOf(reserve.released())  # a look right after the first
        self.assertTrue(reserve.full)
        self.ballast.release()  # the telling node's purge lands
        self.clock.advance(POLL)
        self.assertTrue(reserve.full)
        self.assertEqual(self.ballast.releases, 1)

    def test_told_then_told_of_room_before_a_poll(self):
        """
        Told of full mode, the ballast still seen, then told of room (the
        telling node released and wrote it again) within a poll: left, for
        the ballast is newer than the one seen.
        """
        reserve = self.node()
        reserve.stop()  # only the notices
        reserve.told(True, "n1")
        self.ballast.release()
        self.ballast.write(R)
        reserve.told(False, "n1")
        self.assertFalse(reserve.full)

    def test_told_is_idempotent(self):
        """Told while full already, or told of room while not full: nothing changes."""
        reserve = self.node()
        reserve.told(False, "n1")
        self.assertFalse(reserve.full)
        reserve.no_room("insufficient resources")
        why = reserve.why
        reserve.told(True, "n1")
        self.assertEqual((reserve.why, self.ballast.releases), (why, 1))
        reserve.told(False, "n1")  # the ballast is not back: still full
        self.assertTrue(reserve.full)

    def test_released_fires_after_the_release(self):
        """An acknowledgement refused before the release waits for it (L{Reserve.released})."""
        reserve = self.node()
        purge = defer.Deferred()  # the purge in flight
        self.ballast.release = lambda: purge
        reserve.no_room("insufficient resources")
        waited = reserve.released()
        self.assertNoResult(waited)
        purge.callback(self.ballast.last)
        self.successResultOf(waited)
        self.assertTrue(reserve.full)

    def test_metrics(self):
        """The reserve's size, full mode (0/1) and the refusals counted are Prometheus families."""
        reserve = self.node()

        def samples():
            return {s.name: s.value for family in reserve.collect_metrics() for s in family.samples}

        names = ("cairn_cluster_reserve_bytes", "cairn_cluster_reserve_full", "cairn_cluster_reserve_refused_total")
        self.assertEqual(samples(), dict(zip(names, (R, 0, 0))))
        reserve.no_room("insufficient resources")
        reserve.refuse()
        self.assertEqual(samples()["cairn_cluster_reserve_full"], 1)
        self.assertEqual(samples()["cairn_cluster_reserve_refused_total"], 1)

    def test_no_metrics_on_one_node_alone(self):
        """A node on SQLite exports no reserve metrics (its disk reserve has its own)."""
        from twisted.internet import reactor

        from cairn.service import make_node
        from tests.test_service import config_for

        exposition = make_node(config_for(self.mktemp()), reactor).metrics.exposition().decode()
        self.assertIn("cairn_disk_reserve_bytes", exposition)
        self.assertNotIn("cairn_cluster_reserve", exposition)

    def test_no_reserve(self):
        """CAIRN_CLUSTER_RESERVE=0: never full, nothing polled."""
        reserve = Reserve(self.ballast, 0, self.clock)
        reserve.begin(True)
        reserve.no_room("insufficient resources")
        reserve.told(True, "n1")
        self.assertFalse(reserve.full)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Jet:
    """What the stores' constructors and growth checks read of a L{cairn.cluster.connection.JetStream}."""

    def __init__(self, reserve, held=()):
        self.reserve = reserve
        self.prefix = "cairn"
        self.held = list(held)  # what a full store's look-up finds, per item (None: not held)

    def run(self, function, *args):
        return defer.succeed(self.held)

    def stream(self, name):
        return f"cairn_{name}"

    def subject(self, *parts):
        return ".".join(("cairn", *parts))


class StoreRefusalTests(unittest.TestCase):
    def setUp(self):
        clock = task.Clock()
        self.reserve = Reserve(FakeBallast(), R, clock, now=clock.seconds)
        self.reserve.begin(True)
        self.addCleanup(self.reserve.stop)
        self.reserve.no_room("insufficient resources")

    def test_mailbox_enqueue_refused(self):
        """A full node's mailbox refuses new messages, none held, unwritten (the service answers STORAGE_ERROR)."""
        store = JetStreamMailboxStore(_Jet(self.reserve, [None]))
        self.failureResultOf(store.enqueue([object()], 0.0, None), LowDiskSpace)
        self.assertEqual(self.reserve.refused, 1)

    def test_sync_publish_refused(self):
        """Likewise a sync update."""
        store = JetStreamSyncStore(_Jet(self.reserve, [None]))
        self.failureResultOf(store.publish([object()], 0.0, None), LowDiskSpace)

    def test_held_answered_duplicate(self):
        """A call holding a known item: that one DUPLICATE (with its seq), the new ones STORAGE_ERROR, one refusal."""
        held = [(SyncStatus.DUPLICATE, 4), None]
        store = JetStreamSyncStore(_Jet(self.reserve, held))
        results = self.successResultOf(store.publish([object(), object()], 0.0, None))
        self.assertEqual(results, [(SyncStatus.DUPLICATE, 4), (SyncStatus.STORAGE_ERROR, None)])
        self.assertEqual(self.reserve.refused, 1)

    def test_retry_wholly_held_not_a_refusal(self):
        """A retry of messages all held is DUPLICATE and not counted as refused (as L{guarded_batch})."""
        held = [(ForwardStatus.DUPLICATE, None)] * 2
        store = JetStreamMailboxStore(_Jet(self.reserve, held))
        self.assertEqual(self.successResultOf(store.enqueue([object(), object()], 0.0, None)), held)
        self.assertEqual(self.reserve.refused, 0)


class NoRoomTests(unittest.TestCase):
    def test_refusals_for_want_of_room_are_told(self):
        """L{Acks.on_no_room}: a server's limit (10023) and an account's (10002) are told; other refusals are not."""
        import asyncio

        from cairn.cluster import direct, pubacks
        from tests.test_cluster_direct import _ack, _PublishingNats, run

        async def go():
            nc = _PublishingNats()
            acks = pubacks.Acks(nc, timeout=5)
            told = []
            acks.on_no_room = told.append
            for code, description in [
                (10023, "insufficient resources"),
                (10071, "wrong last sequence"),
                (10002, "resource limits exceeded for account"),
            ]:
                future = await acks.publish("s", b"x", {})
                await nc.reply_cb(_ack(nc.published[-1][1], {"error": {"err_code": code, "description": description}}))
                with self.assertRaises(direct.PublishError):
                    await asyncio.wait_for(future, 10)
            return told

        self.assertEqual(run(go()), ["insufficient resources", "resource limits exceeded for account"])


class StalledTests(unittest.TestCase):
    def test_fail_fast_with_one_probe(self):
        """
        After a PubAck that never came, writes fail at once (not after the
        timeout) while one probe at a time asks; any answer ends it, and
        the stall (C{stalled_since}, /health) ends with a write stored.
        """
        import asyncio

        from cairn.cluster import pubacks
        from tests.test_cluster_direct import _ack, _PublishingNats, run

        async def go():
            nc = _PublishingNats()
            headers = []

            async def publish(subject, payload, reply=None, headers_=None, **kwargs):
                nc.published.append((subject, reply))
                headers.append(kwargs.get("headers", headers_))

            nc.publish = publish
            acks = pubacks.Acks(nc, timeout=0.05)
            first = await acks.publish("cairn.mbox.a", b"x", {})
            with self.assertRaises(TimeoutError):
                await asyncio.wait_for(first, 10)  # the guard: its own timeout fails it first
            issued = []
            second = await acks.publish("cairn.mbox.b", b"x", {}, issued=issued.append)
            self.assertIsInstance(second.exception(), pubacks.Stalled)  # at once, not sent
            third = await acks.publish("cairn.mbox.c", b"x", {})
            self.assertIsInstance(third.exception(), pubacks.Stalled)
            sent = list(nc.published)
            probe_reply = sent[-1][1]
            # One write, then one probe (to the unanswered subject, storing nothing); none for the third.
            self.assertEqual([subject for subject, _ in sent], ["cairn.mbox.a", "cairn.mbox.a"])
            self.assertEqual(headers[-1], pubacks.PROBE_HEADERS)
            self.assertEqual((acks.failed_fast, len(issued)), (2, 1))
            await nc.reply_cb(_ack(probe_reply, {"error": {"err_code": 10060, "description": "expected stream"}}))
            # The probe answered: writes are sent again, but /health stays degraded until one is stored
            # (a stream whose server cannot write may still answer a probe's header check).
            self.assertIsNotNone(acks.stalled_since)
            fourth = await acks.publish("cairn.mbox.d", b"x", {})
            self.assertFalse(fourth.done())  # sent, waiting for its PubAck
            self.assertEqual(nc.published[-1][0], "cairn.mbox.d")
            await nc.reply_cb(_ack(nc.published[-1][1], {"seq": 4}))
            self.assertIsNone(acks.stalled_since)
            return await fourth

        self.assertEqual(run(go()), 4)


class AcknowledgedAfterTheReleaseTests(unittest.TestCase):
    def store(self):
        """(clock, ballast, reserve, store): a mailbox store whose node keeps a reserve, not yet full."""
        clock = task.Clock()
        ballast = FakeBallast()
        reserve = Reserve(ballast, R, clock, now=clock.seconds)
        reserve.begin(True)
        self.addCleanup(reserve.stop)
        store = JetStreamMailboxStore(_Jet(reserve))
        store._depths = {}
        return clock, ballast, reserve, store

    def test_refused_acknowledgement_tried_again_after_the_release(self):
        """An acknowledgement refused for want of room (the node now full) is written again once the ballast is gone."""
        from cairn.mailbox.interfaces import StoreFull

        clock, ballast, reserve, store = self.store()
        calls = []

        def run(function, *args):
            calls.append(ballast.messages)
            if len(calls) == 1:
                reserve.no_room("insufficient resources")  # as the refused tombstone's PubAck does
                return defer.fail(StoreFull("JetStream unavailable (insufficient resources)"))
            return defer.succeed(([], {}, 0))

        store._run = run
        self.assertEqual(self.successResultOf(store.acknowledge("QmB", [1], 0.0, 60.0)), [])
        self.assertEqual(calls, [1, 0])  # the second write after the release

    def test_refused_again_after_the_release_tried_at_each_poll(self):
        """
        Refused again just after the release (at R3 the servers' usage
        figures lag it by seconds): tried at the reserve's next polls while
        full, not left to the delivery's 60 s sweep.
        """
        from cairn.cluster import mailbox_removal
        from cairn.mailbox.interfaces import StoreFull

        clock, ballast, reserve, store = self.store()
        calls = []

        def run(function, *args):
            calls.append(clock.seconds())
            if len(calls) == 1:
                reserve.no_room("resource limits exceeded for account")
            if len(calls) <= 3:
                return defer.fail(StoreFull("JetStream unavailable (resource limits exceeded for account)"))
            return defer.succeed(([], {}, 0))

        store._run = run
        d = store.acknowledge("QmB", [1], 0.0, 60.0)
        self.assertNoResult(d)
        self.assertEqual(calls, [0, 0])  # at once, then right after the release
        clock.advance(reserve.poll)
        self.assertNoResult(d)
        clock.advance(reserve.poll)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(calls, [0, 0, reserve.poll, 2 * reserve.poll])

        # Bounded: refused for good, it fails after ACK_RETRIES polls (the sweep's, then).
        store._run = lambda function, *args: defer.fail(StoreFull("JetStream unavailable (insufficient resources)"))
        d = store.acknowledge("QmB", [2], 0.0, 60.0)
        clock.pump([reserve.poll] * (mailbox_removal.ACK_RETRIES + 1))
        self.failureResultOf(d, StoreFull)

    def test_other_failures_not_retried(self):
        """Not full: a failed acknowledgement fails (the service's sweep retries it, as before)."""
        from cairn.mailbox.interfaces import StoreFull

        clock = task.Clock()
        reserve = Reserve(FakeBallast(), R, clock, now=clock.seconds)
        store = JetStreamMailboxStore(_Jet(reserve))
        store._run = lambda function, *args: defer.fail(StoreFull("not connected to NATS"))
        self.failureResultOf(store.acknowledge("QmB", [1], 0.0, 60.0), StoreFull)
