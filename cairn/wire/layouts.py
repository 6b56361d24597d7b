"""
The fixed layouts of the bodies that every message costs, written and
read by hand: a Data body (L{dumps_data}, L{loads_data}) and a Keepalive
(L{dumps_keepalive}); a mailbox drain's batches are in
L{cairn.wire.batch_layouts}. Each gives exactly the bytes, or the
value, that L{cairn.wire.cbor}'s general C{dumps}/C{loads} would; a body
laid out any other way makes a reader return None and the caller decodes
it the general way, which accepts or refuses it as before.

Hand-written because cbor2's canonical encoder and the general decode's
tag scan and plain-kinds walk (each a Python loop over every item) cost
several times reading five values at known places (issues 19 and 20);
tests/test_cbor.py compares every function here with the general path.
"""

import struct

import cbor2


def head(major: int, value: int) -> bytes:
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
#: The Data body almost every message is (issue 19): the channel below 24
#: (a one-byte head), the ciphertext's length in a two-byte head (a 1 KiB
#: message's is 1,072 bytes), a 32-byte key; n, the place in the chain, and
#: pn, the previous chain's length, have any head width (a chain carries
#: up to 64 messages or more before its own-key step, section 11.8, so pn
#: of 24 or more is common). As C{struct} layouts: up to the ciphertext's
#: length (n with no argument byte, one, two or four), and after it (pn
#: the same way).
_CT_KEY_HEAD_16 = _DATA_CT + b"\x59"  # "ct", then a byte string's head with a two-byte length
_PUB_KEY_HEAD = _DATA_PUB + _KEY_HEAD  # "pub", then a 32-byte string's head
_COMMON_OPEN = tuple(struct.Struct(f">7sB{arg}4sH") for arg in ("", "B", "H", "I"))
#: Which of them for n's head byte (n below 24, or 0x18, 0x19, 0x1a), and the ciphertext's place.
_N_LAYOUT = {0x18: (_COMMON_OPEN[1], 15), 0x19: (_COMMON_OPEN[2], 16), 0x1A: (_COMMON_OPEN[3], 18)}
_COMMON_TAILS = tuple(struct.Struct(f">3sB{arg}6s32s8sB") for arg in ("", "B", "H", "I"))
#: Which of them for the tail's size, with pn's head byte (0: pn below 24, in its head).
_TAIL_LAYOUT = {layout.size: (layout, head) for layout, head in zip(_COMMON_TAILS, (0, 0x18, 0x19, 0x1A))}


def dumps_data(channel: int, pub: bytes, pn: int, n: int, ct: bytes) -> bytes:
    """
    C{dumps({"channel": channel, "dr": {"pub": pub, "pn": pn, "n": n, "ct": ct}})}
    (docs/protocol.md §10), the same bytes made without cbor2.

    Written by hand because it is every Data message's body: cbor2's
    canonical mode costs several times its plain mode per call (it sorts
    every map and sets up an encoder each time), while the body's shape and
    key order never change; only the five values are encoded per message.
    The integers are unsigned (uint32, checked by the callers) and the
    strings bytes; tests/test_cbor.py compares it with L{cairn.wire.cbor.dumps}.
    The common body (see L{loads_data}) is two C{struct} packs around the
    ciphertext: 5,000 instructions against 11,000 item by item (issue 19).
    """
    size = len(ct)
    if 0x100 <= size < 0x10000 and channel < 24 and len(pub) == 32 and n < 0x100000000 and pn < 0x100000000:
        if n < 24:
            opening = _COMMON_OPEN[0].pack(_DATA_OPEN, n, _CT_KEY_HEAD_16, size)
        else:
            width = 0 if n < 0x100 else 1 if n < 0x10000 else 2
            opening = _COMMON_OPEN[1 + width].pack(_DATA_OPEN, 0x18 + width, n, _CT_KEY_HEAD_16, size)
        if pn < 24:
            tail = _COMMON_TAILS[0].pack(_DATA_PN, pn, _PUB_KEY_HEAD, pub, _DATA_CHANNEL, channel)
        else:
            width = 0 if pn < 0x100 else 1 if pn < 0x10000 else 2
            tail = _COMMON_TAILS[1 + width].pack(_DATA_PN, 0x18 + width, pn, _PUB_KEY_HEAD, pub, _DATA_CHANNEL, channel)
        return b"".join((opening, ct, tail))
    small = _SMALL_UINTS
    return b"".join(
        (
            _DATA_OPEN,
            small[n] if n < 24 else head(0, n),
            _DATA_CT,
            head(2, size),
            ct,
            _DATA_PN,
            small[pn] if pn < 24 else head(0, pn),
            _DATA_PUB,
            _KEY_HEAD if len(pub) == 32 else head(2, len(pub)),
            pub,
            _DATA_CHANNEL,
            small[channel] if channel < 24 else head(0, channel),
        )
    )


