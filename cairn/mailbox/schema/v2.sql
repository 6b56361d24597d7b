-- Dedup ids keyed by (message_id, sender) instead of (sender, message_id):
-- UUIDv7 ids grow with time, so a new id lands at the end of the key order
-- instead of in the middle of its sender's range (cheaper inserts, fewer
-- pages written per commit). Same columns, same indexes.
CREATE TABLE mailbox_ids_v2 (
    message_id BLOB NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (message_id, sender)
) WITHOUT ROWID;
INSERT INTO mailbox_ids_v2 (message_id, sender, recipient, expires_at)
    SELECT message_id, sender, recipient, expires_at FROM mailbox_ids;
DROP TABLE mailbox_ids;
ALTER TABLE mailbox_ids_v2 RENAME TO mailbox_ids;
CREATE INDEX mailbox_ids_by_expiry ON mailbox_ids (expires_at);
CREATE INDEX mailbox_ids_by_recipient ON mailbox_ids (recipient);
