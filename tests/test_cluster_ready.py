"""
Start-up waits until each stream and bucket answers (L{cairn.cluster.ready},
L{cairn.cluster.layout.ensure}): a fresh R3 stream may have no leader yet,
and a publish then gets "no responders".
"""

import asyncio
import json

from twisted.internet import defer
from twisted.trial import unittest

from cairn.cluster import layout, ready
from cairn.cluster.layout import LayoutError
from tests import _jetstream


class _Reply:
    def __init__(self, data):
        self.data = data


def _refusal(name):
    error = {"code": 400, "err_code": 10060, "description": "expected stream does not match"}
    return json.dumps({"error": error, "stream": name, "seq": 0}).encode()


class _FakeNc:
    """Answers "no responders" C{silent} times per subject, then as the stream C{names[subject]}."""

    def __init__(self, names, silent=2, answer=_refusal):
        self.names, self.silent, self.answer = names, silent, answer
        self.requests = []

    async def request(self, subject, payload, timeout=None, headers=None):
        from nats.errors import NoRespondersError

        self.requests.append((subject, headers))
        if self.requests.count((subject, headers)) <= self.silent:
            raise NoRespondersError()
        return _Reply(self.answer(self.names[subject]))


class _Clock:
    def __init__(self):
        self.now = 0.0
        self.pauses = []

    def __call__(self):
        return self.now

    async def pause(self, delay):
        self.pauses.append(delay)
        self.now += delay


def _run(coroutine):
    return asyncio.run(coroutine)


class AnsweringTests(unittest.TestCase):
    def test_waits_through_no_responders(self):
        """Each stream is probed until it answers; the wait is said once, naming the stream and why."""
        nc = _FakeNc({"a.probe": "A", "b.probe": "B"})
        clock, said = _Clock(), []
        _run(ready.answering(nc, [("A", "a.probe"), ("B", "b.probe")], 30, said.append, clock.pause, clock))
        self.assertEqual([s for s, _ in nc.requests], ["a.probe"] * 3 + ["b.probe"] * 3)
        self.assertEqual({h["Nats-Expected-Stream"] for _, h in nc.requests}, {"-"})
        self.assertEqual(said, ["waiting for JetStream stream A to answer (no responders)"])
        self.assertEqual(clock.pauses, [0.05, 0.1, 0.05, 0.1])

    def test_bounded(self):
        """A stream that never answers fails the attempt with one line naming it; not permanent (retried)."""
        nc = _FakeNc({"a.probe": "A"}, silent=10**6)
        clock = _Clock()
        with self.assertRaises(LayoutError) as caught:
            _run(ready.answering(nc, [("A", "a.probe")], 5, None, clock.pause, clock))
        self.assertEqual(str(caught.exception), "JetStream stream A does not answer (no responders) after 5s")
        self.assertFalse(caught.exception.permanent)
        self.assertEqual(max(clock.pauses), ready.PAUSE_MAX)

    def test_only_the_refusal_counts(self):
        """An answer that is not the stream's refusal of the probe (another stream's, a stored probe) is not ready."""
        for answer in (
            lambda name: _refusal("other"),
            lambda name: json.dumps({"stream": name, "seq": 1}).encode(),
            lambda name: b"\x00",
        ):
            nc = _FakeNc({"a.probe": "A"}, silent=0, answer=answer)
            clock = _Clock()
            with self.assertRaises(LayoutError):
                _run(ready.answering(nc, [("A", "a.probe")], 1, None, clock.pause, clock))

    def test_no_room_is_an_answer(self):
        """
        A stream refusing the probe for want of room (its account over its
        limit, checked before the probe's header at R3) has answered: a node
        started then comes up full (the reserve) rather than waiting forever.
        """
        error = {"code": 400, "err_code": 10002, "description": "resource limits exceeded for account"}
        full = lambda name: json.dumps({"error": error, "stream": name, "seq": 0}).encode()  # noqa: E731
        nc = _FakeNc({"a.probe": "A"}, silent=0, answer=full)
        clock = _Clock()
        _run(ready.answering(nc, [("A", "a.probe")], 1, None, clock.pause, clock))
        self.assertEqual(len(nc.requests), 1)
        nc = _FakeNc({"a.probe": "A"}, silent=0, answer=lambda name: full("other"))
        with self.assertRaises(LayoutError):
            _run(ready.answering(nc, [("A", "a.probe")], 1, None, clock.pause, clock))

    def test_probe_subject(self):
        self.assertEqual(ready.probe_subject("cairn.mbox.>"), "cairn.mbox.probe")
        self.assertEqual(ready.probe_subject("cairn.rdone.*"), "cairn.rdone.probe")


