"""
The management API described as an OpenAPI 3.1 document.

Kept by hand next to the routes in L{cairn.management.app}; a test checks
that both list exactly the same paths and methods.
"""

_PEER_ID = {
    "type": "string",
    "description": (
        "Base58 multihash (0x12 0x20 + sha256 of the Ed25519 public key): 46 characters starting"
        " with Qm. Not every such string decodes to a sha2-256 multihash; one that does not is a 400."
    ),
    "pattern": "^Qm[1-9A-HJ-NP-Za-km-z]{44}$",
    "examples": ["QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"],
}

_TIME = {"type": ["number", "null"], "description": "Unix time in seconds."}


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes):
    return {str(code): {"$ref": f"#/components/responses/{_ERROR_RESPONSES[code]}"} for code in codes}


_ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    413: "PayloadTooLarge",
    500: "InternalError",
}

_SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What went wrong, for a human."}},
    },
    "PeerId": _PEER_ID,
    "PeerIdRequest": {
        "type": "object",
        "required": ["peer_id"],
        "properties": {"peer_id": _ref("PeerId")},
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "uptime", "sessions", "storage"],
        "properties": {
            "status": {
                "type": "string",
                "enum": ["ok", "degraded"],
                "description": "degraded: the node is up but its storage cannot be used now (see reason).",
            },
            "version": {"type": "string"},
            "uptime": {"type": "number", "description": "Seconds since the node started."},
            "sessions": {"type": "integer", "description": "Live sessions (attached or detached)."},
            "disk": {
                "type": "object",
                "description": "The data directory's file system: new messages are refused while low.",
                "required": ["free_bytes", "reusable_bytes", "reserve_bytes", "low"],
                "properties": {
                    "free_bytes": {"type": "integer", "description": "Bytes free on the file system."},
                    "reusable_bytes": {"type": "integer", "description": "Free pages inside the database."},
                    "reserve_bytes": {"type": "integer", "description": "CAIRN_DISK_RESERVE."},
                    "low": {"type": "boolean", "description": "Free and reusable bytes are below the reserve."},
                },
            },
            "descriptors": {
                "type": "object",
                "description": "File-descriptor pressure (docs/reliability.md): state ok, high "
                "(unpaired peers turned away) or critical (new cairn connections refused).",
                "required": ["in_use", "limit", "high_water", "critical_water", "state", "refused"],
                "properties": {
                    "in_use": {"type": "integer"},
                    "limit": {"type": "integer", "description": "The soft RLIMIT_NOFILE."},
                    "high_water": {"type": "integer"},
                    "critical_water": {"type": "integer"},
                    "state": {"type": "string", "enum": ["ok", "high", "critical"]},
                    "refused": {"type": "integer", "description": "Connections refused at the critical mark."},
                },
            },
            "storage": {
                "type": "string",
                "enum": ["sqlite", "jetstream"],
                "description": "Where the node's state lives (CAIRN_CLUSTER_NATS set: NATS JetStream).",
            },
            "reason": {"type": "string", "description": "Why the node is degraded (only then)."},
        },
    },
    "PairedPeer": {
        "type": "object",
        "required": ["peer_id", "name", "connected", "paired_at", "last_seen", "method"],
        "properties": {
            "peer_id": _ref("PeerId"),
            "name": {"type": "string"},
            "connected": {"type": "boolean", "description": "Whether a session with it is attached now."},
            "paired_at": _TIME,
            "last_seen": _TIME,
            "method": {"type": ["string", "null"], "enum": ["psk", "pin", "link", "approval", None]},
            "transport": {
                "type": ["string", "null"],
                "enum": ["tcp", "websocket", "other", None],
                "description": "How its attached session reaches the node; null when not connected.",
            },
        },
    },
    "PeerRecord": {
        "type": "object",
        "required": ["peer_id", "name", "state", "method", "requested_at", "paired_at", "last_seen"],
        "properties": {
            "peer_id": _ref("PeerId"),
            "name": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "paired", "revoked"]},
            "method": {"type": ["string", "null"]},
            "requested_at": _TIME,
            "paired_at": _TIME,
            "last_seen": _TIME,
        },
    },
    "Rejected": {
        "type": "object",
        "required": ["peer_id", "rejected"],
        "properties": {"peer_id": _ref("PeerId"), "rejected": {"type": "boolean", "const": True}},
    },
    "Revoked": {
        "type": "object",
        "required": ["peer_id", "state"],
        "properties": {"peer_id": _ref("PeerId"), "state": {"type": "string", "const": "revoked"}},
    },
    "Pin": {
        "type": "object",
        "required": ["pin", "expires_at"],
        "properties": {
            "pin": {"type": "string", "examples": ["ABCD-2345"]},
            "expires_at": {"type": "number", "description": "Unix time after which it is refused."},
        },
    },
    "PskStatus": {
        "type": "object",
        "required": ["enabled"],
        "properties": {
            "enabled": {"type": "boolean"},
            "source": {"type": "string", "description": "CAIRN_PSK, or api once set through this API."},
            "set_at": {"type": ["number", "null"]},
            "expires_at": {"type": ["number", "null"], "description": "CAIRN_PSK_EXPIRES after set_at."},
            "max_uses": {"type": ["integer", "null"], "description": "CAIRN_PSK_MAX_USES; null: no limit."},
            "uses": {"type": "integer"},
        },
    },
    "PskRotated": {
        "allOf": [
            _ref("PskStatus"),
            {"type": "object", "required": ["psk"], "properties": {"psk": {"type": "string"}}},
        ]
    },
    "PskRequest": {
        "type": "object",
        "properties": {"psk": {"type": "string", "minLength": 1, "description": "Omit to have one generated."}},
    },
    "PairingStatus": {
        "type": "object",
        "required": ["node_peer_id", "psk", "pin"],
        "properties": {
            "node_peer_id": _ref("PeerId"),
            "psk": _ref("PskStatus"),
            "pin": {
                "type": "object",
                "properties": {
                    "active": {"type": "boolean"},
                    "expires_at": {"type": ["number", "null"]},
                    "failures": {"type": "integer"},
                    "burned": {"type": "integer", "description": "PINs invalidated by wrong answers."},
                    "last_burned_at": {"type": ["number", "null"]},
                },
            },
            "links_active": {"type": "integer"},
        },
    },
    "Link": {
        "type": "object",
        "required": ["link", "expires_at"],
        "properties": {
            "link": {"type": "string", "examples": ["cairn://pair?..."]},
            "expires_at": {"type": "number", "description": "Unix time after which it is refused."},
        },
    },
    "MailboxStats": {
        "type": "object",
        "required": ["enabled", "peers", "messages", "bytes"],
        "properties": {
            "enabled": {"type": "boolean"},
            "peers": {"type": "array", "items": {"type": "object"}},
            "messages": {"type": "integer"},
            "bytes": {"type": "integer"},
        },
        "additionalProperties": True,
    },
    "MailboxPeerStats": {
        "type": "object",
        "description": "What the mailbox holds for one peer, and its limits.",
        "properties": {
            "peer_id": _ref("PeerId"),
            "messages": {"type": "integer"},
            "bytes": {"type": "integer", "description": "Payload bytes held."},
            "oldest_age": {"type": ["number", "null"], "description": "Seconds since the oldest was stored."},
            "connected": {"type": "boolean"},
            "limits": {
                "type": "object",
                "properties": {
                    "max_messages": {"type": "integer", "description": "In force (override or default)."},
                    "max_bytes": {"type": ["integer", "null"], "description": "In force; null: only the total."},
                    "override": {"anyOf": [_ref("MailboxLimits"), {"type": "null"}]},
                },
            },
        },
        "additionalProperties": True,
    },
    "MailboxLimits": {
        "type": "object",
        "description": "A per-peer override; null (or absent) means the node's default.",
        "properties": {
            "max_messages": {"type": ["integer", "null"], "minimum": 1},
            "max_bytes": {"type": ["integer", "null"], "minimum": 1},
        },
        "additionalProperties": False,
    },
    "RelayStats": {
        "type": "object",
        "required": ["circuits", "capacity", "peers"],
        "properties": {
            "circuits": {"type": "integer"},
            "capacity": {"type": ["integer", "null"]},
            "peers": {"type": "array", "items": {"type": "object"}},
        },
        "additionalProperties": True,
    },
    "RelayLimits": {
        "type": "object",
        "description": "One peer's relay limits: null removes one, an absent key leaves it as it is.",
        "properties": {
            "max_bytes": {"type": ["integer", "null"], "minimum": 0},
            "max_rate": {"type": ["integer", "null"], "minimum": 1, "description": "bytes per second"},
            "reset_bytes": {"type": "boolean", "description": "zero the peer's byte counts"},
        },
        "additionalProperties": False,
    },
    "RelayPeerStats": {
        "type": "object",
        "required": ["peer_id", "circuits", "bytes_sent", "bytes_received", "quota", "max_rate"],
        "properties": {
            "peer_id": {"type": "string"},
            "circuits": {"type": "integer"},
            "bytes_sent": {"type": "integer"},
            "bytes_received": {"type": "integer"},
            "quota": {"type": ["integer", "null"]},
            "max_rate": {"type": ["integer", "null"]},
        },
        "additionalProperties": False,
    },
    "SyncAccess": {
        "type": "object",
        "description": "Topic patterns: an exact topic, 'prefix*', or '*' for every topic.",
        "properties": {
            "read": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 256},
            "write": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 256},
        },
        "additionalProperties": False,
    },
    "SyncPeerAccess": {
        "type": "object",
        "required": ["peer_id", "default", "read", "write"],
        "properties": {
            "peer_id": {"type": "string"},
            "default": {"type": "boolean", "description": "true: the node's CAIRN_SYNC_ACCESS applies."},
            "read": {"type": "array", "items": {"type": "string"}},
            "write": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": False,
    },
    "SyncStats": {
        "type": "object",
        "required": ["topics"],
        "properties": {
            # Each: topic, head, oldest_seq, updates, bytes, and devices
            # [{peer_id, cursor, lag, behind_retention, connected}].
            "topics": {"type": "array", "items": {"type": "object"}},
            "updates": {"type": "integer"},
            "bytes": {"type": "integer"},
            "resets": {"type": "integer"},
            "limits": {"type": "object"},
        },
        "additionalProperties": True,
    },
}

