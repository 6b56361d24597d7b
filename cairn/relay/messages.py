"""
Bodies of the relay family (0x0500...), checked field by field.

A malformed body is a protocol error of its sender: the parsers raise
L{BodyError}, like every family's, and the service's guard
(L{cairn.session.guards}) ends that session with C{BAD_CBOR}.
"""

from cairn.wire import cbor
from cairn.wire.constants import PROTOCOL_VERSION, SESSION_ID_SIZE, MessageType
from cairn.wire.envelope import Envelope
from cairn.wire.schema import BodyError

CIRCUIT_ID_SIZE = 16
#: Bytes of the secret an end presents to attach a connection to a circuit.
TOKEN_SIZE = 32
#: Bytes a RelayData body and its sealing add around the inner envelope
#: (CBOR map, circuit id, byte string header, AEAD tag, with margin).
RELAY_OVERHEAD = 96
#: Longest reason string carried in a RouteResponse or RelayClose.
MAX_REASON = 256
#: Bytes of RelayData one end may send ahead of the other end's credit (§25.3).
WINDOW = 256 * 1024


def _bad(what):
    raise BodyError(what)


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


def _flag(body, key, name):
    value = body.get(key, False)
    if not isinstance(value, bool):
        _bad(f"{name}: {key} must be a boolean")
    return value


def _token(body, name):
    token = body.get("token")
    if token is None:
        return None
    if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
        _bad(f"{name}: token must be a {TOKEN_SIZE}-byte string")
    return token


def parse_route_request(body):
    """
    Peer to node: C{(target, req, attach)}; node to target: C{(from,
    circuit, token)} (see L{parse_route_offer}).
    """
    body = _map(body, "RouteRequest")
    target, req = _text(body, "target", "RouteRequest"), _uint(body, "req", "RouteRequest")
    return target, req, _flag(body, "attach", "RouteRequest")


def parse_route_offer(body):
    """Node to target RouteRequest: C{(from peer id, circuit, token or None)}."""
    body = _map(body, "RouteRequest")
    return _text(body, "from", "RouteRequest"), _circuit(body, "RouteRequest"), _token(body, "RouteRequest")


def parse_route_response(body):
    """C{(status, circuit or None, req or None, reason)}; see L{route_response_attach}."""
    body = _map(body, "RouteResponse")
    status = _uint(body, "status", "RouteResponse")
    circuit = _circuit(body, "RouteResponse") if body.get("circuit") is not None else None
    req = _uint(body, "req", "RouteResponse", required=False)
    reason = _text(body, "reason", "RouteResponse", required=False) or ""
    return status, circuit, req, reason


def route_response_attach(body):
    """
    The attachment fields of a (parsed) RouteResponse: C{(attach, token
    or None)} -- C{attach} from a target, C{token} from the node (§25.8).
    """
    return _flag(body, "attach", "RouteResponse"), _token(body, "RouteResponse")


def parse_relay_attach(body):
    """RelayAttach, in clear on a new connection: C{(circuit, token)}."""
    body = _map(body, "RelayAttach")
    circuit = _circuit(body, "RelayAttach")
    token = _token(body, "RelayAttach")
    if token is None:
        _bad("RelayAttach: token missing")
    return circuit, token


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


def relay_attach(circuit: bytes, token: bytes) -> bytes:
    """
    The RelayAttach envelope, in clear, that opens an attached connection
    (§25.8): session id all zero, sequence 0, body C{{circuit, token}}.
    """
    body = cbor.dumps({"circuit": circuit, "token": token})
    return Envelope(PROTOCOL_VERSION, MessageType.RELAY_ATTACH, bytes(SESSION_ID_SIZE), 0, body).to_bytes()
