"""
The connection and session state machines driven with arbitrary envelope
sequences in every state, in memory: each envelope is processed or the
connection is closed with the Close code docs/protocol.md §12.1 gives for
it, no failure is logged, and the node keeps serving other sessions.
"""

import warnings

import attr
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.python.failure import Failure
from twisted.trial import unittest

from cairn.crypto.aead import SessionCipher
from cairn.crypto.handshake import HandshakeResult, NoiseHandshake
from cairn.crypto.identity import Identity
from cairn.mailbox import messages as mailbox
from cairn.pairing import client as pairing_client
from cairn.pairing import messages as pairing
from cairn.relay import messages as relay
from cairn.session.connection import HandshakeFailed
from cairn.session.errors import SessionClosed
from cairn.session.peer import Peer
from cairn.session.session import Session
from cairn.sync import messages as sync
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamProtocol
from cairn.turn import messages as turn
from cairn.wire import cbor, schema
from cairn.wire.constants import HANDSHAKE_TYPES, CloseCode, MessageType
from cairn.wire.envelope import Envelope, decode
from tests.fuzz import strategies as fs
from tests.fuzz import targets
from tests.fuzz.targets import FailureWatch, InMemoryNode, clear_closes, sealed_closes

T = MessageType

#: How the node's own messages must parse on the client side.
CLIENT_PARSERS = {
    T.KEEPALIVE: schema.parse_keepalive,
    T.CLOSE: schema.parse_close,
    T.PAIR_CHALLENGE: pairing.parse_pair_challenge,
    T.PAIR_CONFIRM: pairing.parse_pair_confirm,
    T.PAIR_REJECT: pairing.parse_pair_reject,
    T.FORWARD_ACK: mailbox.parse_forward_ack,
    T.FORWARD_DELIVER: mailbox.parse_deliveries,
    T.FORWARD_RECEIPT: mailbox.parse_receipts,
    T.PEER_KEY_RESPONSE: mailbox.parse_peer_key_response,
    T.ROUTE_RESPONSE: relay.parse_route_response,
    T.SYNC_ACK: sync.parse_ack,
    T.SYNC_UPDATE: sync.parse_update,
    T.SYNC_RESET: sync.parse_reset,
    T.SYNC_DENIED: sync.parse_denied,
    T.RELAY_RESPONSE: turn.parse_relay_response,
}

payloads = st.one_of(
    fs.cbor_values.map(cbor.dumps),
    st.binary(max_size=80),
    fs.VALID["wire.parse_handshake"].map(lambda pair: cbor.dumps(pair[0])),
    st.integers(1, 255).map(lambda seed: noise_init(seed)),
)


@st.composite
def clear_envelopes(draw, types=(T.HANDSHAKE_INIT, T.RECONNECT, T.CLOSE), session_id=None, seq=0, payload=None):
    """
    Envelopes in clear near a template (version 1, one of C{types},
    C{session_id}, C{seq}, C{payload}): each field is the template's or,
    often enough, arbitrary.
    """

    def field(template, arbitrary):
        if template is not None and draw(st.integers(0, 3)):
            return template
        return draw(arbitrary)

    return Envelope(
        field(1, st.sampled_from([0, 2, 255])),
        field(draw(st.sampled_from(types)), fs.type_codes),
        field(session_id, st.binary(min_size=16, max_size=16)),
        field(seq, st.sampled_from([0, 1, 2, 2**64 - 1]) | st.integers(0, 2**64 - 1)),
        field(payload, payloads),
    )


def noise_init(seed, session_id=bytes(16)):
    """A HandshakeInit payload holding a real Noise message 1 (deterministic)."""
    with warnings.catch_warnings():
        # noise warns that a fixed ephemeral key is for tests only: it is.
        warnings.simplefilter("ignore")
        handshake = NoiseHandshake(
            Identity.from_seed(b"\x02" * 32),
            initiator=True,
            session_id=session_id,
            ephemeral_private=bytes([seed]) * 32,
        )
    return cbor.dumps({"noise": handshake.write_init()})


