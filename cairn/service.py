"""
The node's object graph, built by one function that tests call directly.

L{make_node} turns a L{Config} into a L{CairnNode}: the local L{Peer}
and one listening service per enabled endpoint (through
C{strports.service}, so a busy port aborts start-up). Later services
(management API, mailbox, relay, sync) hang off the same node.
"""

import os

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults
from twisted.logger import Logger

from cairn.crypto import identity as identity_mod
from cairn.session import store
from cairn.session.peer import Peer
from cairn.transport.tcp import StreamFactory
from cairn.transport.websocket import server_factory

log = Logger()


class CairnNode(MultiService):
    """
    The server node: a L{Peer} plus its listeners.

    On a clean stop every open session is saved (see
    L{cairn.session.store}) and its transport dropped without a Close, so
    that peers resume with Reconnect once the node is back.
    """

    def __init__(self, config, peer):
        super().__init__()
        self.config = config
        self.peer = peer
        self.listeners = {}

    def add_listener(self, name: str, description: str, factory) -> None:
        service = strports.service(description, factory)
        service.setName(name)
        service.setServiceParent(self)
        self.listeners[name] = service

    def when_listening(self):
        """A Deferred firing with {name: IListeningPort} once all listen."""
        names = list(self.listeners)
        waiting = [self.listeners[n]._waitingForPort for n in names]
        return gatherResults(waiting).addCallback(lambda ports: dict(zip(names, ports)))

    def startService(self):
        restored = self.peer.restore_sessions(store.load_once(self.config.data_dir))
        if restored:
            log.info("restored {count} session(s) for resume", count=restored)
        log.info("cairn node {peer_id} starting", peer_id=self.peer.peer_id)
        super().startService()
        self.when_listening().addCallback(self._log_ports)

    def _log_ports(self, ports):
        for name, port in sorted(ports.items()):
            host = port.getHost()
            log.info(
                "listening: {name} on {host}:{port}",
                name=name,
                host=getattr(host, "host", host),
                port=getattr(host, "port", ""),
            )

    def stopService(self):
        d = super().stopService()  # stop listening first
        d.addCallback(lambda _: self._save_sessions())
        return d

    def _save_sessions(self):
        snapshots = self.peer.snapshot_sessions()
        if snapshots:
            store.save(self.config.data_dir, snapshots)
            log.info("saved {count} session(s) for resume", count=len(snapshots))
        self.peer.freeze()


def prepare_data_dir(path: str) -> None:
    """Create the data directory (0700) if needed."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def make_node(config, reactor) -> CairnNode:
    """Build the whole node for C{config}; nothing listens until started."""
    prepare_data_dir(config.data_dir)
    ident = identity_mod.load_or_create(config.data_dir)
    peer = Peer(
        ident,
        reactor,
        max_payload=config.max_payload,
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        handshake_timeout=config.handshake_timeout,
        session_ttl=config.session_ttl,
    )
    node = CairnNode(config, peer)
    if config.listen:
        node.add_listener("tcp", config.listen, StreamFactory(peer))
    if config.ws_listen:
        node.add_listener("websocket", config.ws_listen, server_factory(peer))
    return node
