"""
The one place CBOR is encoded and decoded.

Bodies are encoded with cbor2's canonical mode: shortest heads, shortest
floats, map keys sorted length-first. Every cairn-defined body has text
keys only, and for those that order is exactly RFC 8949's deterministic
(bytewise) order, so test vectors are byte-exact. (Application bodies
mixing key types are still deterministic, in length-first order.)

Decoding accepts exactly one item made of maps, arrays, byte and text
strings, integers (within 64 bits), floats, booleans and null -- definite
lengths only, no tags, no duplicate map keys, nesting at most 16 deep, no
trailing bytes. Anything else is a L{CBORError}.

cbor2 decodes several tags itself (bignums, self-described CBOR, value
sharing, string references ...) without asking its tag hook, so tags are
refused by L{_refuse_tags}, a scan of the item heads before decoding.

The few bodies that every message costs (Data, Keepalive, a mailbox
drain's ForwardDeliver and ForwardReceipt) have fixed layouts, written
and read by hand in L{cairn.wire.layouts}; L{dumps} and L{loads} try that
first and encode or decode anything else the general way.
"""

import io

import cbor2

# The bodies every session sends or receives most, written and read by
# hand at known places; part of this module's API (cbor.dumps_data, ...).
from cairn.wire.batch_layouts import dumps_batch, dumps_deliveries, dumps_receipts, loads_batch
from cairn.wire.layouts import dumps_data, dumps_keepalive, loads_data

__all__ = [
    "MAX_DEPTH",
    "CBORError",
    "dumps",
    "dumps_batch",
    "dumps_data",
    "dumps_deliveries",
    "dumps_keepalive",
    "dumps_receipts",
    "loads",
    "loads_batch",
    "loads_data",
]

MAX_DEPTH = 16

_PLAIN = (bytes, str, int, float, bool, type(None))


class CBORError(ValueError):
    """A payload is not a single well-formed CBOR item of an accepted kind."""


def dumps(value) -> bytes:
    """Encode C{value} as canonical CBOR (a drain's batch bodies by L{dumps_batch})."""
    if type(value) is dict and len(value) == 1:
        encoded = dumps_batch(value)
        if encoded is not None:
            return encoded
    return cbor2.dumps(value, canonical=True)


#: The exact types cbor2 decodes plain items to: checked by type lookup
#: before the recursive call (a Data body is a dozen items; issue 19).
_PLAIN_TYPES = frozenset(_PLAIN)


def _check_plain(value, depth=0):
    # cbor2 turns some tags (datetime, decimal, ...) into objects even with a
    # tag hook, and "undefined" into a singleton; bodies never hold those.
    if isinstance(value, _PLAIN):
        return
    if depth >= MAX_DEPTH:
        raise CBORError("CBOR nested too deeply")
    plain = _PLAIN_TYPES
    if isinstance(value, list):
        for item in value:
            if type(item) not in plain:
                _check_plain(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in plain:
                _check_plain(key, depth + 1)
            if type(item) not in plain:
                _check_plain(item, depth + 1)
    else:
        raise CBORError(f"CBOR item of kind {type(value).__name__} not allowed")


def _refuse_tags(data) -> None:
    """
    Walk the heads of one CBOR item and raise L{CBORError} at any tag.

    Only heads are read (string contents are skipped), so this is linear in
    the number of items; malformed input is left for cbor2 to reject.
    """
    pos, end = 0, len(data)
    pending = 1  # items still to read
    stack = []
    while pending:
        if pos >= end:
            return
        head = data[pos]
        major, info = head >> 5, head & 0x1F
        pos += 1
        if major == 6:
            raise CBORError("CBOR tags are not allowed")
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        else:
            return  # reserved or indefinite: cbor2 refuses it
        pending -= 1
        if major in (2, 3):
            pos += arg
        elif major in (4, 5):
            if len(stack) >= MAX_DEPTH:
                raise CBORError("CBOR nested too deeply")
            stack.append(pending)
            pending = arg * (2 if major == 5 else 1)
        while not pending and stack:
            pending = stack.pop()


def _refuse_tag(decoder, tag):
    raise CBORError(f"CBOR tag {tag.tag} not allowed")


def loads(data: bytes):
    """
    Decode exactly one plain CBOR item from C{data}.

    @raise CBORError: on malformed input, trailing bytes, tags, indefinite
        lengths, duplicate keys or excessive nesting.
    """
    value = loads_batch(data)
    if value is not None:
        return value
    return _loads_general(data)


def _loads_general(data: bytes):
    """L{loads} for any item: the tag scan, cbor2's decoder, the plain-kinds walk."""
    _refuse_tags(data)
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp,
            tag_hook=_refuse_tag,
            max_depth=MAX_DEPTH + 1,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
        value = decoder.decode()
    except CBORError:
        raise
    except Exception as e:  # cbor2 raises several types for bad input
        raise CBORError(f"undecodable CBOR ({e.__class__.__name__})") from None
    if fp.tell() != len(data):
        raise CBORError("trailing bytes after the CBOR item")
    _check_plain(value)
    return value