def served(test, node):
    """Assert that C{node} still answers a fresh session of another paired peer (PairRequest -> PairConfirm)."""
    connection, transport, cipher = node.session(remote=node.bystander)
    session = connection.session
    envelope = cipher.seal(1, T.PAIR_REQUEST, session.session_id, 2, cbor.dumps({"method": "approval"}))
    connection.envelope_received(envelope)
    answers = [decode(data, 2**32) for data in transport.written]
    test.assertEqual([e.type for e in answers], [T.PAIR_CONFIRM])
    method, already, _ = pairing.parse_pair_confirm(cbor.loads(cipher.open(answers[0])))
    test.assertEqual((method, already), ("approval", True))
    session.close()


class FuzzMixin:
    def run_watched(self, function, *args):
        """Call C{function}; fail (with a shrinkable example) if it logged a failure."""
        with FailureWatch() as watch:
            result = function(*args)
        self.assertEqual([e["log_failure"].getErrorMessage() for e in watch.failures], [])
        return result


def expect_first(node, envelope):
    """
    What a responder must do with C{envelope} as a connection's first:
    a Close code, "response" (HandshakeResponse sent), or "closed" (the
    peer's clear Close: the transport closes, nothing is sent).
    """
    if envelope.type == T.CLOSE:
        return "closed"
    if envelope.type == T.RECONNECT:
        session = node.peer.sessions.get(envelope.session_id)
        return CloseCode.UNKNOWN_SESSION if session is None else None  # decided by the session
    if envelope.type != T.HANDSHAKE_INIT:
        return CloseCode.UNEXPECTED_MESSAGE
    if envelope.version != 1:
        return CloseCode.VERSION_UNSUPPORTED
    if envelope.session_id in node.peer.sessions:
        return CloseCode.UNEXPECTED_MESSAGE
    if envelope.seq != 0:
        return CloseCode.REPLAY
    try:
        noise = schema.parse_handshake(cbor.loads(envelope.payload))
    except (cbor.CBORError, schema.BodyError):
        return CloseCode.BAD_CBOR
    try:
        NoiseHandshake(Identity.from_seed(b"\x09" * 32), initiator=False, session_id=bytes(16)).read_init(noise)
    except Exception:
        return CloseCode.HANDSHAKE_FAILED
    return "response"