class _Flaky:
    """A nats-py client whose requests to each probe subject get "no responders" twice first."""

    def __init__(self, nc):
        self._nc = nc
        self.requests = []

    def __getattr__(self, name):
        return getattr(self._nc, name)

    async def request(self, subject, *args, **kwargs):
        from nats.errors import NoRespondersError

        self.requests.append(subject)
        if self.requests.count(subject) <= 2:
            raise NoRespondersError()
        return await self._nc.request(subject, *args, **kwargs)


class EnsureTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_ensure_waits_for_every_stream_and_bucket(self):
        """
        ensure returns only once every stream and bucket answered a probe;
        meanwhile the node is degraded, saying which stream it waits for.
        """
        self.patch(ready, "PAUSE_FIRST", 0)
        server, jet = yield _jetstream.single(self)
        flaky = _Flaky(jet.nc)
        yield jet.run(layout.ensure, jet, flaky)
        subjects = [subject for _, subject in layout.probes(jet)]
        self.assertEqual(
            subjects,
            ["cairn.mbox.probe", "cairn.sync.probe", "cairn.reserve.probe"]
            + [f"$KV.cairn_{b}.probe" for b in ("meta", "limits", "cursors", "trust", "relay")],
        )
        self.assertEqual(flaky.requests, [s for s in subjects for _ in range(3)])
        self.assertEqual(jet.state, "degraded")
        self.assertEqual(jet.reason, "waiting for JetStream stream cairn_mbox to answer (no responders)")


class StartUpTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_degraded_while_a_stream_does_not_answer(self):
        """
        While the streams answer "no responders", the node is not ready,
        /health's check says why and one line says so; once they answer, it is ready.
        """
        from nats.aio.client import Client
        from nats.errors import NoRespondersError
        from twisted.internet import reactor

        from cairn.cluster.connection import JetStream, Settings
        from tests._harness import Conditions, eventually, observe_logs
        from tests._nats import start_nats

        self.patch(ready, "PAUSE_FIRST", 0.01)
        self.patch(ready, "PAUSE_MAX", 0.02)
        held = [True]
        request = Client.request

        async def silent_probes(nc, subject, *args, **kwargs):
            if held[0] and subject.endswith(".probe"):
                raise NoRespondersError()
            return await request(nc, subject, *args, **kwargs)

        self.patch(Client, "request", silent_probes)
        server = yield start_nats(self)
        logs = observe_logs(self)
        jet = JetStream(reactor, Settings((server.url,), 1, "cairn"))
        self.addCleanup(jet.close)
        conditions = Conditions()
        waiting = jet.waiting
        jet.waiting = lambda reason: conditions.changed(waiting(reason))
        ready_d = jet.connect()
        yield conditions.until(lambda: jet.reason.startswith("waiting"), 30)
        self.assertEqual(jet.health(), (False, "waiting for JetStream stream cairn_mbox to answer (no responders)"))
        self.assertFalse(ready_d.called)
        held[0] = False
        yield eventually(ready_d, 30)
        self.assertEqual(jet.health(), (True, None))
        said = [e for e in logs if "waiting for JetStream" in (e.get("reason") or "")]
        self.assertEqual(len(said), 1)


class FreshClusterTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_fresh_r3_streams_answer_once_connected_and_hold_no_probe(self):
        """A fresh 3-server cluster: once connected every stream answers at once; the probes stored nothing."""
        from tests._nats import start_nats_cluster

        cluster = yield start_nats_cluster(self)
        jet = yield _jetstream.connect(self, cluster.urls, replicas=3)
        self.assertEqual(jet.health(), (True, None))

        async def probe_all():
            answers = []
            for name, subject in layout.probes(jet):
                reply = await jet.nc.request(subject, b"", timeout=2, headers=ready.PROBE_HEADERS)
                answers.append(json.loads(reply.data)["stream"])
                info = await jet.js.stream_info(name)
                answers.append(info.state.last_seq if name.endswith("mbox") else None)
            return answers

        answers = yield jet.run(probe_all)
        names = [name for name, _ in layout.probes(jet)]
        self.assertEqual(answers[0::2], names)
        self.assertEqual(answers[1], 0)
