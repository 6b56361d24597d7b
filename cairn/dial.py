"""
Where a client dials: the endpoint for each node address, the addresses
of one deployment (several nodes, one identity) in the order to try them,
and the error when none of them answers. L{cairn.client.Client} uses them.
"""

from urllib.parse import urlsplit

import attr
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory

from cairn.transport.tcp import StreamProtocol


class OneConnectionFactory(Factory):
    """Builds the one L{StreamProtocol} of a dialled connection, feeding C{sink}."""

    # One factory per connection: "Starting factory" lines would only be noise.
    noisy = False

    def __init__(self, settings, sink):
        self.settings = settings
        self.sink = sink

    def buildProtocol(self, addr):
        protocol = StreamProtocol(self.sink, self.settings)
        protocol.factory = self
        return protocol


def websocket_endpoint(reactor, url: str):
    """The client endpoint for a C{ws://} or C{wss://} URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    host = parts.hostname
    if parts.scheme == "wss":
        return clientFromString(reactor, f"tls:{host}:{port}")
    return clientFromString(reactor, f"tcp:host={host}:port={port}")


class Unreachable(ConnectionError):
    """
    No node answered at any of several addresses: C{errors} holds
    C{(address, exception)} for each, in the order tried. (With one
    address, its own error is raised as it is.)
    """

    def __init__(self, errors):
        self.errors = list(errors)
        detail = "; ".join(f"{address}: {error_text(error)}" for address, error in self.errors)
        super().__init__(f"no node answered at any of {len(self.errors)} addresses: {detail}")


def error_text(error) -> str:
    """C{error}'s message, or its type's name when it has none."""
    return str(error) or type(error).__name__


def node_addresses(address) -> tuple:
    """
    The addresses C{connect()} was given, as a tuple: one address string,
    or a list or tuple of them (the nodes of one deployment), duplicates
    dropped; a ValueError if there is none or one is not a string.
    """
    addresses = (address,) if isinstance(address, str) else tuple(address)
    if not addresses:
        raise ValueError("no node address given")
    for item in addresses:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"not a node address: {item!r}")
    return tuple(dict.fromkeys(item.strip() for item in addresses))


@attr.s(eq=False)
class Target:
    """
    Where a session's node is: the addresses of its deployment, the one
    that served it last (C{index}) and the peer id it must have.
    """

    addresses = attr.ib(converter=tuple)
    expect_peer_id = attr.ib(default=None)
    index = attr.ib(default=0)

    def order(self) -> list:
        """Every address once, starting with the one that served last."""
        n = len(self.addresses)
        return [self.addresses[(self.index + i) % n] for i in range(n)]

    def served(self, address) -> "Target":
        """A copy of this target whose next round starts at C{address}."""
        return attr.evolve(self, index=self.addresses.index(address))
