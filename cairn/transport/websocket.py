"""
cairn over WebSocket (autobahn): exactly one envelope per binary message.

A text message is a protocol error. The server serves the path C{/}; it
accepts the subprotocol C{cairn.v1} when offered and also clients that
offer none. An opening handshake carrying a browser's C{Origin} that the
operator did not list is refused with HTTP 403 (L{cairn.transport.origins}).
A message above the maximum payload is answered with a cairn Close
(payload too large) before autobahn fails the WebSocket.

Closing: after a cairn Close, only its sender starts the WebSocket closing
handshake; the receiver answers it
(L{cairn.transport.websocket_messages._EnvelopeMessages.closing_handshake},
read by L{cairn.session.connection.Connection}).

autobahn's debug-log arguments, its timers and its masking of small
frames are adapted in L{cairn.transport.autobahn_compat} (version-guarded,
with the reasons). Per message and per connection autobahn is used
leanly (issue 19): its per-message hooks, its read and write paths and
its option walk are cut to what cairn uses
(L{cairn.transport.websocket_messages}, L{_BakedOptions}); the opening
handshake's common case (cairn's client and node talking) is read by
L{cairn.transport.websocket_upgrade}, every other by autobahn; the
per-connection set-up is cut to what cairn reads
(L{cairn.transport.websocket_setup}); the frame parser and the closing
handshake are autobahn's.
"""

import copy
import inspect

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from zope.interface import implementer

from cairn.session.interfaces import IFrameTransport
from cairn.transport import autobahn_compat
from cairn.transport.limits import MAX_WRITE_BUFFER, OutputGuard, Refused, refusal_http
from cairn.transport.origins import OriginPolicy
from cairn.transport.settings import TransportSettings
from cairn.transport.shared_keys import share_transport_names
from cairn.transport.websocket_messages import _EnvelopeMessages
from cairn.transport.websocket_setup import _LeanSetUp
from cairn.transport.websocket_upgrade import LastPlain, _PlainUpgradeClient, _PlainUpgradeServer
from cairn.wire.constants import HEADER_SIZE, CloseCode

SUBPROTOCOL = "cairn.v1"
#: An upgrade request still without its blank line after this many bytes
#: is refused (HTTP 431): autobahn itself buffers it without bound.
MAX_UPGRADE_BYTES = 16 * 1024


autobahn_compat.install()


@implementer(IFrameTransport)
class ServerProtocol(_PlainUpgradeServer, _EnvelopeMessages, _LeanSetUp, WebSocketServerProtocol):
    """Responder side of a cairn WebSocket."""

    #: Its place in the per-source handshake limit (set by the factory), and
    #: the L{OutputGuard} against a peer that does not read.
    ticket = None
    _guard = None

    def onConnect(self, request):
        if request.path != "/":
            raise ConnectionDeny(404, "cairn serves /")
        if not self.factory.origins.allows(request.origin):
            # A web page the operator did not list (docs/protocol.md §2.2).
            raise ConnectionDeny(403, "origin not allowed")
        self.sink = self.factory.local.connection(initiator=False)
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def onOpen(self):
        settings = self.factory.settings
        if settings.write_limit is not None:
            self._guard = OutputGuard(self.transport, settings, self)
        super().onOpen()

    def output_overflow(self, reason):
        """The L{OutputGuard}'s call: the Close is queued behind what the peer does not read, so abort."""
        if self.sink is not None:
            self.sink.framing_error(CloseCode.LIMIT_REACHED, reason)
        self.dropConnection(abort=True)

    def dataReceived(self, data):
        self._dataReceived(data)
        if self.state == self.STATE_CONNECTING and len(self.data) > MAX_UPGRADE_BYTES:
            self.failHandshake("Request Header Fields Too Large", 431)

    def _envelope_handled(self):
        if self.ticket is not None and self.sink is not None and self.sink.session is not None:
            self.ticket.done()  # handshake or Reconnect completed
            self.ticket = None  # not held by an idle session (issue 19)

    def connectionLost(self, reason=None):
        if self.ticket is not None:
            self.ticket.done()
        super().connectionLost(reason)


