"""
The relay and pairing scenarios end to end with the node's stores on
JetStream: the trust store in the KV bucket (L{cairn.cluster.trust}) and
the relay's limits and byte counts in theirs (L{cairn.cluster.relay}),
each test on a fresh single nats-server. The mailbox and sync scenarios
over JetStream are in tests/test_cluster_mailbox.py and test_cluster_sync.py.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster.relay import KVRelayStore
from cairn.cluster.trust import KVTrustStore
from tests import _jetstream, test_relay_attached
from tests.test_pairing import PairingMixin
from tests.test_relay import RelayScenarioMixin


class JetStreamRelayHarness:
    """A L{tests.test_relay.RelayHarness} whose trust and relay stores are on one nats-server."""

    @defer.inlineCallbacks
    def make_trust(self):
        _, self.jet = yield _jetstream.single(self)
        trust = KVTrustStore(self.jet)
        self.addCleanup(trust.stop)
        yield trust.start()
        return trust

    def make_relay_store(self):
        return defer.succeed(KVRelayStore(self.jet))


class JetStreamRelayTests(JetStreamRelayHarness, RelayScenarioMixin, unittest.TestCase):
    """The relay scenarios (circuits, refusals, windows, close) with the stores on JetStream."""

    @defer.inlineCallbacks
    def test_byte_counts_reach_the_bucket(self):
        """A circuit's byte counts are written to the relay bucket on stop: a new store on it loads them."""
        alice, bob = self.peer(), self.peer()
        a, b, _, _ = yield self.circuit(alice, bob)
        yield self.exchange(a, b)
        counted = self.relay.accounts.bytes_sent[alice.peer_id]
        self.assertGreater(counted, 0)
        yield self.relay.stop()
        _, usage = yield KVRelayStore(self.jet).load()
        self.assertEqual(usage[alice.peer_id][0], counted)
        self.assertEqual(usage[bob.peer_id][1], counted)


class JetStreamAttachedRelayTests(JetStreamRelayHarness, test_relay_attached.AttachedScenarioTests):
    """The relay scenarios over attached circuits with the stores on JetStream."""


class JetStreamPairingTests(PairingMixin, unittest.TestCase):
    """The pairing flows (PSK, PIN, link, approval, unpair) with the trust store on JetStream."""

    @defer.inlineCallbacks
    def make_trust(self):
        _, self.jet = yield _jetstream.single(self)
        trust = KVTrustStore(self.jet)
        self.addCleanup(trust.stop)
        return trust
