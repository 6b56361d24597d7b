"""
What C{GET /health} says about the deployment of a node on NATS: this
node's connection, whether JetStream has a leader for the mailbox
stream (writes are possible), and the other nodes presence has seen.
"""

from twisted.internet import defer

from cairn.cluster.common import one_line

#: Seconds the leader query may take: /health must answer promptly.
LEADER_TIMEOUT = 1.0


def cluster_report(jet, presence):
    """A callable for L{cairn.management.reports.NodeReports.cluster}: a Deferred of the JSON."""

    def report():
        ok, reason = jet.health()
        result = {
            "nats": "ok" if ok else "degraded",
            "leader": None,
            "nodes": {name: round(age, 3) for name, age in sorted(presence.nodes().items())},
            "reserve": {"bytes": jet.reserve.size, "full": jet.reserve.full},
        }
        if not ok:
            result["reason"] = reason
            return defer.succeed(result)

        async def leader():
            info = await jet.js.stream_info(jet.stream("mbox"))
            cluster = getattr(info, "cluster", None)
            return getattr(cluster, "leader", None)

        d = jet.run(leader).addTimeout(LEADER_TIMEOUT, jet.reactor)

        def found(name):
            result["leader"] = name
            return result

        def failed(failure):
            result["reason"] = f"no JetStream leader known ({one_line(failure.value)})"
            return result

        return d.addCallbacks(found, failed)

    return report
