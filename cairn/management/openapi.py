"""
The management API described as an OpenAPI 3.1 document.

Kept by hand next to the routes in L{cairn.management.app}; a test checks
that both list exactly the same paths and methods. The schemas are in
L{cairn.management.openapi_schemas}, the responses and helpers in
L{cairn.management.openapi_components}.
"""

from cairn.management.openapi_components import (
    PEER_ID_BODY,
    PEER_ID_PARAMETER,
    RESPONSES,
    errors,
    json_content,
    ref,
)
from cairn.management.openapi_schemas import SCHEMAS

_PUBLIC = []  # an empty security requirement: no token needed


def _operation(operation_id, summary, responses, *, tags, public=False, **extra):
    operation = {"operationId": operation_id, "summary": summary, "tags": tags, "responses": responses}
    if public:
        operation["security"] = _PUBLIC
    operation.update(extra)
    return operation


def _paths():
    authed = (401, 413, 500)
    return {
        "/health": {
            "get": _operation(
                "getHealth",
                "Liveness: status, version, uptime and session count (no token needed).",
                {"200": json_content(ref("Health"), "The node is up."), **errors(413, 500)},
                tags=["node"],
                public=True,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "getOpenAPI",
                "This document (no token needed).",
                {"200": json_content({"type": "object"}, "The OpenAPI 3.1 document."), **errors(413, 500)},
                tags=["node"],
                public=True,
            )
        },
        "/config": {
            "get": _operation(
                "getConfig",
                "The effective configuration: every setting, its value and its source; secrets redacted.",
                {"200": json_content(ref("ConfigReport"), "Settings."), **errors(*authed)},
                tags=["node"],
            )
        },
        "/peers": {
            "get": _operation(
                "listPeers",
                "Paired peers and their connection status.",
                {
                    "200": json_content({"type": "array", "items": ref("PairedPeer")}, "Paired peers, by peer id."),
                    **errors(*authed),
                },
                tags=["peers"],
            )
        },
        "/peers/pending": {
            "get": _operation(
                "listPendingPeers",
                "Pairing requests waiting for operator approval.",
                {
                    "200": json_content({"type": "array", "items": ref("PeerRecord")}, "Pending requests, by peer id."),
                    **errors(*authed),
                },
                tags=["peers"],
            )
        },
        "/peers/approve": {
            "post": _operation(
                "approvePeer",
                "Approve a pending pairing request.",
                {
                    "200": json_content(ref("PeerRecord"), "The peer is now paired."),
                    **errors(400, 404, 507, *authed),
                },
                tags=["peers"],
                requestBody=PEER_ID_BODY,
            )
        },
        "/peers/reject": {
            "post": _operation(
                "rejectPeer",
                "Reject (drop) a pending pairing request.",
                {"200": json_content(ref("Rejected"), "The request is gone."), **errors(400, 404, 507, *authed)},
                tags=["peers"],
                requestBody=PEER_ID_BODY,
            )
        },
        "/peers/{peer_id}": {
            "delete": _operation(
                "unpairPeer",
                "Revoke a paired peer: end its sessions and purge what is held for it.",
                {"200": json_content(ref("Revoked"), "The peer is revoked."), **errors(400, 404, *authed, 507)},
                tags=["peers"],
                parameters=[PEER_ID_PARAMETER],
            )
        },
        "/pairing": {
            "get": _operation(
                "getPairing",
                "This node's peer id and the state of PSK and PIN pairing (burned PINs included).",
                {"200": json_content(ref("PairingStatus"), "Pairing state; no secret."), **errors(*authed)},
                tags=["pairing"],
            )
        },
        "/pairing/psk": {
            "post": _operation(
                "rotatePsk",
                "Put a new PSK in force at once; without 'psk' the node generates one. "
                "The response is the only place the PSK is shown.",
                {
                    "201": json_content(ref("PskRotated"), "The PSK now in force, and its state."),
                    **errors(400, *authed),
                },
                tags=["pairing"],
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": ref("PskRequest"), "example": {}}},
                },
            ),
            "delete": _operation(
                "disablePsk",
                "Turn PSK pairing off until the next rotation.",
                {"200": json_content(ref("PskStatus"), "PSK state."), **errors(*authed)},
                tags=["pairing"],
            ),
        },
        "/pairing/pin": {
            "post": _operation(
                "createPin",
                "Create a single-use pairing PIN.",
                {"201": json_content(ref("Pin"), "A new PIN."), **errors(*authed)},
                tags=["pairing"],
            )
        },
        "/pairing/link": {
            "post": _operation(
                "createLink",
                "Create a single-use pairing link.",
                {"201": json_content(ref("Link"), "A new link."), **errors(*authed)},
                tags=["pairing"],
            )
        },
        "/pairing/qr": {
            "get": _operation(
                "getPairingQr",
                "Create a single-use pairing link and return it as a QR code.",
                {
                    "200": {
                        "description": "The QR code of a new link.",
                        "headers": {
                            "X-Cairn-Link": {"schema": {"type": "string"}, "description": "The link encoded."},
                            "X-Cairn-Expires-At": {
                                "schema": {"type": "string"},
                                "description": "Unix time after which the link is refused.",
                            },
                        },
                        "content": {
                            "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    **errors(400, *authed),
                },
                tags=["pairing"],
                parameters=[
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["png", "svg"], "default": "png"},
                    }
                ],
            )
        },
        "/mailbox": {
            "get": _operation(
                "getMailbox",
                "Store-and-forward mailbox totals.",
                {"200": json_content(ref("MailboxStats"), "Mailbox totals."), **errors(*authed)},
                tags=["services"],
            )
        },
        "/mailbox/{peer_id}": {
            "get": _operation(
                "getMailboxPeer",
                "What the mailbox holds for one peer.",
                {
                    "200": json_content(ref("MailboxPeerStats"), "That peer's mailbox."),
                    **errors(400, 404, *authed),
                },
                tags=["services"],
                parameters=[PEER_ID_PARAMETER],
            )
        },
        "/mailbox/{peer_id}/limits": {
            "put": _operation(
                "putMailboxPeerLimits",
                "Override one peer's mailbox limits (persisted; null restores the default).",
                {
                    "200": json_content(ref("MailboxPeerStats"), "That peer's mailbox with the new limits."),
                    **errors(400, 404, *authed, 507),
                },
                tags=["services"],
                parameters=[PEER_ID_PARAMETER],
                requestBody={"required": True, "content": {"application/json": {"schema": ref("MailboxLimits")}}},
            )
        },
        "/relay": {
            "get": _operation(
                "getRelay",
                "Relay circuits.",
                {"200": json_content(ref("RelayStats"), "Relay state."), **errors(*authed)},
                tags=["services"],
            )
        },
        "/relay/{peer_id}/quota": {
            "put": _operation(
                "putRelayPeerQuota",
                "Set one peer's relay byte quota and/or rate limit (persisted; null removes one, absent keeps it).",
                {
                    "200": json_content(ref("RelayPeerStats"), "That peer's relay figures with the new quota."),
                    **errors(400, 404, *authed, 507),
                },
                tags=["services"],
                parameters=[PEER_ID_PARAMETER],
                requestBody={"required": True, "content": {"application/json": {"schema": ref("RelayLimits")}}},
            )
        },
        "/sync": {
            "get": _operation(
                "getSync",
                "Sync hub topics and device cursors.",
                {"200": json_content(ref("SyncStats"), "Sync state."), **errors(*authed)},
                tags=["services"],
            )
        },
        "/sync/{peer_id}/access": {
            "get": _operation(
                "getSyncPeerAccess",
                "The sync topics one paired peer may read and write.",
                {"200": json_content(ref("SyncPeerAccess"), "Its effective access."), **errors(400, 404, *authed)},
                tags=["services"],
                parameters=[PEER_ID_PARAMETER],
            ),
            "put": _operation(
                "putSyncPeerAccess",
                "Grant one paired peer its own sync topics (persisted); its subscriptions outside them end.",
                {"200": json_content(ref("SyncPeerAccess"), "Its new access."), **errors(400, 404, *authed, 507)},
                tags=["services"],
                parameters=[PEER_ID_PARAMETER],
                requestBody={"required": True, "content": {"application/json": {"schema": ref("SyncAccess")}}},
            ),
            "delete": _operation(
                "deleteSyncPeerAccess",
                "Put one paired peer back on the node's default sync access.",
                {
                    "200": json_content(ref("SyncPeerAccess"), "Its access, now the default."),
                    **errors(400, 404, *authed, 507),
                },
                tags=["services"],
                parameters=[PEER_ID_PARAMETER],
            ),
        },
        "/metrics": {
            "get": _operation(
                "getMetrics",
                "Prometheus metrics of this node (text exposition format).",
                {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **errors(*authed),
                },
                tags=["node"],
            )
        },
        "/history": {
            "get": _operation(
                "getHistory",
                "Messages stored and delivered and bytes relayed, per minute over the last hour (in memory).",
                {"200": json_content(ref("History"), "Per-minute increments."), **errors(*authed)},
                tags=["node"],
            )
        },
        "/node": {
            "get": _operation(
                "getNodeStatus",
                "The node's peer id, listeners and current warnings.",
                {"200": json_content(ref("NodeStatus"), "Node status."), **errors(*authed)},
                tags=["node"],
            )
        },
    }


def openapi_document(version: str) -> dict:
    """The OpenAPI 3.1 document of the management API, for cairn-server C{version}."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cairn-server management API",
            "version": version,
            "description": (
                "Operate a cairn server node: health, paired and pending peers, pairing "
                "secrets, mailbox/relay/sync state and metrics. Every endpoint but "
                "/health and /openapi.json needs `Authorization: Bearer <token>`. "
                'Errors are JSON objects {"error": "..."}.'
            ),
        },
        "servers": [{"url": "http://localhost:9090"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "node", "description": "Health, metrics and this document."},
            {"name": "peers", "description": "Paired peers and pending pairing requests."},
            {"name": "pairing", "description": "Single-use pairing PINs, links and QR codes."},
            {"name": "services", "description": "Mailbox, relay and sync state."},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "CAIRN_MGMT_TOKEN, CAIRN_MGMT_TOKEN_FILE, or the generated <data dir>/mgmt.token.",
                }
            },
            "schemas": SCHEMAS,
            "responses": RESPONSES,
        },
    }
