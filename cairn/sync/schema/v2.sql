-- Per-device topic access granted by the operator (PUT /sync/{peer_id}/access).
-- A device without a row gets the node's default (CAIRN_SYNC_ACCESS).
-- read and write hold JSON arrays of topic patterns.
CREATE TABLE sync_access (
    device TEXT PRIMARY KEY,
    read TEXT NOT NULL,
    write TEXT NOT NULL
);
