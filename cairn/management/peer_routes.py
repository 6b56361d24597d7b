"""
The management API's routes of peers and pairing: paired and pending
peers, approval, rejection and unpairing; the PSK, PINs, links and their
QR code. A mixin of L{cairn.management.app.ManagementAPI}, which owns
C{pairing}, C{peer} and C{reports}.
"""

import io

import segno
from twisted.internet.defer import maybeDeferred

from cairn.mailbox.interfaces import StoreFull
from cairn.management.http import (
    BadRequest,
    InsufficientStorage,
    NotFound,
    json_object,
    peer_id_arg,
    peer_id_from_body,
    read_body,
)
from cairn.management.routing import ROUTES, Raw, endpoint
from cairn.management.status import transport_of
from cairn.pairing.interfaces import PAIRED, PENDING, REVOKED, UnknownPeer


class PeerRoutes:
    """C{/peers} and C{/pairing}."""

    @endpoint(ROUTES, "/peers", "GET")
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

    @endpoint(ROUTES, "/peers/pending", "GET")
    async def list_pending(self, request):
        """Pairing requests waiting for approval."""
        records = await maybeDeferred(self.pairing.trust.list, PENDING)
        return [r.to_json() for r in records]

    @endpoint(ROUTES, "/peers/approve", "POST")
    async def approve(self, request):
        """Approve a pending pairing request."""
        peer_id = peer_id_from_body(request)
        try:
            record = await maybeDeferred(self.pairing.approve, peer_id)
        except UnknownPeer:
            raise NotFound(f"no pending pairing request from {peer_id}") from None
        except StoreFull as e:
            raise InsufficientStorage(f"{peer_id} is not approved: the store cannot take it now ({e})") from None
        return record.to_json()

    @endpoint(ROUTES, "/peers/reject", "POST")
    async def reject(self, request):
        """Reject (drop) a pending pairing request."""
        peer_id = peer_id_from_body(request)
        try:
            await maybeDeferred(self.pairing.reject, peer_id)
        except UnknownPeer:
            raise NotFound(f"no pending pairing request from {peer_id}") from None
        except StoreFull as e:
            raise InsufficientStorage(f"{peer_id} is not rejected: the store cannot take it now ({e})") from None
        return {"peer_id": peer_id, "rejected": True}

    @endpoint(ROUTES, "/peers/<peer_id>", "DELETE")
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

    @endpoint(ROUTES, "/pairing", "GET")
    async def pairing_status(self, request):
        """This node's peer id and the state of PSK and PIN pairing (never a secret)."""
        return {"node_peer_id": self.peer.peer_id, **self.pairing.pairing_status()}

    @endpoint(ROUTES, "/pairing/psk", "POST", status=201)
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

    @endpoint(ROUTES, "/pairing/psk", "DELETE")
    async def disable_psk(self, request):
        """Turn PSK pairing off until the next rotation."""
        return self.pairing.disable_psk()

    @endpoint(ROUTES, "/pairing/pin", "POST", status=201)
    async def create_pin(self, request):
        """A new single-use pairing PIN."""
        created = await maybeDeferred(self.pairing.create_pin)
        await self._shared()
        return created

    async def _shared(self):
        """Answer once a new code works on every node of the deployment (at once for a node alone)."""
        await maybeDeferred(self.pairing.codes_shared)

    @endpoint(ROUTES, "/pairing/link", "POST", status=201)
    async def create_link(self, request):
        """A new single-use pairing link."""
        created = await maybeDeferred(self.pairing.create_link)
        await self._shared()
        return created

    @endpoint(ROUTES, "/pairing/qr", "GET")
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
        return Raw(out.getvalue(), content_type, headers)


def _number(value) -> str:
    """A Unix time for a header: whole seconds without a fraction."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
