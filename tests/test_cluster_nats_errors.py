"""
The errors nats-py reports on the node's connection (its C{error_cb}) are
said in the log, rate-limited, without secrets, and named by /health
while the connection is lost (L{cairn.cluster.nats_errors}).
"""

import os

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel
from twisted.trial import unittest

from cairn.cluster import nats_errors
from cairn.cluster.connection import JetStream, Settings
from tests._harness import Conditions, eventually, observe_logs
from tests._nats import Account, NatsServer


class _Client:
    """What L{JetStream.health} reads of a nats-py client."""

    is_connected = True


def _said(events):
    return [e for e in events if e.get("log_namespace") == "cairn.cluster.nats_errors"]


class SaidTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.jet = JetStream(reactor, Settings(("nats://127.0.0.1:4222",), 1), clock=self.clock)
        self.jet.nc = _Client()
        self.jet.state, self.jet.reason = "ok", None
        self.events = observe_logs(self)

    def test_said_once_then_counted(self):
        """An error is one warning; its repeats within ERROR_EVERY are counted and told the next time it is said."""
        why = 'nats: permissions violation for publish to "cairn.x"'
        for _ in range(5):
            self.jet._error(why)
        self.clock.advance(nats_errors.ERROR_EVERY - 1)
        self.jet._error(why)
        self.assertEqual([(e["log_level"], e["why"]) for e in _said(self.events)], [(LogLevel.warn, why)])
        self.clock.advance(1)
        self.jet._error(why)
        again = _said(self.events)[1]
        self.assertEqual((again["why"], again["repeats"], again["ago"]), (why, 5, nats_errors.ERROR_EVERY))

    def test_distinct_errors_each_said(self):
        """Two different errors are both said; the memory of them is bounded."""
        self.jet.errors = nats_errors.ErrorsSaid(self.clock, kept=2)
        for why in ("nats: one", "nats: two", "nats: three", "nats: one"):
            self.jet._error(why)
        self.assertEqual([e["why"] for e in _said(self.events)], ["nats: one", "nats: two", "nats: three", "nats: one"])

    def test_health_names_it_while_disconnected(self):
        """Connected, an error leaves the node ok; disconnected, /health's reason names the last error since."""
        self.jet._error("nats: slow consumer, messages dropped on cairn.mbox.>")
        self.assertEqual(self.jet.health(), (True, None))
        self.jet.nc.is_connected = False
        self.jet._note("degraded", "disconnected from NATS; reconnecting")
        self.assertEqual(self.jet.health(), (False, "disconnected from NATS; reconnecting"))
        self.jet._error("nats: authorization failed")
        reason = "disconnected from NATS; reconnecting (last NATS error: nats: authorization failed)"
        self.assertEqual(self.jet.health(), (False, reason))
        self.jet.nc.is_connected = True
        self.jet._note("ok", None)
        self.jet.nc.is_connected = False
        self.jet._note("degraded", "disconnected from NATS; reconnecting")
        self.assertEqual(self.jet.health(), (False, "disconnected from NATS; reconnecting"))

    def test_not_said_while_stopping(self):
        """Errors of the node's own close are not the operator's concern."""
        self.jet._stopping = True
        self.jet._error("nats: connection closed")
        self.assertEqual(_said(self.events), [])


class DescribeTests(unittest.TestCase):
    def test_slow_consumer_by_subject_head(self):
        """A slow consumer's description is the same for every message it drops on one stream's subjects."""
        from nats.errors import SlowConsumerError

        first = SlowConsumerError("cairn.mbox.A.B.00ff", "reply", 7, object())
        second = SlowConsumerError("cairn.mbox.C.D.11ee", "reply", 7, object())
        self.assertEqual(nats_errors.describe(first), "nats: slow consumer, messages dropped on cairn.mbox.>")
        self.assertEqual(nats_errors.describe(second), nats_errors.describe(first))

    def test_no_password(self):
        """A URL's user and password in an error's text are redacted; one line, bounded."""
        error = OSError("cannot reach nats://cairn:s3cret@10.0.0.1:4222\nsecond line")
        self.assertEqual(nats_errors.describe(error), "cannot reach nats://<redacted>@10.0.0.1:4222")
        self.assertEqual(len(nats_errors.describe(ValueError("x" * 500))), 200)


class _Denied(Account):
    """An account whose user may not publish on C{forbidden.>}."""

    def config(self):
        denied = f'password: "{self.password}", permissions: {{ publish: {{ deny: ["forbidden.>"] }} }} }}'
        return super().config().replace(f'password: "{self.password}" }}', denied)


class RealServerTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_permissions_violation_said(self):
        """
        A publish the server refuses (a permissions violation, reported
        only to nats-py's error_cb) is one warning, without the password;
        repeats are not said again; the node stays ok.
        """
        account = _Denied(max_file=64 * 1024 * 1024)
        server = NatsServer(os.path.abspath(self.mktemp()), account=account)
        self.addCleanup(server.kill)
        yield server.start()
        jet = JetStream(reactor, Settings((server.url,), 1, "cairn"))
        self.addCleanup(jet.close)
        yield eventually(jet.connect(), 90)
        events, conditions, reported = observe_logs(self), Conditions(), []
        error = jet._error
        jet._error = lambda why: conditions.changed((reported.append(why), error(why)))

        async def forbidden():
            for _ in range(3):
                await jet.nc.publish("forbidden.x", b"")
            await jet.nc.flush()

        yield jet.run(forbidden)
        yield conditions.until(lambda: len(reported) == 3, 30)  # (the server may send them after its PONG)
        (said,) = _said(events)
        self.assertIn("permissions violation", said["why"].lower())
        self.assertEqual(jet.errors._said[said["why"]][1], 2)  # the repeats, counted
        self.assertNotIn(account.password, repr(events))
        self.assertEqual(jet.health(), (True, None))
