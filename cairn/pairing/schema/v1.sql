-- The trust store: one row per remote peer the node has heard from.
-- state is pending, paired or revoked. Times are unix seconds.
-- (No semicolons in comments: the loader splits statements on them.)
CREATE TABLE trust_peers (
    peer_id TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'paired', 'revoked')),
    name TEXT NOT NULL DEFAULT '',
    method TEXT NOT NULL DEFAULT '',
    requested_at REAL,
    paired_at REAL,
    last_seen REAL,
    revoked_at REAL
);
CREATE INDEX trust_peers_by_state ON trust_peers (state);
