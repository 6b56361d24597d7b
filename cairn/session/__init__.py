"""Transport-independent sessions: handshake, sealing, channels, resume."""
