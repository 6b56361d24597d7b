"""The multi-device sync hub (docs/protocol.md §24)."""
