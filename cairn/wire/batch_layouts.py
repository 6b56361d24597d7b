"""
The fixed layouts of a mailbox drain's bodies, written and read by hand:
ForwardDeliver and ForwardReceipt batches (L{dumps_batch}, and from the
node's rows L{dumps_deliveries}, L{dumps_receipts}; L{loads_batch}, which
also reads a ForwardPurge of receipts; docs/protocol.md §21.4-§21.6). Each gives exactly the
bytes, or the value, that L{cairn.wire.cbor}'s general C{dumps}/C{loads}
would; a body laid out any other way makes a reader return None and the
caller decodes it the general way, which accepts or refuses it as before.

Hand-written for the reason L{cairn.wire.layouts} gives (cbor2's canonical
encoder and the general decode's walks cost several times reading values
at known places; issue 19's mailbox drain); apart from it because the
session's bodies and the mailbox's are read by different layers (and
#18: no module over 399 lines). tests/test_cbor.py, tests/test_cbor_rows.py
and tests/test_batch_layouts.py compare every function here with the general path.
"""

import io
import re
import struct
from array import array
from operator import eq, ne

import cbor2

from cairn.wire.layouts import _string, arg

#: Float heads (half, single, double precision) and how to read what follows.
_FLOATS = {0xF9: struct.Struct(">e"), 0xFA: struct.Struct(">f"), 0xFB: struct.Struct(">d")}


def _float(data: bytes, pos: int):
    """The float at C{pos} and where it ends, or (None, pos); struct.error if cut short."""
    unpack = _FLOATS.get(data[pos])
    if unpack is None:
        return None, pos
    return unpack.unpack_from(data, pos + 1)[0], pos + 1 + unpack.size


#: The keys of a ForwardDeliver entry (§21.4) in canonical order, each with
#: the head before it (the entry's map head before the first).
_DELIVER_ID = b"\xa5\x62id"
_DELIVER_SEQ = b"\x63seq"
_DELIVER_FROM = b"\x64from"
_DELIVER_PAYLOAD = b"\x67payload"
_DELIVER_STORED_AT = b"\x69stored_at"
#: The same for a ForwardReceipt entry (§21.6).
_RECEIPT_AT = b"\xa5\x62at"
_RECEIPT_ID = b"\x62id"
_RECEIPT_TO = b"\x62to"
_RECEIPT_RSEQ = b"\x64rseq"
_RECEIPT_STATUS = b"\x66status"


def _bytes(data: bytes, pos: int):
    return _string(data, pos, 2)


def _text(data: bytes, pos: int):
    value, pos = _string(data, pos, 3)
    return (None if value is None else value.decode()), pos


def _uint(data: bytes, pos: int):
    value, pos = arg(data, pos, 0)
    return (None if value < 0 else value), pos


#: Each entry's keys (with the heads before them) in canonical order, the
#: names they give and the readers of their values.
_DELIVER_WALK = tuple(
    zip(
        (_DELIVER_ID, _DELIVER_SEQ, _DELIVER_FROM, _DELIVER_PAYLOAD, _DELIVER_STORED_AT),
        ("id", "seq", "from", "payload", "stored_at"),
        (_bytes, _uint, _text, _bytes, _float),
    )
)
_RECEIPT_WALK = tuple(
    zip(
        (_RECEIPT_AT, _RECEIPT_ID, _RECEIPT_TO, _RECEIPT_RSEQ, _RECEIPT_STATUS),
        ("at", "id", "to", "rseq", "status"),
        (_float, _bytes, _text, _uint, _uint),
    )
)


def _walk(data: bytes, pos: int, steps):
    """The entry at C{pos} read head by head by C{steps} (L{_DELIVER_WALK} ...) and where it ends, or None."""
    entry = {}
    for key, name, read in steps:
        if not data.startswith(key, pos):
            return None
        value, pos = read(data, pos + len(key))
        if value is None:
            return None
        entry[name] = value
    return entry, pos