class ResponderTests(FuzzMixin, unittest.TestCase):
    """A responder before and during the handshake."""

    @fs.FUZZ
    @given(
        st.lists(clear_envelopes(payload=noise_init(1)), min_size=1, max_size=4),
        st.lists(st.integers(0, 400), max_size=6),
    )
    def test_before_handshake(self, envelopes, cuts):
        """Arbitrary envelopes, arbitrarily split, get the Close code their first envelope calls for."""
        node = InMemoryNode()
        existing, _, _ = node.session(remote=node.bystander)  # a live session id to collide with
        if envelopes[0].type in (T.HANDSHAKE_INIT, T.RECONNECT) and len(envelopes) > 1:
            envelopes[0] = attr.evolve(envelopes[0], session_id=existing.session.session_id)
        expected = expect_first(node, envelopes[0])
        connection, transport = node.responder()
        protocol = StreamProtocol(connection, TransportSettings(max_payload=targets.MAX_PAYLOAD))
        data = b"".join(e.to_bytes() for e in envelopes)

        def feed():
            for chunk in fs.split(data, cuts):
                if transport.lost:
                    break
                protocol.dataReceived(chunk)

        self.run_watched(feed)
        closes = clear_closes(transport)
        if expected == "closed":
            self.assertTrue(transport.lost)
            self.assertEqual(closes, [])
        elif expected == "response":
            first = decode(transport.written[0], 2**32)
            self.assertEqual(first.type, T.HANDSHAKE_RESPONSE)
            for close in closes:
                self.assertIn(close["code"], targets.PRE_SESSION_CODES)
        elif expected is None:
            self.assertEqual(len(closes), 1)
            self.assertIn(closes[0]["code"], targets.PRE_SESSION_CODES)
        else:
            self.assertEqual([c["code"] for c in closes], [expected], closes)
            self.assertTrue(transport.lost)
        if transport.lost:
            self.assertLessEqual(len(closes), 1)
        self.run_watched(served, self, node)
        self.assertIsNone(existing.session.closed)

    @fs.FUZZ
    @given(st.data())
    def test_mid_handshake(self, data):
        """After a HandshakeInit, envelopes get the code of the first one's first defect; a valid Final establishes."""
        node = InMemoryNode()
        connection, transport = node.responder()
        sid = b"\x42" * 16
        client = NoiseHandshake(node.paired, initiator=True, session_id=sid)
        init = Envelope(1, T.HANDSHAKE_INIT, sid, 0, cbor.dumps({"noise": client.write_init()}))
        self.run_watched(connection.envelope_received, init)
        response = decode(transport.written[0], 2**32)
        self.assertEqual(response.type, T.HANDSHAKE_RESPONSE)
        client.read_response(cbor.loads(response.payload)["noise"])
        final = cbor.dumps({"noise": client.write_final()})
        envelopes = data.draw(
            st.lists(
                clear_envelopes(types=(T.HANDSHAKE_FINAL, T.CLOSE), session_id=sid, seq=1, payload=final),
                min_size=1,
                max_size=3,
            )
        )
        first = envelopes[0]
        if first.type == T.CLOSE:
            expected = None
        elif first.type != T.HANDSHAKE_FINAL:
            expected = CloseCode.UNEXPECTED_MESSAGE
        elif first.version != 1:
            expected = CloseCode.VERSION_UNSUPPORTED
        elif first.session_id != sid:
            expected = CloseCode.UNKNOWN_SESSION
        elif first.seq != 1:
            expected = CloseCode.REPLAY
        elif first.payload == final:
            expected = "established"
        else:
            try:
                schema.parse_handshake(cbor.loads(first.payload))
                expected = CloseCode.HANDSHAKE_FAILED
            except (cbor.CBORError, schema.BodyError):
                expected = CloseCode.BAD_CBOR
        for envelope in envelopes:
            self.run_watched(connection.envelope_received, envelope)
        codes = [c["code"] for c in clear_closes(transport)]
        if expected == "established":
            self.assertEqual(codes, [])
            if len(envelopes) == 1:
                self.assertIs(node.peer.sessions[sid], connection.session)
                self.assertIsNone(connection.session.closed)
            else:
                # Clear envelopes on a keyed session fail as sealed ones.
                result = client.result()
                cipher = SessionCipher(result.send_key, result.recv_key)
                sealed = [c["code"] for c in sealed_closes(transport, cipher)]
                self.assertLessEqual(len(sealed), 1)
                for code in sealed:
                    self.assertIn(code, targets.SESSION_CODES)
        else:
            self.assertEqual(codes, [] if expected is None else [expected])
            self.assertTrue(transport.lost)
            self.assertEqual(node.peer.sessions.get(sid), None)
        self.run_watched(served, self, node)


class InitiatorTests(FuzzMixin, unittest.TestCase):
    @fs.FUZZ
    @given(st.lists(clear_envelopes(), min_size=1, max_size=3))
    def test_awaiting_response(self, envelopes):
        """An initiator awaiting HandshakeResponse fails its handshake with a documented code on arbitrary envelopes."""
        node = InMemoryNode()
        connection = node.peer.connection(initiator=True)
        transport = targets.RecordingTransport()
        failures = []
        connection.ready.addErrback(lambda f: failures.append(f.trap(HandshakeFailed) and f.value))
        connection.connection_made(transport)
        for envelope in envelopes:
            self.run_watched(connection.envelope_received, envelope)
        self.run_watched(connection.connection_lost, None)
        self.assertEqual(len(failures), 1)
        self.assertIsNone(connection.session)
        codes = [c["code"] for c in clear_closes(transport)]
        self.assertLessEqual(len(codes), 1)
        for code in codes:
            self.assertIn(code, targets.PRE_SESSION_CODES)
            self.assertEqual(failures[0].code, code)


