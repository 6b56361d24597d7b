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
from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster import direct, pubacks


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


class _PublishingNats:
    """A NATS client that records publishes and hands the test the PubAck subscription's callback."""

    def __init__(self):
        self.published = []  # (subject, reply)
        self.reply_cb = None
        self.callbacks = {}  # subject -> callback, every subscription

    def new_inbox(self):
        return "_INBOX.acks"

    async def subscribe(self, subject, cb):
        self.callbacks[subject] = cb
        if subject.startswith("_INBOX."):
            self.reply_cb = cb

    async def publish(self, subject, payload, reply=None, headers=None):
        self.published.append((subject, reply))


def _ack(reply, answer, headers=None):
    return SimpleNamespace(subject=reply, headers=headers, data=json.dumps(answer).encode())


async def _failures(futures, error):
    """The messages of the C{error}s that C{futures} failed with (they have failed already)."""
    failed = []
    for future in futures:
        try:
            await asyncio.wait_for(future, 10)  # a guard
        except error as e:
            failed.append(str(e))
    return failed


class AcksTests(unittest.TestCase):
    """L{pubacks.Acks}: pipelined publishes, each answered by its own PubAck, one timer for all."""

    def test_answers_matched_to_their_publishes(self):
        """PubAcks answered out of order reach their own publishes; refusals fail theirs."""

        async def go():
            nc = _PublishingNats()
            acks = pubacks.Acks(nc, timeout=30)
            futures = [await acks.publish(f"s.{i}", b"x", {}) for i in range(4)]
            replies = [reply for _, reply in nc.published]
            await nc.reply_cb(_ack(replies[2], {"seq": 12}))
            await nc.reply_cb(_ack(replies[0], {"seq": 10}))
            await nc.reply_cb(_ack(replies[1], {"error": {"err_code": 10071, "description": "wrong last sequence"}}))
            await nc.reply_cb(_ack(replies[3], {}, headers={"Status": "503"}))
            outcomes = []
            for future in futures:
                try:
                    outcomes.append(await future)
                except direct.PublishError as e:
                    outcomes.append(e.err_code)
            return outcomes, len(acks._futures)

        self.assertEqual(run(go()), ([10, 10071, 12, 503], 0))

    def test_unanswered_publishes_time_out(self):
        """
        A publish with no PubAck fails with TimeoutError once its time is
        up, one answered meanwhile does not, and a publish made after the
        timer fired is timed too.
        """

        async def go():
            nc = _PublishingNats()
            acks = pubacks.Acks(nc, timeout=0.01)
            lost = await acks.publish("s.1", b"x", {})
            answered = await acks.publish("s.2", b"x", {})
            await nc.reply_cb(_ack(nc.published[1][1], {"seq": 2}))
            outcomes = [await answered]
            for future in (lost, await acks.publish("s.3", b"x", {})):
                try:
                    await asyncio.wait_for(future, 10)  # a guard: the timeout fails it long before
                except TimeoutError as e:
                    outcomes.append(str(e))
            return outcomes, len(acks._futures)

        late = "no PubAck from JetStream in time"
        self.assertEqual(run(go()), ([2, late, late], 0))

    def test_new_leader_fails_the_writes_in_flight(self):
        """
        When one of the node's streams elects a new leader, its writes in
        flight fail at once with LeaderChanged (not after the timeout), a
        later PubAck for one is ignored, and a later write waits for its
        own; another stream's writes, and a bucket's election, are left alone.
        """

        async def go():
            nc = _PublishingNats()
            streams = {"cairn_mbox": ("cairn.mbox.", "cairn.rdone."), "cairn_sync": ("cairn.sync.",)}
            acks = pubacks.Acks(nc, timeout=3600, streams=streams)
            inflight = [await acks.publish(s, b"x", {}) for s in ("cairn.mbox.r.1", "cairn.rdone.r")]
            other = await acks.publish("cairn.sync.t", b"x", {})
            elected = nc.callbacks[pubacks.LEADER_ELECTED + "*"]
            for stream in ("KV_cairn_trust", "tenant_mbox"):
                await elected(SimpleNamespace(subject=pubacks.LEADER_ELECTED + stream, data=b"{}"))
            untouched = [f.done() for f in inflight]
            await elected(SimpleNamespace(subject=pubacks.LEADER_ELECTED + "cairn_mbox", data=b"{}"))
            outcomes = await _failures(inflight, pubacks.LeaderChanged)
            await nc.reply_cb(_ack(nc.published[0][1], {"seq": 1}))  # the old leader's late answer
            await nc.reply_cb(_ack(nc.published[2][1], {"seq": 2}))  # the sync write's own
            later = await acks.publish("cairn.mbox.r.2", b"x", {})
            await nc.reply_cb(_ack(nc.published[-1][1], {"seq": 3}))
            return untouched, outcomes, await other, await later, len(acks._futures)

        why = "cairn_mbox elected a new leader while the write was in flight"
        self.assertEqual(run(go()), ([False, False], [why, why], 2, 3, 0))

    def test_lost_connection_fails_the_writes_in_flight(self):
        """
        When the connection is lost, every write in flight fails at once with
        Disconnected (not after the timeout: its PubAck, or its stream's
        election, may be lost with the connection); a write made afterwards
        waits for its own PubAck.
        """

        async def go():
            nc = _PublishingNats()
            acks = pubacks.Acks(nc, timeout=3600, streams={"cairn_mbox": ("cairn.mbox.",)})
            inflight = [await acks.publish(s, b"x", {}) for s in ("cairn.mbox.r.1", "cairn.other")]
            acks.disconnected()
            outcomes = await _failures(inflight, pubacks.Disconnected)
            later = await acks.publish("cairn.mbox.r.2", b"x", {})
            await nc.reply_cb(_ack(nc.published[0][1], {"seq": 1}))  # a late answer to a failed one
            await nc.reply_cb(_ack(nc.published[-1][1], {"seq": 2}))
            return outcomes, await later, len(acks._futures)

        why = "the connection to NATS was lost while the write was in flight"
        self.assertEqual(run(go()), ([why, why], 2, 0))

    def test_dropped_pubacks_and_elections(self):
        """
        A PubAck NATS dropped as a slow consumer fails its write at once, and
        a dropped election fails the writes in flight to its stream as the
        election itself does; the other writes wait for their PubAcks.
        """

        async def go():
            nc = _PublishingNats()
            acks = pubacks.Acks(
                nc, timeout=3600, streams={"cairn_mbox": ("cairn.mbox.",), "cairn_sync": ("cairn.sync.",)}
            )
            first, second = [await acks.publish("cairn.mbox.r." + i, b"x", {}) for i in "12"]
            other = await acks.publish("cairn.sync.t", b"x", {})
            acks.dropped(SimpleNamespace(subject=nc.published[0][1]))
            outcomes = []
            try:
                await asyncio.wait_for(first, 10)
            except TimeoutError as e:
                outcomes.append(str(e))
            acks.dropped(SimpleNamespace(subject=pubacks.LEADER_ELECTED + "cairn_mbox"))
            try:
                await asyncio.wait_for(second, 10)
            except pubacks.LeaderChanged as e:
                outcomes.append(type(e).__name__)
            await nc.reply_cb(_ack(nc.published[2][1], {"seq": 3}))
            return outcomes, await other, len(acks._futures)

        self.assertEqual(run(go()), (["its PubAck was dropped by this node (slow consumer)", "LeaderChanged"], 3, 0))

    def test_stalled_since_the_first_unanswered_publish(self):
        """
        C{stalled_since} is set when a publish goes unanswered (JetStream
        answers nothing for a stream that cannot write) or is refused for
        want of storage, kept while that goes on, and cleared by the next
        write stored or any other answer.
        """

        async def go():
            nc = _PublishingNats()
            acks = pubacks.Acks(nc, timeout=0.01)
            states = [(acks.stalled_since, acks.stalled_why)]

            async def publish(answer=None):
                future = await acks.publish("s", b"x", {})
                if answer is not None:
                    await nc.reply_cb(_ack(nc.published[-1][1], answer))
                try:
                    await asyncio.wait_for(future, 10)  # a guard: the timeout fails it long before
                except (TimeoutError, direct.PublishError):
                    pass
                states.append((acks.stalled_since, acks.stalled_why))

            room = {"error": {"err_code": pubacks.NO_ROOM, "description": "insufficient resources"}}
            await publish()  # unanswered
            await publish(room)
            await publish({"seq": 3})
            await publish(room)
            await publish({"error": {"err_code": 10071, "description": "wrong last sequence"}})
            return states

        with mock.patch.object(pubacks.time, "time", side_effect=[1000.0, 2000.0]):
            self.assertEqual(
                run(go()),
                [
                    (None, None),
                    (1000.0, "no PubAck within 0.01 s"),
                    (1000.0, "insufficient resources"),
                    (None, "insufficient resources"),
                    (2000.0, "insufficient resources"),
                    (None, "insufficient resources"),
                ],
            )

    def test_health_says_writes_are_not_stored(self):
        """L{JetStream.health}: connected but stalled is not ok, with the time and what to look at."""
        from cairn.cluster.connection import JetStream, Settings

        jet = JetStream(None, Settings(("nats://127.0.0.1:1",), 1))
        jet.nc = SimpleNamespace(is_connected=True)
        jet.acks = pubacks.Acks(jet.nc)
        self.assertEqual(jet.health(), (True, None))
        jet.acks.stalled_since, jet.acks.stalled_why = 1_800_000_000.0, "no PubAck within 30 s"
        ok, reason = jet.health()
        self.assertFalse(ok)
        self.assertEqual(
            reason,
            "JetStream has stored no write since 2027-01-15T08:00:00Z (no PubAck within 30 s; writes are refused):"
            " see the NATS servers' logs and storage -- a full disk stops a stream until its server is restarted",
        )