#: The common entries, read with C{struct} layouts, not head by head (a
#: drain's every message and receipt: issue 19): a 16-byte id, a peer id
#: (46 characters, base58 of a sha2-256 multihash) in a one-byte length
#: head, integers below 2**32 in heads of any width (picking the layout),
#: a float of any width (too), a payload of a one- or two-byte length head.
#: Each unpack's constant heads are compared; an entry laid out any other
#: way is read head by head (L{_walk}).
_PEER = "B46s"  # its head's length byte (46), then the id
#: A uint's head byte: the C{struct} code of its value, from the head on (below 24 the value is the head).
_UINT_CODES = {**{head: "B" for head in range(24)}, 0x18: "xB", 0x19: "xH", 0x1A: "xI"}
#: A float's head byte: the C{struct} code of its value, from the head on.
_FLOAT_CODES = {0xF9: "xe", 0xFA: "xf", 0xFB: "xd"}
#: A ForwardDeliver entry by its seq's head byte, up to the payload's head
#: and the two bytes after it; then its stored_at by the float's head byte.
_DELIVER_OPEN = {head: struct.Struct(f">5s16s4s{code}6s{_PEER}8sBH") for head, code in _UINT_CODES.items()}
_DELIVER_KEYS = (_DELIVER_ID + b"\x50", _DELIVER_SEQ, _DELIVER_FROM + b"\x78", 46, _DELIVER_PAYLOAD)
_DELIVER_CLOSE = {head: struct.Struct(f">10s{code}") for head, code in _FLOAT_CODES.items()}
#: The payload's head byte: how far to shift those two bytes for its
#: length, and how many of them are the payload's (of a one-byte length: one).
_PAYLOAD_HEADS = {0x58: (8, 1), 0x59: (0, 0)}
#: A ForwardReceipt entry by its at's head byte, up to its rseq; then its
#: rseq by the rseq's head byte, the status key and the status's head (the status when below 24).
_RECEIPT_OPEN = {head: struct.Struct(f">4s{code}4s16s4s{_PEER}5s") for head, code in _FLOAT_CODES.items()}
_RECEIPT_KEYS = (_RECEIPT_AT, _RECEIPT_ID + b"\x50", _RECEIPT_TO + b"\x78", 46, _RECEIPT_RSEQ)
_RECEIPT_CLOSE = {head: struct.Struct(f">{code}7sB") for head, code in _UINT_CODES.items()}


def _deliver_entries(data: bytes, pos: int, count: int):
    """C{count} ForwardDeliver entries from C{pos} and where they end, or None."""
    entries, end, keys = [], len(data), _DELIVER_KEYS
    for _ in range(count):
        layout = _DELIVER_OPEN.get(data[pos + 25])
        if layout is not None and pos + layout.size <= end:
            id_key, message_id, seq_key, seq, from_key, size, sender, payload_key, head, length = layout.unpack_from(
                data, pos
            )
            shift = _PAYLOAD_HEADS.get(head)
            if shift is not None and (id_key, seq_key, from_key, size, payload_key) == keys:
                start = pos + layout.size - shift[1]
                stop = start + (length >> shift[0])
                close = _DELIVER_CLOSE.get(data[stop + 10])  # IndexError if the body stops before it
                if close is not None:
                    stored_key, stored_at = close.unpack_from(data, stop)
                    if stored_key == _DELIVER_STORED_AT:
                        payload, sender = data[start:stop], sender.decode()
                        entries.append(
                            {"id": message_id, "seq": seq, "from": sender, "payload": payload, "stored_at": stored_at}
                        )
                        pos = stop + close.size
                        continue
        found = _walk(data, pos, _DELIVER_WALK)
        if found is None:
            return None
        entries.append(found[0])
        pos = found[1]
    return entries, pos


def _receipt_entries(data: bytes, pos: int, count: int):
    """C{count} ForwardReceipt entries from C{pos} and where they end, or None."""
    entries, end, keys = [], len(data), _RECEIPT_KEYS
    for _ in range(count):
        layout = _RECEIPT_OPEN.get(data[pos + 4])
        if layout is not None and pos + layout.size < end:
            rseq_at = pos + layout.size
            at_key, at, id_key, message_id, to_key, size, recipient, rseq_key = layout.unpack_from(data, pos)
            close = _RECEIPT_CLOSE.get(data[rseq_at])
            if close is not None and rseq_at + close.size <= end and (at_key, id_key, to_key, size, rseq_key) == keys:
                rseq, status_key, status = close.unpack_from(data, rseq_at)
                if status < 24 and status_key == _RECEIPT_STATUS:
                    recipient = recipient.decode()
                    entries.append({"at": at, "id": message_id, "to": recipient, "rseq": rseq, "status": status})
                    pos = rseq_at + close.size
                    continue
        found = _walk(data, pos, _RECEIPT_WALK)
        if found is None:
            return None
        entries.append(found[0])
        pos = found[1]
    return entries, pos


