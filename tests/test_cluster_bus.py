"""
The node bus seam (L{cairn.cluster.bus}): the single-node L{LocalBus} is
the direct call the services made before there were several nodes, and
the periodic re-check bounds what a missed wake-up costs.
"""

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cairn.cluster.bus import OWE, TOPIC, WAKE, INodeBus, LocalBus, NoRoute
from cairn.mailbox import client as mailbox
from tests._harness import eventually
from tests.test_mailbox import MailboxHarness


class LocalBusTests(unittest.TestCase):
    def test_interface(self):
        """LocalBus provides INodeBus."""
        self.assertTrue(verifyObject(INodeBus, LocalBus("n1")))

    def test_notices_are_direct_calls(self):
        """A notice reaches this node's callbacks at once, in order; one failing does not stop the others."""
        bus = LocalBus("n1")
        seen = []
        bus.subscribe(WAKE, lambda key: seen.append(("wake", key)))
        bus.subscribe(WAKE, lambda key: 1 / 0)
        bus.subscribe(WAKE, lambda key: seen.append(("wake again", key)))
        bus.subscribe(OWE, lambda key: seen.append(("owe", key)))
        bus.subscribe(TOPIC, lambda key: seen.append(("topic", key)))
        bus.wake("R")
        bus.owe("S")
        bus.fan_out("t")
        self.assertEqual(seen, [("wake", "R"), ("wake again", "R"), ("owe", "S"), ("topic", "t")])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unknown_kind(self):
        """Subscribing to a kind that does not exist is a programming error, said at once."""
        self.assertRaises(ValueError, LocalBus("n1").subscribe, "nope", print)

    def test_requests_to_itself_only(self):
        """This node answers its own requests; any other node is no route."""
        bus = LocalBus("n1")
        bus.serve("echo", lambda body: body[::-1])
        self.assertEqual(self.successResultOf(bus.request("n1", "echo", b"abc")), b"cba")
        self.failureResultOf(bus.request("n2", "echo", b"abc"), NoRoute)
        self.failureResultOf(bus.request("n1", "other", b"abc"), NoRoute)


class LostWakeups(LocalBus):
    """A bus that loses every wake-up (as a NATS core publish may be lost)."""

    def wake(self, recipient):
        pass


class _Missed:
    @defer.inlineCallbacks
    def forward_without_wake_up(self, recipient):
        """Alice forwards to C{recipient}; the node stores it, and its wake-up is lost."""
        alice, _ = self.peer()
        a = yield self.connect(alice)
        yield eventually(mailbox.forward(a, recipient.peer_id, b"no wake-up for this one"))


class RecheckTests(_Missed, MailboxHarness, unittest.TestCase):
    service_options = {"recheck": 5.0, "bus": LostWakeups(None)}

    @defer.inlineCallbacks
    def test_missed_wake_up_costs_latency_not_the_message(self):
        """A message whose wake-up was lost is delivered at the next re-check (on the node's clock)."""
        bob, bob_box = self.peer()
        yield self.connect(bob)
        yield self.forward_without_wake_up(bob)
        self.clock.advance(4.9)
        self.assertEqual(bob_box.messages, [])
        self.clock.advance(0.1)
        (got,) = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual(got[2], b"no wake-up for this one")

    @defer.inlineCallbacks
    def test_missed_notices_recheck_at_once(self):
        """When the bus says notices addressed here may have been lost, the service re-checks at once."""
        bob, bob_box = self.peer()
        yield self.connect(bob)
        yield self.forward_without_wake_up(bob)
        self.mailbox.bus.missed()
        (got,) = yield bob_box.wait(bob_box.messages, 1)
        self.assertEqual(got[2], b"no wake-up for this one")

    @defer.inlineCallbacks
    def test_recheck_stops_with_the_service(self):
        """Once the service stopped, its re-check is no longer scheduled."""
        self.assertTrue(self.mailbox._rechecker.running)
        yield self.mailbox.stop()
        self.assertFalse(self.mailbox._rechecker.running)


class NoRecheckTests(_Missed, MailboxHarness, unittest.TestCase):
    service_options = {"bus": LostWakeups(None)}

    @defer.inlineCallbacks
    def test_single_node_has_no_recheck(self):
        """Without a re-check (one node alone) nothing is scheduled: a lost wake-up waits for a session event."""
        bob, bob_box = self.peer()
        yield self.connect(bob)
        yield self.forward_without_wake_up(bob)
        self.clock.advance(3600)
        self.assertEqual(bob_box.messages, [])
        self.assertIsNone(self.mailbox._rechecker)


class _Where:
    """A presence stand-in: which nodes hold each peer."""

    def __init__(self, places, nodes):
        self.places, self._nodes = places, nodes
        self.others = []  # on_other_node's callbacks

    def on_other_node(self, callback):
        self.others.append(callback)

    def where(self, peer_id):
        return self.places.get(peer_id, ())

    def elsewhere(self, peer_id):
        return [n for n in self.places.get(peer_id, ()) if n != "n1"]

    def nodes(self):
        return dict.fromkeys(self._nodes, 0.0)


