"""
The node's state on NATS JetStream (C{CAIRN_CLUSTER_NATS}, the C{[cluster]} extra).

Nothing here that imports nats-py is imported unless C{CAIRN_CLUSTER_NATS}
is set: the plain install never loads it. The seams every node uses,
L{cairn.cluster.presence} (L{IPresence}) and L{cairn.cluster.bus}
(L{INodeBus}), hold their single-node versions and import no nats. See docs/scaling.md for the streams, buckets
and subjects, and L{cairn.cluster.loop} for how the asyncio client runs
beside any Twisted reactor.
"""
