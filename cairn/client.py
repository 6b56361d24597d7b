"""
The peer-side API: connect to a node (or any cairn peer) and use sessions.

    client = Client(reactor, Identity.generate())
    session = yield client.connect("tcp:host=127.0.0.1:port=7400")
    # or client.connect("ws://127.0.0.1:7401/")
    chat = session.open_channel("chat")
    chat.send(b"hello")
    ...
    session = yield client.resume(session)      # after the transport dropped

Sessions are the same L{cairn.session.session.Session} objects the server
uses; a client can also C{listen()} and take sessions from other clients.
"""

from urllib.parse import urlsplit

from twisted.internet.endpoints import clientFromString, serverFromString

from cairn.crypto.identity import Identity
from cairn.session.peer import Peer
from cairn.transport.tcp import StreamFactory, StreamProtocol
from cairn.transport.websocket import client_factory, server_factory


class _OneConnectionFactory(StreamFactory):
    def __init__(self, local, sink):
        super().__init__(local, initiator=True)
        self.sink = sink

    def buildProtocol(self, addr):
        protocol = StreamProtocol(self.sink, self.local.max_payload)
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


class Client:
    """
    A cairn peer that initiates sessions (and may accept them).

    Keyword arguments are the L{Peer} settings (keepalive, limits).
    """

    def __init__(self, reactor, identity: Identity = None, clock=None, **settings):
        self.reactor = reactor
        self.peer = Peer(identity or Identity.generate(), clock or reactor, **settings)
        self._addresses = {}

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id

    def connect(self, address: str):
        """
        Open a session to C{address}: a C{ws://}/C{wss://} URL or a Twisted
        client endpoint string. Fires with the established session.
        """
        connection = self.peer.connection(initiator=True)
        return self._dial(address, connection)

    def resume(self, session, address: str = None):
        """Resume C{session} on a new transport; fires with the same session."""
        address = address or self._addresses[session.session_id]
        connection = self.peer.connection(initiator=True, resume=session)
        return self._dial(address, connection)

    def _dial(self, address, connection):
        if address.startswith(("ws://", "wss://")):
            endpoint = websocket_endpoint(self.reactor, address)
            factory = client_factory(self.peer, address, lambda: connection)
        else:
            endpoint = clientFromString(self.reactor, address)
            factory = _OneConnectionFactory(self.peer, connection)

        def connected(session):
            self._addresses[session.session_id] = address
            return session

        d = endpoint.connect(factory)
        d.addCallback(lambda _: connection.ready)
        d.addCallback(connected)
        return d

    def listen(self, description: str, websocket: bool = False):
        """Accept sessions on a server endpoint string; fires with the port."""
        factory = server_factory(self.peer) if websocket else StreamFactory(self.peer)
        return serverFromString(self.reactor, description).listen(factory)
