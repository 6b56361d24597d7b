-- The relay's per-peer state. (No semicolons in comments: the loader splits statements on them.)
-- Operator limits set through the management API (NULL: no limit).
-- max_bytes caps the bytes counted in relay_usage.bytes_sent, max_rate is bytes per second.
CREATE TABLE relay_limits (
    peer_id TEXT PRIMARY KEY,
    max_bytes INTEGER,
    max_rate INTEGER
);
-- Bytes each peer sent through circuits and received from them, written
-- every flush interval and at a clean stop, so that a quota survives a restart.
CREATE TABLE relay_usage (
    peer_id TEXT PRIMARY KEY,
    bytes_sent INTEGER NOT NULL,
    bytes_received INTEGER NOT NULL
);
