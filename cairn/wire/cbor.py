"""
The one place CBOR is encoded and decoded.

Bodies are encoded canonically (RFC 8949 core deterministic encoding) so
that test vectors are byte-exact. Decoding accepts exactly one item made
of maps, arrays, byte and text strings, integers, floats, booleans and
null -- definite lengths only, no duplicate map keys, nesting at most 16
deep, no trailing bytes. Anything else is a L{CBORError}.
"""

import io

import cbor2

MAX_DEPTH = 16

_PLAIN = (bytes, str, int, float, bool, type(None))


class CBORError(ValueError):
    """A payload is not a single well-formed CBOR item of an accepted kind."""


def dumps(value) -> bytes:
    """Encode C{value} as canonical CBOR."""
    return cbor2.dumps(value, canonical=True)


def _check_plain(value, depth=0):
    # cbor2 turns some tags (datetime, decimal, ...) into objects even with a
    # tag hook, and "undefined" into a singleton; bodies never hold those.
    if isinstance(value, _PLAIN):
        return
    if depth >= MAX_DEPTH:
        raise CBORError("CBOR nested too deeply")
    if isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)
    else:
        raise CBORError(f"CBOR item of kind {type(value).__name__} not allowed")


def _refuse_tag(decoder, tag):
    raise CBORError(f"CBOR tag {tag.tag} not allowed")


def loads(data: bytes):
    """
    Decode exactly one plain CBOR item from C{data}.

    @raise CBORError: on malformed input, trailing bytes, tags, indefinite
        lengths, duplicate keys or excessive nesting.
    """
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
