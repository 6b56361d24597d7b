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


class _Session:
    def __init__(self, peer_id, session_id):
        self.remote_peer_id = peer_id
        self.session_id = session_id
        self.closed = None
        self.attached = True


class _Peer:
    """What presence reads of a L{Peer}: its sessions, and whether a session's peer is trusted."""

    def __init__(self):
        self.sessions = {}
        self.observers = []

    def add_observer(self, observer):
        self.observers.append(observer)

    def trusted(self, session):
        return True

    def attach(self, peer_id):
        session = _Session(peer_id, len(self.sessions).to_bytes(4, "big") + peer_id.encode())
        self.sessions[session.session_id] = session
        for observer in self.observers:
            observer.session_established(session)
        return session

    def close(self, session):
        session.closed, session.attached = "closed", False
        del self.sessions[session.session_id]
        for observer in self.observers:
            observer.session_closed(session)


class TwoNodes:
    """Two L{KVPresence}s on one NATS server, as two nodes, each on its own task.Clock."""

    @defer.inlineCallbacks
    def setUp(self):
        from twisted.internet import task

        from cairn.cluster.kv_presence import KVPresence
        from tests import _jetstream
        from tests._harness import Conditions

        _, self.jet = yield _jetstream.single(self)
        jet = self.jet
        self.conditions = Conditions()
        self.clocks, self.peers, self.presences = {}, {}, {}
        for name in ("n1", "n2"):
            clock, peer = task.Clock(), _Peer()
            presence = KVPresence(jet, peer, name, clock)
            applied = presence._apply
            presence._apply = lambda changes, applied=applied: self.conditions.changed(applied(changes))
            yield presence.start()
            self.addCleanup(presence.stop)
            self.clocks[name], self.peers[name], self.presences[name] = clock, peer, presence
        yield self.until(lambda: set(self.presences["n1"].nodes()) == {"n1", "n2"})

    def until(self, predicate):
        return self.conditions.until(predicate, 20)


class KVPresenceTests(TwoNodes, unittest.TestCase):
    def test_interface(self):
        """KVPresence provides IPresence."""
        self.assertTrue(verifyObject(IPresence, self.presences["n1"]))

    @defer.inlineCallbacks
    def test_peer_on_another_node(self):
        """A session attached on n2 is located on n2 from n1, and nowhere once closed."""
        here, there = self.presences["n1"], self.presences["n2"]
        session = self.peers["n2"].attach("PeerB")
        self.assertEqual(there.locate("PeerB"), "n2")
        yield self.until(lambda: here.locate("PeerB") == "n2")
        self.assertEqual(here.where("PeerB"), ("n2",))
        self.assertEqual(here.peers(), {"PeerB": ("n2",)})
        self.assertEqual(here.elsewhere("PeerB"), ["n2"])
        self.peers["n1"].attach("PeerB")
        self.assertEqual(here.where("PeerB"), ("n1", "n2"))
        self.assertEqual(here.elsewhere("PeerB"), ["n2"])  # never this node
        self.peers["n2"].close(session)
        yield self.until(lambda: here.where("PeerB") == ("n1",))
        self.assertEqual(here.elsewhere("PeerB"), [])

    @defer.inlineCallbacks
    def test_changes_dropped_by_a_slow_watch(self):
        """A session attached on n2, then closed, reaches n1 though n1's watch dropped both (a slow consumer)."""
        from cairn.cluster.kv_whole import kv_stream_and_prefix
        from tests import _jetstream

        here = self.presences["n1"]
        choked = yield _jetstream.choke(self.jet, kv_stream_and_prefix(here.kv)[0])
        self.assertEqual(choked, 2)  # both nodes' watches (one connection)
        session = self.peers["n2"].attach("PeerB")
        yield self.until(lambda: here.locate("PeerB") == "n2")
        self.assertEqual(set(here.nodes()), {"n1", "n2"})
        yield _jetstream.choke(self.jet, kv_stream_and_prefix(here.kv)[0])
        self.peers["n2"].close(session)
        yield self.until(lambda: here.where("PeerB") == ())
        self.assertEqual(here._watcher.rereads, 2)

    @defer.inlineCallbacks
    def test_other_node_callbacks(self):
        """on_other_node's callbacks are called at each heartbeat of another node, never for its own."""
        here, there = self.presences["n1"], self.presences["n2"]
        heard, own = [], []
        here.on_other_node(lambda: heard.append(1))
        there.on_other_node(lambda: own.append(1))
        self.clocks["n2"].advance(there.heartbeat)  # n2 beats: n1 hears it (n2's own watch too)
        yield self.until(lambda: heard)
        self.presences["n1"]._beating.stop()  # n1 is silent from here: n2 hears nothing more of it
        self.clocks["n2"].advance(there.heartbeat)
        yield self.until(lambda: len(heard) >= 2)
        self.assertEqual(own, [])

    @defer.inlineCallbacks
    def test_silent_node_is_gone(self):
        """A node whose heartbeat stops (killed) no longer counts after NODE_TIMEOUT on the reader's clock."""
        from cairn.cluster.kv_presence import NODE_TIMEOUT

        here = self.presences["n1"]
        self.peers["n2"].attach("PeerB")
        yield self.until(lambda: here.locate("PeerB") == "n2")
        self.presences["n2"]._beating.stop()  # as if killed: no heartbeat, no withdrawal
        self.clocks["n1"].advance(NODE_TIMEOUT - 0.5)
        self.assertEqual(here.locate("PeerB"), "n2")
        self.clocks["n1"].advance(1.0)
        self.assertIsNone(here.locate("PeerB"))
        self.assertEqual(here.elsewhere("PeerB"), [])
        self.assertEqual(set(here.nodes()), {"n1"})

    @defer.inlineCallbacks
    def test_clean_stop_withdraws_at_once(self):
        """A node that stops cleanly deletes its heartbeat: the others forget it without waiting."""
        here = self.presences["n1"]
        self.peers["n2"].attach("PeerB")
        yield self.until(lambda: here.locate("PeerB") == "n2")
        yield self.presences["n2"].stop()
        yield self.until(lambda: here.locate("PeerB") is None and set(here.nodes()) == {"n1"})

    @defer.inlineCallbacks
    def test_lost_write_made_good_at_the_next_heartbeat(self):
        """A departure whose delete was lost is corrected by the next heartbeat (re-assertion)."""
        from cairn.cluster.kv_presence import HEARTBEAT

        here, there = self.presences["n1"], self.presences["n2"]
        session = self.peers["n2"].attach("PeerB")
        # n2 reconciles against the bucket as its own watch shows it: wait for that too.
        yield self.until(lambda: here.locate("PeerB") == "n2" and "n2" in there._where.get("PeerB", ()))
        withdraw, there._withdraw = there._withdraw, lambda peer_id: None  # the delete is lost
        self.peers["n2"].close(session)
        there._withdraw = withdraw
        self.clocks["n2"].advance(HEARTBEAT)
        yield self.until(lambda: here.locate("PeerB") is None)


