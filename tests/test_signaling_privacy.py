"""
What a signaling server learns from a device (docs/protocol.md §23): a
device announces under a fresh throwaway key, so the server never sees
the device's identity, only a rendezvous id shared with a node.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.signaling import announce as codec
from cairn.signaling.client import discover
from tests._harness import eventually
from tests.test_signaling import NOW, ServerMixin, rid_between


class ThrowawayKeyTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_device_identity_not_announced(self):
        """The device's announce carries a throwaway key, a new one each time, and today's rendezvous id."""
        self.start_server()
        device, node = Identity.generate(), Identity.generate()
        seen = []
        for _ in range(2):
            routed = self.factory.routed
            found = discover(reactor, self.url, device, node.public_key, clock=self.clock)
            # A fake node picks the announce up: the server routes it then.
            watcher = yield self.connect()
            watcher.sendMessage(
                codec.encode(node, ["tcp://n:7400"], [rid_between(node, device, NOW)], int(NOW), 0), isBinary=True
            )
            seen.append((yield eventually(routed)))
            self.assertEqual((yield eventually(found)), ["tcp://n:7400"])
        for announced in seen:
            self.assertNotEqual(announced.identity, device.public_key)
            self.assertNotEqual(announced.peer_id, device.peer_id)
            self.assertEqual(announced.addresses, ())
        self.assertEqual([a.rendezvous for a in seen], [(rid_between(node, device, NOW),)] * 2)
        self.assertNotEqual(seen[0].identity, seen[1].identity)
