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
"""

import io

import segno
from klein import Klein
from twisted.internet.defer import maybeDeferred

from cairn import __version__
from cairn.mailbox.interfaces import StoreFull
from cairn.management.http import (
    BODY_LIMIT,
    ApiError,
    BadRequest,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    json_object,
    peer_id_arg,
    peer_id_from_body,
    read_body,
)
from cairn.management.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from cairn.management.openapi import openapi_document
from cairn.management.reports import NodeReports
from cairn.management.routing import PUBLIC_PATHS, JSONResource, Segment, error_response
from cairn.management.routing import Raw as _Raw  # the names the routes below use
from cairn.management.routing import endpoint as _endpoint
from cairn.management.site import make_site, warn_if_exposed
from cairn.management.status import transport_of
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED, UnknownPeer

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


class ManagementAPI:
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

    app = Klein()
    # A path segment in <...> never takes the name of a fixed route beside
    # it: DELETE /peers/approve is a 405 (POST only), not a peer id "approve".
    app.url_map.converters["default"] = Segment

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

    @_endpoint(app, "/health", "GET")
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

    @_endpoint(app, "/openapi.json", "GET")
    async def openapi(self, request):
        """This API described as OpenAPI 3.1."""
        return self._openapi

    @_endpoint(app, "/config", "GET")
    async def config(self, request):
        """The effective configuration: each setting's value and source, secrets redacted."""
        return await maybeDeferred(self._report(self.reports.config, "configuration report"))

    # Peers

    @_endpoint(app, "/peers", "GET")
    async def list_peers(self, request):
        """Paired peers with their connection status."""
        records = await maybeDeferred(self.pairing.trust.list, PAIRED)
        result = []
        for r in records:
            nodes = self._where(r.peer_id)
            entry = {
                "peer_id": r.peer_id,
                "name": r.name,
                # Connected to any node of the deployment (this one alone: here).
                "connected": bool(self.pairing.connected(r.peer_id)) or bool(nodes),
                "transport": transport_of(self.peer, r.peer_id),
                "paired_at": r.paired_at,
                "last_seen": r.last_seen,
                "method": r.method or None,
            }
            if self.reports.presence is not None:
                entry["node"] = nodes[0] if nodes else None
                entry["nodes"] = list(nodes)
            result.append(entry)
        return result

    def _where(self, peer_id):
        """The nodes holding C{peer_id}'s sessions (L{IPresence}), this one first; () without presence."""
        presence = self.reports.presence
        return tuple(presence.where(peer_id)) if presence is not None else ()

    def _located(self, result, entries):
        """
        Add the deployment's view to a service report: C{node} (this node's
        name) on C{result}, and on each of C{entries} (dicts with a
        C{peer_id}) the node that peer is on (None: on none).
        """
        presence = self.reports.presence
        if presence is None or not isinstance(result, dict):
            return result
        result["node"] = presence.node
        for entry in entries(result):
            located = presence.locate(entry["peer_id"])
            entry["node"] = located
            if "connected" in entry:
                entry["connected"] = bool(entry["connected"]) or located is not None
        return result

    @_endpoint(app, "/peers/pending", "GET")
    async def list_pending(self, request):
        """Pairing requests waiting for approval."""
        records = await maybeDeferred(self.pairing.trust.list, PENDING)
        return [r.to_json() for r in records]

    @_endpoint(app, "/peers/approve", "POST")
    async def approve(self, request):
        """Approve a pending pairing request."""
        peer_id = peer_id_from_body(request)
        try:
            record = await maybeDeferred(self.pairing.approve, peer_id)
        except UnknownPeer:
            raise NotFound(f"no pending pairing request from {peer_id}") from None
        return record.to_json()

    @_endpoint(app, "/peers/reject", "POST")
    async def reject(self, request):
        """Reject (drop) a pending pairing request."""
        peer_id = peer_id_from_body(request)
        try:
            await maybeDeferred(self.pairing.reject, peer_id)
        except UnknownPeer:
            raise NotFound(f"no pending pairing request from {peer_id}") from None
        return {"peer_id": peer_id, "rejected": True}

    @_endpoint(app, "/peers/<peer_id>", "DELETE")
    async def unpair(self, request, peer_id):
        """Revoke a paired peer: its sessions end and what is held for it is purged."""
        peer_id = peer_id_arg(peer_id)
        try:
            await maybeDeferred(self.pairing.unpair, peer_id)
        except UnknownPeer:
            raise NotFound(f"{peer_id} is not paired") from None
        except StoreFull as e:
            # The revocation is stored and the sessions closed before the
            # purge runs; the pairing service has logged the purge's line.
            raise InsufficientStorage(
                f"{peer_id} is revoked and its sessions are closed, but what is held for it was not purged"
                f" (storage full: {e}); it can no longer be fetched, and the mailbox's sweep purges it"
                " once the store has room"
            ) from None
        return {"peer_id": peer_id, "state": REVOKED}

    # Pairing secrets

    @_endpoint(app, "/pairing", "GET")
    async def pairing_status(self, request):
        """This node's peer id and the state of PSK and PIN pairing (never a secret)."""
        return {"node_peer_id": self.peer.peer_id, **self.pairing.pairing_status()}

    @_endpoint(app, "/pairing/psk", "POST", status=201)
    async def rotate_psk(self, request):
        """Put a new PSK in force (the one given, or a generated one); the response shows it, once."""
        from cairn.pairing.psk import PskError

        psk = None
        if read_body(request).strip():
            body = json_object(request)
            if "psk" in body:
                psk = body["psk"]
                if not isinstance(psk, str):
                    raise BadRequest("psk must be a string (leave it out to have one generated)")
        try:
            result = self.pairing.rotate_psk(psk)
        except PskError as e:
            raise BadRequest(str(e)) from None
        request.setHeader(b"cache-control", b"no-store")
        return result

    @_endpoint(app, "/pairing/psk", "DELETE")
    async def disable_psk(self, request):
        """Turn PSK pairing off until the next rotation."""
        return self.pairing.disable_psk()

    @_endpoint(app, "/pairing/pin", "POST", status=201)
    async def create_pin(self, request):
        """A new single-use pairing PIN."""
        created = await maybeDeferred(self.pairing.create_pin)
        await self._shared()
        return created

    async def _shared(self):
        """Answer once a new code works on every node of the deployment (at once for a node alone)."""
        shared = getattr(self.pairing, "codes_shared", None)
        if shared is not None:
            await maybeDeferred(shared)

    @_endpoint(app, "/pairing/link", "POST", status=201)
    async def create_link(self, request):
        """A new single-use pairing link."""
        created = await maybeDeferred(self.pairing.create_link)
        await self._shared()
        return created

    @_endpoint(app, "/pairing/qr", "GET")
    async def qr(self, request):
        """A new single-use pairing link as a QR code image."""
        kind = request.args.get(b"format", [b"png"])[0].decode("utf-8", "replace")
        if kind not in ("png", "svg"):
            raise BadRequest("format must be png or svg")
        created = await maybeDeferred(self.pairing.create_link)
        await self._shared()
        link = created["link"]
        out = io.BytesIO()
        segno.make(link, error="m", micro=False).save(out, kind=kind, scale=8, border=4)
        content_type = "image/png" if kind == "png" else "image/svg+xml"
        headers = {"X-Cairn-Link": link, "X-Cairn-Expires-At": _number(created["expires_at"])}
        return _Raw(out.getvalue(), content_type, headers)

    # Services

    @_endpoint(app, "/mailbox", "GET")
    async def mailbox(self, request):
        """Store-and-forward totals."""
        result = await maybeDeferred(self._report(self.mailbox_reports, "mailbox").stats)
        return self._located(result, lambda r: r.get("peers", ()))

    @_endpoint(app, "/mailbox/<peer_id>", "GET")
    async def mailbox_peer(self, request, peer_id):
        """What the mailbox holds for one peer."""
        peer_id = peer_id_arg(peer_id)
        result = await maybeDeferred(self._report(self.mailbox_reports, "mailbox").peer_stats, peer_id)
        if result is None:
            raise NotFound(f"no mailbox for {peer_id}")
        return self._located(result, lambda r: [r] if "peer_id" in r else [])

    async def _set_for_peer(self, setter, request, peer_id):
        """Hand a per-peer setting to a service: 404 if not paired, 400 if refused."""
        peer_id = peer_id_arg(peer_id)
        body = json_object(request)
        try:
            return await maybeDeferred(setter, peer_id, body)
        except UnknownPeer:
            raise NotFound(f"{peer_id} is not paired") from None
        except ValueError as e:
            raise BadRequest(str(e)) from None

    @_endpoint(app, "/mailbox/<peer_id>/limits", "PUT")
    async def mailbox_limits(self, request, peer_id):
        """Override one peer's mailbox limits (null: back to the node's default); persisted."""
        mailbox = self._report(self.mailbox_reports, "mailbox")
        return await self._set_for_peer(mailbox.set_peer_limits, request, peer_id)

    @_endpoint(app, "/relay", "GET")
    async def relay(self, request):
        """Relay circuits."""
        result = await maybeDeferred(self._report(self.relay_reports, "relay").stats)
        return self._located(result, lambda r: r.get("peers", ()))

    @_endpoint(app, "/relay/<peer_id>/quota", "PUT")
    async def relay_quota(self, request, peer_id):
        """Set one peer's relay byte quota and/or rate limit (null: none); persisted."""
        relay = self._report(self.relay_reports, "relay")
        return await self._set_for_peer(relay.put_quota, request, peer_id)

    @_endpoint(app, "/sync", "GET")
    async def sync(self, request):
        """Sync topics and device cursors."""
        result = await maybeDeferred(self._report(self.sync_reports, "sync hub").stats)
        return self._located(result, lambda r: [d for t in r.get("topics", ()) for d in t.get("devices", ())])

    @_endpoint(app, "/sync/<peer_id>/access", "GET")
    async def sync_access(self, request, peer_id):
        """The topics one paired peer may read and write on the sync hub."""
        peer_id = peer_id_arg(peer_id)
        try:
            return await maybeDeferred(self._report(self.sync_reports, "sync hub").access_report, peer_id)
        except UnknownPeer:
            raise NotFound(f"{peer_id} is not paired") from None

    @_endpoint(app, "/sync/<peer_id>/access", "PUT")
    async def put_sync_access(self, request, peer_id):
        """Grant one paired peer its own sync topics ({"read": [...], "write": [...]}); persisted."""
        sync = self._report(self.sync_reports, "sync hub")
        return await self._set_for_peer(sync.set_access, request, peer_id)

    @_endpoint(app, "/sync/<peer_id>/access", "DELETE")
    async def delete_sync_access(self, request, peer_id):
        """Put one paired peer back on the node's default sync access (CAIRN_SYNC_ACCESS)."""
        peer_id = peer_id_arg(peer_id)
        try:
            return await maybeDeferred(self._report(self.sync_reports, "sync hub").set_access, peer_id, None)
        except UnknownPeer:
            raise NotFound(f"{peer_id} is not paired") from None

    @_endpoint(app, "/metrics", "GET")
    async def prometheus(self, request):
        """Prometheus metrics of this node."""
        await self.metrics.refresh_peer_counts(self.pairing.trust)
        return _Raw(self.metrics.exposition(), METRICS_CONTENT_TYPE)

    @_endpoint(app, "/history", "GET")
    async def history(self, request):
        """Messages stored and delivered and bytes relayed, per minute over the last hour."""
        return await maybeDeferred(self._report(self.reports.history, "history"))

    @_endpoint(app, "/node", "GET")
    async def node(self, request):
        """The node's peer id, listeners and current warnings."""
        return await maybeDeferred(self._report(self.reports.status, "node status"))

    # The one place where exceptions become responses.

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return error_response(request, failure)


def _number(value) -> str:
    """A Unix time for a header: whole seconds without a fraction."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
