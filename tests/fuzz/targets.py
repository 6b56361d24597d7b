"""
What the fuzzers exercise, and what each may answer.

Every body parser of every message type is listed in L{BODY_PARSERS}
with a check of what a successful parse must return; L{REJECTIONS} says
which exceptions a parser may raise for bad input (anything else is a
bug). L{InMemoryNode} is a whole node (pairing, mailbox, sync, relay,
TURN) on in-memory stores and a L{task.Clock}, with a sealed session
that needs no Noise handshake, so that sealed envelopes reach the
services quickly. L{one_input} is the single entry point the
coverage-guided fuzzer, the crash corpus replay and the tests share.
"""

import struct

import attr
from twisted.internet import task
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from cairn.crypto.aead import SessionCipher
from cairn.crypto.handshake import HandshakeResult
from cairn.crypto.identity import Identity, parse_peer_id
from cairn.mailbox import messages as mailbox
from cairn.mailbox.service import MailboxService
from cairn.mailbox.store import MemoryMailboxStore
from cairn.pairing import messages as pairing
from cairn.pairing.service import PairingService
from cairn.pairing.trust import MemoryTrustStore
from cairn.relay import messages as relay
from cairn.relay.service import RelayService
from cairn.session.interfaces import IFrameTransport
from cairn.session.peer import Peer
from cairn.session.session import Session
from cairn.signaling import announce
from cairn.sync import messages as sync
from cairn.sync.service import SyncService
from cairn.sync.store import MemorySyncStore
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamProtocol
from cairn.turn import messages as turn
from cairn.turn.service import TurnService
from cairn.wire import cbor, schema
from cairn.wire.constants import HEADER_SIZE, CloseCode, MessageType
from cairn.wire.envelope import Envelope, EnvelopeError, EnvelopeParser, decode

MAX_PAYLOAD = 64 * 1024
U16, U32, U63, U64 = 2**16 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1


class Unexpected(AssertionError):
    """A fuzzed input got an answer the protocol does not allow."""


# Result checks