@st.composite
def sealed_items(draw):
    """(type, body bytes, flags) for one sealed envelope: bodies valid, mutated or arbitrary."""
    parsers = {p.type: p for p in targets.BODY_PARSERS}
    type_code = draw(st.sampled_from(list(MessageType)) if draw(st.integers(0, 4)) else fs.type_codes)
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "cbor", "bytes"]))
    parser = parsers.get(type_code)
    if parser is not None and kind in ("valid", "mutated"):
        body, _ = draw(fs.VALID[parser.name])
        if kind == "mutated":
            body = draw(fs.mutated(body))
        payload = cbor.dumps(body)
    elif kind == "bytes":
        payload = draw(st.binary(max_size=60))
    else:
        payload = cbor.dumps(draw(fs.cbor_values))
    flags = draw(st.sampled_from(["ok"] * 6 + ["replay", "forged", "version", "sid"]))
    return type_code, payload, flags


def session_layer_code(session, type_code, payload, flags, channels_allowed=True):
    """
    The Close code the session layer must send for one sealed envelope, or
    None if the session layer passes it on (or handles it) without closing.

    @param channels_allowed: whether the node lets this peer open channels
        (only paired peers: ChannelInit and Data from others get NOT_PAIRED).
    """
    if flags == "sid":
        return CloseCode.UNKNOWN_SESSION
    if flags == "version":
        return CloseCode.VERSION_UNSUPPORTED
    if type_code == T.RECONNECT:
        return CloseCode.UNEXPECTED_MESSAGE
    if flags == "replay":
        return CloseCode.REPLAY
    if flags == "forged":
        return CloseCode.DECRYPT_FAILED
    ok, body = targets.loads(payload)
    if not ok:
        return CloseCode.BAD_CBOR
    if type_code in HANDSHAKE_TYPES:
        return CloseCode.UNEXPECTED_MESSAGE
    if type_code in (T.DATA, T.CHANNEL_INIT) and not channels_allowed:
        return CloseCode.NOT_PAIRED
    parser = {
        T.KEEPALIVE: schema.parse_keepalive,
        T.CLOSE: schema.parse_close,
        T.DATA: schema.parse_data,
        T.CHANNEL_INIT: schema.parse_channel_init,
    }.get(type_code)
    if parser is None:
        return None
    try:
        parser(body)
    except schema.BodyError:
        return CloseCode.BAD_CBOR
    return None


class EstablishedTests(FuzzMixin, unittest.TestCase):
    @fs.FUZZ
    @given(st.booleans(), st.lists(sealed_items(), min_size=1, max_size=6))
    @example(True, [(T.PAIR_REVOKE, cbor.dumps({}), "ok")])  # found by a 2000-example run
    def test_sealed_sequences(self, paired, items):
        """
        Sealed envelopes of any type with valid, mutated or arbitrary bodies
        are processed or close the session with the code their defect calls
        for; whatever the node answers parses on the client side.
        """
        node = InMemoryNode()
        bystander, _, _ = node.session(remote=node.bystander)
        connection, transport, cipher = node.session(paired=paired)
        session = connection.session
        seq = 2
        expected = None
        for type_code, payload, flags in items:
            if connection.session is None:
                break
            send_seq = seq - 1 if flags == "replay" else seq
            envelope = cipher.seal(1, type_code, session.session_id, send_seq, payload)
            if flags == "forged":
                envelope = attr.evolve(envelope, payload=envelope.payload[:-1] + bytes([envelope.payload[-1] ^ 1]))
            elif flags == "version":
                envelope = attr.evolve(envelope, version=2)
            elif flags == "sid":
                envelope = attr.evolve(envelope, session_id=b"\x00" * 16)
            expected = session_layer_code(
                session, type_code, payload, flags, node.peer.channels_allowed(session)
            )
            before = len(transport.written)
            self.run_watched(connection.envelope_received, envelope)
            seq += 1
            if expected is not None:
                self.assertIsNotNone(session.closed, (hex(type_code), flags))
                self.assertEqual(int(session.closed.code), expected, session.closed.reason)
                closes = sealed_closes(transport, cipher)
                self.assertEqual([c["code"] for c in closes], [expected])
                self.assertTrue(transport.lost)
            elif session.closed is not None and type_code != T.CLOSE:
                # A service ended it: only for documented reasons.
                self.assertIn(session.closed.code, targets.SESSION_CODES, session.closed.reason)
                if not paired and session.closed.code == CloseCode.NOT_PAIRED:
                    self.assertNotIn(type_code, (T.PAIR_REQUEST, T.PAIR_RESPONSE))
            for data in transport.written[before:]:
                answer = decode(data, 2**32)
                body = cbor.loads(cipher.open(answer))
                client_parser = CLIENT_PARSERS.get(answer.type)
                if client_parser is not None:
                    client_parser(body)
        self.assertIsNone(bystander.session.closed)
        self.run_watched(served, self, node)


