"""
The management REST API (Klein), served on its own listener.

L{ManagementAPI} receives every service it reports on in its constructor;
L{make_site} wraps it for a listener.  Every endpoint speaks JSON except
C{/metrics} (Prometheus text) and C{/pairing/qr} (an image).  Every endpoint
but C{/health} and C{/openapi.json} requires C{Authorization: Bearer <token>}.
Errors are C{{"error": "..."}} with a matching status, mapped in one place
(L{cairn.management.routing.error_response}); tracebacks never reach a
client. How an endpoint is declared and answered is in
L{cairn.management.routing}.

The routes are grouped by resource: the node's own (health, OpenAPI,
configuration, metrics, history, status) here, peers and pairing in
L{cairn.management.peer_routes}, the services' reports and settings in
L{cairn.management.service_routes}; all are declared on one Klein
(L{cairn.management.routing.ROUTES}).
"""

from twisted.internet.defer import maybeDeferred

from cairn import __version__
from cairn.management.http import (
    BODY_LIMIT,
    ApiError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from cairn.management.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from cairn.management.openapi import openapi_document
from cairn.management.peer_routes import PeerRoutes
from cairn.management.reports import NodeReports
from cairn.management.routing import PUBLIC_PATHS, ROUTES, JSONResource, Raw, endpoint, error_response
from cairn.management.service_routes import ServiceRoutes
from cairn.management.site import make_site, warn_if_exposed

__all__ = [
    "BODY_LIMIT",
    "PUBLIC_PATHS",
    "ApiError",
    "BadRequest",
    "ManagementAPI",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "make_site",
    "warn_if_exposed",
]


class ManagementAPI(PeerRoutes, ServiceRoutes):
    """
    The management API of one node.

    @param pairing: the L{IPairingService}.
    @param peer: the local L{cairn.session.peer.Peer}.
    @param token: the bearer token (see L{cairn.management.token.resolve_token}).
    @param metrics: a L{cairn.management.metrics.Metrics}.
    @param clock: an C{IReactorTime}, for uptime.
    @param started_at: the node's start, in C{clock} seconds.
    @param mailbox: an L{IMailboxReports}, or None.
    @param sync: an L{ISyncReports}, or None.
    @param relay: an L{IRelayReports}, or None.
    @param reports: the node's own L{NodeReports} (default: none but a
        healthy SQLite store).

    A service or report the node does not have is a 404 (L{_report}).
    """

    app = ROUTES

    def __init__(
        self,
        pairing,
        peer,
        token: str,
        metrics,
        clock,
        started_at: float,
        *,
        mailbox=None,
        sync=None,
        relay=None,
        reports=None,
    ):
        if not token:
            raise ValueError("the management API needs a non-empty token")
        self.pairing = pairing
        self.peer = peer
        self.token = token
        self.metrics = metrics
        self.clock = clock
        self.started_at = started_at
        self.mailbox_reports = mailbox
        self.sync_reports = sync
        self.relay_reports = relay
        self.reports = reports if reports is not None else NodeReports()
        self._openapi = openapi_document(__version__)

    def resource(self):
        """The C{IResource} serving this API."""
        return JSONResource(self.app)

    def _report(self, what, name):
        """
        The one place where a missing service or report becomes a 404:
        C{what} (a service or a report callable), or L{NotFound} naming it.
        """
        if what is None:
            raise NotFound(f"the {name} is not served by this node")
        return what

    # Public

    @endpoint(app, "/health", "GET")
    async def health(self, request):
        """Liveness: status, version, uptime, session count, storage (and why it is degraded), disk, descriptors."""
        storage, problem = self.reports.storage()
        result = {
            "status": "ok" if problem is None else "degraded",
            "version": __version__,
            "uptime": round(max(0.0, self.clock.seconds() - self.started_at), 3),
            "sessions": len(self.peer.sessions),
            "storage": storage,
        }
        if problem is not None:
            result["reason"] = problem
        presence = self.reports.presence
        if presence is not None:
            result["node"] = presence.node
        if self.reports.cluster is not None:
            result["cluster"] = await maybeDeferred(self.reports.cluster)
        if self.reports.disk is not None:
            result["disk"] = self.reports.disk()
        if self.reports.descriptors is not None:
            result["descriptors"] = self.reports.descriptors()
        return result

    @endpoint(app, "/openapi.json", "GET")
    async def openapi(self, request):
        """This API described as OpenAPI 3.1."""
        return self._openapi

    @endpoint(app, "/config", "GET")
    async def config(self, request):
        """The effective configuration: each setting's value and source, secrets redacted."""
        return await maybeDeferred(self._report(self.reports.config, "configuration report"))

    @endpoint(app, "/metrics", "GET")
    async def prometheus(self, request):
        """Prometheus metrics of this node."""
        await self.metrics.refresh_peer_counts(self.pairing.trust)
        return Raw(self.metrics.exposition(), METRICS_CONTENT_TYPE)

    @endpoint(app, "/history", "GET")
    async def history(self, request):
        """Messages stored and delivered and bytes relayed, per minute over the last hour."""
        return await maybeDeferred(self._report(self.reports.history, "history"))

    @endpoint(app, "/node", "GET")
    async def node(self, request):
        """The node's peer id, listeners and current warnings."""
        return await maybeDeferred(self._report(self.reports.status, "node status"))

    # The one place where exceptions become responses.

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return error_response(request, failure)
