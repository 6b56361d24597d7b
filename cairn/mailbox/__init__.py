"""Store-and-forward mailbox: store, service, client (docs/protocol.md §21)."""