@implementer(IFrameTransport)
class ClientProtocol(_PlainUpgradeClient, _EnvelopeMessages, _LeanSetUp, WebSocketClientProtocol):
    """Initiator side of a cairn WebSocket; the factory supplies the sink."""

    def connectionMade(self):
        # The Connection exists from the TCP connection on, so that a
        # WebSocket failing before it opens (opening handshake timeout, an
        # HTTP refusal such as 429) fails the dialer's Deferred.
        self.sink = self.factory.make_sink()
        super().connectionMade()


def _limit_options(factory, settings):
    factory.settings = settings
    # autobahn's handshake and close timers go through the injected clock
    # like every other timer (txaio would use the global reactor).
    autobahn_compat.use_clock(factory, settings.clock)
    limit = settings.max_payload + HEADER_SIZE
    factory.setProtocolOptions(
        maxMessagePayloadSize=limit,
        maxFramePayloadSize=limit,
        openHandshakeTimeout=settings.handshake_timeout,
        closeHandshakeTimeout=5,
        # Fail with a closing handshake, not a bare drop, so that the cairn
        # Close written just before is flushed to the peer.
        failByDrop=False,
        autoFragmentSize=0,
    )


class _BakedOptions:
    """L{bake_options} for the server and client factories."""

    def bake_options(self):
        """
        Make C{protocol} a subclass of itself holding this factory's
        protocol options as class attributes.

        autobahn copies its ~30 options (C{CONFIG_ATTRS}) from the factory
        into every protocol instance, unless the protocol already has them
        (C{_connectionMade}): as class attributes they are not copied, and
        each WebSocket's instance dict is smaller by that much (about 1.5 KB
        per session, issue 20). Later L{setProtocolOptions} calls bake again.

        The baked class's own C{CONFIG_ATTRS} is empty: C{_connectionMade}
        reads it only to copy what is missing on the protocol (nothing,
        once baked) and to list every option with its source for a debug
        log event, a C{hasattr}, two C{getattr} and a tuple for each of ~30
        options on every connection (issue 19; that debug event now lists
        none). The full list stays on the unbaked class (C{_unbaked}).

        An option that is a plain function (C{perMessageCompressionAccept},
        a lambda on the factory) is baked as a C{staticmethod}: as a bare
        class attribute it would become a method of each protocol and get
        the protocol as an extra argument (a browser offering
        permessage-deflate then failed the opening handshake).
        """
        base = getattr(self.protocol, "_unbaked", self.protocol)
        options = {}
        for name in base.CONFIG_ATTRS:
            value = getattr(self, name)
            options[name] = staticmethod(value) if inspect.isfunction(value) else value
        self.protocol = type(
            base.__name__,
            (base,),
            {**options, "CONFIG_ATTRS": (), "_unbaked": base, "__module__": base.__module__},
        )

    def setProtocolOptions(self, **options):
        super().setProtocolOptions(**options)
        if getattr(self.protocol, "_unbaked", None) is not None:
            self.bake_options()


class _ServerFactory(_BakedOptions, WebSocketServerFactory):
    #: A L{cairn.transport.fds.DescriptorGauge} (L{server_factory}'s
    #: C{gauge}): new connections are closed at once while descriptors are critical.
    gauge = None
    limiter = None
    origins = OriginPolicy()
    #: The last plain upgrade request (L{websocket_upgrade.LastPlain}), or None: always parsed.
    last_request = None
    #: The 101 response by subprotocol, split around the accept value
    #: (L{websocket_upgrade._PlainUpgradeServer._succeed}), or None: always autobahn's.
    responses = None

    def setSessionParameters(self, *args, **kwargs):
        # The server name and headers go into the responses: built anew.
        super().setSessionParameters(*args, **kwargs)
        if self.responses is not None:
            self.responses = {}

    def startFactory(self):
        # Before the first connection is accepted (issue 19: a dict fewer per transport).
        share_transport_names()
        super().startFactory()

    def buildProtocol(self, addr):
        if self.gauge is not None and not self.gauge.admit():
            return None  # closed at once (see cairn.transport.tcp.StreamFactory)
        ticket = None
        if self.limiter is not None:
            ticket = self.limiter.admit(addr)
            if ticket is None:
                return Refused(refusal_http())
        protocol = super().buildProtocol(addr)
        protocol.ticket = ticket
        return protocol


