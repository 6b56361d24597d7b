"""The schemas of the management API's OpenAPI document (C{components/schemas})."""

from cairn.management.openapi_components import PEER_ID, TIME, ref

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What went wrong, for a human."}},
    },
    "PeerId": PEER_ID,
    "PeerIdRequest": {
        "type": "object",
        "required": ["peer_id"],
        "properties": {"peer_id": ref("PeerId")},
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
            "node": {"type": "string", "description": "This node's name (CAIRN_NODE_NAME)."},
            "cluster": {
                "type": "object",
                "description": "Only with CAIRN_CLUSTER_NATS: the deployment as this node sees it.",
                "required": ["nats", "leader", "nodes"],
                "properties": {
                    "nats": {"type": "string", "enum": ["ok", "degraded"], "description": "This node's NATS link."},
                    "leader": {
                        "type": ["string", "null"],
                        "description": "The NATS server leading the mailbox stream; null: none known (no writes).",
                    },
                    "nodes": {
                        "type": "object",
                        "description": "The cairn nodes alive (this one included): seconds since each was last heard.",
                        "additionalProperties": {"type": "number"},
                    },
                    "reason": {"type": "string", "description": "Why NATS is degraded or no leader is known."},
                    "reserve": {
                        "type": "object",
                        "description": "The JetStream storage reserve (docs/scaling.md, \"The storage reserve\").",
                        "required": ["bytes", "full"],
                        "properties": {
                            "bytes": {"type": "integer", "description": "CAIRN_CLUSTER_RESERVE (0: none kept)."},
                            "full": {
                                "type": "boolean",
                                "description": "JetStream's storage limit was met: the reserve is released and"
                                " new forwards and sync updates are refused until room is freed.",
                            },
                        },
                    },
                },
            },
        },
    },
    "PairedPeer": {
        "type": "object",
        "required": ["peer_id", "name", "connected", "paired_at", "last_seen", "method"],
        "properties": {
            "peer_id": ref("PeerId"),
            "name": {"type": "string"},
            "connected": {
                "type": "boolean",
                "description": "Whether a session with it is attached now (to any node of the deployment).",
            },
            "node": {
                "type": ["string", "null"],
                "description": "The node its session is attached to (this one first); null when not connected.",
            },
            "nodes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Every node holding an attached session of it.",
            },
            "paired_at": TIME,
            "last_seen": TIME,
            "method": {"type": ["string", "null"], "enum": ["psk", "pin", "link", "approval", None]},
            "transport": {
                "type": ["string", "null"],
                "enum": ["tcp", "websocket", "other", None],
                "description": "How its attached session reaches this node; null when not connected here.",
            },
        },
    },
    "PeerRecord": {
        "type": "object",
        "required": ["peer_id", "name", "state", "method", "requested_at", "paired_at", "last_seen"],
        "properties": {
            "peer_id": ref("PeerId"),
            "name": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "paired", "revoked"]},
            "method": {"type": ["string", "null"]},
            "requested_at": TIME,
            "paired_at": TIME,
            "last_seen": TIME,
        },
    },
    "Rejected": {
        "type": "object",
        "required": ["peer_id", "rejected"],
        "properties": {"peer_id": ref("PeerId"), "rejected": {"type": "boolean", "const": True}},
    },
    "Revoked": {
        "type": "object",
        "required": ["peer_id", "state"],
        "properties": {"peer_id": ref("PeerId"), "state": {"type": "string", "const": "revoked"}},
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
            ref("PskStatus"),
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
            "node_peer_id": ref("PeerId"),
            "psk": ref("PskStatus"),
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
            # Each peer also has "node": the node it is attached to, or null.
            "peers": {"type": "array", "items": {"type": "object"}},
            "node": {"type": "string", "description": "The reporting node's name (CAIRN_NODE_NAME)."},
            "messages": {"type": "integer"},
            "bytes": {"type": "integer"},
        },
        "additionalProperties": True,
    },
    "MailboxPeerStats": {
        "type": "object",
        "description": "What the mailbox holds for one peer, and its limits.",
        "properties": {
            "peer_id": ref("PeerId"),
            "messages": {"type": "integer"},
            "bytes": {"type": "integer", "description": "Payload bytes held."},
            "oldest_age": {"type": ["number", "null"], "description": "Seconds since the oldest was stored."},
            "connected": {"type": "boolean"},
            "node": {"type": ["string", "null"], "description": "The node it is attached to; null: none."},
            "limits": {
                "type": "object",
                "properties": {
                    "max_messages": {"type": "integer", "description": "In force (override or default)."},
                    "max_bytes": {"type": ["integer", "null"], "description": "In force; null: only the total."},
                    "override": {"anyOf": [ref("MailboxLimits"), {"type": "null"}]},
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
            "capacity": {"type": ["integer", "null"], "description": "This node's (circuits stay on one node)."},
            # Each peer also has "node": the node it is attached to, or null.
            "peers": {"type": "array", "items": {"type": "object"}},
            "node": {"type": "string", "description": "The reporting node's name (CAIRN_NODE_NAME)."},
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
            # [{peer_id, cursor, lag, behind_retention, connected, node}]
            # (connected: to any node; node: which, or null).
            "topics": {"type": "array", "items": {"type": "object"}},
            "node": {"type": "string", "description": "The reporting node's name (CAIRN_NODE_NAME)."},
            "updates": {"type": "integer"},
            "bytes": {"type": "integer"},
            "resets": {"type": "integer"},
            "limits": {"type": "object"},
        },
        "additionalProperties": True,
    },
}

SCHEMAS["ConfigReport"] = {
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
                    "value": {"description": 'Typed value; a set secret is "<redacted>".'},
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

# GET /history and GET /node (the web console's chart and health page).
SCHEMAS["History"] = {
    "type": "object",
    "required": ["interval", "now", "series", "minutes"],
    "properties": {
        "interval": {"type": "number", "description": "Seconds per entry of minutes (60)."},
        "now": {**TIME, "description": "The node's clock now (Unix seconds)."},
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
SCHEMAS["NodeStatus"] = {
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
