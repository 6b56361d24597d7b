"""
The JetStream layout (L{cairn.cluster.connection}): set up idempotently,
versioned in the C{<prefix>_meta} bucket, a newer one refused with one line.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.cluster.connection import JetStream, Settings
from cairn.cluster.layout import LAYOUT, LayoutError
from tests import _jetstream


class LayoutTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_idempotent_and_versioned(self):
        """A second node sets the same layout up again without error; the layout version is recorded."""
        server, jet = yield _jetstream.single(self)
        again = yield _jetstream.connect(self, [server.url])
        entry = yield again.run(again.kv["meta"].get, "layout")
        self.assertEqual(int(entry.value), LAYOUT)
        names = yield again.run(again.js.streams_info)
        self.assertIn("cairn_mbox", {s.config.name for s in names})

    @defer.inlineCallbacks
    def test_newer_layout_refused(self):
        """A layout newer than this node's is refused with one line naming what to do, and nothing is changed."""
        server, jet = yield _jetstream.single(self)
        yield jet.run(jet.kv["meta"].put, "layout", str(LAYOUT + 1).encode())
        other = JetStream(reactor, Settings((server.url,), 1, "cairn"))
        other.thread.start()
        self.addCleanup(other.close)
        with self.assertRaises(LayoutError) as caught:
            yield other.run(other._connect)
        self.assertTrue(caught.exception.permanent)
        self.assertIn(f"is version {LAYOUT + 1}, newer than this node's {LAYOUT}", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    @defer.inlineCallbacks
    def test_prefixes_are_separate(self):
        """Two deployments with different prefixes share one NATS server without seeing each other's streams."""
        server, jet = yield _jetstream.single(self)
        other = yield _jetstream.connect(self, [server.url], prefix="other")
        self.assertEqual(other.stream("mbox"), "other_mbox")
        names = yield other.run(other.js.streams_info)
        self.assertTrue({"cairn_mbox", "other_mbox"} <= {s.config.name for s in names})