def _writing_nowhere():
    """A real nats-py client that takes itself for connected and keeps what it would write (C{_pending})."""
    import nats.aio.client as C

    nc = C.Client()
    nc._status = C.Client.CONNECTED
    nc._max_payload = 1 << 20
    nc._server_info = {"max_payload": 1 << 20}
    nc._flush_queue = asyncio.Queue(maxsize=1)
    nc._flush_queue.put_nowait(None)  # a flush is pending already: nothing is written
    nc._pending, nc._pending_data_size, nc._max_pending_size = [], 0, 1 << 30
    return nc


class HeaderBlockTests(unittest.TestCase):
    """L{pubacks.Headers}: a header block encoded once for many publishes, written as nats-py writes it."""

    HEADERS = {
        "Nats-Expected-Last-Subject-Sequence": "0",
        "Cairn-Stored": repr(1796575837.123456),
        "Cairn-Expires": " 1797180637.5 ",
        "Cairn-Writer": "line\r\nbreaks",
    }

    def test_same_bytes_as_nats_py(self):
        """A publish with a L{pubacks.Headers} is the HPUB nats-py's own publish writes for the same headers."""

        async def go():
            nc = _writing_nowhere()
            acks = pubacks.Acks(nc, timeout=30)
            acks._prefix = "_INBOX.acks"
            await nc.publish("cairn.mbox.r.s.id", b"payload", reply="_INBOX.acks.1", headers=dict(self.HEADERS))
            block = pubacks.Headers(self.HEADERS)
            await acks.publish("cairn.mbox.r.s.id", b"payload", block)
            await acks.publish("cairn.mbox.r.s.id2", b"payload 2", block)
            acks._futures.clear()
            return nc._pending, nc.stats["out_msgs"]

        pending, count = run(go())
        self.assertEqual(pending[1], pending[0])
        self.assertIn(b"HPUB cairn.mbox.r.s.id2 _INBOX.acks.2 ", pending[2])
        self.assertEqual(count, 3)

    def test_what_nats_py_refuses_goes_through_it(self):
        """A subject with whitespace, or a client not connected, takes nats-py's own publish (which refuses it)."""
        from nats.errors import BadSubjectError

        async def go():
            nc = _writing_nowhere()
            nc.publish = mock.Mock(wraps=nc.publish)
            acks = pubacks.Acks(nc, timeout=30)
            acks._prefix = "_INBOX.acks"
            try:
                await acks.publish("cairn.mbox.r s.id", b"x", pubacks.Headers(self.HEADERS))
            except BadSubjectError:
                refused = True
            nc._status = nc.RECONNECTING  # nats-py buffers what is published meanwhile
            await acks.publish("cairn.mbox.r.s.id", b"x", pubacks.Headers(self.HEADERS))
            return refused, len(nc._pending), nc.publish.call_count

        self.assertEqual(run(go()), (True, 1, 2))

    def test_without_the_private_parts_nats_py_publishes(self):
        """A nats-py without the private parts the block's write uses (a later version) publishes as before."""
        import types

        async def go():
            nc = types.SimpleNamespace(is_connected=True, is_draining_pubs=False, max_payload=1 << 20)
            nc._send_command = mock.AsyncMock()  # but no _flush_queue nor _flush_pending
            nc.publish = mock.AsyncMock()
            acks = pubacks.Acks(nc, timeout=30)
            acks._prefix = "_INBOX.acks"
            await acks.publish("cairn.mbox.r.s.id", b"x", pubacks.Headers(self.HEADERS))
            acks._futures.clear()
            return nc.publish.call_count

        self.assertEqual(run(go()), 1)

    def test_bad_name(self):
        self.assertRaises(ValueError, lambda: pubacks.Headers({"Bad Name": "1"}).block)


