"""
The addresses a node puts in its pairing links (and tells the signaling
servers): C{CAIRN_PUBLIC_ADDRESSES}, else those of its bound listeners.
"""

import socket


class LinkAddresses:
    """
    The addresses pairing links carry (and the signaling servers are told):
    C{CAIRN_PUBLIC_ADDRESSES}, else those of the node's bound listeners
    (L{derived_addresses}) once it serves. Given to the pairing service at
    construction as the callable it asks when it makes a link.
    """

    def __init__(self, public=()):
        self.public = tuple(public)
        self._bound = ()

    def __call__(self) -> tuple:
        return self.public or self._bound

    def listening(self, ports) -> None:
        """The node's listeners are bound to C{ports} ({name: IListeningPort})."""
        self._bound = derived_addresses(ports)


def derived_addresses(ports) -> tuple:
    """
    Dialable addresses of the bound cairn listeners, for pairing links.

    A listener bound to one interface is advertised on it; a wildcard one
    on the machine's host name. C{CAIRN_PUBLIC_ADDRESSES} overrides this.
    """
    addresses = []
    for name in ("tcp", "websocket"):
        port = ports.get(name)
        if port is None:
            continue
        address = port.getHost()
        host = getattr(address, "host", None)
        if host is None:
            continue
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        # The protocol's address form (docs/protocol.md §20.3.2).
        shown = f"[{host}]" if ":" in host else host
        if name == "tcp":
            addresses.append(f"tcp://{shown}:{address.port}")
        else:
            addresses.append(f"ws://{shown}:{address.port}/")
    return tuple(addresses)
