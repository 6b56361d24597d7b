"""
Protocol constants: versions, type codes, Close codes and fixed sizes.

Every number an independent implementation needs is here and in
docs/protocol.md; nothing else in the package spells a type code.
"""

from enum import IntEnum

#: The protocol version this implementation speaks (envelope byte 0).
PROTOCOL_VERSION = 1
#: Every version a responder accepts in a HandshakeInit.
SUPPORTED_VERSIONS = (1,)

#: version (1) + type (2) + session id (16) + sequence (8) + length (4).
HEADER_SIZE = 31
SESSION_ID_SIZE = 16
MAX_SEQUENCE = 2**64 - 1
#: The u32 length field's own ceiling; the configured maximum is usually lower.
MAX_LENGTH_FIELD = 2**32 - 1

#: The start of the Noise prologue, the 5 ASCII bytes ``cairn``; the
#: protocol version and the session id follow it (docs/protocol.md §6.1).
NOISE_PROLOGUE = b"cairn"
NOISE_PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
#: Prefix of the message an identity key signs to bind its Noise static key.
STATIC_BINDING_PREFIX = b"cairn-noise-static:"

#: Custom application range, inclusive.
CUSTOM_TYPE_MIN = 0xF000
CUSTOM_TYPE_MAX = 0xFFFF


class MessageType(IntEnum):
    """Envelope type codes defined by the seed and DESIGN.md."""

    HANDSHAKE_INIT = 0x0100
    HANDSHAKE_RESPONSE = 0x0101
    HANDSHAKE_FINAL = 0x0102

    KEEPALIVE = 0x0200
    CLOSE = 0x0201
    RECONNECT = 0x0202
    KEY_UPDATE = 0x0203

    DATA = 0x0300
    CHANNEL_INIT = 0x0303

    PEER_ANNOUNCE = 0x0400
    RELAY_REQUEST = 0x0401
    RELAY_RESPONSE = 0x0402

    # Pairing family (DESIGN.md: 0x0110...)
    PAIR_REQUEST = 0x0110
    PAIR_CHALLENGE = 0x0111
    PAIR_RESPONSE = 0x0112
    PAIR_CONFIRM = 0x0113
    PAIR_REJECT = 0x0114
    PAIR_REVOKE = 0x0115

    # Forward/mailbox family (DESIGN.md: 0x0700...; docs/protocol.md §21)
    FORWARD_REQUEST = 0x0700
    FORWARD_ACK = 0x0701
    FORWARD_DELIVER = 0x0702
    FORWARD_PURGE = 0x0703
    FORWARD_RECEIPT = 0x0704
    PEER_KEY_REQUEST = 0x0705
    PEER_KEY_RESPONSE = 0x0706

    # Relay circuits family (DESIGN.md: 0x0500...; docs/protocol.md §25)
    ROUTE_REQUEST = 0x0500
    ROUTE_RESPONSE = 0x0501
    RELAY_DATA = 0x0502
    RELAY_ACK = 0x0503
    RELAY_CLOSE = 0x0504
    RELAY_ATTACH = 0x0505

    # Sync hub family (DESIGN.md: 0x0800...; docs/protocol.md §24)
    SYNC_SUBSCRIBE = 0x0800
    SYNC_PUBLISH = 0x0801
    SYNC_ACK = 0x0802
    SYNC_UPDATE = 0x0803
    SYNC_CURSOR = 0x0804
    SYNC_RESET = 0x0805
    SYNC_DENIED = 0x0806


HANDSHAKE_TYPES = frozenset(
    {
        MessageType.HANDSHAKE_INIT,
        MessageType.HANDSHAKE_RESPONSE,
        MessageType.HANDSHAKE_FINAL,
    }
)

#: Types the session layer consumes itself; services cannot take them over.
SESSION_LAYER_TYPES = HANDSHAKE_TYPES | {
    MessageType.KEEPALIVE,
    MessageType.CLOSE,
    MessageType.RECONNECT,
    MessageType.KEY_UPDATE,
    MessageType.DATA,
    MessageType.CHANNEL_INIT,
}


def is_custom_type(code: int) -> bool:
    """Whether C{code} lies in the application range 0xF000-0xFFFF."""
    return CUSTOM_TYPE_MIN <= code <= CUSTOM_TYPE_MAX


class CloseCode(IntEnum):
    """
    Codes carried in a Close body (see docs/protocol.md, "Close codes").

    0 is a graceful close; 1-99 are protocol errors of the peer that
    receives them; 100+ are conditions of the sender.
    """

    NORMAL = 0
    MALFORMED_ENVELOPE = 1
    PAYLOAD_TOO_LARGE = 2
    BAD_CBOR = 3
    DECRYPT_FAILED = 4
    REPLAY = 5
    UNEXPECTED_MESSAGE = 6
    VERSION_UNSUPPORTED = 7
    HANDSHAKE_FAILED = 8
    UNKNOWN_SESSION = 9
    TIMEOUT = 10
    NOT_PAIRED = 11
    LIMIT_REACHED = 12
    REPLACED = 13
    RESUME_FAILED = 14
    PAIRING_REVOKED = 15
    GOING_AWAY = 100
    INTERNAL = 101


class PairRejectCode(IntEnum):
    """Codes carried in a PairReject body (see docs/protocol.md, "Pairing")."""

    BAD_PROOF = 1
    EXPIRED = 2
    ALREADY_USED = 3
    RATE_LIMITED = 4
    METHOD_UNAVAILABLE = 5
    PENDING_APPROVAL = 6
    REJECTED_BY_OPERATOR = 7
    MALFORMED = 8
    UNKNOWN_CODE = 9
    UNSUPPORTED_VERSION = 10


class ForwardStatus(IntEnum):
    """Codes carried in a ForwardAck body (see docs/protocol.md §21.3)."""

    STORED = 0
    DUPLICATE = 1
    MAILBOX_FULL = 2
    STORAGE_FULL = 3
    INVALID = 4
    DISABLED = 5
    NOT_PAIRED = 6
    STORAGE_ERROR = 7
    TOO_LARGE = 8


class SyncStatus(IntEnum):
    """Codes carried in a SyncAck body (see docs/protocol.md §24.4)."""

    COMMITTED = 0
    DUPLICATE = 1
    INVALID = 2
    TOO_LARGE = 3
    STORAGE_ERROR = 4
    FORBIDDEN = 5


class ReceiptStatus(IntEnum):
    """Codes carried in a ForwardReceipt body (see docs/protocol.md §21.6)."""

    DELIVERED = 1
    EXPIRED = 2
    EVICTED = 3


class RouteStatus(IntEnum):
    """Codes carried in a RouteResponse body (see docs/protocol.md §25.2)."""

    OK = 0
    NOT_PAIRED = 1
    OFFLINE = 2
    REFUSED = 3
    CAPACITY = 4
    INVALID = 5
    TIMEOUT = 6