class StartTests(TwoNodes, unittest.TestCase):
    """A third node, n3, starts while n2 is dead (killed: its heartbeat and peer keys left in the bucket)."""

    @defer.inlineCallbacks
    def start_n3(self, at):
        """n3 starting at C{at} on its clock, n2 killed (its last heartbeat at 0 on its clock) with PeerB on it."""
        from twisted.internet import task

        from cairn.cluster.kv_presence import KVPresence

        self.peers["n2"].attach("PeerB")
        yield self.until(lambda: self.presences["n1"].locate("PeerB") == "n2")
        self.presences["n2"]._beating.stop()  # as if killed: no heartbeat, no withdrawal
        clock = task.Clock()
        clock.advance(at)
        n3 = KVPresence(self.jet, _Peer(), "n3", clock)
        # Its changes wake self.until too: a condition on n3 waited only for
        # n1's and n2's changes, and timed out when n3 applied the last one.
        applied = n3._apply
        n3._apply = lambda changes: self.conditions.changed(applied(changes))
        yield n3.start()
        self.addCleanup(n3.stop)
        return n3, clock

    @defer.inlineCallbacks
    def test_dead_before_the_start(self):
        """A heartbeat already older than NODE_TIMEOUT when read at start: its node is not counted, nor its peers."""
        from cairn.cluster.kv_presence import NODE_TIMEOUT

        n3, _ = yield self.start_n3(NODE_TIMEOUT + 5.0)
        self.assertEqual(set(n3.nodes()), {"n3"})
        self.assertIsNone(n3.locate("PeerB"))
        self.assertEqual((n3.elsewhere("PeerB"), n3.peers()), ([], {}))

    @defer.inlineCallbacks
    def test_counted_from_its_own_time(self):
        """Read at start 3 s old, a heartbeat counts until NODE_TIMEOUT after it was written, not after the start."""
        from cairn.cluster.kv_presence import NODE_TIMEOUT

        n3, clock = yield self.start_n3(3.0)
        self.assertEqual(set(n3.nodes()), {"n1", "n2", "n3"})
        self.assertEqual(n3.locate("PeerB"), "n2")
        self.assertEqual(n3.nodes()["n2"], 3.0)
        clock.advance(NODE_TIMEOUT - 3.0 + 0.5)
        self.assertIsNone(n3.locate("PeerB"))
        self.assertNotIn("n2", n3.nodes())

    @defer.inlineCallbacks
    def test_live_node_behind_is_seen_at_its_next_heartbeat(self):
        """A live node whose clock is far behind is not counted from the start's read, but from its next heartbeat."""
        n3, _ = yield self.start_n3(1000.0)
        self.assertNotIn("n1", n3.nodes())
        self.clocks["n1"].advance(self.presences["n1"].heartbeat)
        yield self.until(lambda: "n1" in n3.nodes())
        self.assertEqual(n3.nodes()["n1"], 0.0)

    @defer.inlineCallbacks
    def test_heartbeat_ahead_or_unreadable(self):
        """A heartbeat from a clock ahead, or saying no time, counts from the start (as every heartbeat did before)."""
        from cairn.cluster.kv_presence import NODE_TIMEOUT

        yield self.jet.run(self.presences["n1"].kv.put, "n.n8", b'{"at": 1e9}')
        yield self.jet.run(self.presences["n1"].kv.put, "n.n9", b"not json")
        n3, clock = yield self.start_n3(50.0)
        self.assertEqual(set(n3.nodes()), {"n3", "n8", "n9"})
        clock.advance(NODE_TIMEOUT + 0.5)
        self.assertEqual(set(n3.nodes()), {"n3"})
