"""
The node's state on NATS JetStream (C{CAIRN_CLUSTER_NATS}, the C{[cluster]} extra).

Nothing here is imported unless C{CAIRN_CLUSTER_NATS} is set: the plain
install never loads nats-py. See docs/scaling.md for the streams, buckets
and subjects, and L{cairn.cluster.loop} for how the asyncio client runs
beside any Twisted reactor.
"""
