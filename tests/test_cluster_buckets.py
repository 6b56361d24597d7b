"""
Opening a KV bucket while another node makes it (L{cairn.cluster.common.open_bucket}):
on a replicated cluster the second create is refused while the first one's
bucket is not yet readable. Driven with a stand-in JetStream context on an
asyncio loop of the test's own; no NATS server.
"""

import asyncio
from types import SimpleNamespace

from nats.js.errors import BadRequestError, BucketNotFoundError
from twisted.trial import unittest

from cairn.cluster.common import kv_entries, open_bucket


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


class StandInKV:
    def __init__(self, keys, gone=()):
        self._keys, self.gone = keys, set(gone)

    async def keys(self):
        from nats.js.errors import NoKeysError

        if not self._keys:
            raise NoKeysError()
        return list(self._keys)

    async def get(self, key):
        from nats.js.errors import KeyDeletedError

        if key in self.gone:
            raise KeyDeletedError()
        return SimpleNamespace(value=key.encode())


class KVEntriesTests(unittest.TestCase):
    def test_entries(self):
        """Each key with its entry, in the bucket's order; an empty bucket is an empty list."""
        found = asyncio.run(kv_entries(StandInKV(["a", "b"])))
        self.assertEqual([(k, e.value) for k, e in found], [("a", b"a"), ("b", b"b")])
        self.assertEqual(asyncio.run(kv_entries(StandInKV([]))), [])

    def test_key_removed_meanwhile(self):
        """A key deleted between the listing and its read is left out, not an error that stops the load."""
        found = asyncio.run(kv_entries(StandInKV(["a", "b", "c"], gone=["b"])))
        self.assertEqual([k for k, _ in found], ["a", "c"])
