"""Personal relay circuits between paired peers (docs/protocol.md §25)."""
