"""The cairn wire format: envelope header, type codes, CBOR bodies, framing."""