_SCHEMAS["ConfigReport"] = {
    "type": "object",
    "required": ["settings"],
    "properties": {
        "settings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "variable", "value", "source"],
                "properties": {
                    "name": {"type": "string"},
                    "variable": {"type": "string", "description": "The CAIRN_* variable."},
                    "value": {"description": "Typed value; a set secret is \"<redacted>\"."},
                    "source": {"type": "string", "enum": ["default", "env", "flag", "set"]},
                },
            },
        },
        "listening": {
            "type": "object",
            "description": "Each listener's bound address (host:port), once serving.",
            "additionalProperties": {"type": "string"},
        },
    },
}

_RESPONSES = {
    "BadRequest": _json(_ref("Error"), "Malformed request: bad JSON, missing or invalid field."),
    "Unauthorized": {
        "description": "Missing or invalid bearer token.",
        "headers": {
            "WWW-Authenticate": {"schema": {"type": "string", "const": 'Bearer realm="cairn"'}},
        },
        "content": {"application/json": {"schema": _ref("Error")}},
    },
    "NotFound": _json(_ref("Error"), "No such peer in the required state, or no such endpoint."),
    "PayloadTooLarge": _json(_ref("Error"), "The request body is over 64 KiB."),
    "InternalError": _json(_ref("Error"), "Unexpected failure (logged on the server; no details sent)."),
}