def _uint(value, maximum=U64, minimum=0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum


def _bytes(value, size=None) -> bool:
    return isinstance(value, bytes) and (size is None or len(value) == size)


def _text(value, max_bytes=None) -> bool:
    return isinstance(value, str) and (max_bytes is None or len(value.encode("utf-8")) <= max_bytes)


def _peer(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_peer_id(value)
    except ValueError:
        return False
    return True


def _topic(value) -> bool:
    return _text(value, sync.MAX_TOPIC) and value != ""


def _optional(check, value, *args) -> bool:
    return value is None or check(value, *args)


def _pair_request(r) -> bool:
    shape = {
        pairing.PSK: (_bytes(r.pake, 32) and r.proof is None and r.link_id is None),
        pairing.PIN: (_bytes(r.pake, 32) and r.proof is None and r.link_id is None),
        pairing.LINK: (_bytes(r.link_id, 16) and _bytes(r.proof, 32) and r.pake is None),
        pairing.APPROVAL: (r.proof is None and r.pake is None and r.link_id is None),
    }
    return r.method in shape and shape[r.method] and _text(r.name, pairing.MAX_NAME)


def _relay_response(r) -> bool:
    if not (isinstance(r.get("servers"), list) and all(_text(s, turn.MAX_URL) and s for s in r["servers"])):
        return False
    if "error" in r:
        return _text(r["error"], turn.MAX_ERROR)
    return (
        _text(r["username"], turn.MAX_USERNAME)
        and _text(r["password"], turn.MAX_PASSWORD)
        and _uint(r["ttl"])
        and _uint(r["expires_at"])
    )


def _delivery(r) -> bool:
    return _bytes(r[0], 16) and _peer(r[1]) and _uint(r[2], U64, 1) and isinstance(r[3], float) and _bytes(r[4])


def _deliveries(r) -> bool:
    seqs = [d[2] for d in r]
    return 0 < len(r) <= mailbox.MAX_BATCH and all(map(_delivery, r)) and seqs == sorted(set(seqs))


def _receipt(r) -> bool:
    return (
        _bytes(r[0], 16) and _peer(r[1]) and _uint(r[2], U64, 1) and isinstance(r[3], int) and isinstance(r[4], float)
    )


def _purge(r) -> bool:
    return all(
        isinstance(x, list) and len(x) <= mailbox.MAX_PURGE_IDS and all(_uint(i, U63 - 1, 1) for i in x) for x in r
    )


def purge_with_upto(body):
    """ForwardPurge as the node reads it: the lists, then the cumulative C{"upto"}."""
    return mailbox.parse_forward_purge(body), mailbox.parse_purge_upto(body)


@attr.s(frozen=True, auto_attribs=True)
class BodyParser:
    """
    One body parser: C{parse(body)} returns a value that C{valid} accepts,
    or raises one of L{REJECTIONS}.
    """

    type: int
    name: str
    parse: object
    valid: object


def _p(type_, parse, valid):
    return BodyParser(type_, parse.__module__.split(".")[1] + "." + parse.__name__, parse, valid)


T = MessageType
BODY_PARSERS = (
    _p(T.HANDSHAKE_INIT, schema.parse_handshake, _bytes),
    _p(T.HANDSHAKE_RESPONSE, schema.parse_handshake, _bytes),
    _p(T.HANDSHAKE_FINAL, schema.parse_handshake, _bytes),
    _p(T.KEEPALIVE, schema.parse_keepalive, lambda r: _optional(_uint, r)),
    _p(T.CLOSE, schema.parse_close, lambda r: _uint(r[0], U16) and _text(r[1], 1024)),
    _p(T.RECONNECT, schema.parse_reconnect, _uint),
    _p(T.KEY_UPDATE, schema.parse_key_update, _uint),
    _p(T.DATA, schema.parse_data, lambda r: _uint(r[0], U32) and isinstance(r[1], dict)),
    _p(T.CHANNEL_INIT, schema.parse_channel_init, lambda r: _uint(r[0], U32, 1) and _text(r[1], 255)),
    _p(T.RELAY_REQUEST, turn.parse_relay_request, lambda r: _optional(_uint, r, U32, 1)),
    _p(T.RELAY_RESPONSE, turn.parse_relay_response, _relay_response),
    _p(T.PAIR_REQUEST, pairing.parse_pair_request, _pair_request),
    _p(
        T.PAIR_CHALLENGE,
        pairing.parse_pair_challenge,
        lambda r: r == (pairing.APPROVAL, None) or (r[0] in pairing.PAKE_METHODS and _bytes(r[1], 32)),
    ),
    _p(
        T.PAIR_RESPONSE,
        pairing.parse_pair_response,
        lambda r: r[0] in pairing.PAKE_METHODS and _bytes(r[1], 32),
    ),
    _p(
        T.PAIR_CONFIRM,
        pairing.parse_pair_confirm,
        lambda r: _text(r[0], pairing.MAX_METHOD) and isinstance(r[1], bool) and _optional(_bytes, r[2], 32),
    ),
    _p(
        T.PAIR_REJECT,
        pairing.parse_pair_reject,
        lambda r: _uint(r[0], U16) and _text(r[1], pairing.MAX_REASON) and _text(r[2], pairing.MAX_METHOD),
    ),
    _p(T.PAIR_REVOKE, pairing.parse_pair_revoke, lambda r: r is None),
    _p(
        T.FORWARD_REQUEST,
        mailbox.parse_forward_request,
        lambda r: _peer(r[0]) and _bytes(r[1], 16) and _bytes(r[2]) and r[2] != b"",
    ),
    _p(T.FORWARD_REQUEST, mailbox.request_id, lambda r: _bytes(r, 16)),
    _p(T.FORWARD_ACK, mailbox.parse_forward_ack, lambda r: _bytes(r[0], 16) and _uint(r[1]) and _text(r[2])),
    _p(T.FORWARD_DELIVER, mailbox.parse_forward_deliver, _delivery),
    _p(T.FORWARD_PURGE, mailbox.parse_forward_purge, _purge),
    _p(T.FORWARD_RECEIPT, mailbox.parse_forward_receipt, _receipt),
    _p(T.FORWARD_DELIVER, mailbox.parse_deliveries, _deliveries),
    _p(T.FORWARD_RECEIPT, mailbox.parse_receipts, lambda r: 0 < len(r) <= mailbox.MAX_BATCH and all(map(_receipt, r))),
    _p(T.FORWARD_PURGE, purge_with_upto, lambda r: _purge(r[0]) and _uint(r[1], U63 - 1)),
    _p(T.PEER_KEY_REQUEST, mailbox.parse_peer_key_request, _peer),
    _p(
        T.PEER_KEY_RESPONSE,
        mailbox.parse_peer_key_response,
        lambda r: _peer(r[0]) and _optional(_bytes, r[1], 32) and isinstance(r[2], bool),
    ),
    _p(T.ROUTE_REQUEST, relay.parse_route_request, lambda r: _text(r[0]) and _uint(r[1]) and isinstance(r[2], bool)),
    _p(
        T.ROUTE_REQUEST,
        relay.parse_route_offer,
        lambda r: _text(r[0]) and _bytes(r[1], 16) and _optional(_bytes, r[2], 32),
    ),
    _p(
        T.ROUTE_RESPONSE,
        relay.parse_route_response,
        lambda r: _uint(r[0]) and _optional(_bytes, r[1], 16) and _optional(_uint, r[2]) and _text(r[3]),
    ),
    _p(T.RELAY_DATA, relay.parse_relay_data, lambda r: _bytes(r[0], 16) and _bytes(r[1])),
    _p(T.RELAY_ACK, relay.parse_relay_ack, lambda r: _bytes(r[0], 16) and _uint(r[1])),
    _p(T.RELAY_ATTACH, relay.parse_relay_attach, lambda r: _bytes(r[0], 16) and _bytes(r[1], 32)),
    _p(T.RELAY_CLOSE, relay.parse_relay_close, lambda r: _bytes(r[0], 16) and _text(r[1]) and isinstance(r[2], bool)),
    _p(
        T.SYNC_SUBSCRIBE,
        sync.parse_subscribe,
        lambda r: 0 < len(r) <= sync.MAX_TOPICS and all(_topic(k) and _optional(_uint, v, U63) for k, v in r.items()),
    ),
    _p(T.SYNC_PUBLISH, sync.parse_publish, lambda r: _topic(r[0]) and _bytes(r[1], 16) and _bytes(r[2])),
    _p(T.SYNC_PUBLISH, sync.publish_id, lambda r: _bytes(r, 16)),
    _p(
        T.SYNC_ACK,
        sync.parse_ack,
        lambda r: _bytes(r[0], 16) and _uint(r[1], U63) and _optional(_uint, r[2], U63) and _text(r[3]),
    ),
    _p(
        T.SYNC_UPDATE,
        sync.parse_update,
        lambda r: (
            _topic(r[0])
            and _uint(r[1], U63)
            and _peer(r[2])
            and _bytes(r[3], 16)
            and _bytes(r[4])
            and isinstance(r[5], float)
        ),
    ),
    _p(T.SYNC_CURSOR, sync.parse_cursor, lambda r: _topic(r[0]) and _uint(r[1], U63)),
    _p(T.SYNC_RESET, sync.parse_reset, lambda r: _topic(r[0]) and _uint(r[1], U63) and _text(r[2])),
    _p(T.SYNC_DENIED, sync.parse_denied, lambda r: _topic(r[0]) and _text(r[1])),
)

#: Types whose payload is not a body a parser takes: PeerAnnounce is a
#: whole signed envelope (L{announce.parse}, fuzzed on its own).
WHOLE_ENVELOPE_TYPES = frozenset({T.PEER_ANNOUNCE})


def parse_body(parser: BodyParser, body):
    """
    Run C{parser} on C{body}; return (True, result) or (False, error).

    @raise Unexpected: an exception that is not a documented rejection, or
        a result that C{parser.valid} refuses.
    """
    try:
        result = parser.parse(body)
    except schema.BodyError as e:
        return False, e
    except Exception as e:
        raise Unexpected(f"{parser.name} raised {e.__class__.__name__}: {e} on {body!r:.200}") from e
    if not parser.valid(result):
        raise Unexpected(f"{parser.name} accepted {body!r:.200} as the invalid {result!r:.200}")
    return True, result


def loads(data: bytes):
    """C{cbor.loads}, where only L{cbor.CBORError} is a rejection; returns (ok, value)."""
    try:
        return True, cbor.loads(data)
    except cbor.CBORError as e:
        return False, e
    except Exception as e:
        raise Unexpected(f"cbor.loads raised {e.__class__.__name__}: {e} on {data!r:.200}") from e


def feed_stream(chunks, max_payload=MAX_PAYLOAD):
    """
    Feed C{chunks} to an L{EnvelopeParser}; return the envelopes and the
    L{EnvelopeError} that stopped the stream, if any.
    """
    parser = EnvelopeParser(max_payload)
    out = []
    for chunk in chunks:
        try:
            out.extend(parser.feed(chunk))
        except EnvelopeError as e:
            if e.code != CloseCode.PAYLOAD_TOO_LARGE:
                raise Unexpected(f"stream parser failed with code {e.code}") from e
            out.extend(e.envelopes)  # completed before the bad header: handled before the Close
            return out, e
        if parser.buffered() > max_payload + HEADER_SIZE + len(chunk):
            raise Unexpected(f"stream parser holds {parser.buffered()} bytes")
    return out, None


def decode_one(data: bytes, max_payload=MAX_PAYLOAD):
    """L{decode}, where only L{EnvelopeError} with code 1 or 2 is a rejection; returns (ok, value)."""
    try:
        envelope = decode(data, max_payload)
    except EnvelopeError as e:
        if e.code not in (CloseCode.MALFORMED_ENVELOPE, CloseCode.PAYLOAD_TOO_LARGE):
            raise Unexpected(f"decode failed with code {e.code}") from e
        return False, e
    if envelope.to_bytes() != bytes(data):
        raise Unexpected("decode does not round-trip")
    return True, envelope


def parse_announce(data: bytes):
    """L{announce.parse}, where only L{announce.AnnounceError} is a rejection."""
    try:
        return True, announce.parse(data, now=0)
    except announce.AnnounceError as e:
        return False, e
    except Exception as e:
        raise Unexpected(f"announce.parse raised {e.__class__.__name__}: {e}") from e


# A whole node in memory


@implementer(IFrameTransport)
class RecordingTransport:
    """An L{IFrameTransport} that keeps what is written and whether it was closed."""

    closing_handshake = False
    peer_address = "fuzz"

    def __init__(self):
        self.written = []
        self.lost = False

    def write_envelope(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def lose(self, abort: bool = False) -> None:
        self.lost = True


class InMemoryNode:
    """
    A node's L{Peer} with every service, on in-memory stores and a clock.

    C{paired}, C{stranger} and C{bystander} are client identities; the
    first and the last are paired.
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.peer = Peer(Identity.from_seed(b"\x01" * 32), self.clock, max_payload=max_payload)
        self.trust = MemoryTrustStore()
        self.pairing = PairingService(self.peer, self.trust, self.clock, psk="fuzzing pre-shared key, long")
        self.mailbox = MailboxService(self.peer, self.trust, MemoryMailboxStore(), self.clock, max_payload=max_payload)
        self.sync = SyncService(self.peer, self.trust, MemorySyncStore(), self.clock, max_payload=max_payload)
        self.relay = RelayService(self.peer, self.trust, self.clock)
        self.turn = TurnService(
            self.peer, self.trust, self.clock, servers=("turn:127.0.0.1:3478",), secret="fuzz turn secret"
        )
        self.paired = Identity.from_seed(b"\x02" * 32)
        self.stranger = Identity.from_seed(b"\x03" * 32)
        #: Another paired peer, whose sessions must be unaffected by what the others send.
        self.bystander = Identity.from_seed(b"\x04" * 32)
        for ident in (self.paired, self.bystander):
            self.trust.set_paired(ident.peer_id, ident.public_key, "paired", "psk", 0.0)
        self._count = 0

    def session(self, paired=True, remote=None):
        """
        A server-side session attached to a responder L{Connection}, and the
        client's cipher for it; keys are made up, not handshaken.

        @param remote: the client's identity; by default C{paired} or
            C{stranger} as C{paired} says.
        @return: (connection, transport, client cipher)
        """
        self._count += 1
        sid = struct.pack(">QQ", 0xF022, self._count)
        if remote is None:
            remote = self.paired if paired else self.stranger
        i2r, r2i = bytes([self._count % 251]) * 32, bytes([1 + self._count % 251]) * 32
        result = HandshakeResult(remote.public_key, b"\x07" * 32, i2r, r2i, initiator=False)
        session = Session(self.peer, sid, result, 1, send_seq=1, recv_seq=1)
        transport = RecordingTransport()
        connection = self.peer.connection(initiator=False)
        connection.connection_made(transport)
        # What _accept_final does once the handshake is done.
        connection._establish(session)
        return connection, transport, SessionCipher(i2r, r2i)

    def responder(self):
        """A fresh responder L{Connection} on a L{RecordingTransport}, before any handshake."""
        transport = RecordingTransport()
        connection = self.peer.connection(initiator=False)
        connection.connection_made(transport)
        return connection, transport


def clear_closes(transport):
    """The Close bodies written in clear on C{transport}, decoded."""
    out = []
    for data in transport.written:
        envelope = decode(data, 2**32)
        if envelope.type == MessageType.CLOSE and envelope.payload[:1] and envelope.payload[0] >> 5 == 5:
            out.append(cbor.loads(envelope.payload))
    return out


def sealed_closes(transport, cipher):
    """The Close bodies sealed to the client on C{transport}, decoded with its C{cipher}."""
    out = []
    for data in transport.written:
        envelope = decode(data, 2**32)
        if envelope.type == MessageType.CLOSE and envelope.payload[:1] and envelope.payload[0] >> 5 == 2:
            out.append(cbor.loads(cipher.open(envelope)))
    return out


#: Close codes a responder may send before a session exists.
PRE_SESSION_CODES = frozenset(
    {
        CloseCode.PAYLOAD_TOO_LARGE,
        CloseCode.BAD_CBOR,
        CloseCode.REPLAY,
        CloseCode.UNEXPECTED_MESSAGE,
        CloseCode.VERSION_UNSUPPORTED,
        CloseCode.HANDSHAKE_FAILED,
        CloseCode.UNKNOWN_SESSION,
        CloseCode.DECRYPT_FAILED,
    }
)
#: Close codes a node may send on an established session for bad input.
SESSION_CODES = frozenset(
    {
        CloseCode.BAD_CBOR,
        CloseCode.DECRYPT_FAILED,
        CloseCode.REPLAY,
        CloseCode.UNEXPECTED_MESSAGE,
        CloseCode.VERSION_UNSUPPORTED,
        CloseCode.UNKNOWN_SESSION,
        CloseCode.NOT_PAIRED,
        CloseCode.PAIRING_REVOKED,
    }
)


# The single entry point


class FailureWatch:
    """Collects events logged with a failure (C{log.failure}) while installed."""

    def __init__(self):
        self.failures = []

    def __call__(self, event):
        if "log_failure" in event:
            self.failures.append(event)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


def node() -> InMemoryNode:
    """
    A fresh L{InMemoryNode} (about 0.2 ms): each input starts from the same
    state, so that a crashing input replays exactly.
    """
    return InMemoryNode()


def _chunks(data: bytes, cuts: bytes):
    out, pos = [], 0
    for cut in cuts:
        if pos >= len(data):
            break
        out.append(data[pos : pos + cut + 1])
        pos += cut + 1
    out.append(data[pos:])
    return out


def check_split(data: bytes, chunks) -> None:
    """
    The stream parser's result for C{data} fed as C{chunks}, against the
    same bytes fed one at a time: the same error (or none) and the same
    envelopes (those completed in the same chunk as an oversized header
    included: the parser hands them over with the error).
    """
    envelopes, error = feed_stream(chunks)
    reference, ref_error = feed_stream([data[i : i + 1] for i in range(len(data))])
    if getattr(error, "code", None) != getattr(ref_error, "code", None):
        raise Unexpected("the stream parser's error depends on how the input is split")
    if envelopes != reference:
        raise Unexpected("the stream parser's envelopes depend on how the input is split")


def _stream_mode(data):
    ncuts = data[0] if data else 0
    cuts, rest = data[1 : 1 + ncuts], data[1 + ncuts :]
    check_split(rest, _chunks(rest, cuts))


def _body_mode(data):
    ok, value = loads(data[1:])
    if not ok:
        return
    if data[:1] and data[0] < len(BODY_PARSERS):
        parse_body(BODY_PARSERS[data[0]], value)
        return
    for parser in BODY_PARSERS:
        parse_body(parser, value)


def _sealed_mode(data):
    """
    Sealed envelopes on an established session: each item is a type byte,
    a flags byte and a CBOR body; the Connection must process each one or
    close the session with one of L{SESSION_CODES}.
    """
    if len(data) < 2:
        return
    types = list(MessageType)
    paired = data[0] & 1
    connection, transport, cipher = node().session(paired=bool(paired))
    session = connection.session
    seq = 2
    pos = 1
    while pos + 3 <= len(data) and connection.session is not None:
        code = data[pos]
        flags = data[pos + 1]
        size = data[pos + 2]
        body = data[pos + 3 : pos + 3 + size]
        pos += 3 + size
        type_code = types[code % len(types)] if code < 0xF0 else 0xF000 + code
        if flags & 1:
            seq -= 1  # replay
        envelope = cipher.seal(1, type_code, session.session_id, seq, body)
        if flags & 2:
            envelope = attr.evolve(envelope, payload=envelope.payload[:-1] + bytes([envelope.payload[-1] ^ 1]))
        seq += 1
        connection.envelope_received(envelope)
    for close in sealed_closes(transport, cipher) + clear_closes(transport):
        if close["code"] not in SESSION_CODES:
            raise Unexpected(f"session closed with code {close['code']}: {close.get('reason')}")
    if session.closed is None:
        session.close()
    connection.connection_lost(None)


def _responder_mode(data):
    """Raw bytes to a responder before any handshake, through the TCP framing."""
    connection, transport = node().responder()
    protocol = StreamProtocol(connection, TransportSettings(max_payload=MAX_PAYLOAD))
    for chunk in _chunks(data[1:], data[:1]):
        if transport.lost:
            break
        protocol.dataReceived(chunk)
    for close in clear_closes(transport):
        if close["code"] not in PRE_SESSION_CODES:
            raise Unexpected(f"responder closed with code {close['code']}: {close.get('reason')}")
    connection.connection_lost(None)


def _decode_mode(data):
    ok, envelope = decode_one(data)
    if ok and envelope.type == MessageType.PEER_ANNOUNCE:
        parse_announce(data)


MODES = (_stream_mode, _body_mode, _body_mode, _decode_mode, _sealed_mode, _sealed_mode, _responder_mode)


def one_input(data: bytes) -> None:
    """
    Run one fuzzed input; its first byte picks the mode.

    @raise Unexpected: a parser or state machine answered something the
        protocol does not allow, or a failure was logged.
    """
    if not data:
        return
    with FailureWatch() as watch:
        MODES[data[0] % len(MODES)](data[1:])
    if watch.failures:
        event = watch.failures[0]
        raise Unexpected(f"a failure was logged: {event['log_failure'].getErrorMessage()}")


def seed_inputs():
    """
    A few inputs reaching each mode's interesting paths, as a starting
    corpus for the coverage-guided fuzzer.
    """
    mode = {f: bytes([i]) for i, f in reversed(list(enumerate(MODES)))}
    types = list(MessageType)
    seeds = []
    for t in (T.HANDSHAKE_INIT, T.RECONNECT, T.CLOSE, T.DATA):
        env = envelope_bytes(t, cbor.dumps({"noise": b"\x09" * 32}))
        seeds.append(mode[_stream_mode] + b"\x02\x05\x1e" + env + env)
        seeds.append(mode[_decode_mode] + env)
        seeds.append(mode[_responder_mode] + b"\x10" + env)
    bodies = [
        {},
        {"ack": 1},
        {"code": 0, "reason": ""},
        {"method": "approval"},
        {"method": "psk", "proof": b"\x00" * 32},
        {"method": "psk", "pake": b"\x00" * 32},
        {"topics": ["t"], "cursors": {"t": 1}},
        {"topic": "t", "id": b"\x01" * 16, "payload": b"x"},
        {"seqs": [1], "receipts": [], "upto": 1},
        {"target": "x", "req": 1},
        {"circuit": b"\x02" * 16, "data": b"", "credit": 1},
        {"ttl": 60},
    ]
    for body in bodies:
        data = cbor.dumps(body)
        seeds.append(mode[_body_mode] + b"\xff" + data)
        for t in types:
            seeds.append(mode[_sealed_mode] + b"\x01" + bytes([types.index(t), 0, len(data)]) + data)
    return seeds


def envelope_bytes(type_code, payload=b"", session_id=b"\x00" * 16, seq=0, version=1) -> bytes:
    """One envelope in clear, as bytes (for seeds)."""
    return Envelope(version, type_code, session_id, seq, payload).to_bytes()
