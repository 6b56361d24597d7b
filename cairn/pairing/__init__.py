"""Trust store and pairing: PSK, PIN (SPAKE2), links, QR, operator approval."""