class AloneTests(unittest.SynchronousTestCase):
    """A node alone tells no other node of what it stores, and costs nothing per message for it (#14)."""

    def test_told_only_once_another_node_is_heard_of(self):
        """
        The mailbox calls the bus for each message stored (L{NatsBus.stored},
        which built a Held and asked presence each time) only once another
        node is heard of; alone, it calls nothing.
        """
        import types

        from cairn.cluster.nats_bus import NatsBus
        from cairn.cluster.presence import LocalPresence

        alone = types.SimpleNamespace(on_stored=None)
        NatsBus(None, LocalPresence(None, "n1"), "n1", mailbox=alone, clock=task.Clock())
        self.assertIsNone(alone.on_stored)
        store, presence = types.SimpleNamespace(on_stored=None), _Where({}, ("n1",))
        bus = NatsBus(None, presence, "n1", mailbox=store, clock=task.Clock())
        self.assertIsNone(store.on_stored)
        for heard in presence.others:  # another node's heartbeat
            heard()
        self.assertEqual(store.on_stored, bus.stored)


class NatsBusTests(unittest.TestCase):
    """Three L{NatsBus}es, each on its own connection to one NATS server, as three nodes."""

    @defer.inlineCallbacks
    def setUp(self):
        from cairn.cluster.nats_bus import NatsBus
        from tests import _jetstream
        from tests._harness import Conditions

        server, jet = yield _jetstream.single(self)
        self.clock = task.Clock()  # the buses' (owe notices are gathered on it)
        self.conditions = Conditions()
        self.seen = {name: [] for name in ("n1", "n2", "n3")}
        self.where = _Where({"R": ("n2",), "S": ("n1", "n3")}, ("n1", "n2", "n3"))
        self.buses = {}
        for name in self.seen:
            # One connection per node, as in a deployment.
            own = jet if name == "n1" else (yield _jetstream.connect(self, [server.url]))
            bus = NatsBus(own, self.where, name, clock=self.clock)
            for kind in (WAKE, OWE, TOPIC):
                bus.subscribe(
                    kind, lambda key, kind=kind, name=name: self.conditions.changed(self.seen[name].append((kind, key)))
                )
            yield bus.start()
            self.addCleanup(bus.stop)
            self.buses[name] = bus

    def test_interface(self):
        """NatsBus provides INodeBus."""
        self.assertTrue(verifyObject(INodeBus, self.buses["n1"]))

    @defer.inlineCallbacks
    def test_notices_reach_the_nodes_holding_the_peer(self):
        """wake/owe go to this node at once and to the nodes presence names; fan_out to every node."""
        from cairn.cluster.nats_bus import OWE_GATHER

        n1 = self.buses["n1"]
        n1.wake("R")
        self.assertEqual(self.seen["n1"], [(WAKE, "R")])  # this node's: a direct call
        n1.owe("S")
        self.clock.advance(OWE_GATHER)
        n1.fan_out("t")
        yield self.conditions.until(
            lambda: self.seen["n2"] == [(WAKE, "R"), (TOPIC, "t")] and self.seen["n3"] == [(OWE, "S"), (TOPIC, "t")],
            20,
        )
        self.assertEqual(self.seen["n1"], [(WAKE, "R"), (OWE, "S"), (TOPIC, "t")])  # never its own echo

    @defer.inlineCallbacks
    def test_dropped_notices_recheck_at_once(self):
        """Notices NATS dropped as a slow consumer on a node make that node's services re-check at once."""
        n2 = self.buses["n2"]
        missed = []
        n2.on_missed(lambda: self.conditions.changed(missed.append(None)))

        async def choke():
            n2._subscription._pending_bytes_limit = n2._subscription._pending_size = 1

        yield n2.jet.run(choke)
        self.buses["n1"].wake("R")
        self.buses["n1"].wake("R")
        yield self.conditions.until(lambda: missed, 20)
        self.assertEqual(self.seen["n2"], [])
        self.assertIn(len(missed), (1, 2))  # one per reactor turn's drops

    @defer.inlineCallbacks
    def test_stored_message_told_once(self):
        """
        A message stored for R is told to R's node from the NATS loop (a
        C{msg} notice, a wake-up there); the reactor's wake-up that follows
        goes to this node's callbacks only, not to R's node again. A
        malformed C{msg} notice is dropped.
        """
        from cairn.cluster import direct as D
        from cairn.wire import cbor

        n1, n2 = self.buses["n1"], self.buses["n2"]
        held = D.Held("cairn.mbox.R.S." + "00" * 16, 7, {D.STORED: "1.0", D.EXPIRES: "2.0"}, b"payload")
        yield eventually(n1.jet.run(n1.stored, "R", held), 20)
        n1.wake("R")
        yield self.conditions.until(lambda: self.seen["n2"] == [(WAKE, "R")], 20)
        n1.fan_out("t")  # after the wake-up, in n1's order: it would have come before
        yield self.conditions.until(lambda: self.seen["n2"][-1:] == [(TOPIC, "t")], 20)
        self.assertEqual(self.seen["n2"], [(WAKE, "R"), (TOPIC, "t")])
        self.assertEqual((n1.sent["msg"], n1.sent["wake"], n2.received["msg"]), (1, 0, 1))

        async def malformed():
            await n1.jet.nc.publish(n1._subject("n2", "msg"), b"not cbor")
            bad_id = {"r": "R", "seq": 8, "subject": "cairn.mbox.R.S.zz", "h": held.headers, "p": b""}
            await n1.jet.nc.publish(n1._subject("n2", "msg"), cbor.dumps(bad_id))

        yield eventually(n1.jet.run(malformed), 20)
        n1.fan_out("u")
        yield self.conditions.until(lambda: self.seen["n2"][-1:] == [(TOPIC, "u")], 20)
        self.assertEqual(self.seen["n2"], [(WAKE, "R"), (TOPIC, "t"), (TOPIC, "u")])
        self.assertEqual(n2.received["msg"], 3)

    @defer.inlineCallbacks
    def test_owe_gathered(self):
        """
        Owe notices for one sender are gathered for OWE_GATHER on the bus's
        clock into one per other node; this node's callbacks are called at
        once, each time.
        """
        from cairn.cluster.nats_bus import OWE_GATHER

        n1 = self.buses["n1"]
        for _ in range(3):
            n1.owe("S")
        self.assertEqual(self.seen["n1"], [(OWE, "S")] * 3)
        n1.fan_out("t")  # n1 publishes in order: were an owe sent, it would come first
        yield self.conditions.until(lambda: self.seen["n3"] == [(TOPIC, "t")], 20)
        self.assertEqual(n1.sent["owe"], 0)
        self.clock.advance(OWE_GATHER)
        n1.owe("S")  # a new gathering
        n1.fan_out("u")
        yield self.conditions.until(lambda: self.seen["n3"][-1:] == [(TOPIC, "u")], 20)
        self.assertEqual(self.seen["n3"], [(TOPIC, "t"), (OWE, "S"), (TOPIC, "u")])
        self.assertEqual(n1.sent["owe"], 1)
        yield n1.stop()  # what is still gathering is dropped (the re-check bounds it)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_request_answered_by_the_named_node(self):
        """A request to n2 is answered by n2's handler; one to a node nobody serves is NoRoute."""
        from cairn.cluster import nats_bus

        self.buses["n2"].serve("echo", lambda body: defer.succeed(b"n2:" + body))
        answer = yield eventually(self.buses["n1"].request("n2", "echo", b"hi"), 20)
        self.assertEqual(answer, b"n2:hi")
        self.patch(nats_bus, "REQUEST_TIMEOUT", 0.5)
        yield self.assertFailure(eventually(self.buses["n1"].request("n9", "echo", b"hi"), 20), NoRoute)
        yield self.assertFailure(eventually(self.buses["n1"].request("n3", "echo", b"hi"), 20), NoRoute)