# GET /history and GET /node (the web console's chart and health page).
_SCHEMAS["History"] = {
    "type": "object",
    "required": ["interval", "now", "series", "minutes"],
    "properties": {
        "interval": {"type": "number", "description": "Seconds per entry of minutes (60)."},
        "now": {**_TIME, "description": "The node's clock now (Unix seconds)."},
        "series": {"type": "array", "items": {"type": "string"}, "description": "The counters of each entry."},
        "minutes": {
            "type": "array",
            "description": (
                "The last hour, oldest first; the last entry is the minute in progress."
                " Each holds its start time and, per series, the increment in that minute."
            ),
            "items": {
                "type": "object",
                "required": ["start"],
                "properties": {
                    "start": {"type": "number"},
                    "stored": {"type": "integer", "description": "Messages stored in the mailbox."},
                    "delivered": {"type": "integer", "description": "Messages delivered and acknowledged."},
                    "relay_bytes": {"type": "integer", "description": "Bytes forwarded through relay circuits."},
                },
                "additionalProperties": {"type": "integer"},
            },
        },
    },
}
_SCHEMAS["NodeStatus"] = {
    "type": "object",
    "required": ["peer_id", "listeners", "warnings"],
    "properties": {
        "peer_id": {"type": ["string", "null"], "description": "The node's own peer id."},
        "listeners": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "endpoint", "address"],
                "properties": {
                    "name": {"type": "string", "enum": ["tcp", "websocket", "management"]},
                    "endpoint": {"type": ["string", "null"], "description": "The configured endpoint string."},
                    "address": {"type": ["string", "null"], "description": "host:port bound (null if not bound)."},
                },
            },
        },
        "warnings": {"type": "array", "items": {"type": "string"}, "description": "Problems still true now."},
    },
}