#: Unsigned integer items (any head width), nothing else.
_UINT_RUN = re.compile(rb"(?:[\x00-\x17]|\x18.|\x19..|\x1a.{4}|\x1b.{8})*", re.DOTALL)


def _uint_entries(data: bytes, pos: int, count: int):
    """
    C{count} unsigned integers from C{pos} to the end of C{data} and where
    they end, or None: a ForwardPurge's receipts (§21.5), 256 rseqs a
    drain's ForwardReceipt. That nothing but such items follows (no tag
    can hide there) is matched in C; only then does cbor2 read the body,
    which must end with the C{count}th item.
    """
    if _UINT_RUN.fullmatch(data, pos) is None:
        return None
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except cbor2.CBORDecodeError:  # fewer items than the head says
        return None
    if fp.tell() != len(data):  # more
        return None
    return next(iter(value.values())), len(data)


def _receipts_or_rseqs(data: bytes, pos: int, count: int):
    """ForwardReceipt entries (maps), or a ForwardPurge's rseqs (unsigned integers): the same key."""
    if count and data[pos] < 0x1C:
        return _uint_entries(data, pos, count)
    return _receipt_entries(data, pos, count)


#: The bodies a mailbox drain receives, by their first ten bytes (a map of
#: one key, its text head and the key): the key and the entries' reader.
_BATCHES = {
    b"\xa1\x68messages": ("messages", _deliver_entries),
    b"\xa1\x68receipts": ("receipts", _receipts_or_rseqs),
}


def loads_batch(data: bytes):
    """
    What L{cairn.wire.cbor.loads} returns for a ForwardDeliver or ForwardReceipt body laid
    out as L{cairn.wire.cbor.dumps} makes it (one array of maps, each with exactly the
    entry's keys in canonical order and values of the kinds §21 gives
    them, nothing after it) or for a ForwardPurge of receipts alone (one
    array of unsigned integers, L{_uint_entries}), or None: L{cairn.wire.cbor.loads} then decodes C{data} the
    general way, which accepts or refuses everything else as before.

    Written by hand for the same reason as L{loads_data}: these are every
    message and receipt a mailbox drain receives, and the general decode's
    tag scan and plain-kinds walk, each a Python loop over every item,
    cost several times cbor2's own decode (issue 19). Here each value is
    read once at its known place, a common entry's with two C{struct}
    unpacks (1.3 against 3.4 us per message of a drain). Integers are below 2**32 and heads may
    be longer than needed (as for L{loads_data}); anything else (a larger
    integer, another key, a tag, bad UTF-8, a cut) gives None.
    """
    if type(data) is not bytes:  # slices must be bytes, as cbor2 gives
        return None
    known = _BATCHES.get(data[:10])
    if known is None:
        return None
    outer, read = known
    try:
        count, pos = arg(data, 10, 4)
        if count < 0:
            return None
        found = read(data, pos, count)
    except (IndexError, UnicodeDecodeError, struct.error):  # cut inside a head; not UTF-8
        return None
    if found is None or found[1] != len(data):
        return None
    return {outer: found[0]}


_SINGLE = struct.Struct(">f")


def _shortened(value: float) -> bool:
    """Whether canonical mode writes float C{value} shorter than a double (NaN, or exact in a single)."""
    try:
        return value != value or _SINGLE.unpack(_SINGLE.pack(value))[0] == value
    except OverflowError:  # beyond a single's range: a double
        return False


def _deliver_ordered(entries):
    """ForwardDeliver entries rebuilt in canonical key order, or None (see L{dumps_batch})."""
    ordered = []
    for entry in entries:
        if type(entry) is not dict or len(entry) != 5:
            return None
        message_id, seq, sender = entry["id"], entry["seq"], entry["from"]
        payload, stored_at = entry["payload"], entry["stored_at"]
        if (
            type(message_id) is not bytes
            or type(seq) is not int
            or type(sender) is not str
            or type(payload) is not bytes
            or type(stored_at) is not float
            or _shortened(stored_at)
        ):
            return None
        ordered.append({"id": message_id, "seq": seq, "from": sender, "payload": payload, "stored_at": stored_at})
    return ordered