class InPlaceTests(unittest.TestCase):
    """
    The buses say they receive only once the server has their subscription,
    on a server (L{tests._lazy_nats}) that registers a SUB no sooner than
    NATS must: before that, what another node sends them is dropped. So
    does the writes' subscription to the streams' leader elections.
    """

    @defer.inlineCallbacks
    def setUp(self):
        import nats
        from twisted.internet import reactor

        from cairn.cluster.connection import JetStream, Settings
        from tests._lazy_nats import LazyNats

        self.server = LazyNats()
        port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: eventually(self.server.all_lost(), 20))
        url = f"nats://127.0.0.1:{port.getHost().port}"
        self.jet = JetStream(reactor, Settings((url,), 1))
        self.jet.thread.start()
        self.addCleanup(self.jet.close)
        self.jet.nc = yield eventually(self.jet.run(nats.connect, servers=[url], allow_reconnect=False), 20)
        self.jet.state = "ok"  # connected; no layout on this server (the buses need none)

    @defer.inlineCallbacks
    def test_node_bus(self):
        """NatsBus.start fires once the server has the subscription to this node's subjects."""
        from cairn.cluster.nats_bus import NatsBus

        bus = NatsBus(self.jet, _Where({}, ("n2",)), "n2", clock=task.Clock())
        yield eventually(bus.start(), 20)
        self.addCleanup(bus.stop)
        self.assertIn("cairn.node.n2.>", self.server.subjects())

    @defer.inlineCallbacks
    def test_relay_bus(self):
        """NatsRelayBus.listen fires once the server has the subscription to this node's relay subjects."""
        from cairn.cluster.relay_bus import NatsRelayBus

        bus = NatsRelayBus(self.jet, "n2", lambda peer_id: None)
        yield eventually(bus.listen(print, print), 20)
        self.addCleanup(bus.stop)
        self.assertIn("cairn.relay.n2.*", self.server.subjects())

    @defer.inlineCallbacks
    def test_leader_elections(self):
        """The writes' start ends once the server has the subscription to the streams' elections."""
        from cairn.cluster.pubacks import LEADER_ELECTED, Acks

        acks = Acks(self.jet.nc, streams={"cairn_mbox": ("cairn.mbox.",)})
        yield eventually(self.jet.run(acks.start), 20)
        self.assertIn(LEADER_ELECTED + "*", self.server.subjects())
