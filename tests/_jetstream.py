"""
Connecting stores to the test NATS servers of L{tests._nats}: a
L{JetStream} per test, closed (its loop thread stopped) in cleanup.
"""

from twisted.internet import defer, reactor

from cairn.cluster.connection import JetStream, Settings
from tests._harness import eventually
from tests._nats import start_nats


@defer.inlineCallbacks
def connect(testcase, urls, replicas=1, prefix="cairn"):
    """A connected L{JetStream} on C{urls} for C{testcase}."""
    jet = JetStream(reactor, Settings(tuple(urls), replicas, prefix))
    testcase.addCleanup(jet.close)
    yield eventually(jet.connect(), 90)
    return jet


@defer.inlineCallbacks
def single(testcase, prefix="cairn"):
    """A fresh single NATS server and a L{JetStream} on it (R1); fires with (server, jetstream)."""
    server = yield start_nats(testcase)
    jet = yield connect(testcase, [server.url], 1, prefix)
    return server, jet
