-- The sync hub. Times are unix seconds on the node's clock.
-- (No semicolons in comments: the loader splits statements on them.)
-- One row per update, whatever the number of devices: seq counts per topic.
CREATE TABLE sync_log (
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender TEXT NOT NULL,
    update_id BLOB NOT NULL,
    stored_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX sync_log_by_id ON sync_log (sender, update_id);
CREATE INDEX sync_log_by_expiry ON sync_log (expires_at);
-- Per topic: the last seq given (head), the last seq removed by retention
-- (floor), and what the log holds, kept in the same transactions as the log.
CREATE TABLE sync_topics (
    topic TEXT PRIMARY KEY,
    head INTEGER NOT NULL,
    floor INTEGER NOT NULL,
    updates INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
-- One durable cursor per (device, topic): the last seq it acknowledged.
CREATE TABLE sync_cursors (
    device TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (device, topic)
) WITHOUT ROWID;
CREATE INDEX sync_cursors_by_topic ON sync_cursors (topic);
