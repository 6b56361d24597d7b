"""
A real C{twistd -n cairn} node on JetStream whose NATS server's disk
really fills up: the nats-server's store on a tmpfs of a few MiB mounted
for the test, and another program filling that file system while the
node holds acknowledged messages (the cluster half of
L{tests.test_full_disk_twistd}).

What NATS does (nats-server 2.x, measured): the write fails with ENOSPC,
the stream logs a critical write error and answers no further publish
(no PubAck, no error) until the server is restarted, even once space is
free again. What the node must do: answer every forward it cannot store
with STORAGE_ERROR (after its PubAck timeout), never a false ForwardAck;
keep running without a traceback; serve again by itself once the NATS
server is back; and deliver exactly the messages it acknowledged, each
once. Needs root and permission to mount (skipped otherwise).
"""

import os
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected, uuid7
from cairn.management.openapi_schemas import SCHEMAS
from cairn.sync import client as sync
from cairn.sync.client import PublishRejected
from cairn.wire.constants import ForwardStatus, SyncStatus
from tests._cluster import Deployment
from tests._harness import Conditions, drop_all, eventually
from tests._nats import NatsServer
from tests.test_cluster_nodes import count_deliveries
from tests.test_diskspace import fill_file_system, small_tmpfs

MiB = 2**20
#: Incompressible payloads; the tmpfs holds a few hundred of them.
PAYLOAD = 8 * 1024
#: Messages acknowledged before the disk is filled.
STORED = 30
#: Seconds a sender waits before trying a refused message again (its own back-off, as a device would).
RETRY = 0.05


@defer.inlineCallbacks
def forward_until_refused(testcase, sender, recipient_id):
    """Forward until JetStream refuses one (STORAGE_ERROR, checked); fires with the acknowledged ids."""
    acked = []
    for _ in range(1000):  # 3 MiB hold a few hundred
        try:
            acked.append((yield testcase.forward(sender, recipient_id, os.urandom(PAYLOAD))))
        except ForwardRejected as e:
            testcase.assertEqual(e.code, ForwardStatus.STORAGE_ERROR)
            return acked
    testcase.fail("JetStream never refused")


@defer.inlineCallbacks
def forward_until_stored(testcase, sender, recipient_id, within=90):
    """
    Forward one message, sent again after each STORAGE_ERROR as a device
    would (after L{RETRY}), until it is acknowledged, for at most C{within} s.
    """
    deadline = reactor.seconds() + within
    while True:
        try:
            return (yield testcase.forward(sender, recipient_id, os.urandom(PAYLOAD)))
        except ForwardRejected as e:
            testcase.assertEqual(e.code, ForwardStatus.STORAGE_ERROR)
            if reactor.seconds() > deadline:
                testcase.fail(f"a forward was still refused after {within} s (the last refusal: {e})")
            yield task.deferLater(reactor, RETRY, lambda: None)


class _UncappedServer(NatsServer):
    """
    A nats-server told it may use more than its disk holds: by default it
    caps JetStream at 75 % of the free space it sees at start-up and
    refuses beyond that ("insufficient resources") before the disk is
    full; here another program fills the disk, so the writes meet ENOSPC.
    """

    def config(self):
        return super().config().replace("sync_interval: always", "sync_interval: always, max_file_store: 1G")


class _OneServer:
    """The one-server stand-in for L{tests._nats.NatsCluster} that L{Deployment} reads."""

    def __init__(self, server):
        self.servers = [server]

    @property
    def urls(self):
        return [self.servers[0].url]


class _OneNodeMixin:
    """A real twistd node on one nats-server (C{server_class}, its store under L{nats_directory})."""

    timeout = 300
    #: A reserve (CAIRN_CLUSTER_RESERVE) that the few MiB of these servers hold.
    reserve = 256 * 1024

    def nats_directory(self):
        return os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def setUp(self):
        self.server = self.server_class(self.nats_directory())
        self.addCleanup(self.server.kill)
        yield self.server.start()
        self.deployment = Deployment(
            self,
            _OneServer(self.server),
            os.path.abspath(self.mktemp()),
            replicas=1,
            settings={"CAIRN_CLUSTER_RESERVE": str(self.reserve)},
        )
        self.addCleanup(lambda: drop_all(self.deployment.connections))
        self.node = yield self.deployment.add_node()
        yield self.node.start()
        self.conditions = Conditions()


