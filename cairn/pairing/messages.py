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
#: The methods run as a SPAKE2 exchange (§20.3.1).
PAKE_METHODS = (PSK, PIN)

MAX_NAME = 64
MAX_REASON = 256
MAX_METHOD = 32


class UnsupportedMethod(BodyError):
    """A well-formed PairRequest naming a method this node does not know."""


class UnsupportedVersion(BodyError):
    """A PairRequest of the removed version-1 PSK or PIN exchange (§20.5, code 10)."""


def _name(body, what):
    name = text_field(body, "name", what, MAX_NAME, default="")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise BodyError(f"{what}: 'name' must not contain control characters")
    return name


def _method(body, what):
    return text_field(body, "method", what, MAX_METHOD)


def _method_of(body, what, allowed):
    method = _method(body, what)
    if method not in allowed:
        raise BodyError(f"{what}: 'method' must be one of {', '.join(allowed)}")
    return method


def _share(body, what):
    return bytes_field(body, "pake", what, proofs.PAKE_SHARE_SIZE)


@attr.s(frozen=True, auto_attribs=True, repr=False)
class PairRequest:
    method: str
    name: str = ""
    proof: bytes = None
    pake: bytes = None
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
    if method in PAKE_METHODS:
        if "pake" not in body and ("proof" in body or "spake2" in body):
            raise UnsupportedVersion(
                f"{what}: the version-1 {method} exchange is not supported: update the client (cairn-pair-v2)"
            )
        return PairRequest(method, name, pake=_share(body, what))
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


def parse_pair_response(body):
    """PairResponse: {"method": "psk"/"pin", "confirm": bstr 32}; returns (method, confirm)."""
    what = "PairResponse"
    body = require_map(body, what)
    method = _method_of(body, what, PAKE_METHODS)
    return method, bytes_field(body, "confirm", what, proofs.CONFIRM_SIZE)


def parse_pair_challenge(body):
    """PairChallenge: {"method": "psk"/"pin", "pake"} or {"method": "approval"}; returns (method, pake)."""
    what = "PairChallenge"
    body = require_map(body, what)
    method = _method_of(body, what, PAKE_METHODS + (APPROVAL,))
    if method == APPROVAL:
        return method, None
    return method, _share(body, what)


def parse_pair_confirm(body):
    """
    PairConfirm: {"method", "already_paired", "confirm"? (psk, pin), "proof"? (link)};
    returns (method, already, confirm_or_proof or None).
    """
    what = "PairConfirm"
    body = require_map(body, what)
    method = _method(body, what)
    already = body.get("already_paired", False)
    if not isinstance(already, bool):
        raise BodyError(f"{what}: 'already_paired' must be a boolean")
    key = "confirm" if method in PAKE_METHODS else "proof"
    value = None
    if key in body:
        value = bytes_field(body, key, what, proofs.CONFIRM_SIZE)
    return method, already, value


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
    """PairConfirm; C{proof} goes under "confirm" for psk/pin, under "proof" for a link."""
    body = {"method": method, "already_paired": already_paired}
    if proof is not None:
        body["confirm" if method in PAKE_METHODS else "proof"] = proof
    return body
