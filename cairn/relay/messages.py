"""
Bodies of the relay family (0x0500...), checked field by field.

A malformed body is a protocol error of its sender: the parsers raise
L{BodyError}, like every family's, and the service's guard
(L{cairn.session.guards}) ends that session with C{BAD_CBOR}.
"""

from cairn.pairing.codes import InvalidCode, parse_address
from cairn.wire import cbor
from cairn.wire.constants import PROTOCOL_VERSION, SESSION_ID_SIZE, MessageType
from cairn.wire.envelope import Envelope
from cairn.wire.schema import BodyError, bool_field, bytes_field, require_map, text_field, uint_field

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


def _circuit(body, name):
    return bytes_field(body, "circuit", name, CIRCUIT_ID_SIZE)


def _optional_uint(body, key, name):
    # A null counts as absent here (it always has in this family).
    return None if body.get(key) is None else uint_field(body, key, name)


def _optional_text(body, key, name):
    return None if body.get(key) is None else text_field(body, key, name)


def _token(body, name):
    return None if body.get("token") is None else bytes_field(body, "token", name, TOKEN_SIZE)


def parse_route_request(body):
    """
    Peer to node: C{(target, req, attach)}; node to target: C{(from,
    circuit, token)} (see L{parse_route_offer}).
    """
    body = require_map(body, "RouteRequest")
    target, req = text_field(body, "target", "RouteRequest"), uint_field(body, "req", "RouteRequest")
    return target, req, bool_field(body, "attach", "RouteRequest")


def parse_route_offer(body):
    """Node to target RouteRequest: C{(from peer id, circuit, token or None)}."""
    body = require_map(body, "RouteRequest")
    return text_field(body, "from", "RouteRequest"), _circuit(body, "RouteRequest"), _token(body, "RouteRequest")


def parse_route_response(body):
    """C{(status, circuit or None, req or None, reason)}; see L{route_response_attach}."""
    body = require_map(body, "RouteResponse")
    status = uint_field(body, "status", "RouteResponse")
    circuit = _circuit(body, "RouteResponse") if body.get("circuit") is not None else None
    req = _optional_uint(body, "req", "RouteResponse")
    reason = _optional_text(body, "reason", "RouteResponse") or ""
    return status, circuit, req, reason


def route_response_attach(body):
    """
    The attachment fields of a (parsed) RouteResponse: C{(attach, token
    or None)} -- C{attach} from a target, C{token} from the node (§25.8).
    """
    return bool_field(body, "attach", "RouteResponse"), _token(body, "RouteResponse")


def attach_at(body, name):
    """
    The C{attach_at} of an offer or of the node's RouteResponse (§25.8.8):
    the address (C{tcp://host:port} or C{tls://host:port}, §20.3.2) of the
    node to open the attach connection to, or None (the node session's own).
    """
    if body.get("attach_at") is None:
        return None
    text = text_field(body, "attach_at", name)
    try:
        address = parse_address(text)
    except InvalidCode:
        _bad(f"{name}: attach_at is not an address")
    if address.scheme not in ("tcp", "tls") or "://" not in text:
        _bad(f"{name}: attach_at is not a tcp:// or tls:// address")
    return text


def parse_relay_attach(body):
    """RelayAttach, in clear on a new connection: C{(circuit, token)}."""
    body = require_map(body, "RelayAttach")
    circuit = _circuit(body, "RelayAttach")
    token = _token(body, "RelayAttach")
    if token is None:
        _bad("RelayAttach: token missing")
    return circuit, token


def parse_relay_data(body):
    """C{(circuit, data)}."""
    body = require_map(body, "RelayData")
    data = bytes_field(body, "data", "RelayData")
    return _circuit(body, "RelayData"), data


def parse_relay_ack(body):
    """C{(circuit, credit)}."""
    body = require_map(body, "RelayAck")
    return _circuit(body, "RelayAck"), uint_field(body, "credit", "RelayAck")


def parse_relay_close(body):
    """C{(circuit, reason, final)}: C{final} is true when a new circuit would fare no better."""
    body = require_map(body, "RelayClose")
    final = bool_field(body, "final", "RelayClose")
    return _circuit(body, "RelayClose"), _optional_text(body, "reason", "RelayClose") or "", final


def relay_attach(circuit: bytes, token: bytes) -> bytes:
    """
    The RelayAttach envelope, in clear, that opens an attached connection
    (§25.8): session id all zero, sequence 0, body C{{circuit, token}}.
    """
    body = cbor.dumps({"circuit": circuit, "token": token})
    return Envelope(PROTOCOL_VERSION, MessageType.RELAY_ATTACH, bytes(SESSION_ID_SIZE), 0, body).to_bytes()