def client_session(seed=0x21):
    """
    A client's established session (initiator) on its own L{Peer}, and the
    node's cipher for it (to seal the node's replies); keys are made up.
    """
    peer = Peer(Identity.from_seed(bytes([seed]) * 32), task.Clock())
    node = Identity.from_seed(b"\x01" * 32)
    i2r, r2i = b"\x11" * 32, b"\x22" * 32
    session = Session(peer, b"\x33" * 16, HandshakeResult(node.public_key, b"\x07" * 32, i2r, r2i, True), 1, 2, 0)
    transport = targets.RecordingTransport()
    connection = peer.connection(initiator=True)
    connection.connection_made(transport)
    connection._establish(session)
    return connection, transport, SessionCipher(r2i, i2r)


@st.composite
def pairing_replies(draw):
    """(type, body bytes) of a node's pairing reply: valid, mutated or arbitrary."""
    name = {T.PAIR_CHALLENGE: "pairing.parse_pair_challenge", T.PAIR_CONFIRM: "pairing.parse_pair_confirm"}
    name[T.PAIR_REJECT] = "pairing.parse_pair_reject"
    type_code = draw(st.sampled_from(sorted(name)))
    body, _ = draw(fs.VALID[name[type_code]])
    kind = draw(st.sampled_from(["valid", "mutated", "cbor"]))
    if kind == "mutated":
        body = draw(fs.mutated(body))
    elif kind == "cbor":
        body = draw(fs.cbor_values)
    return type_code, cbor.dumps(body)


class PairingClientTests(FuzzMixin, unittest.TestCase):
    @fs.FUZZ
    @given(st.sampled_from(["psk", "pin", "approval", "revoke"]), st.lists(pairing_replies(), min_size=1, max_size=4))
    def test_replies(self, method, replies):
        """
        A client pairing receives arbitrary node replies: it succeeds only
        when that is sound (never for a PSK it cannot verify), otherwise it
        waits or fails with PairingRejected or the session's close, and no
        failure is logged.
        """
        connection, transport, node_cipher = client_session()
        session = connection.session
        start = {
            "psk": lambda: pairing_client.pair_psk(session, "a pre-shared key of some length"),
            "pin": lambda: pairing_client.pair_pin(session, "7K3M-Q9TZ"),
            "approval": lambda: pairing_client.request_approval(session),
            "revoke": lambda: pairing_client.unpair(session),
        }[method]
        outcome = []
        d = self.run_watched(start)
        d.addBoth(outcome.append)
        seq = 1
        for type_code, payload in replies:
            if connection.session is None:
                break
            envelope = node_cipher.seal(1, type_code, session.session_id, seq, payload)
            seq += 1
            self.run_watched(connection.envelope_received, envelope)
        if not outcome:
            d.cancel()  # still waiting (e.g. for the operator): allowed
            return
        result = outcome[0]
        if isinstance(result, Failure):
            result.trap(pairing_client.PairingRejected, SessionClosed)
        else:
            self.assertNotEqual(method, "psk")
            self.assertIn(method, ("approval", "pin", "revoke"))
            if method == "pin":
                self.assertTrue(result.already_paired)
