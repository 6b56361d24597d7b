"""
The peer-side API: connect to a node (or any cairn peer) and use sessions.

    client = Client(reactor, Identity.generate())
    session = yield client.connect("tcp:host=127.0.0.1:port=7400")
    # or client.connect("ws://127.0.0.1:7401/")
    chat = session.open_channel("chat")
    chat.send(b"hello")
    ...
    session = yield client.resume(session)      # after the transport dropped

With C{auto_resume=True} the client resumes by itself whenever a
session's transport drops, retrying with exponential backoff (1 s
doubling to 60 s, on the injected clock) until the session is attached
again or has ended (L{cairn.failover}). Each wait is shortened by a
random share of up to half (C{resume_jitter}): the devices a node dropped
all at once (its restart, a network blip) then come back spread over each
backoff step instead of in waves at 1 s, 3 s, 7 s ... that refill its
listen queue each time (issue 20, the reconnect storm).

Several nodes, one server (docs/scaling.md): C{connect()} also takes a
list of addresses -- the nodes of one deployment, which share one
identity -- and dials them in order until one answers. A dropped session
is resumed at the address that served it last, then at the others in
turn, each round of the list once per backoff delay. A node that does
not know the session (it died and the device reached another one) refuses
the Reconnect with Close 9 (docs/protocol.md §14.1); the client then runs
a new handshake there by itself: the old session ends with Close 9 once
the new one is established, C{current(old)} is the new one and
C{on_session_replaced(old, new)} is called.

Sessions are the same L{cairn.session.session.Session} objects the server
uses; a client can also C{listen()} and take sessions from other clients.

Node pinning (docs/protocol.md §20.7.1): once a pairing through a session
this client dialled succeeds, the node's peer id is pinned under every
address the session was connected with (in C{pins}: a
L{cairn.pins.MemoryPins} unless given, a L{cairn.pins.FilePins} for a
device that must remember across runs), and C{connect()} with any of
those addresses fails with L{cairn.pins.NodeMismatch} whenever another
peer id answers; the same check applies to the new session of a failover.
"""

import random

from twisted.internet.defer import fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from cairn.crypto.identity import Identity
from cairn.dial import OneConnectionFactory, Target, Unreachable, error_text, node_addresses, websocket_endpoint
from cairn.failover import RESUME_JITTER, AutoResume
from cairn.pairing.codes import dial_string
from cairn.pins import MemoryPins, NodeMismatch
from cairn.session.peer import Peer
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamFactory
from cairn.transport.websocket import client_factory, server_factory
from cairn.wire.constants import CloseCode

log = Logger()

#: Parsed client endpoints kept for reuse (by address string).
ENDPOINT_CACHE = 32