# GET /history and GET /node (the web console's chart and health page).
_SCHEMAS["History"] = {
    "type": "object",
    "required": ["interval", "now", "series", "minutes"],
    "properties": {
        "interval": {"type": "number", "description": "Seconds per entry of minutes (60)."},
        "now": {**_TIME, "description": "The node's clock now (Unix seconds)."},
        "series": {"type": "array", "items": {"type": "string"}, "description": "The counters of each entry."},
        "minutes": {
            "type": "array",
            "description": (
                "The last hour, oldest first; the last entry is the minute in progress."
                " Each holds its start time and, per series, the increment in that minute."
            ),
            "items": {
                "type": "object",
                "required": ["start"],
                "properties": {
                    "start": {"type": "number"},
                    "stored": {"type": "integer", "description": "Messages stored in the mailbox."},
                    "delivered": {"type": "integer", "description": "Messages delivered and acknowledged."},
                    "relay_bytes": {"type": "integer", "description": "Bytes forwarded through relay circuits."},
                },
                "additionalProperties": {"type": "integer"},
            },
        },
    },
}
_SCHEMAS["NodeStatus"] = {
    "type": "object",
    "required": ["peer_id", "listeners", "warnings"],
    "properties": {
        "peer_id": {"type": ["string", "null"], "description": "The node's own peer id."},
        "listeners": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "endpoint", "address"],
                "properties": {
                    "name": {"type": "string", "enum": ["tcp", "websocket", "management"]},
                    "endpoint": {"type": ["string", "null"], "description": "The configured endpoint string."},
                    "address": {"type": ["string", "null"], "description": "host:port bound (null if not bound)."},
                },
            },
        },
        "warnings": {"type": "array", "items": {"type": "string"}, "description": "Problems still true now."},
    },
}


_PEER_ID_PARAMETER = {
    "name": "peer_id",
    "in": "path",
    "required": True,
    "schema": _ref("PeerId"),
}

