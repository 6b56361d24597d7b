"""
The presence seam (L{cairn.cluster.presence}): L{LocalPresence} answers
from the local peer's sessions, as the node did before there were several.
"""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.cluster.presence import IPresence, LocalPresence
from tests._harness import ScenarioMixin, eventually


class LocalPresenceTests(ScenarioMixin, unittest.TestCase):
    def test_interface(self):
        """LocalPresence provides IPresence."""
        self.assertTrue(verifyObject(IPresence, LocalPresence(self.server, "n1")))

    @defer.inlineCallbacks
    def test_attached_sessions_only(self):
        """A peer is on this node while it has an attached session, and nowhere once it closed."""
        presence = LocalPresence(self.server, "n1")
        yield presence.start()
        client = self.make_client()
        self.assertIsNone(presence.locate(client.peer_id))
        session = yield self.connect(client)
        self.assertEqual(presence.locate(client.peer_id), "n1")
        self.assertEqual(presence.where(client.peer_id), ("n1",))
        self.assertEqual(presence.peers(), {client.peer_id: ("n1",)})
        self.assertEqual(presence.nodes(), {"n1": 0.0})
        session.close()
        yield eventually(self._until_gone(presence, client.peer_id))
        self.assertEqual(presence.peers(), {})
        yield presence.stop()

    def _until_gone(self, presence, peer_id):
        from tests._harness import Conditions

        conditions = Conditions()
        observer = type("O", (), {"session_closed": lambda _, s: conditions.changed(None)})()
        self.server.add_observer(observer)
        return conditions.until(lambda: presence.locate(peer_id) is None)
