"""
A device's sync cursor moved through two nodes at once (connected to both,
or during a failover): two JetStream sync stores on one NATS server, as two
nodes would be. This node's own cursor write is held after JetStream
stored it, while the other node moves the same cursor and this node's
watch applies that; then this node's answer comes. The cache keeps the
newer value: a write's answer applies in KV revision order like the
watch's entries (it applied its own older value over it, for good).
"""

import asyncio

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster.sync import JetStreamSyncStore
from cairn.cluster.sync_follow import topic_token
from tests import _jetstream
from tests._harness import Conditions
from tests.test_sync_store import LIMITS, B, item


class OwnWriteTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.here, self.elsewhere = JetStreamSyncStore(self.jet), JetStreamSyncStore(self.jet)
        self.conditions = Conditions()
        for store in (self.here, self.elsewhere):
            yield store.start()
            method = store._cursor_elsewhere
            store._cursor_elsewhere = lambda *a, m=method: self.conditions.changed(m(*a))
        yield self.elsewhere.publish([item() for _ in range(6)], 1.0, LIMITS)
        yield self.conditions.until(lambda: self.here.topics().get("notes") == self.elsewhere.topics()["notes"])
        yield self.here.subscribe(B, {"notes": 0})
        yield self.conditions.until(lambda: self.elsewhere.cursors() == {B: {"notes": 0}})

    def hold_own_write(self):
        """
        The next write to B's cursor key (this node's) is stored, then its
        answer held until the test releases it; returns C{(written, release)}.
        """
        publish, key = self.jet.js.publish, f".{B}.{topic_token('notes')}"
        state = {"held": None}

        async def held(subject, *args, **kwargs):
            answer = await publish(subject, *args, **kwargs)
            if state["held"] is None and subject.endswith(key):
                state["held"] = asyncio.get_running_loop().create_future()
                self.jet.thread.to_reactor(self.conditions.changed)
                await state["held"]
            return answer

        async def release():
            state["held"].set_result(None)

        self.patch(self.jet.js, "publish", held)
        return (lambda: state["held"] is not None), (lambda: self.jet.run(release))

    @defer.inlineCallbacks
    def moved_elsewhere_meanwhile(self, own_write, move, expected):
        """C{own_write()} here is held after it is stored; C{move()} elsewhere is applied here; then the answer."""
        written, release = self.hold_own_write()
        d = own_write()
        yield self.conditions.until(written)
        yield move()
        yield self.conditions.until(lambda: self.here.cursors().get(B) == expected)
        yield release()
        yield d
        yield self.here.flushed()
        self.assertEqual(self.here.cursors().get(B), expected)

    def test_raised_elsewhere_after_a_raise_here(self):
        """A cursor raised here to 3, then elsewhere to 5 before this node's answer: 5 stays."""
        return self.moved_elsewhere_meanwhile(
            lambda: self.here.set_cursor(B, "notes", 3),
            lambda: self.elsewhere.set_cursor(B, "notes", 5),
            {"notes": 5},
        )

    def test_raised_elsewhere_after_a_subscription_here(self):
        """A subscription here from 2, then the cursor raised elsewhere to 4 before this node's answer: 4 stays."""
        return self.moved_elsewhere_meanwhile(
            lambda: self.here.subscribe(B, {"notes": 2}),
            lambda: self.elsewhere.set_cursor(B, "notes", 4),
            {"notes": 4},
        )

    def test_subscribed_elsewhere_after_a_purge_here(self):
        """The device's cursors purged here, then it subscribes elsewhere before this node's answer: 1 stays."""
        return self.moved_elsewhere_meanwhile(
            lambda: self.here.purge(B),
            lambda: self.elsewhere.subscribe(B, {"notes": 1}),
            {"notes": 1},
        )
