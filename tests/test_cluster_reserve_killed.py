"""
A node killed (SIGKILL) in the middle of a burial
(L{cairn.cluster.mailbox_room}): the shape of
L{tests.test_cluster_reserve_over} -- an R3 account's limit lowered below
what the mailbox alone holds, every tombstone refused -- with two real
C{twistd -n cairn} nodes. The sender stays on node 2; the recipient's
acknowledgements go through node 1, which is killed as soon as a record
of owed removals (a consumer C{owed-*} of the reserve stream) exists, as
seen from outside through a NATS connection of the test's own. The
recipient then comes back on node 2, or on node 1 restarted.

What must hold: every acknowledged message delivered at least once and
to the application once (the client drops a (sender, id) it has seen:
L{cairn.mailbox.replay}); none that node 1 removed (its message gone
from the stream when it died) delivered again; every DELIVERED receipt
reaches the sender; the mailboxes empty, the records gone, full mode
left and forwards stored again, no traceback. A record whose node died
is finished by another only after L{cairn.cluster.mailbox_room.OTHERS_AFTER}
(30 s; a real process has no setting for it, so the test waits it out).
"""

import asyncio
import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial import unittest

from cairn.cluster import direct as D
from cairn.cluster.common import KIND
from cairn.cluster.loop import AsyncioThread
from cairn.cluster.mailbox_room import KEY, OWED
from cairn.mailbox import client as mailbox
from cairn.mailbox import messages
from cairn.wire.constants import MessageType, ReceiptStatus
from tests import test_cluster_reserve_over as over
from tests._cluster import Deployment
from tests._harness import Conditions, drop_all, eventually
from tests._nats import Account, start_nats_cluster
from tests.test_cluster_full_disk import forward_until_refused, forward_until_stored
from tests.test_cluster_nodes import count_deliveries

log = Logger()

#: Seconds a wait for the mailbox to drain may take: another node's record is finished after 30 s.
WITHIN = 180


def count_receipts(peer, into):
    """Record the message id and status of every ForwardReceipt entry C{peer} receives, before its own dedup."""
    inner = peer.handler_for(MessageType.FORWARD_RECEIPT)

    def counting(session, body):
        into.extend((message_id, status) for message_id, _, _, status, _ in messages.parse_receipts(body))
        inner(session, body)

    peer.register_handler(MessageType.FORWARD_RECEIPT, counting)


class Outside:
    """The test's own NATS connection (on an asyncio thread of its own): what the streams hold, seen from outside."""

    def __init__(self, urls):
        self.urls = urls
        self.thread = AsyncioThread(reactor, name="test-nats")
        self.nc = self.js = None

    def start(self):
        self.thread.start()
        return self.thread.run(self._connect)

    async def _connect(self):
        import nats

        self.nc = await nats.connect(servers=self.urls, allow_reconnect=False)
        self.js = self.nc.jetstream(timeout=10)

    def stop(self):
        d = self.thread.run(self._close) if self.nc is not None else defer.succeed(None)
        return d.addBoth(lambda _: self.thread.stop())

    async def _close(self):
        await self.nc.close()

    def first_record(self, within):
        """Fires with the names of the records of owed removals once there is one (asked again after each answer)."""
        return self.thread.run(self._first_record, within)

    async def _first_record(self, within):
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            owed = [name for name in await self._names() if name.startswith(OWED)]
            if owed:
                return owed
        raise AssertionError(f"no record of owed removals within {within} s")

    def kill_once_deleted(self, pid, within):
        """
        SIGKILL C{pid} (from this thread: no hop to the reactor first) once
        a record of owed removals exists whose every message is deleted (its
        burial's step 2 done), asked again after each answer; fires with the
        records seen then.
        """
        return self.thread.run(self._kill_once_deleted, pid, within)

    async def _kill_once_deleted(self, pid, within):
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            records = await self._records()
            for entries in records.values():
                if entries and not await self._held([subject for _, subject, _, _ in entries]):
                    os.kill(pid, signal.SIGKILL)
                    return records
        raise AssertionError(f"no burial's messages deleted within {within} s")

    async def _names(self):
        # The names alone (the meta layer answers): a list of the consumers' infos asks each consumer's
        # leader and waited 4 s for one just created (measured), long after its node had gone on.
        answer = await self.nc.request("$JS.API.CONSUMER.NAMES.cairn_reserve", b"{}", timeout=10)
        return json.loads(answer.data).get("consumers") or []

    def records(self):
        """Fires with C{{name: [[seq, subject, receipt owed, headers], ...]}} of every record of owed removals."""
        return self.thread.run(self._records)

    async def _records(self):
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import NotFoundError

        records = {}
        for name in await self._names():
            if name.startswith(OWED):
                try:
                    info = await self.js.consumer_info("cairn_reserve", name, timeout=2)
                except NotFoundError:
                    continue  # paid and deleted meanwhile
                except NatsTimeout:
                    # Seen: a record whose info no server answers (nor lists: the settle's list misses it).
                    records[name] = []
                    continue
                records[name] = json.loads(info.config.metadata[KEY])
        return records

    def listed(self):
        """Fires with what JetStream's consumer list (what a node's settle reads) answers: names listed, missing."""
        return self.thread.run(self._listed)

    async def _listed(self):
        answer = json.loads((await self.nc.request("$JS.API.CONSUMER.LIST.cairn_reserve", b"{}", timeout=10)).data)
        return [c["name"] for c in answer.get("consumers") or []], answer.get("missing")

    def held(self, subjects):
        """Fires with the subjects of C{subjects} whose last message is a message (not deleted, no tombstone)."""
        return self.thread.run(self._held, subjects)

    async def _held(self, subjects):
        held = set()
        for subject in subjects:
            last = await D.leader_last(self.nc, self.js, "cairn_mbox", subject)
            if last is not None and last.headers.get(KIND) is None:
                held.add(subject)
        return held


