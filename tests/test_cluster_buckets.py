"""
Opening a KV bucket while another node makes it (L{cairn.cluster.common.open_bucket}):
on a replicated cluster the second create is refused while the first one's
bucket is not yet readable. Driven with a stand-in JetStream context on an
asyncio loop of the test's own; no NATS server. Reading a bucket whole (L{cairn.cluster.kv_whole}) against
a stand-in watch that yields nats-py's marker early.
"""

import asyncio
from types import SimpleNamespace

from nats.js.errors import BadRequestError, BucketNotFoundError
from twisted.trial import unittest

from cairn.cluster.common import open_bucket
from cairn.cluster.kv_whole import kv_entries, watch_whole


class RacingJetStream:
    """Creates refused and lookups not found C{busy} times each, then the bucket is there."""

    def __init__(self, busy):
        self.busy = busy
        self.calls = []

    async def create_key_value(self, config):
        self.calls.append("create")
        if self.busy:
            raise BadRequestError(description="stream name already in use")
        return "made"

    async def key_value(self, bucket):
        self.calls.append("open")
        if self.busy:
            self.busy -= 1
            raise BucketNotFoundError()
        return "opened"


CONFIG = SimpleNamespace(bucket="cairn_presence")


class OpenBucketTests(unittest.TestCase):
    def test_created(self):
        js = RacingJetStream(0)
        self.assertEqual(asyncio.run(open_bucket(js, CONFIG, pause=0)), "made")
        self.assertEqual(js.calls, ["create"])

    def test_made_by_another_node_meanwhile(self):
        """Refused and not yet readable: tried again until one of the two works."""
        js = RacingJetStream(2)
        self.assertEqual(asyncio.run(open_bucket(js, CONFIG, pause=0)), "made")
        self.assertEqual(js.calls, ["create", "open", "create", "open", "create"])

    def test_gives_up(self):
        """Still neither after every attempt: the last error goes up."""
        js = RacingJetStream(10)
        self.assertRaises(BucketNotFoundError, asyncio.run, open_bucket(js, CONFIG, attempts=3, pause=0))
        self.assertEqual(len(js.calls), 6)


    def test_probed_once_opened(self):
        """
        With the connection given, the bucket is opened and then probed on its
        own subject until it answers (a new bucket may have no leader yet).
        """
        from tests.test_cluster_ready import _FakeNc

        js = RacingJetStream(0)
        nc = _FakeNc({"$KV.cairn_presence.probe": "KV_cairn_presence"}, silent=0)
        self.assertEqual(asyncio.run(open_bucket(js, CONFIG, nc, pause=0)), "made")
        self.assertEqual([subject for subject, _ in nc.requests], ["$KV.cairn_presence.probe"])


class StandInWatcher:
    """A nats-py KeyWatcher's C{updates}: what it yields, in order; then nothing (a timeout)."""

    def __init__(self, items, delivered=0):
        self.items = list(items)
        self.stopped = False
        info = SimpleNamespace(delivered=SimpleNamespace(stream_seq=delivered))

        async def consumer_info():
            return info

        self._sub = SimpleNamespace(consumer_info=consumer_info)

    async def updates(self, timeout=5.0):
        from nats.errors import TimeoutError

        if not self.items:
            raise TimeoutError()
        return self.items.pop(0)

    async def stop(self):
        self.stopped = True


def entry(key, revision, operation=None):
    return SimpleNamespace(key=key, value=key.encode(), revision=revision, operation=operation)


class StandInKV:
    """A bucket whose stream holds C{messages} up to C{last_seq}; its watch yields C{items}."""

    def __init__(self, items, messages, last_seq, removed=(), delivered=0):
        self._stream, self._pre = "KV_test", "$KV.test."
        self.watcher = StandInWatcher(items, delivered)
        self.state = SimpleNamespace(messages=messages, last_seq=last_seq)
        self.removed = set(removed)
        self.watched = False

    async def watchall(self, inactive_threshold=None):
        self.watched = True
        self.inactive_threshold = inactive_threshold
        return self.watcher

    # The JetStream context's side.

    async def stream_info(self, stream):
        assert stream == "KV_test"
        return SimpleNamespace(state=self.state)

    async def get_msg(self, stream, seq):
        from nats.js.errors import NotFoundError

        if seq in self.removed:
            raise NotFoundError()
        return SimpleNamespace(seq=seq)


def entries(kv):
    return asyncio.run(kv_entries(kv, kv))


class KVEntriesTests(unittest.TestCase):
    def test_entries(self):
        """Each key with its entry; the watch is stopped."""
        kv = StandInKV([entry("a", 1), entry("b", 2), None], messages=2, last_seq=2)
        self.assertEqual([(k, e.value) for k, e in entries(kv)], [("a", b"a"), ("b", b"b")])
        self.assertTrue(kv.watcher.stopped)
        self.assertEqual(kv.inactive_threshold, 5.0)  # the server drops its consumer soon

    def test_early_marker(self):
        """
        nats-py's end-of-initial-values marker before the values (the
        server's answer to the consumer's info overtook them): every key is
        still read. (C{KeyValue.keys()} answered none here: CI's empty relay
        store after a restart.)
        """
        kv = StandInKV([None, entry("a", 3), entry("b", 7)], messages=2, last_seq=7)
        self.assertEqual([k for k, _ in entries(kv)], ["a", "b"])

    def test_empty(self):
        """An empty bucket (even one that held keys once) is an empty list, without waiting."""
        kv = StandInKV([], messages=0, last_seq=9)
        self.assertEqual(entries(kv), [])

    def test_deleted_left_out(self):
        """A key whose last entry is a delete or purge is left out; a key's latest entry wins."""
        items = [entry("a", 1), entry("b", 4, "DEL"), entry("c", 5, "PURGE"), entry("a", 6)]
        kv = StandInKV(items, messages=4, last_seq=6)
        found = entries(kv)
        self.assertEqual([(k, e.revision) for k, e in found], [("a", 6)])

    def test_last_removed_meanwhile(self):
        """The stream's last message expired before the watch reached it: what came is all there is."""
        kv = StandInKV([entry("a", 1)], messages=2, last_seq=2, removed={2})
        self.assertEqual([k for k, _ in entries(kv)], ["a"])

    def test_last_dropped_by_the_library(self):
        """The last message is there and delivered, but the watch never yielded it: nothing more comes."""
        kv = StandInKV([entry("a", 1)], messages=2, last_seq=2, delivered=2)
        self.assertEqual([k for k, _ in entries(kv)], ["a"])

    def test_changes_after_left_to_the_watch(self):
        """C{watch_whole} stops at the stream's last message: what follows is the watch's."""
        kv = StandInKV([None, entry("a", 1), entry("b", 2), None, entry("a", 3)], messages=2, last_seq=2)
        watcher, initial = asyncio.run(watch_whole(kv, kv))
        self.assertEqual([e.revision for e in initial], [1, 2])
        self.assertEqual(watcher.items[-1].revision, 3)