class StreamSeqTests(unittest.TestCase):
    def test_read_from_the_reply(self):
        """The stream seq of a pushed message is the one nats-py's metadata gives, for both reply forms."""
        from nats.aio.msg import Msg

        for reply in (
            "$JS.ACK.cairn_mbox.c1.1.4242.17.1733480000000000000.0",
            "$JS.ACK._.hash.cairn_mbox.c1.1.4242.17.1733480000000000000.0.token",
        ):
            msg = Msg(None, subject="cairn.mbox.r.s.id", reply=reply, data=b"", headers=None)
            self.assertEqual((direct.stream_seq(msg), msg.metadata.sequence.stream), (4242, 4242))


class _Refusing:
    """A JetStream context whose deletes fail with C{err_code}."""

    def __init__(self, err_code):
        self.err_code = err_code

    async def delete_msg(self, stream, seq):
        error = Exception("refused")
        error.err_code = self.err_code
        raise error


class DeleteTests(unittest.TestCase):
    def test_gone_already_is_not_an_error(self):
        """A message another delete removed first (either code JetStream answers with) was not removed by this call."""
        for code in (direct.NO_MESSAGE_FOUND, direct.SEQUENCE_NOT_FOUND):
            self.assertIs(run(direct.delete(_Refusing(code), "s", 1)), False)

    def test_other_errors_are_raised(self):
        with self.assertRaises(Exception) as raised:
            run(direct.delete(_Refusing(10999), "s", 1))
        self.assertEqual(raised.exception.err_code, 10999)


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


