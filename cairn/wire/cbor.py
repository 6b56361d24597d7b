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
"""

import io
import struct

import cbor2

MAX_DEPTH = 16

_PLAIN = (bytes, str, int, float, bool, type(None))


class CBORError(ValueError):
    """A payload is not a single well-formed CBOR item of an accepted kind."""


def dumps(value) -> bytes:
    """Encode C{value} as canonical CBOR."""
    return cbor2.dumps(value, canonical=True)


def _head(major: int, value: int) -> bytes:
    """A canonical (shortest) CBOR item head of C{major} type for C{value}."""
    if value < 24:
        return bytes(((major << 5) | value,))
    if value < 0x100:
        return bytes(((major << 5) | 24, value))
    if value < 0x10000:
        return bytes(((major << 5) | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes(((major << 5) | 26,)) + value.to_bytes(4, "big")
    return bytes(((major << 5) | 27,)) + value.to_bytes(8, "big")


#: The constant parts of a Data body, canonical order (keys length-first).
_DATA_OPEN = b"\xa2\x62dr\xa4\x61n"  # {"dr": {"n": ...
_DATA_CT = b"\x62ct"
_DATA_PN = b"\x62pn"
_DATA_PUB = b"\x63pub"
_DATA_CHANNEL = b"\x67channel"
#: Heads made once: unsigned integers 0-23 (one byte each), a 32-byte string.
_SMALL_UINTS = [bytes((value,)) for value in range(24)]
_KEY_HEAD = b"\x58\x20"


def dumps_data(channel: int, pub: bytes, pn: int, n: int, ct: bytes) -> bytes:
    """
    C{dumps({"channel": channel, "dr": {"pub": pub, "pn": pn, "n": n, "ct": ct}})}
    (docs/protocol.md §10), the same bytes made without cbor2.

    Written by hand because it is every Data message's body: cbor2's
    canonical mode costs several times its plain mode per call (it sorts
    every map and sets up an encoder each time), while the body's shape and
    key order never change; only the five values are encoded per message.
    The integers are unsigned (uint32, checked by the callers) and the
    strings bytes; tests/test_cbor.py compares it with L{dumps}.
    """
    small = _SMALL_UINTS
    return b"".join(
        (
            _DATA_OPEN,
            small[n] if n < 24 else _head(0, n),
            _DATA_CT,
            _head(2, len(ct)),
            ct,
            _DATA_PN,
            small[pn] if pn < 24 else _head(0, pn),
            _DATA_PUB,
            _KEY_HEAD if len(pub) == 32 else _head(2, len(pub)),
            pub,
            _DATA_CHANNEL,
            small[channel] if channel < 24 else _head(0, channel),
        )
    )


def _arg(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """
    The argument of the item head of C{major} type at C{pos} and where the
    head ends; (-1, pos) if there is no such head with an argument below
    2**32 there.
    """
    head = data[pos]
    if head >> 5 != major:
        return -1, pos
    info = head & 0x1F
    if info < 24:
        return info, pos + 1
    if info > 26:
        return -1, pos
    stop = pos + 1 + (1 << (info - 24))
    return int.from_bytes(data[pos + 1 : stop], "big"), stop


def loads_data(data: bytes) -> "tuple[int, bytes, int, int, bytes] | None":
    """
    C{(channel, pub, pn, n, ct)} if C{data} is a Data body laid out as
    L{dumps_data} makes it (the keys in canonical order, nothing else in
    the maps, nothing after them; a head may be longer than needed, as
    L{loads} also reads it), else None: the caller then decodes it
    with L{loads}, which reads every other encoding of the same body.

    The inverse of L{dumps_data}, written by hand for the same reason: it
    is every received Data message, and a general decode (the tag scan,
    cbor2's decoder set-up, two dicts, the plain-kinds walk, then the
    schema checks on the dicts) cost several times the parse of five
    values at known places. The integers are below 2**32 (a larger one
    gives None: L{loads} and the schema checks then refuse it with their
    own error); the callers check the rest as they check L{loads}'s output.
    """
    try:
        if not data.startswith(_DATA_OPEN):
            return None
        n, pos = _arg(data, 7, 0)
        if n < 0 or data[pos : pos + 3] != _DATA_CT:
            return None
        size, pos = _arg(data, pos + 3, 2)
        if size < 0:
            return None
        ct = data[pos : pos + size]
        pos += size
        if len(ct) != size or data[pos : pos + 3] != _DATA_PN:
            return None
        pn, pos = _arg(data, pos + 3, 0)
        if pn < 0 or data[pos : pos + 4] != _DATA_PUB:
            return None
        size, pos = _arg(data, pos + 4, 2)
        if size < 0:
            return None
        pub = data[pos : pos + size]
        pos += size
        if len(pub) != size or data[pos : pos + 8] != _DATA_CHANNEL:
            return None
        channel, pos = _arg(data, pos + 8, 0)
    except IndexError:  # cut short inside a head
        return None
    if channel < 0 or pos != len(data):
        return None
    return channel, pub, pn, n, ct


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


#: Kinds of the values read by L{_loads_batch}: the CBOR major type, or float.
_UINT, _BYTES, _TEXT, _FLOAT = 0, 2, 3, 7
#: Float heads (half, single, double precision) and how to read what follows.
_FLOATS = {0xF9: struct.Struct(">e"), 0xFA: struct.Struct(">f"), 0xFB: struct.Struct(">d")}


def _layout(outer: str, fields) -> tuple:
    """
    A batch layout for L{_loads_batch}: C{{outer: [{name: value, ...}, ...]}}
    with C{fields} (name, kind) in canonical key order, keys encoded once.
    """
    return (
        outer,
        bytes((0xA0 | len(fields),)),
        tuple((dumps(name), name, kind) for name, kind in fields),
    )


#: The bodies a mailbox drain receives, by their first ten bytes
#: (docs/protocol.md §21.4 ForwardDeliver, §21.6 ForwardReceipt).
_BATCHES = {
    b"\xa1" + dumps("messages"): _layout(
        "messages",
        (("id", _BYTES), ("seq", _UINT), ("from", _TEXT), ("payload", _BYTES), ("stored_at", _FLOAT)),
    ),
    b"\xa1" + dumps("receipts"): _layout(
        "receipts",
        (("at", _FLOAT), ("id", _BYTES), ("to", _TEXT), ("rseq", _UINT), ("status", _UINT)),
    ),
}


def _loads_batch(data: bytes):
    """
    What L{loads} returns for a ForwardDeliver or ForwardReceipt body laid
    out as L{dumps} makes it (one array of maps, each with exactly the
    message's keys in canonical order and values of the kinds §21 gives
    them, nothing after it), or None: L{loads} then decodes C{data} the
    general way, which accepts or refuses everything else as before.

    Written by hand for the same reason as L{loads_data}: these are every
    message and receipt a mailbox drain receives, and the general decode's
    tag scan and plain-kinds walk, each a Python loop over every item,
    were about a third of a draining client's CPU (issue 19). Here each
    value is read once at its known place. Integers are below 2**32 and
    heads may be longer than needed (as for L{loads_data}); anything else
    (a larger integer, another key, a tag, bad UTF-8, a cut) gives None.
    """
    if type(data) is not bytes:  # slices must be bytes, as cbor2 gives
        return None
    layout = _BATCHES.get(data[:10])
    if layout is None:
        return None
    outer, map_head, fields = layout
    end = len(data)
    try:
        count, pos = _arg(data, 10, 4)
        if count < 0:
            return None
        entries = []
        for _ in range(count):
            if not data.startswith(map_head, pos):
                return None
            pos += 1
            entry = {}
            for key, name, kind in fields:
                if not data.startswith(key, pos):
                    return None
                pos += len(key)
                if kind == _FLOAT:
                    unpack = _FLOATS.get(data[pos])
                    if unpack is None or pos + 1 + unpack.size > end:
                        return None
                    entry[name] = unpack.unpack_from(data, pos + 1)[0]
                    pos += 1 + unpack.size
                    continue
                arg, pos = _arg(data, pos, kind)
                if arg < 0:
                    return None
                if kind == _UINT:
                    entry[name] = arg
                    continue
                stop = pos + arg
                if stop > end:
                    return None
                value = data[pos:stop]
                pos = stop
                if kind == _TEXT:
                    value = value.decode("utf-8")
                entry[name] = value
            entries.append(entry)
    except (IndexError, UnicodeDecodeError):  # cut inside a head; not UTF-8
        return None
    if pos != end:
        return None
    return {outer: entries}


def loads(data: bytes):
    """
    Decode exactly one plain CBOR item from C{data}.

    @raise CBORError: on malformed input, trailing bytes, tags, indefinite
        lengths, duplicate keys or excessive nesting.
    """
    value = _loads_batch(data)
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
