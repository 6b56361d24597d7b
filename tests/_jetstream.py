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


@defer.inlineCallbacks
def on_a_follower(testcase, stream):
    """
    A fresh 3-server cluster and a L{JetStream} (R3) connected only to a
    follower of C{stream} (e.g. "mbox", "sync"): a direct get prefers the
    replica on the server the client is connected to, so reads may lag the
    writes. Fires with (cluster, jetstream).
    """
    from tests._nats import start_nats_cluster

    cluster = yield start_nats_cluster(testcase)
    jet = yield connect(testcase, cluster.urls, replicas=3)
    info = yield jet.run(jet.js.stream_info, jet.stream(stream))
    follower = next(s for s in cluster.servers if s.name != info.cluster.leader)
    jet = yield connect(testcase, [follower.url], replicas=3)
    return cluster, jet


def count_reads(testcase):
    """The names of the stream reads made from now on (a list that grows)."""
    from cairn.cluster import direct

    reads = []
    for name in ("direct_batch", "direct_seq", "direct_last", "leader_next"):
        original = getattr(direct, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(*args, **kwargs)

        testcase.patch(direct, name, counted)
    return reads


def choke(jet, stream):
    """
    Make every subscription of C{jet}'s connection to C{stream} (its
    watches: ordered consumers) a slow consumer from now on: nats-py drops
    each message (a pending limit of one byte, held already: headers-only
    messages too) and says so through C{error_cb}, as it does for a
    subscription past its limits.
    A Deferred firing with how many were choked.
    """

    async def chokes():
        subscriptions = [s for s in jet.nc._subs.values() if s._jsi is not None and s._jsi._stream == stream]
        for subscription in subscriptions:
            subscription._pending_bytes_limit = subscription._pending_size = 1
        return len(subscriptions)

    return jet.run(chokes)