class DroppedRepliesTests(unittest.TestCase):
    """
    A batch read whose replies nats-py drops as a slow consumer fails
    (ReadError) rather than return without them, on a real server: it
    returned the rest, the error only logged.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        from cairn.cluster.mailbox import JetStreamMailboxStore
        from tests import _jetstream
        from tests.test_mailbox_store import LIMITS, item

        _, self.jet = yield _jetstream.single(self)
        store = JetStreamMailboxStore(self.jet)
        yield store.start()
        self.stream = store.stream
        yield store.enqueue([item(payload=b"m%d" % i) for i in range(3)], 1.0, LIMITS)

    def read(self, large, limit):
        """A batch read of the stream whose subscription holds up to C{limit} pending bytes (0: no limit)."""
        nc = self.jet.nc
        subscribe = nc.subscribe

        async def limited(*args, **kwargs):
            sub = await subscribe(*args, **kwargs)
            sub._pending_bytes_limit = limit
            return sub

        async def read():
            with mock.patch.object(nc, "subscribe", limited):
                return await direct.direct_batch(nc, self.stream, 1, 10, large=large)

        return self.jet.run(read)

    @defer.inlineCallbacks
    def test_dropped_replies_fail_the_read(self):
        for large in (False, True):
            # One byte: each reply with a payload is dropped, the end-of-batch status (none) is not.
            failure = yield self.assertFailure(self.read(large, 1), direct.ReadError)
            self.assertIn("3 replies dropped by this node (slow consumer)", str(failure))
            held, _ = yield self.read(large, 0)
            self.assertEqual([h.data for h in held], [b"m0", b"m1", b"m2"])
            self.assertEqual(direct._reading, {})