def server_factory(
    local, limiter=None, allowed_origins=(), *, settings: TransportSettings = None, gauge=None
) -> WebSocketServerFactory:
    """
    A factory serving cairn on C{/} for the local L{Peer}.

    @param limiter: a L{cairn.transport.limits.SourceLimiter}, or None.
    @param allowed_origins: web page origins that may open a WebSocket
        (L{cairn.transport.origins}); a client sending no C{Origin} always may.
    @param settings: the listener's L{TransportSettings} (default: the
        peer's limits and clock, with the default write limit).
    @param gauge: a L{cairn.transport.fds.DescriptorGauge} (the node's), or
        None: refuse at once while descriptors are critical.
    """
    if settings is None:
        settings = TransportSettings.for_peer(local, write_limit=MAX_WRITE_BUFFER)
    factory = _ServerFactory()
    factory.protocol = ServerProtocol
    factory.local = local
    factory.limiter = limiter
    factory.gauge = gauge
    factory.origins = OriginPolicy(allowed_origins)
    factory.last_request = LastPlain()
    factory.responses = {}
    _limit_options(factory, settings)
    # autobahn would refuse a "null" Origin itself, with HTTP 400: let it
    # through to onConnect, where the configured policy decides (403).
    # (Every setProtocolOptions call resets this option to False: last.)
    factory.setProtocolOptions(allowNullOrigin=True)
    factory.bake_options()
    return factory


class _ClientFactory(_BakedOptions, WebSocketClientFactory):
    make_sink = None
    #: The upgrade request around its key (L{ClientProtocol.startHandshake}),
    #: a list shared by a template's copies, or None: always autobahn's.
    request_parts = None
    #: The last plain upgrade response (L{websocket_upgrade.LastPlain}),
    #: shared by a template's copies (one list of offered subprotocols), or None.
    last_response = None


#: Client factories already set up, by (settings, url): L{client_factory}
#: copies them. At most L{CLIENT_TEMPLATES} are kept.
_client_templates = {}
CLIENT_TEMPLATES = 64


def _client_template(settings: TransportSettings, url: str) -> _ClientFactory:
    key = (settings, url)
    template = _client_templates.get(key)
    if template is None:
        template = _ClientFactory(url, protocols=[SUBPROTOCOL])
        # One factory per connection: no "Starting/Stopping factory" events.
        template.noisy = False
        template.protocol = ClientProtocol
        _limit_options(template, settings)
        template.bake_options()
        template.request_parts = []
        template.last_response = LastPlain()
        if len(_client_templates) >= CLIENT_TEMPLATES:
            _client_templates.clear()
        _client_templates[key] = template
    return template


def client_factory(settings: TransportSettings, url: str, make_sink) -> WebSocketClientFactory:
    """
    A factory connecting to C{url}; C{make_sink()} builds the Connection.

    Each connection has its own factory (its C{make_sink}), a shallow copy
    of one set up once per (settings, url): autobahn's factory set-up
    parses the URL, resets and sets its ~40 options and makes a handshake
    timer, about a tenth of a client's CPU per WebSocket handshake. What
    the copies share is only read once set up (the URL's parts, the
    options, which are class attributes of the protocol as on the server,
    L{_BakedOptions}) or meant to be shared (the batched timer).
    """
    factory = copy.copy(_client_template(settings, url))
    factory.make_sink = make_sink
    return factory