_PEER_ID_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": _ref("PeerIdRequest"),
            "example": {"peer_id": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"},
        }
    },
}

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
                {"200": _json(_ref("Health"), "The node is up."), **_errors(413, 500)},
                tags=["node"],
                public=True,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "getOpenAPI",
                "This document (no token needed).",
                {"200": _json({"type": "object"}, "The OpenAPI 3.1 document."), **_errors(413, 500)},
                tags=["node"],
                public=True,
            )
        },
        "/config": {
            "get": _operation(
                "getConfig",
                "The effective configuration: every setting, its value and its source; secrets redacted.",
                {"200": _json(_ref("ConfigReport"), "Settings."), **_errors(*authed)},
                tags=["node"],
            )
        },
        "/peers": {
            "get": _operation(
                "listPeers",
                "Paired peers and their connection status.",
                {
                    "200": _json({"type": "array", "items": _ref("PairedPeer")}, "Paired peers, by peer id."),
                    **_errors(*authed),
                },
                tags=["peers"],
            )
        },
        "/peers/pending": {
            "get": _operation(
                "listPendingPeers",
                "Pairing requests waiting for operator approval.",
                {
                    "200": _json({"type": "array", "items": _ref("PeerRecord")}, "Pending requests, by peer id."),
                    **_errors(*authed),
                },
                tags=["peers"],
            )
        },
        "/peers/approve": {
            "post": _operation(
                "approvePeer",
                "Approve a pending pairing request.",
                {
                    "200": _json(_ref("PeerRecord"), "The peer is now paired."),
                    **_errors(400, 404, *authed),
                },
                tags=["peers"],
                requestBody=_PEER_ID_BODY,
            )
        },
        "/peers/reject": {
            "post": _operation(
                "rejectPeer",
                "Reject (drop) a pending pairing request.",
                {"200": _json(_ref("Rejected"), "The request is gone."), **_errors(400, 404, *authed)},
                tags=["peers"],
                requestBody=_PEER_ID_BODY,
            )
        },
        "/peers/{peer_id}": {
            "delete": _operation(
                "unpairPeer",
                "Revoke a paired peer: end its sessions and purge what is held for it.",
                {"200": _json(_ref("Revoked"), "The peer is revoked."), **_errors(400, 404, *authed)},
                tags=["peers"],
                parameters=[_PEER_ID_PARAMETER],
            )
        },
        "/pairing": {
            "get": _operation(
                "getPairing",
                "This node's peer id and the state of PSK and PIN pairing (burned PINs included).",
                {"200": _json(_ref("PairingStatus"), "Pairing state; no secret."), **_errors(*authed)},
                tags=["pairing"],
            )
        },
        "/pairing/psk": {
            "post": _operation(
                "rotatePsk",
                "Put a new PSK in force at once; without 'psk' the node generates one. "
                "The response is the only place the PSK is shown.",
                {
                    "201": _json(_ref("PskRotated"), "The PSK now in force, and its state."),
                    **_errors(400, *authed),
                },
                tags=["pairing"],
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("PskRequest"), "example": {}}},
                },
            ),
            "delete": _operation(
                "disablePsk",
                "Turn PSK pairing off until the next rotation.",
                {"200": _json(_ref("PskStatus"), "PSK state."), **_errors(*authed)},
                tags=["pairing"],
            ),
        },
        "/pairing/pin": {
            "post": _operation(
                "createPin",
                "Create a single-use pairing PIN.",
                {"201": _json(_ref("Pin"), "A new PIN."), **_errors(*authed)},
                tags=["pairing"],
            )
        },
        "/pairing/link": {
            "post": _operation(
                "createLink",
                "Create a single-use pairing link.",
                {"201": _json(_ref("Link"), "A new link."), **_errors(*authed)},
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
                    **_errors(400, *authed),
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
                {"200": _json(_ref("MailboxStats"), "Mailbox totals."), **_errors(*authed)},
                tags=["services"],
            )
        },
        "/mailbox/{peer_id}": {
            "get": _operation(
                "getMailboxPeer",
                "What the mailbox holds for one peer.",
                {
                    "200": _json(_ref("MailboxPeerStats"), "That peer's mailbox."),
                    **_errors(400, 404, *authed),
                },
                tags=["services"],
                parameters=[_PEER_ID_PARAMETER],
            )
        },
        "/mailbox/{peer_id}/limits": {
            "put": _operation(
                "putMailboxPeerLimits",
                "Override one peer's mailbox limits (persisted; null restores the default).",
                {
                    "200": _json(_ref("MailboxPeerStats"), "That peer's mailbox with the new limits."),
                    **_errors(400, 404, *authed),
                },
                tags=["services"],
                parameters=[_PEER_ID_PARAMETER],
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("MailboxLimits")}}},
            )
        },
        "/relay": {
            "get": _operation(
                "getRelay",
                "Relay circuits.",
                {"200": _json(_ref("RelayStats"), "Relay state."), **_errors(*authed)},
                tags=["services"],
            )
        },
        "/relay/{peer_id}/quota": {
            "put": _operation(
                "putRelayPeerQuota",
                "Set one peer's relay byte quota and/or rate limit (persisted; null removes one, absent keeps it).",
                {
                    "200": _json(_ref("RelayPeerStats"), "That peer's relay figures with the new quota."),
                    **_errors(400, 404, *authed),
                },
                tags=["services"],
                parameters=[_PEER_ID_PARAMETER],
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("RelayLimits")}}},
            )
        },
        "/sync": {
            "get": _operation(
                "getSync",
                "Sync hub topics and device cursors.",
                {"200": _json(_ref("SyncStats"), "Sync state."), **_errors(*authed)},
                tags=["services"],
            )
        },
        "/sync/{peer_id}/access": {
            "get": _operation(
                "getSyncPeerAccess",
                "The sync topics one paired peer may read and write.",
                {"200": _json(_ref("SyncPeerAccess"), "Its effective access."), **_errors(400, 404, *authed)},
                tags=["services"],
                parameters=[_PEER_ID_PARAMETER],
            ),
            "put": _operation(
                "putSyncPeerAccess",
                "Grant one paired peer its own sync topics (persisted); its subscriptions outside them end.",
                {"200": _json(_ref("SyncPeerAccess"), "Its new access."), **_errors(400, 404, *authed)},
                tags=["services"],
                parameters=[_PEER_ID_PARAMETER],
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("SyncAccess")}}},
            ),
            "delete": _operation(
                "deleteSyncPeerAccess",
                "Put one paired peer back on the node's default sync access.",
                {"200": _json(_ref("SyncPeerAccess"), "Its access, now the default."), **_errors(400, 404, *authed)},
                tags=["services"],
                parameters=[_PEER_ID_PARAMETER],
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
                    **_errors(*authed),
                },
                tags=["node"],
            )
        },
        "/history": {
            "get": _operation(
                "getHistory",
                "Messages stored and delivered and bytes relayed, per minute over the last hour (in memory).",
                {"200": _json(_ref("History"), "Per-minute increments."), **_errors(*authed)},
                tags=["node"],
            )
        },
        "/node": {
            "get": _operation(
                "getNodeStatus",
                "The node's peer id, listeners and current warnings.",
                {"200": _json(_ref("NodeStatus"), "Node status."), **_errors(*authed)},
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
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
        },
    }
