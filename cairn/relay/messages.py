"""
Bodies of the relay family (0x0500...), checked field by field.

A malformed body is a protocol error of its sender: the parsers raise
L{ProtocolViolation} with C{BAD_CBOR}, which ends that session.
"""

from cairn.session.session import ProtocolViolation
from cairn.wire.constants import CloseCode

CIRCUIT_ID_SIZE = 16
#: Bytes a RelayData body and its sealing add around the inner envelope
#: (CBOR map, circuit id, byte string header, AEAD tag, with margin).
RELAY_OVERHEAD = 96
#: Longest reason string carried in a RouteResponse or RelayClose.
MAX_REASON = 256


def _bad(what):
    raise ProtocolViolation(CloseCode.BAD_CBOR, what)


def _map(body, name):
    if not isinstance(body, dict):
        _bad(f"{name} body is not a map")
    return body


def _circuit(body, name):
    circuit = body.get("circuit")
    if not isinstance(circuit, bytes) or len(circuit) != CIRCUIT_ID_SIZE:
        _bad(f"{name}: circuit must be a 16-byte string")
    return circuit


def _uint(body, key, name, required=True):
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**64:
        _bad(f"{name}: {key} must be an unsigned integer")
    return value


def _text(body, key, name, required=True):
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        _bad(f"{name}: {key} must be a text string")
    return value


def parse_route_request(body):
    """Peer to node: C{(target, req)}; node to target: C{(from, circuit)} (see L{parse_route_offer})."""
    body = _map(body, "RouteRequest")
    return _text(body, "target", "RouteRequest"), _uint(body, "req", "RouteRequest")


def parse_route_offer(body):
    """Node to target RouteRequest: C{(from peer id, circuit)}."""
    body = _map(body, "RouteRequest")
    return _text(body, "from", "RouteRequest"), _circuit(body, "RouteRequest")


def parse_route_response(body):
    """C{(status, circuit or None, req or None, reason)}."""
    body = _map(body, "RouteResponse")
    status = _uint(body, "status", "RouteResponse")
    circuit = _circuit(body, "RouteResponse") if body.get("circuit") is not None else None
    req = _uint(body, "req", "RouteResponse", required=False)
    reason = _text(body, "reason", "RouteResponse", required=False) or ""
    return status, circuit, req, reason


def parse_relay_data(body):
    """C{(circuit, data)}."""
    body = _map(body, "RelayData")
    data = body.get("data")
    if not isinstance(data, bytes):
        _bad("RelayData: data must be a byte string")
    return _circuit(body, "RelayData"), data


def parse_relay_ack(body):
    """C{(circuit, credit)}."""
    body = _map(body, "RelayAck")
    return _circuit(body, "RelayAck"), _uint(body, "credit", "RelayAck")


def parse_relay_close(body):
    """C{(circuit, reason, final)}: C{final} is true when a new circuit would fare no better."""
    body = _map(body, "RelayClose")
    final = body.get("final", False)
    if not isinstance(final, bool):
        _bad("RelayClose: final must be a boolean")
    return _circuit(body, "RelayClose"), _text(body, "reason", "RelayClose", required=False) or "", final
