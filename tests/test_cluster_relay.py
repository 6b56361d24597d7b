"""
The KV relay store (L{cairn.cluster.relay}) against a real nats-server:
the contract L{tests.test_relay_limits.StoreTests} checks on the other
stores, and byte counts from two writers adding up.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster.relay import KVRelayStore
from tests import _jetstream, test_relay_limits
from tests._nats import start_nats


class KVRelayStoreTests(unittest.TestCase):
    check = test_relay_limits.StoreTests.check

    @defer.inlineCallbacks
    def test_kv_store(self):
        """The KV store keeps limits and counts, and purges them."""
        _, jet = yield _jetstream.single(self)
        yield self.check(KVRelayStore(jet))

    @defer.inlineCallbacks
    def test_two_writers_add_up(self):
        """Byte counts flushed by two stores (two nodes) add up instead of overwriting each other."""
        _, jet = yield _jetstream.single(self)
        one, two = KVRelayStore(jet), KVRelayStore(jet)
        yield one.load()
        yield two.load()
        yield one.save_usage({"p": (10, 1)})
        yield two.save_usage({"p": (5, 2)})
        yield one.save_usage({"p": (30, 3)})
        _, usage = yield KVRelayStore(jet).load()
        self.assertEqual(usage, {"p": (35, 5)})


class JetStreamRestartTests(test_relay_limits.RestartTests):
    """A whole node on JetStream keeps relay limits and byte counts across a restart; unpairing forgets them."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.nats = yield start_nats(self)
        self.node_settings = {"cluster_nats": (self.nats.url,), "cluster_replicas": 1}

    @defer.inlineCallbacks
    def stored_peers(self):
        jet = yield _jetstream.connect(self, [self.nats.url])
        _, usage = yield KVRelayStore(jet).load()
        limits, _ = yield KVRelayStore(jet).load()
        return sorted(set(usage) | set(limits))
