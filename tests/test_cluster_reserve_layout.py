"""
Layout 3's reserve stream on a real nats-server: made by the set-up (an
older layout upgraded), its ballast written once by the first node that
finds it new, and a node finding it released starting in full mode.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.cluster import layout
from cairn.cluster.connection import JetStream, Settings
from tests import _jetstream

RESERVE = 300 * 1024


class ReserveLayoutTests(unittest.TestCase):
    @defer.inlineCallbacks
    def node(self, url, reserve=RESERVE):
        jet = JetStream(reactor, Settings((url,), 1, "cairn", reserve=reserve))
        self.addCleanup(jet.close)
        yield jet.connect()
        return jet

    @defer.inlineCallbacks
    def reserve_state(self, jet):
        state = (yield jet.run(jet.js.stream_info, "cairn_reserve")).state
        return state.messages, state.bytes, state.last_seq

    @defer.inlineCallbacks
    def test_layout_2_upgraded_and_ballast_written_once(self):
        """A layout-2 deployment gets the reserve stream and one ballast of the reserve's size, not one per node."""
        server, old = yield _jetstream.single(self)
        yield old.run(old.js.delete_stream, "cairn_reserve")
        yield old.run(old.kv["meta"].put, "layout", b"2")
        first = yield self.node(server.url)
        entry = yield first.run(first.kv["meta"].get, "layout")
        self.assertEqual(int(entry.value), layout.LAYOUT)
        messages, size, last = yield self.reserve_state(first)
        self.assertEqual(messages, 2)  # pieces of 256 KiB
        self.assertGreaterEqual(size, RESERVE)
        second = yield self.node(server.url)
        self.assertEqual((yield self.reserve_state(second)), (messages, size, last))
        self.assertFalse(first.reserve.full or second.reserve.full)
        self.assertEqual(first.health(), (True, None))

    @defer.inlineCallbacks
    def test_released_at_start_up_is_full(self):
        """The ballast released (a node restarted while full): the node starts full, and says so."""
        server, old = yield _jetstream.single(self)
        yield self.node(server.url)
        yield old.run(old.js.purge_stream, "cairn_reserve")
        jet = yield self.node(server.url)
        self.assertTrue(jet.reserve.full)
        ok, reason = jet.health()
        self.assertFalse(ok)
        self.assertIn("found released at start-up", reason)

    @defer.inlineCallbacks
    def test_raised_reserve_written_whole(self):
        """CAIRN_CLUSTER_RESERVE raised since the ballast was written: the next node to start writes it whole."""
        server, _ = yield _jetstream.single(self)
        yield self.node(server.url)
        raised = 3 * RESERVE
        jet = yield self.node(server.url, reserve=raised)
        messages, size, _ = yield self.reserve_state(jet)
        self.assertEqual(messages, 4)  # the 2 pieces of 256 KiB replaced, 2 more
        self.assertGreaterEqual(size, raised)
        self.assertFalse(jet.reserve.full)
        # Lowered again: the larger ballast is kept (more room, never less).
        lowered = yield self.node(server.url, reserve=RESERVE)
        self.assertEqual((yield self.reserve_state(lowered))[:2], (messages, size))
        self.assertFalse(lowered.reserve.full)