def arg(data: bytes, pos: int, major: int) -> tuple[int, int]:
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


#: The shortest common body (n in one byte).
_COMMON_MIN = _COMMON_OPEN[3].size + _COMMON_TAILS[0].size


def loads_data(data: bytes) -> "tuple[int, bytes, int, int, bytes] | None":
    """
    C{(channel, pub, pn, n, ct)} if C{data} is a Data body laid out as
    L{dumps_data} makes it, else None (see L{_loads_data}).

    The common layout is read with two C{struct} unpacks (three for n of
    24 or more) and compared whole, instead of item by item: about a
    third of the walk's instructions for a 1 KiB message, paid by every
    Data received (issue 19). pn's head width follows from the size of
    what is left after the ciphertext. Anything else takes the walk,
    which reads every layout this does.
    """
    size = len(data)
    if size >= _COMMON_MIN:
        opening, n, ct_key, ct_len = _COMMON_OPEN[0].unpack_from(data)
        start = 14
        if n >= 24:  # n after its head (one, two or four bytes)
            layout = _N_LAYOUT.get(n)
            if layout is None:
                return _loads_data(data)
            opening, _, n, ct_key, ct_len = layout[0].unpack_from(data)
            start = layout[1]
        stop = start + ct_len
        tail = _TAIL_LAYOUT.get(size - stop)
        if tail is not None and opening == _DATA_OPEN and ct_key == _CT_KEY_HEAD_16:
            layout, pn_head = tail
            if pn_head:
                pn_key, head_byte, pn, pub_key, pub, channel_key, channel = layout.unpack_from(data, stop)
            else:
                pn_key, pn, pub_key, pub, channel_key, channel = layout.unpack_from(data, stop)
                head_byte = 0 if pn < 24 else -1
            if (
                head_byte == pn_head
                and channel < 24
                and pn_key == _DATA_PN
                and pub_key == _PUB_KEY_HEAD
                and channel_key == _DATA_CHANNEL
            ):
                return channel, pub, pn, n, data[start:stop]
    return _loads_data(data)


def _loads_data(data: bytes) -> "tuple[int, bytes, int, int, bytes] | None":
    """
    C{(channel, pub, pn, n, ct)} if C{data} is a Data body laid out as
    L{dumps_data} makes it (the keys in canonical order, nothing else in
    the maps, nothing after them; a head may be longer than needed, as
    L{cairn.wire.cbor.loads} also reads it), else None: the caller then decodes it
    with L{cairn.wire.cbor.loads}, which reads every other encoding of the same body.

    The inverse of L{dumps_data}, written by hand for the same reason: it
    is every received Data message, and a general decode (the tag scan,
    cbor2's decoder set-up, two dicts, the plain-kinds walk, then the
    schema checks on the dicts) cost several times the parse of five
    values at known places. The integers are below 2**32 (a larger one
    gives None: L{cairn.wire.cbor.loads} and the schema checks then refuse it with their
    own error); the callers check the rest as they check L{cairn.wire.cbor.loads}'s output.
    """
    try:
        if not data.startswith(_DATA_OPEN):
            return None
        n, pos = arg(data, 7, 0)
        if n < 0 or data[pos : pos + 3] != _DATA_CT:
            return None
        ct, pos = _string(data, pos + 3, 2)
        if ct is None or data[pos : pos + 3] != _DATA_PN:
            return None
        pn, pos = arg(data, pos + 3, 0)
        if pn < 0 or data[pos : pos + 4] != _DATA_PUB:
            return None
        pub, pos = _string(data, pos + 4, 2)
        if pub is None or data[pos : pos + 8] != _DATA_CHANNEL:
            return None
        channel, pos = arg(data, pos + 8, 0)
    except IndexError:  # cut short inside a head
        return None
    if channel < 0 or pos != len(data):
        return None
    return channel, pub, pn, n, ct


#: A Keepalive body's constant part: {"ack": ...
_KEEPALIVE_OPEN = b"\xa1\x63ack"


def dumps_keepalive(ack: int) -> bytes:
    """
    C{dumps({"ack": ack})} (docs/protocol.md §8.2), the same bytes made
    without cbor2: every idle session sends one per keepalive interval,
    and cbor2's canonical mode was about a third of a keepalive tick's CPU
    (issue 20). C{ack} is a uint64 (a sequence number); anything else goes
    through the general encoder. tests/test_cbor.py compares the two.
    """
    if type(ack) is not int or not 0 <= ack < 2**64:
        return cbor2.dumps({"ack": ack}, canonical=True)
    return _KEEPALIVE_OPEN + head(0, ack)


def _string(data: bytes, pos: int, major: int):
    """The byte string (major 2) or UTF-8 bytes (3) at C{pos} and where it ends, or (None, pos)."""
    size, pos = arg(data, pos, major)
    stop = pos + size
    if size < 0 or stop > len(data):
        return None, pos
    return data[pos:stop], stop
