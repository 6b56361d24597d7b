"""
Twisted's TCP transports without an attribute dict of their own (issue 19).

CPython (3.11 on) stores an instance's attributes in an array laid out by
a table of names that all instances of its class share, as long as every
name the instance sets is in that table; an instance that sets a name not
in it gets a dict of its own. Names enter the table as instances first
set them, but the table closes early: each new instance takes one of the
places still free (down to the last one), so once a few dozen instances
exist, no new name gets in.

A node accepts connections in bursts (Twisted takes up to a hundred per
wake-up), so dozens of its transports (C{twisted.internet.tcp.Server})
existed before the first of them wrote anything; the names Twisted sets
at a transport's first write (C{dataBuffer}, C{offset}) came too late, and
every transport of the node carried a dict of its own: 832 bytes per idle
session, TCP or WebSocket (tracemalloc, C{bench.capacity idle}).

L{share_names} sets, once per class, every name its instances will set on
one throw-away instance made before any other (the node's listeners call
it as they start, L{share_transport_names}), so that all of them are in
the table from the start. CPython has no public way to size that table;
this only sets attributes, so on another interpreter it costs one object
and changes nothing.
"""

from twisted.internet import tcp

#: Every attribute Twisted sets on a C{tcp.Server} over its life (its
#: classes' C{self.X = ...}: set up, writing, producers, closing, aborting,
#: IPv6 peers), and C{bufferSize}, which cairn sets
#: (L{cairn.transport.tcp.StreamProtocol.connectionMade}).
#: tests/test_idle_memory.py checks that a connection's life sets no other.
TCP_SERVER_NAMES = (
    "reactor",
    "_tempDataBuffer",
    "_tempDataLen",
    "socket",
    "fileno",
    "protocol",
    "server",
    "client",
    "sessionno",
    "hostname",
    "logstr",
    "repstr",
    "connected",
    "bufferSize",
    "producer",
    "streamingProducer",
    "dataBuffer",
    "offset",
    "producerPaused",
    "disconnecting",
    "disconnected",
    "_writeDisconnecting",
    "_writeDisconnected",
    "_aborting",
    "doRead",
    "doWrite",
    "_addressType",
)

_shared = set()


def share_names(cls, names) -> None:
    """
    Put C{names} into the table of attribute names that C{cls}'s instances
    share (see the module docstring); once per class, later calls do nothing.
    """
    if cls in _shared:
        return
    _shared.add(cls)
    instance = cls.__new__(cls)  # no __init__: only its attributes are wanted
    for name in names:
        setattr(instance, name, None)


def share_transport_names() -> None:
    """L{share_names} for the node's TCP transports (TCP and WebSocket listeners)."""
    share_names(tcp.Server, TCP_SERVER_NAMES)
