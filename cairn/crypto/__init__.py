"""Identity keys, the Noise XX handshake, session AEAD and the Double Ratchet."""