class NatsDiskFullTests(_OneNodeMixin, unittest.TestCase):
    server_class = _UncappedServer

    def nats_directory(self):
        self.mount_point = small_tmpfs(self, 8 * MiB)
        return os.path.join(self.mount_point, "nats")

    @defer.inlineCallbacks
    def forward(self, session, recipient, data):
        """Forward one message; fires with its id once acknowledged, or fails with L{ForwardRejected}."""
        mid = uuid7()
        yield eventually(mailbox.forward(session, recipient, data, mid), 90)
        return mid

    @defer.inlineCallbacks
    def test_nats_disk_full_refuses_then_recovers(self):
        """NATS's disk full: forwards and publishes STORAGE_ERROR, no false ack; NATS restarted: served, 0 lost."""
        deployment, node = self.deployment, self.node
        recipient = deployment.client()
        received, deliveries = [], []
        mailbox.set_inbox(recipient.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        count_deliveries(recipient, deliveries)
        recipient_session = yield deployment.paired(recipient, node)
        yield recipient_session.close()
        sender = yield deployment.paired(deployment.client(), node)
        acked = []
        for _ in range(STORED):
            acked.append((yield self.forward(sender, recipient.peer_id, os.urandom(PAYLOAD))))

        update_id = os.urandom(16)
        filler = fill_file_system(self, self.mount_point)
        refused = 0
        for _ in range(3):
            try:
                acked.append((yield self.forward(sender, recipient.peer_id, os.urandom(PAYLOAD))))
            except ForwardRejected as e:
                self.assertEqual(e.code, ForwardStatus.STORAGE_ERROR)
                refused += 1
        # The first may still land in a block's space already written; after it NATS stores nothing.
        self.assertGreaterEqual(refused, 2)
        code, health = yield node.api("GET", "/health")
        self.assertEqual((code, health["status"]), (200, "degraded"), health)
        self.assertIn("JetStream has stored no write since", health["reason"])
        self.assertIn("no PubAck within 30 s", health["reason"])
        with self.assertRaises(PublishRejected) as refusal:
            yield eventually(sync.sync_publish(sender, "notes", os.urandom(PAYLOAD), update_id), 90)
        self.assertEqual(refusal.exception.code, SyncStatus.STORAGE_ERROR)

        # Space freed; the stream serves again only once its server restarts.
        os.remove(filler)
        yield self.server.kill(signal.SIGTERM)
        yield self.server.start()
        for _ in range(5):  # refused while reconnecting: the sender tries again
            acked.append((yield forward_until_stored(self, sender, recipient.peer_id)))
        while True:
            try:
                seq = yield eventually(sync.sync_publish(sender, "notes", b"after", update_id), 90)
                break
            except PublishRejected as e:
                self.assertEqual(e.code, SyncStatus.STORAGE_ERROR)
                yield task.deferLater(reactor, RETRY, lambda: None)
        self.assertEqual(seq, 1)  # the refused update was not stored
        yield sender.close()

        yield deployment.connect(recipient, node)
        yield self.conditions.until(lambda: set(acked) <= set(received), 120).addErrback(lambda _: None)
        self.assertEqual(set(received), set(acked), "acknowledged messages lost, or unacknowledged ones delivered")
        self.assertEqual(len(received), len(set(received)), "a message was given to the application twice")
        code, health = yield node.api("GET", "/health")
        self.assertEqual((code, health["status"]), (200, "ok"), health)
        self.assertNotIn("Traceback", node.log)


class _LimitedServer(NatsServer):
    """A nats-server whose JetStream may store at most a few MiB (its own limit, not the disk's)."""

    def config(self):
        return super().config().replace("sync_interval: always", "sync_interval: always, max_file_store: 3M")


class NatsStorageLimitTests(_OneNodeMixin, unittest.TestCase):
    server_class = _LimitedServer

    @defer.inlineCallbacks
    def filled(self):
        """A recipient offline, a sender forwarding until JetStream refuses: (recipient, received, sender, acked)."""
        deployment, node = self.deployment, self.node
        recipient = deployment.client()
        received = []
        mailbox.set_inbox(recipient.peer, lambda sender, mid, data: self.conditions.changed(received.append(mid)))
        session = yield deployment.paired(recipient, node)
        yield session.close()
        sender = yield deployment.paired(deployment.client(), node)
        acked = yield forward_until_refused(self, sender, recipient.peer_id)
        return recipient, received, sender, acked

    forward = NatsDiskFullTests.forward

    @defer.inlineCallbacks
    def test_refused_and_said_by_health(self):
        """
        At NATS's storage limit: STORAGE_ERROR (no false ack), /health
        degraded naming the limit and the released reserve (the node is in
        full mode: L{cairn.cluster.reserve}); no traceback.
        """
        recipient, received, sender, acked = yield self.filled()
        code, health = yield self.node.api("GET", "/health")
        self.assertEqual((code, health["status"]), (200, "degraded"), health)
        self.assertIn("JetStream's storage limit reached", health["reason"])
        self.assertIn("insufficient resources", health["reason"])
        self.assertIn("CAIRN_CLUSTER_RESERVE", health["reason"])
        yield self.deployment.connect(recipient, self.node)
        yield self.conditions.until(lambda: set(acked) <= set(received), 60).addErrback(lambda _: None)
        self.assertEqual(sorted(set(received)), sorted(acked))
        self.assertNotIn("Traceback", self.node.log)

    @defer.inlineCallbacks
    def test_drained_at_the_storage_limit(self):
        """
        At NATS's storage limit the recipient's acknowledgements still
        commit, the mailbox empties and forwards are stored again (as the
        SQLite store's disk reserve does for a full disk).
        """
        recipient, received, sender, acked = yield self.filled()
        yield self.deployment.connect(recipient, self.node)
        yield self.conditions.until(lambda: set(acked) <= set(received), 60)

        def emptied():
            d = self.node.api("GET", "/mailbox")
            return d.addCallback(lambda answer: (answer[1]["messages"] == 0, answer[1]))

        deadline = reactor.seconds() + 60
        while reactor.seconds() < deadline:  # asked again after each answer, never on a timer
            ok, last = yield emptied()
            if ok:
                break
        else:
            self.fail(f"the delivered messages were never deleted (their acknowledgements not written): {last}")
        # Stored again once the node has seen the room (its poll of the reserve: a second or so).
        yield forward_until_stored(self, sender, recipient.peer_id)
        code, health = yield self.node.api("GET", "/health")
        self.assertEqual((code, health["status"]), (200, "ok"), health)
        self.assertEqual(health["cluster"]["reserve"], {"bytes": self.reserve, "full": False}, health)
        documented = SCHEMAS["Health"]["properties"]["cluster"]["properties"]  # /openapi.json says what it holds
        self.assertLessEqual(set(health["cluster"]), set(documented))
        self.assertEqual(set(health["cluster"]["reserve"]), set(documented["reserve"]["properties"]))
        self.assertIn("the reserve is kept again", self.node.log)
        self.assertNotIn("Traceback", self.node.log)

    @defer.inlineCallbacks
    def test_retries_of_what_is_held_are_duplicates_while_full(self):
        """
        While full, a sender's retry of a message or sync update already
        held is answered DUPLICATE (the update with its seq), as at the
        SQLite store's disk reserve; only what is new gets STORAGE_ERROR.
        """
        deployment, node = self.deployment, self.node
        recipient = deployment.client()
        session = yield deployment.paired(recipient, node)
        yield session.close()
        sender = yield deployment.paired(deployment.client(), node)
        update_id = os.urandom(16)
        self.assertEqual((yield eventually(sync.sync_publish(sender, "notes", b"held", update_id), 90)), 1)
        acked = yield forward_until_refused(self, sender, recipient.peer_id)
        code, health = yield node.api("GET", "/health")
        self.assertTrue(health["cluster"]["reserve"]["full"], health)

        again = yield eventually(mailbox.forward(sender, recipient.peer_id, os.urandom(PAYLOAD), acked[-1]), 90)
        self.assertEqual((again.message_id, again.duplicate), (acked[-1], True))
        with self.assertRaises(ForwardRejected) as refused:
            yield self.forward(sender, recipient.peer_id, os.urandom(PAYLOAD))
        self.assertEqual(refused.exception.code, ForwardStatus.STORAGE_ERROR)
        self.assertEqual((yield eventually(sync.sync_publish(sender, "notes", b"held", update_id), 90)), 1)
        with self.assertRaises(PublishRejected) as rejected:
            yield eventually(sync.sync_publish(sender, "notes", b"new", os.urandom(16)), 90)
        self.assertEqual(rejected.exception.code, SyncStatus.STORAGE_ERROR)
        self.assertNotIn("Traceback", node.log)
