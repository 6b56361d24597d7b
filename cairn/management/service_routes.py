"""
The management API's routes of the services holding per-session state:
C{/mailbox}, C{/relay} and C{/sync}, their reports (with the node each
peer is on, among several) and their per-peer settings. A mixin of
L{cairn.management.app.ManagementAPI}, which owns C{mailbox_reports},
C{relay_reports}, C{sync_reports}, C{reports} and C{_report}.
"""

from twisted.internet.defer import maybeDeferred

from cairn.mailbox.interfaces import StoreFull
from cairn.management.http import BadRequest, InsufficientStorage, NotFound, json_object, peer_id_arg
from cairn.management.routing import ROUTES, endpoint
from cairn.pairing.interfaces import UnknownPeer


def _not_stored(error):
    return InsufficientStorage(f"the setting was not stored (storage full: {error}); nothing changed")


class ServiceRoutes:
    """C{/mailbox}, C{/relay} and C{/sync}."""

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

    @endpoint(ROUTES, "/mailbox", "GET")
    async def mailbox(self, request):
        """Store-and-forward totals."""
        result = await maybeDeferred(self._report(self.mailbox_reports, "mailbox").stats)
        return self._located(result, lambda r: r.get("peers", ()))

    @endpoint(ROUTES, "/mailbox/<peer_id>", "GET")
    async def mailbox_peer(self, request, peer_id):
        """What the mailbox holds for one peer."""
        peer_id = peer_id_arg(peer_id)
        result = await maybeDeferred(self._report(self.mailbox_reports, "mailbox").peer_stats, peer_id)
        if result is None:
            raise NotFound(f"no mailbox for {peer_id}")
        return self._located(result, lambda r: [r] if "peer_id" in r else [])

    async def _set_for_peer(self, setter, request, peer_id):
        """Hand a per-peer setting to a service: 404 if not paired, 400 if refused, 507 if the store is full."""
        peer_id = peer_id_arg(peer_id)
        body = json_object(request)
        try:
            return await maybeDeferred(setter, peer_id, body)
        except UnknownPeer:
            raise NotFound(f"{peer_id} is not paired") from None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        except StoreFull as e:
            raise _not_stored(e) from None

    @endpoint(ROUTES, "/mailbox/<peer_id>/limits", "PUT")
    async def mailbox_limits(self, request, peer_id):
        """Override one peer's mailbox limits (null: back to the node's default); persisted."""
        mailbox = self._report(self.mailbox_reports, "mailbox")
        return await self._set_for_peer(mailbox.set_peer_limits, request, peer_id)

    @endpoint(ROUTES, "/relay", "GET")
    async def relay(self, request):
        """Relay circuits."""
        result = await maybeDeferred(self._report(self.relay_reports, "relay").stats)
        return self._located(result, lambda r: r.get("peers", ()))

    @endpoint(ROUTES, "/relay/<peer_id>/quota", "PUT")
    async def relay_quota(self, request, peer_id):
        """Set one peer's relay byte quota and/or rate limit (null: none); persisted."""
        relay = self._report(self.relay_reports, "relay")
        return await self._set_for_peer(relay.put_quota, request, peer_id)

    @endpoint(ROUTES, "/sync", "GET")
    async def sync(self, request):
        """Sync topics and device cursors."""
        result = await maybeDeferred(self._report(self.sync_reports, "sync hub").stats)
        return self._located(result, lambda r: [d for t in r.get("topics", ()) for d in t.get("devices", ())])

    @endpoint(ROUTES, "/sync/<peer_id>/access", "GET")
    async def sync_access(self, request, peer_id):
        """The topics one paired peer may read and write on the sync hub."""
        peer_id = peer_id_arg(peer_id)
        try:
            return await maybeDeferred(self._report(self.sync_reports, "sync hub").access_report, peer_id)
        except UnknownPeer:
            raise NotFound(f"{peer_id} is not paired") from None

    @endpoint(ROUTES, "/sync/<peer_id>/access", "PUT")
    async def put_sync_access(self, request, peer_id):
        """Grant one paired peer its own sync topics ({"read": [...], "write": [...]}); persisted."""
        sync = self._report(self.sync_reports, "sync hub")
        return await self._set_for_peer(sync.set_access, request, peer_id)

    @endpoint(ROUTES, "/sync/<peer_id>/access", "DELETE")
    async def delete_sync_access(self, request, peer_id):
        """Put one paired peer back on the node's default sync access (CAIRN_SYNC_ACCESS)."""
        peer_id = peer_id_arg(peer_id)
        try:
            return await maybeDeferred(self._report(self.sync_reports, "sync hub").set_access, peer_id, None)
        except UnknownPeer:
            raise NotFound(f"{peer_id} is not paired") from None
        except StoreFull as e:
            raise _not_stored(e) from None