class KilledInABurialMixin:
    timeout = 600
    reserve = over.OverTheLimitTests.reserve
    account_max_file = over.OverTheLimitTests.account_max_file
    lowered_max_file = over.OverTheLimitTests.lowered_max_file
    #: When node 1 dies: C{"recorded"}, its first record written and nothing it sent after reaching NATS
    #: (its deletions among them); C{"deleted"}, once a record's messages are all deleted.
    kill_at = "recorded"
    #: Whether node 1 is started again after its death (and the recipient comes back to it).
    restart = False

    @defer.inlineCallbacks
    def setUp(self):
        self.account = Account(self.account_max_file)
        self.nats = yield start_nats_cluster(self, account=self.account, advertise=False)
        self.deployment = Deployment(
            self,
            self.nats,
            os.path.abspath(self.mktemp()),
            replicas=3,
            settings={"CAIRN_CLUSTER_RESERVE": str(self.reserve)},
        )
        self.addCleanup(lambda: drop_all(self.deployment.connections))
        if os.environ.get("CAIRN_TEST_SHOW"):
            self.addCleanup(self.deployment.show_logs)
        self.node1 = yield self.deployment.add_node(proxied=True)
        self.node2 = yield self.deployment.add_node()
        for node in self.deployment.nodes:  # one at a time: the first sets the layout up
            yield node.start()
        self.outside = Outside(self.nats.urls)
        self.addCleanup(self.outside.stop)
        yield self.outside.start()
        self.conditions = Conditions()

    forward = over.OverTheLimitTests.forward
    lower_the_limit = over.OverTheLimitTests.lower_the_limit

    @defer.inlineCallbacks
    def health(self, node):
        code, health = yield node.api("GET", "/health")
        self.assertEqual(code, 200, health)
        return health

    @defer.inlineCallbacks
    def healthy(self, node):
        """C{node}'s /health once it says ok (asked again after each answer, for at most L{WITHIN} s), or its last."""
        deadline = reactor.seconds() + WITHIN
        while True:
            health = yield self.health(node)
            if health["status"] == "ok" or reactor.seconds() > deadline:
                return health

    @defer.inlineCallbacks
    def emptied(self, node):
        """Fires once C{node}'s C{/mailbox} says 0 messages (asked again after each answer, for at most L{WITHIN} s)."""
        deadline = reactor.seconds() + WITHIN
        while reactor.seconds() < deadline:
            code, last = yield node.api("GET", "/mailbox")
            if code == 200 and last["messages"] == 0:
                return
        records = yield self.outside.records()
        listed = yield self.outside.listed()
        self.fail(f"{node.name}'s mailbox never emptied: {last}; records {list(records)}; listed {listed}")

    @defer.inlineCallbacks
    def kill_in_a_burial(self, recipient):
        """The recipient connects to node 1, which is killed in a burial (L{kill_at}); fires with the records left."""
        deployment, node1 = self.deployment, self.node1
        if self.kill_at == "recorded":
            held_back = deployment.hold(node1, b"CREATE.cairn_reserve." + OWED.encode())
            yield deployment.connect(recipient, node1)
            yield eventually(held_back, 120)
            seen = yield self.outside.first_record(30)
            yield node1.kill()
        else:
            killing = self.outside.kill_once_deleted(node1.proc.transport.pid, 120)
            yield deployment.connect(recipient, node1)
            seen = yield eventually(killing, 130)
            yield node1.kill()
        records = yield self.outside.records()
        self.assertTrue(set(seen) <= set(records), (seen, records))
        return records

    @defer.inlineCallbacks
    def test_killed_in_a_burial(self):
        """
        Node 1 killed in a burial: every acknowledged message reaches the
        application once, none node 1 removed is delivered again, every
        DELIVERED receipt reaches the sender once, the mailboxes empty, the
        records go, and forwards are stored again.
        """
        deployment, node1, node2 = self.deployment, self.node1, self.node2
        recipient, received, deliveries = deployment.client(), [], []
        mailbox.set_inbox(recipient.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        count_deliveries(recipient, deliveries)
        yield (yield deployment.paired(recipient, node1)).close()
        sender = yield deployment.paired(deployment.client(), node2)
        receipts, wire_receipts = [], []
        mailbox.set_receipts(sender.local, lambda event: self.conditions.changed(receipts.append(event)))
        count_receipts(sender.local, wire_receipts)
        acked = yield forward_until_refused(self, sender, recipient.peer_id)
        health = yield self.health(node2)
        self.assertEqual(health["cluster"]["reserve"], {"bytes": self.reserve, "full": True}, health)
        yield self.lower_the_limit()

        records = yield self.kill_in_a_burial(recipient)
        # What node 1 left, read before anyone acts on it: its records, and the messages still held.
        prefix = f"cairn.mbox.{recipient.peer_id}.{sender.local.peer_id}."
        subjects = {prefix + mid.hex(): mid for mid in acked}
        held = yield self.outside.held(subjects)
        removed = {subjects[s] for s in set(subjects) - held}
        recorded = {subject for entries in records.values() for _, subject, _, _ in entries}
        report = dict(
            kill_at=self.kill_at,
            restart=self.restart,
            acked=len(acked),
            records=len(records),
            recorded=len(recorded),
            recorded_held=len(recorded & held),
            removed=len(removed),
            delivered_before=len(deliveries),
        )
        if self.kill_at == "recorded":  # its deletions never reached NATS
            self.assertEqual((len(records), removed, recorded <= held), (1, set(), True), report)
        else:
            self.assertTrue(removed, report)
        mark = len(deliveries)

        if self.restart:
            yield deployment.heal(node1)
            yield node1.start()
        yield deployment.connect(recipient, node1 if self.restart else node2)
        yield self.conditions.until(lambda: set(acked) <= set(received), WITHIN).addErrback(lambda _: None)
        self.assertEqual(sorted(set(received)), sorted(acked), "acknowledged messages lost, or others delivered")
        self.assertEqual(len(received), len(acked), "a message was given to the application twice")
        nodes = [node1, node2] if self.restart else [node2]
        for node in nodes:
            yield self.emptied(node)

        delivered = lambda: {r.message_id for r in receipts if r.status == ReceiptStatus.DELIVERED}  # noqa: E731
        yield self.conditions.until(lambda: delivered() >= set(acked), WITHIN).addErrback(lambda _: None)
        self.assertEqual(delivered(), set(acked))
        self.assertEqual(len(receipts), len(acked), "a receipt was given to the application twice")

        try:
            yield forward_until_stored(self, sender, recipient.peer_id, within=WITHIN)
        except self.failureException as e:
            # Failed once in CI (the restarted variant), not in 5 runs here: what each node says then.
            healths = []
            for node in nodes:
                healths.append((yield self.health(node)))
            records, listed = (yield self.outside.records()), (yield self.outside.listed())
            self.fail(f"{e}; health {healths}; records {records}; listed {listed}")
        self.assertEqual((yield self.outside.records()), {})
        for node in nodes:
            # A node other than the one that stored may learn the ballast is
            # back a moment later (its watch): asked again until then (failed
            # once in a full run under load: node 1, restarted, still full).
            health = yield self.healthy(node)
            self.assertEqual(health["status"], "ok", health)
            self.assertEqual(health["cluster"]["reserve"], {"bytes": self.reserve, "full": False}, health)
        for node in deployment.nodes:
            self.assertNotIn("Traceback", node.log)
        self.assertIn("owed tombstones written", node1.log + node2.log)
        report.update(
            delivered_again=len(deliveries) - len({mid for mid, _ in deliveries}),
            recorded_delivered_again=len({mid for mid, _ in deliveries[mark:]} & {subjects[s] for s in recorded}),
            wire_receipts=len(wire_receipts),
        )
        log.info("killed in a burial: {report}", report=report)
        # Checked last: seen (burial26) coming after the rest, from node 2's read-ahead (the watch's payloads).
        again = {mid for mid, _ in deliveries[mark:] if mid in removed}
        self.assertEqual(len(again), 0, f"messages node 1 removed were delivered again: {report}")


class KilledOnceRecordedTests(KilledInABurialMixin, unittest.TestCase):
    """Node 1 dies with its first record written, before its deletions; the recipient comes back on node 2."""


class KilledOnceRecordedRestartedTests(KilledInABurialMixin, unittest.TestCase):
    """Node 1 dies with its first record written, before its deletions; restarted, the recipient comes back to it."""

    restart = True


class KilledOnceDeletedTests(KilledInABurialMixin, unittest.TestCase):
    """Node 1 dies after a burial's deletions; the recipient comes back on node 2."""

    kill_at = "deleted"


class KilledOnceDeletedRestartedTests(KilledInABurialMixin, unittest.TestCase):
    """Node 1 dies after a burial's deletions, is started again and the recipient comes back to it."""

    kill_at = "deleted"
    restart = True
