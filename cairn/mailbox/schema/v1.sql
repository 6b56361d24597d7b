-- The store-and-forward mailbox. Times are unix seconds on the node's clock.
-- (No semicolons in comments: the loader splits statements on them.)
-- seq is the server sequence: delivery order per recipient.
CREATE TABLE mailbox_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    message_id BLOB NOT NULL,
    stored_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX mailbox_messages_by_recipient ON mailbox_messages (recipient, seq);
CREATE INDEX mailbox_messages_by_expiry ON mailbox_messages (expires_at);
-- Dedup: every (sender, id) accepted, kept until the message would have expired.
CREATE TABLE mailbox_ids (
    sender TEXT NOT NULL,
    message_id BLOB NOT NULL,
    recipient TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (sender, message_id)
) WITHOUT ROWID;
CREATE INDEX mailbox_ids_by_expiry ON mailbox_ids (expires_at);
CREATE INDEX mailbox_ids_by_recipient ON mailbox_ids (recipient);
-- Per-recipient depth, kept in the same transactions as the messages.
CREATE TABLE mailbox_depth (
    recipient TEXT PRIMARY KEY,
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
-- Receipts owed to senders (delivered, expired, evicted).
CREATE TABLE mailbox_receipts (
    rseq INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    message_id BLOB NOT NULL,
    status INTEGER NOT NULL,
    at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX mailbox_receipts_by_sender ON mailbox_receipts (sender, rseq);
CREATE INDEX mailbox_receipts_by_expiry ON mailbox_receipts (expires_at);
-- Operator overrides of the per-recipient limits (NULL: the global default).
CREATE TABLE mailbox_limits (
    peer_id TEXT PRIMARY KEY,
    max_messages INTEGER,
    max_bytes INTEGER
);
