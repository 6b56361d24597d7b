"""
HTTP plumbing of the management API: its error types, the body limit, JSON
in and out, and peer id validation.  No routes here (see L{cairn.management.app}).
"""

import json

from cairn.crypto.identity import parse_peer_id

#: Largest request body accepted, in bytes; a larger one gets 413.
BODY_LIMIT = 64 * 1024

_JSON = b"application/json"


class ApiError(Exception):
    """An error the client caused; C{str()} is shown to it as C{"error"}."""

    code = 500


class BadRequest(ApiError):
    """The request is malformed (bad JSON, missing or invalid field)."""

    code = 400


class Unauthorized(ApiError):
    """The bearer token is missing or wrong."""

    code = 401


class NotFound(ApiError):
    """The thing asked for does not exist (in the required state)."""

    code = 404


class PayloadTooLarge(ApiError):
    """The body is over L{BODY_LIMIT}."""

    code = 413


class InsufficientStorage(ApiError):
    """Done in part: a store was full (disk, reserve, JetStream away); the message says what was not done."""

    code = 507


def common_headers(request) -> None:
    """Headers every response carries: never cached, never sniffed."""
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"server", b"cairn")


def json_body(request, value) -> bytes:
    """Encode C{value} as the UTF-8 JSON response body (NaN and infinities refused)."""
    request.setHeader(b"content-type", _JSON)
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


def read_body(request) -> bytes:
    """The request body, at most L{BODY_LIMIT} bytes (else L{PayloadTooLarge})."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(BODY_LIMIT + 1)
    content.seek(0)
    if len(body) > BODY_LIMIT:
        raise PayloadTooLarge(f"request body is over {BODY_LIMIT} bytes")
    return body


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def json_object(request) -> dict:
    """The body parsed as a JSON object, or L{BadRequest} naming the problem."""
    body = read_body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def peer_id_arg(value, what="peer_id") -> str:
    """C{value} if it is a well-formed peer id, else L{BadRequest}."""
    if value is None:
        raise BadRequest(f"{what} is required")
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    try:
        parse_peer_id(value)
    except ValueError as e:
        raise BadRequest(f"{what} is not a valid peer id ({e})") from None
    return value


def peer_id_from_body(request) -> str:
    """The C{peer_id} of a JSON object body, validated."""
    return peer_id_arg(json_object(request).get("peer_id"))