class Client(AutoResume):
    """
    A cairn peer that initiates sessions (and may accept them).

    Keyword arguments are the L{Peer} settings (keepalive, limits).

    @param auto_resume: resume dropped sessions automatically, at each of
        the addresses they were connected with in turn; when a node refuses
        the Reconnect (Close 9: it does not have the session), run a new
        handshake instead (see L{current}).
    @param pins: the node pin store (address -> peer id); in memory if None.
    @param resume_jitter: the share of each automatic resume wait that is
        random (L{cairn.failover.RESUME_JITTER}; 0: the exact backoff).
    @param rng: where that share comes from (C{() -> float in [0, 1)}).
    """

    def __init__(
        self,
        reactor,
        identity: Identity = None,
        clock=None,
        auto_resume=False,
        pins=None,
        resume_jitter=RESUME_JITTER,
        rng=random.random,
        **settings,
    ):
        self.reactor = reactor
        self.clock = clock or reactor
        # Pairing (cairn.pairing.client) finds the pins through the session's peer.
        self.peer = Peer(identity or Identity.generate(), self.clock, pinning=self, **settings)
        #: What this client's dialled transports read (no output guard).
        self.transport_settings = TransportSettings.for_peer(self.peer)
        self.auto_resume = auto_resume
        self.resume_jitter = resume_jitter
        self._random = rng
        self.pins = MemoryPins() if pins is None else pins
        #: session id -> the address its transport was dialled at.
        self._addresses = {}
        #: session id -> L{Target}: every address of its node, for resume and failover.
        self._targets = {}
        #: session id of a session replaced after a refused Reconnect -> its successor.
        self._successors = {}
        self._endpoints = {}
        self._retries = {}
        #: C{(old, new)}: called when a new session replaced one no node knew any more.
        self.on_session_replaced = None
        self.peer.add_observer(self)
        #: (peer_id) -> bool: accept a relay circuit offered by that peer (None: accept).
        self.on_relay_request = None
        # Made now, not on first use: a circuit may be offered before any
        # request of ours. Imported here, as the extensions below are.
        from cairn.relay.client import RelayEndpoint

        #: The L{cairn.relay.client.RelayEndpoint} of this client (circuits through a node).
        self.relay = RelayEndpoint(self)

    # Extensions: one each, made on first use. The imports are here so that
    # the peer-side API does not pull in every family when imported (and so
    # that the device CLIs in cairn.cli may import this module cheaply).

    @property
    def mailbox(self):
        """The L{cairn.mailbox.client.MailboxClient} of this client."""
        from cairn.mailbox.client import MailboxClient

        return self.peer.extension(MailboxClient)

    @property
    def sync(self):
        """The L{cairn.sync.client.SyncClient} of this client."""
        from cairn.sync.client import SyncClient

        return self.peer.extension(SyncClient)

    @property
    def turn(self):
        """The L{cairn.turn.client.TurnClient} of this client."""
        from cairn.turn.client import TurnClient

        return self.peer.extension(TurnClient)

    @property
    def pairing(self):
        """The pairing dispatcher of this client (L{cairn.pairing.client}'s PairChallenge/Confirm/Reject handler)."""
        from cairn.pairing.client import PairingDispatcher

        return self.peer.extension(PairingDispatcher)

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id

    def connect(self, address, expect_peer_id: str = None):
        """
        Open a session to C{address}: a C{tcp://host:port}, C{ws://} or
        C{wss://} address (docs/protocol.md §20.3.2) or a Twisted client
        endpoint string -- or a list of them, the nodes of one deployment,
        dialled in order until one answers. Fires with the established
        session, or fails with L{NodeMismatch} (the session closed) if the
        node's peer id is not C{expect_peer_id} or not the one pinned for
        any of the addresses; with several addresses, a node failing so is
        skipped, and L{NodeMismatch} is raised only if no other answered,
        else L{Unreachable} naming each address's error.
        """
        try:
            target = Target(node_addresses(address), expect_peer_id)
        except ValueError as e:
            return fail(e)
        return self._handshake(target)

    @inlineCallbacks
    def _handshake(self, target, addresses=None):
        """
        A new session with the first of C{addresses} (default: every
        address of C{target}, in its order) that answers and passes the node
        check -- which always covers every address of C{target}.
        """
        errors = []
        for address in target.order() if addresses is None else addresses:
            try:
                session = yield self._dial(address, self.peer.connection(initiator=True))
                self._check_node(session, target, address)
            except Exception as e:
                if len(target.addresses) > 1:
                    log.info("no session at {address}: {why}", address=address, why=error_text(e))
                errors.append((address, e))
                continue
            self._targets[session.session_id] = target.served(address)
            return session
        if len(errors) == 1:
            raise errors[0][1]
        mismatch = [e for _, e in errors if isinstance(e, NodeMismatch)]
        if mismatch:
            raise mismatch[0]
        raise Unreachable(errors)

    def _check_node(self, session, target, address):
        expected = [target.expect_peer_id] + [self.pins.get(a) for a in target.addresses]
        for peer_id in expected:
            if peer_id is not None and peer_id != session.remote_peer_id:
                log.warn(
                    "refusing node {actual} at {address}: expected {expected}",
                    actual=session.remote_peer_id,
                    address=address,
                    expected=peer_id,
                )
                session.close(CloseCode.NORMAL, "not the node this device expects")
                raise NodeMismatch(peer_id, session.remote_peer_id, address)
        return session

    def current(self, session):
        """
        C{session}, or the session that replaced it when no node knew it any
        more (after a refused Reconnect, with C{auto_resume}), following
        every replacement since.
        """
        while session.session_id in self._successors:
            session = self._successors[session.session_id]
        return session

    def _pin_addresses(self, session):
        target = self._targets.get(session.session_id)
        if target is not None:
            return target.addresses
        address = self._addresses.get(session.session_id)
        return () if address is None else (address,)

    def pinned(self, session):
        """The peer id pinned for the addresses C{session} was dialled with, or None."""
        for address in self._pin_addresses(session):
            peer_id = self.pins.get(address)
            if peer_id is not None:
                return peer_id
        return None

    def pin(self, session) -> None:
        """
        Pin C{session}'s node under every address it was dialled with (after
        a pairing): the nodes of one deployment share one identity.
        """
        for address in self._pin_addresses(session):
            self.pins.set(address, session.remote_peer_id)

    def close(self, session=None, code: int = CloseCode.NORMAL, reason: str = "", timeout: float = 5.0):
        """
        End C{session} -- or, without one, every open session of this
        client -- with a Close, and fire once each Close is written out and
        its transport closed (or after C{timeout} seconds): for a program
        about to exit, whose reactor would otherwise stop with the Close
        still in its buffer (the peer would see a dropped transport and keep
        the session for a resume).
        """
        if session is None:
            sessions = [s for s in list(self.peer.sessions.values()) if s.closed is None]
            closing = [self.close(s, code, reason, timeout) for s in sessions]
            return gatherResults(closing).addCallback(lambda _: None)
        connection = session.connection
        session.close(code, reason)
        if connection is None:
            return succeed(None)
        d = connection.when_lost()
        d.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        return d

    def resume(self, session, address: str = None):
        """Resume C{session} on a new transport; fires with the same session."""
        address = address or self._addresses[session.session_id]
        connection = self.peer.connection(initiator=True, resume=session)
        return self._dial(address, connection)

    def dialled_at(self, session) -> str:
        """The address C{session}'s transport was dialled at (KeyError: not a session this client dialled)."""
        return self._addresses[session.session_id]

    def dialled(self, session) -> bool:
        """Whether this client dialled C{session}'s transport (L{dialled_at} knows its address)."""
        return session.session_id in self._addresses

    def endpoint(self, address, websocket=False):
        """The client endpoint for C{address} (kept for reuse); C{websocket}: a C{ws://} or C{wss://} address."""
        return self._endpoint(address, websocket)

    def _endpoint(self, address, websocket):
        # A bench replaces this lookup (bench/capacity/clients.py): every dial goes through it.
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            if websocket:
                endpoint = websocket_endpoint(self.reactor, address)
            elif address.startswith(("tcp://", "tls://")):
                # The protocol's own address form (docs/protocol.md §20.3.2).
                endpoint = clientFromString(self.reactor, dial_string(address))
            else:
                endpoint = clientFromString(self.reactor, address)
            if len(self._endpoints) >= ENDPOINT_CACHE:
                self._endpoints.clear()
            self._endpoints[address] = endpoint
        return endpoint

    def _dial(self, address, connection):
        websocket = address.startswith(("ws://", "wss://"))
        endpoint = self._endpoint(address, websocket)
        if websocket:
            factory = client_factory(self.transport_settings, address, lambda: connection)
        else:
            factory = OneConnectionFactory(self.transport_settings, connection)

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
