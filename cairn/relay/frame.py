"""
The messages between the nodes of one deployment about relay circuits,
as bytes (docs/protocol.md §25.9; docs/scaling.md, "Relay across nodes").

Every message is a CBOR map, except RelayData (the bulk of a busy
circuit), which goes as a **frame**: its data is neither walked by the
CBOR encoder and decoder nor copied twice. A frame is versioned, so that
a node meeting a layout it does not know says so and ends the circuit
instead of dropping its data silently (a stalled circuit):

    0xfe | version (1 byte) | circuit id (16 bytes) | rest (per version)

Those first 18 bytes are the same in every version. Version 1's rest:
the length (2 bytes, big endian) of a CBOR map, the map (the message
without C{body.data} and C{body.circuit}), then the data.

Every CBOR map a node sends says, in C{frame}, the highest frame version
it reads; a node sends each other node frames of the highest version both
read, and the unversioned frame of the releases before versions (C{0xff},
the length, the map without C{body.data}, the data: "version 0") to a
node that has not said. So the upgrade across the introduction of the
version is rolling, and so is any later one that adds a version.
"""

from cairn.wire import cbor
from cairn.wire.constants import MessageType

#: The highest frame version this node reads and writes.
VERSION = 1
#: First byte of a versioned frame: reserved in CBOR (RFC 8949 §3.3), so
#: no CBOR map starts with it.
FRAME = b"\xfe"
#: First byte of the unversioned frame (version 0) of earlier releases:
#: CBOR's "break", which starts no CBOR item either.
LEGACY = b"\xff"
#: The bytes every version begins with: marker, version, circuit id.
PREFIX = 18


#: Plain scalar kinds whose values encode the same whenever they are equal
#: (not floats: 0.0 == -0.0, and 1 == 1.0 == True, hence the kind in each key).
_SCALARS = frozenset((bytes, str, int, bool, type(None)))
#: Longest CBOR map remembered by its bytes.
_SMALL = 512


def _key(message):
    """
    A hashable stand-in for C{message} that tells apart every two messages
    encoding differently: a map of text keys to plain scalars or to maps of
    them, each value with its kind; None for anything else.
    """
    items = []
    for key, value in message.items():
        if type(key) is not str:
            return None
        kind = type(value)
        if kind is dict:
            inner = []
            for key2, value2 in value.items():
                kind2 = type(value2)
                if kind2 not in _SCALARS or type(key2) is not str:
                    return None
                inner.append((key2, kind2, value2))
            items.append((key, kind, tuple(inner)))
        elif kind in _SCALARS:
            items.append((key, kind, value))
        else:
            return None
    return tuple(items)


def _copy(message):
    """A copy of a remembered decoded map that a caller may change (its maps copied too)."""
    return {k: (dict(v) if type(v) is dict else v) for k, v in message.items()}


class _Remembered:
    """
    A bounded memo of a pure function of one argument: at most C{limit}
    results, all forgotten at once when full (a node with that many busy
    circuits gains little from it anyway).
    """

    def __init__(self, limit=1024):
        self.limit = limit
        self.known = {}

    def get(self, key):
        return self.known.get(key)

    def put(self, key, value):
        if len(self.known) >= self.limit:
            self.known.clear()
        self.known[key] = value


_encoded = _Remembered()  # _key(the map) -> its canonical CBOR
_decoded = _Remembered()  # CBOR bytes -> the map (handed out as copies)


def _dumps(message):
    """C{cbor.dumps(message)}, remembered for the maps L{_key} stands for."""
    key = _key(message)
    if key is None:
        return cbor.dumps(message)
    encoded = _encoded.get(key)
    if encoded is None:
        encoded = cbor.dumps(message)
        _encoded.put(key, encoded)
    return encoded


def _loads(data):
    """C{cbor.loads(data)}, remembered for small maps L{_key} accepts."""
    if type(data) is not bytes or len(data) > _SMALL:
        return cbor.loads(data)
    known = _decoded.get(data)
    if known is None:
        value = cbor.loads(data)
        if type(value) is not dict or _key(value) is None:
            return value
        _decoded.put(data, value)
        known = value
    return _copy(known)


class UnknownVersion(ValueError):
    """A frame of a version this node does not read; C{circuit_id} is the circuit it was about."""

    def __init__(self, version, circuit_id):
        super().__init__(f"a RelayData frame of version {version} (this node reads up to {VERSION})")
        self.version = version
        self.circuit_id = circuit_id


def is_frame(data: bytes) -> bool:
    """Whether C{data} is a RelayData frame (of any version) rather than a CBOR map."""
    return data[:1] in (FRAME, LEGACY)


def encode(message: dict, version: int = VERSION) -> bytes:
    """
    C{message} to another node, which reads frames up to C{version} (0:
    it has not said), as bytes: a RelayData C{env} as a frame, anything
    else as a CBOR map saying the highest frame version this node reads.
    """
    body = message.get("body")
    if message.get("op") == "env" and message.get("type") == MessageType.RELAY_DATA and isinstance(body, dict):
        data, circuit_id = body.get("data"), body.get("circuit")
        if isinstance(data, bytes):
            if version >= 1 and isinstance(circuit_id, bytes) and len(circuit_id) == 16:
                rest = {k: v for k, v in body.items() if k not in ("data", "circuit")}
                head = _dumps(dict(message, body=rest))
                if len(head) < 0x10000:
                    return b"".join((FRAME, b"\x01", circuit_id, len(head).to_bytes(2, "big"), head, data))
            else:
                head = cbor.dumps(dict(message, body={k: v for k, v in body.items() if k != "data"}))
                if len(head) < 0x10000:
                    return b"".join((LEGACY, len(head).to_bytes(2, "big"), head, data))
    return _dumps(dict(message, frame=VERSION))


def _head(data, start):
    end = start + 2 + int.from_bytes(data[start : start + 2], "big")
    if len(data) < end:
        raise ValueError("a truncated RelayData frame")
    message = _loads(data[start + 2 : end])
    if not isinstance(message, dict) or not isinstance(message.get("body"), dict):
        raise ValueError("a RelayData frame without a body")
    message["body"]["data"] = data[end:]
    return message


def decode(data: bytes) -> dict:
    """
    The message L{encode} made of C{data}.

    @raise UnknownVersion: a frame of a version this node does not read.
    @raise ValueError: malformed.
    """
    marker = data[:1]
    if marker == LEGACY:
        if len(data) < 3:
            raise ValueError("a truncated RelayData frame")
        return _head(data, 1)
    if marker != FRAME:
        return _loads(data)
    if len(data) < PREFIX:
        raise ValueError("a truncated RelayData frame")
    version, circuit_id = data[1], data[2:PREFIX]
    if version != 1:
        raise UnknownVersion(version, circuit_id)
    message = _head(data, PREFIX)
    message["body"]["circuit"] = circuit_id
    return message
