"""Thin adapters between byte transports (TCP, WebSocket) and sessions."""
