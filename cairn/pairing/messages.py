"""
The CBOR bodies of the pairing family (0x0110-0x0115), checked strictly.

Each C{parse_*} takes a decoded body and returns it as a value, or raises
L{BodyError}; unknown extra keys are ignored, as everywhere in cairn.
The schemas are normative in docs/protocol.md §20.
"""

import unicodedata

import attr

from cairn.pairing import proofs
from cairn.wire.schema import BodyError, bytes_field, require_map, text_field

PSK = "psk"
PIN = "pin"
LINK = "link"
APPROVAL = "approval"
METHODS = (PSK, PIN, LINK, APPROVAL)

MAX_NAME = 64
MAX_REASON = 256
MAX_METHOD = 32


class UnsupportedMethod(BodyError):
    """A well-formed PairRequest naming a method this node does not know."""


def _name(body, what):
    name = text_field(body, "name", what, MAX_NAME, default="")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise BodyError(f"{what}: 'name' must not contain control characters")
    return name


def _method(body, what):
    return text_field(body, "method", what, MAX_METHOD)


def _spake2(body, what, side: bytes):
    message = bytes_field(body, "spake2", what, proofs.SPAKE2_MESSAGE_SIZE)
    if message[:1] != side:
        raise BodyError(f"{what}: 'spake2' must start with the side byte {side!r}")
    return message


@attr.s(frozen=True, auto_attribs=True, repr=False)
class PairRequest:
    method: str
    name: str = ""
    proof: bytes = None
    spake2: bytes = None
    link_id: bytes = None

    def __repr__(self):
        return f"<PairRequest {self.method} name={self.name!r}>"


def parse_pair_request(body) -> PairRequest:
    """
    PairRequest: {"method", "name"?} plus the method's fields.

    @raise UnsupportedMethod: the shape is right but the method unknown.
    @raise BodyError: any other departure from the schema.
    """
    what = "PairRequest"
    body = require_map(body, what)
    method = _method(body, what)
    name = _name(body, what)
    if method == PSK:
        return PairRequest(method, name, proof=bytes_field(body, "proof", what, proofs.PROOF_SIZE))
    if method == PIN:
        return PairRequest(method, name, spake2=_spake2(body, what, b"A"))
    if method == LINK:
        return PairRequest(
            method,
            name,
            link_id=bytes_field(body, "link_id", what, proofs.LINK_ID_SIZE),
            proof=bytes_field(body, "proof", what, proofs.PROOF_SIZE),
        )
    if method == APPROVAL:
        return PairRequest(method, name)
    raise UnsupportedMethod(f"{what}: unknown method {method!r}")


def parse_pair_response(body) -> bytes:
    """PairResponse: {"method": "pin", "confirm": bstr 32}; returns the MAC."""
    what = "PairResponse"
    body = require_map(body, what)
    if _method(body, what) != PIN:
        raise BodyError(f"{what}: 'method' must be 'pin'")
    return bytes_field(body, "confirm", what, proofs.PROOF_SIZE)


def parse_pair_challenge(body):
    """PairChallenge: {"method": "pin", "spake2"} or {"method": "approval"}; returns (method, spake2)."""
    what = "PairChallenge"
    body = require_map(body, what)
    method = _method(body, what)
    if method == PIN:
        return method, _spake2(body, what, b"B")
    if method == APPROVAL:
        return method, None
    raise BodyError(f"{what}: unexpected method {method!r}")


def parse_pair_confirm(body):
    """PairConfirm: {"method", "already_paired", "proof"?}; returns (method, already, proof)."""
    what = "PairConfirm"
    body = require_map(body, what)
    method = _method(body, what)
    already = body.get("already_paired", False)
    if not isinstance(already, bool):
        raise BodyError(f"{what}: 'already_paired' must be a boolean")
    proof = None
    if "proof" in body:
        proof = bytes_field(body, "proof", what, proofs.PROOF_SIZE)
    return method, already, proof


def parse_pair_reject(body):
    """PairReject: {"code": uint, "reason": text, "method": text}; returns (code, reason, method)."""
    what = "PairReject"
    body = require_map(body, what)
    code = body.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 0xFFFF:
        raise BodyError(f"{what}: 'code' must be an unsigned integer <= 65535")
    return code, text_field(body, "reason", what, MAX_REASON, ""), text_field(body, "method", what, MAX_METHOD, "")


def parse_pair_revoke(body) -> None:
    """PairRevoke: {} (extra keys ignored)."""
    require_map(body, "PairRevoke")


# Builders


def pair_reject(code, reason: str, method: str = "") -> dict:
    reason = reason.encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore")
    return {"code": int(code), "reason": reason, "method": method}


def pair_confirm(method: str, proof: bytes = None, already_paired: bool = False) -> dict:
    body = {"method": method, "already_paired": already_paired}
    if proof is not None:
        body["proof"] = proof
    return body
