"""
The JetStream mailbox's per-peer overrides (L{cairn.cluster.mailbox_limits}):
one set or removed through another node applies here too, and no entry
older than the one held rolls an override back.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster.mailbox import JetStreamMailboxStore
from cairn.mailbox.interfaces import PeerLimits
from cairn.wire.constants import ForwardStatus
from tests import _jetstream
from tests._harness import Conditions
from tests.test_mailbox_store import LIMITS, B, item


class OverridesTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.conditions = Conditions()
        self.here, self.elsewhere = JetStreamMailboxStore(self.jet), JetStreamMailboxStore(self.jet)
        changed = self.here._override_changed
        self.here._override_changed = lambda *args: self.conditions.changed(changed(*args))
        for store in (self.here, self.elsewhere):
            yield store.start()

    @defer.inlineCallbacks
    def test_set_and_removed_elsewhere(self):
        """An override set through another node is enforced here; removed there, gone here (a restart was needed)."""
        yield self.elsewhere.set_limits(B, PeerLimits(1, None))
        yield self.conditions.until(lambda: B in self.here.limits, 5)
        self.assertEqual(self.here.limits, {B: PeerLimits(1, None)})
        results = yield self.here.enqueue([item(payload=b"a"), item(payload=b"b")], 1.0, LIMITS)
        self.assertEqual([r[0] for r in results], [ForwardStatus.STORED, ForwardStatus.MAILBOX_FULL])
        yield self.elsewhere.set_limits(B, PeerLimits(None, None))
        yield self.conditions.until(lambda: B not in self.here.limits, 5)

    @defer.inlineCallbacks
    def test_older_entry_replayed(self):
        """
        An entry older than the override held (a watch behind this
        store's own write, or replaying the bucket) changes nothing; nor
        does an older one after a removal.
        """
        yield self.here.set_limits(B, PeerLimits(1, None))
        yield self.here.set_limits(B, PeerLimits(2, None))
        newest = (yield self.jet.run(self.jet.kv["limits"].get, B)).revision

        def replayed(revision, limits):
            async def feed():  # on the NATS loop, as the watch does; applied before this call's answer
                self.here._override_seen(B, revision, limits)

            return self.jet.run(feed)

        yield replayed(newest - 1, PeerLimits(1, None))
        self.assertEqual(self.here.limits, {B: PeerLimits(2, None)})
        yield self.here.set_limits(B, PeerLimits(None, None))
        self.assertEqual(self.here.limits, {})
        yield replayed(newest, PeerLimits(2, None))
        self.assertEqual(self.here.limits, {})
