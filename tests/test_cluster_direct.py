"""
Direct gets while no replica of the stream answers (503 no responders, as
during a stream leader election): tried again for a bounded time, then the
error (L{cairn.cluster.direct}). Driven with a stand-in NATS client on an
asyncio loop of the test's own; no NATS server.
"""

import asyncio
import json
from types import SimpleNamespace
from unittest import mock

from nats.errors import NoRespondersError
from twisted.trial import unittest

from cairn.cluster import direct


def _msg(headers, data=b""):
    return SimpleNamespace(headers=headers, data=data)


def _held(seq):
    return _msg({"Nats-Subject": f"mbox.r.{seq}", "Nats-Sequence": str(seq)}, b"m%d" % seq)


UNAVAILABLE = {"Status": "503"}


class _Sub:
    def __init__(self, cb):
        self.cb, self.answers = cb, []

    async def feed(self, answers):
        # As nats-py does: the replies go to the subscription's callback from a task of its own.
        for answer in answers:
            await self.cb(answer)

    async def next_msg(self, timeout):
        return self.answers.pop(0)

    async def unsubscribe(self):
        pass


class FakeNats:
    """A NATS client whose direct gets are answered from C{rounds}: one list of replies per request."""

    is_connected = True

    def __init__(self, rounds):
        self.rounds = list(rounds)
        self.requests = 0

    def new_inbox(self):
        return "_INBOX.x"

    async def subscribe(self, inbox, cb=None):
        self._sub = _Sub(cb)
        return self._sub

    async def publish(self, subject, payload, reply=None):
        self.requests += 1
        json.loads(payload)
        if self._sub.cb is None:
            self._sub.answers = list(self.rounds.pop(0))
        else:
            asyncio.get_running_loop().create_task(self._sub.feed(list(self.rounds.pop(0))))

    async def request(self, subject, payload, timeout):
        self.requests += 1
        (answer,) = self.rounds.pop(0)
        if answer is NoRespondersError:
            raise NoRespondersError
        return answer


def run(coroutine):
    return asyncio.run(coroutine)


class UnavailableTests(unittest.TestCase):
    def setUp(self):
        patcher = mock.patch.object(direct, "UNAVAILABLE_PAUSE", 0.0)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_batch_retried_after_503(self):
        """A batched direct get answered 503 is asked again and returns what the stream then holds."""
        end = _msg({"Status": "204", "Nats-Last-Sequence": "2"})
        nc = FakeNats([[_msg(UNAVAILABLE)], [_msg(UNAVAILABLE)], [_held(1), _held(2), end]])
        held, last = run(direct.direct_batch(nc, "S", 1, 10, "mbox.>"))
        self.assertEqual(([h.seq for h in held], last, nc.requests), ([1, 2], 2, 3))

    def test_single_gets_retried_after_no_responders(self):
        """A direct get by seq or by subject that finds no responders is asked again."""
        nc = FakeNats([[NoRespondersError], [_held(7)]])
        self.assertEqual(run(direct.direct_seq(nc, "S", 7)).seq, 7)
        nc = FakeNats([[_msg(UNAVAILABLE)], [NoRespondersError], [_held(9)]])
        self.assertEqual(run(direct.direct_last(nc, "S", "mbox.r.x")).seq, 9)
        self.assertEqual(nc.requests, 3)

    def test_bounded(self):
        """Past the bound the 503 is the read's error; other errors are not retried at all."""
        with mock.patch.object(direct, "UNAVAILABLE_FOR", 0.0):
            nc = FakeNats([[NoRespondersError], [_held(1)]])
            self.assertRaises(NoRespondersError, run, direct.direct_seq(nc, "S", 1))
            self.assertEqual(nc.requests, 1)
        nc = FakeNats([[_msg({"Status": "408", "Description": "Request Timeout"})], [_held(1)]])
        self.assertRaises(direct.ReadError, run, direct.direct_batch(nc, "S", 1, 10))
        self.assertEqual(nc.requests, 1)


class LargeBatchTests(unittest.TestCase):
    """A large read's replies, taken by a subscription callback."""

    def test_replies_in_order_until_the_end_of_batch(self):
        """In order, up to the end-of-batch status; as a small read's."""
        for large in (True, False):
            end = _msg({"Status": "204", "Nats-Last-Sequence": "3"})
            nc = FakeNats([[_held(1), _held(2), _held(3), end, _held(4)]])
            held, last = run(direct.direct_batch(nc, "S", 1, 10, "mbox.>", max_bytes=100, large=large))
            self.assertEqual(
                ([h.seq for h in held], [h.data for h in held], last), ([1, 2, 3], [b"m1", b"m2", b"m3"], 3)
            )

    def test_retried_after_503(self):
        """A large read answered 503 is asked again, as a small one is."""
        end = _msg({"Status": "204", "Nats-Last-Sequence": "1"})
        nc = FakeNats([[_msg(UNAVAILABLE)], [_held(1), end]])
        held, _ = run(direct.direct_batch(nc, "S", 1, 10, "mbox.>", large=True))
        self.assertEqual(([h.seq for h in held], nc.requests), ([1], 2))

    def test_silence_times_out(self):
        """Replies that stop (no end-of-batch) fail the read once none has come for C{timeout} seconds."""
        from nats.errors import TimeoutError as NatsTimeout

        nc = FakeNats([[_held(1)]])
        self.assertRaises(NatsTimeout, run, direct.direct_batch(nc, "S", 1, 10, timeout=0.01, large=True))