def _receipt_ordered(entries):
    """ForwardReceipt entries rebuilt in canonical key order, or None (see L{dumps_batch})."""
    ordered = []
    for entry in entries:
        if type(entry) is not dict or len(entry) != 5:
            return None
        at, message_id, recipient = entry["at"], entry["id"], entry["to"]
        rseq, status = entry["rseq"], entry["status"]
        if (
            type(at) is not float
            or type(message_id) is not bytes
            or type(recipient) is not str
            or type(rseq) is not int
            or type(status) is not int
            or _shortened(at)
        ):
            return None
        ordered.append({"at": at, "id": message_id, "to": recipient, "rseq": rseq, "status": status})
    return ordered


#: The batch bodies L{dumps_batch} writes: the outer key and the entries' rebuilder.
_ORDERED = {"messages": _deliver_ordered, "receipts": _receipt_ordered}


def dumps_batch(body):
    """
    C{cbor.dumps(body)} for a ForwardDeliver or ForwardReceipt body (§21.4,
    §21.6) given as maps, or None: the caller then encodes C{body} the
    general way. (The node's delivery writes its bodies from its rows
    instead: L{dumps_deliveries}, L{dumps_receipts}.)

    cbor2's canonical mode costs about four times its plain mode on these
    bodies (it sorts the keys of every entry's map: 2.4 against 0.6 us per
    entry), and they are every message and receipt a drain sends. The two
    modes differ only in map key order and in shortening floats, so each
    entry is rebuilt with its keys in canonical order and the body written
    in plain mode -- when every entry has exactly the layout's five keys,
    each value is of the layout's type, and no float is one that canonical
    mode would shorten (NaN, exact in single precision). tests/test_cbor.py
    compares it with the general encoder.
    """
    if type(body) is not dict or len(body) != 1:
        return None
    ((outer, entries),) = body.items()
    rebuild = _ORDERED.get(outer)
    if rebuild is None or type(entries) is not list:
        return None
    try:
        ordered = rebuild(entries)
    except KeyError:  # another key in place of one of the layout's
        return None
    if ordered is None:
        return None
    return cbor2.dumps({outer: ordered})


def _any_shortened(values) -> bool:
    """Whether canonical mode writes any float of C{values} shorter than a double (L{_shortened})."""
    try:
        singles = array("f", values)  # each rounded to a single (beyond its range: an infinity)
    except (TypeError, OverflowError):  # not all numbers
        return True
    # Exact in a single (infinities too), or NaN: as in _shortened, in C loops.
    return any(map(eq, singles, values)) or any(map(ne, values, values))


def dumps_deliveries(entries) -> bytes:
    """
    C{cbor.dumps({"messages": [...]})} of ForwardDeliver entries given as
    C{(id, seq, from, payload, stored_at)} tuples of the layout's kinds
    (bytes, int, text, bytes, a number; §21.4): the node's delivery, from
    its stored rows.

    L{dumps_batch} takes the entries as maps and rebuilds each in
    canonical key order after checking its kinds; built here in that order
    from the tuples, they go straight to cbor2's plain mode, which writes
    canonical mode's bytes unless a float is one canonical mode shortens
    (then the general encoder writes them). About half the node's encoding
    CPU per delivered message (issue 19). tests/test_cbor.py compares it
    with the general encoder.
    """
    entries = [
        {"id": message_id, "seq": seq, "from": sender, "payload": payload, "stored_at": stored_at}
        for message_id, seq, sender, payload, stored_at in entries
    ]
    return _in_order({"messages": entries}, [entry["stored_at"] for entry in entries])


def dumps_receipts(entries) -> bytes:
    """
    C{cbor.dumps({"receipts": [...]})} of ForwardReceipt entries given as
    C{(at, id, to, rseq, status)} tuples of the layout's kinds (a number,
    bytes, text, int, int; §21.6), as L{dumps_deliveries}.
    """
    entries = [
        {"at": at, "id": message_id, "to": recipient, "rseq": rseq, "status": status}
        for at, message_id, recipient, rseq, status in entries
    ]
    return _in_order({"receipts": entries}, [entry["at"] for entry in entries])


def _in_order(body, floats) -> bytes:
    """C{body}, its maps' keys in canonical order already and C{floats} its only floats, as canonical CBOR."""
    if _any_shortened(floats):
        return cbor2.dumps(body, canonical=True)
    return cbor2.dumps(body)
