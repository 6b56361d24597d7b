"""
Bad input: each case is answered with a Close carrying its code, only the
offending connection closes, and another session keeps being served.
Written once, run over TCP and WebSocket.
"""

from twisted.internet import defer
from twisted.trial import unittest

from cairn.wire import cbor
from cairn.wire.constants import HEADER_SIZE, CloseCode, MessageType
from cairn.wire.envelope import Envelope, encode_header
from tests._harness import (
    SETTINGS,
    ScenarioMixin,
    channel_on_server,
    closed,
    eventually,
    first_close,
    handshake_init,
    next_data,
)

MAX = SETTINGS["max_payload"]


class BadInputMixin(ScenarioMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.bystander = yield self.connect()
        opened = channel_on_server(self.server, "echo")
        self.echo = self.bystander.open_channel("echo")
        server_channel = yield opened
        server_channel.on_data = server_channel.send

    @defer.inlineCallbacks
    def assert_bystander_served(self):
        got = next_data(self.echo)
        self.echo.send(b"still there?")
        self.assertEqual((yield got), b"still there?")
        self.assertIsNone(self.bystander.closed)

    @defer.inlineCallbacks
    def assert_raw_closed_with(self, raw, code):
        yield eventually(raw.lost)
        body = first_close(raw)
        self.assertEqual(body["code"], code, body)
        self.assertIsInstance(body["reason"], str)
        yield self.assert_bystander_served()
        return body

    @defer.inlineCallbacks
    def assert_session_closed_with(self, session, code):
        result = yield closed(session)
        self.assertEqual(result.code, code, result.reason)
        self.assertNotIn(session.session_id, self.server.sessions)
        yield self.assert_bystander_served()

    # Before a handshake

    @defer.inlineCallbacks
    def test_wrong_version(self):
        """A HandshakeInit with an unsupported version gets a clear Close 7 listing version 1."""
        raw = yield self.raw_connect()
        raw.send_raw(handshake_init(version=2))
        body = yield self.assert_raw_closed_with(raw, CloseCode.VERSION_UNSUPPORTED)
        self.assertEqual(body["supported"], [1])
        self.assertEqual(raw.received[0].version, 1)

    @defer.inlineCallbacks
    def test_length_above_maximum(self):
        """A header announcing more than the maximum payload gets Close 2 without the payload being sent."""
        raw = yield self.raw_connect()
        raw.send_raw(encode_header(1, MessageType.HANDSHAKE_INIT, b"\x01" * 16, 0, MAX + 1))
        yield self.assert_raw_closed_with(raw, CloseCode.PAYLOAD_TOO_LARGE)

    @defer.inlineCallbacks
    def test_undecodable_cbor(self):
        """A HandshakeInit whose payload is not CBOR gets Close 3."""
        raw = yield self.raw_connect()
        raw.send_raw(handshake_init(payload=b"\xff\x00\x13"))
        yield self.assert_raw_closed_with(raw, CloseCode.BAD_CBOR)

    @defer.inlineCallbacks
    def test_bad_noise_message(self):
        """A HandshakeInit whose Noise message is too short gets Close 8."""
        raw = yield self.raw_connect()
        raw.send_raw(handshake_init(payload=cbor.dumps({"noise": b"\x01\x02"})))
        yield self.assert_raw_closed_with(raw, CloseCode.HANDSHAKE_FAILED)

    @defer.inlineCallbacks
    def test_data_before_handshake(self):
        """A Data envelope before any handshake gets Close 6."""
        raw = yield self.raw_connect()
        raw.send_raw(Envelope(1, MessageType.DATA, b"\x02" * 16, 0, b"\x40").to_bytes())
        yield self.assert_raw_closed_with(raw, CloseCode.UNEXPECTED_MESSAGE)

    @defer.inlineCallbacks
    def test_garbage_before_handshake(self):
        """Eighty bytes of garbage are read as a header with an absurd length and get Close 2."""
        raw = yield self.raw_connect()
        raw.send_raw(b"\xde\xad" * 40)
        yield self.assert_raw_closed_with(raw, CloseCode.PAYLOAD_TOO_LARGE)

    @defer.inlineCallbacks
    def test_idle_connection_times_out(self):
        """A connection that never completes a handshake gets Close 10 after the handshake timeout."""
        raw = yield self.raw_connect()
        self.server_clock.advance(SETTINGS["handshake_timeout"] - 1)
        self.assertFalse(raw.lost.called)
        self.server_clock.advance(1)
        yield self.assert_raw_closed_with(raw, CloseCode.TIMEOUT)

    @defer.inlineCallbacks
    def test_half_handshake_times_out(self):
        """A peer that stops after HandshakeInit gets Close 10 after the handshake timeout."""
        from cairn.crypto.handshake import NoiseHandshake
        from cairn.crypto.identity import Identity

        raw = yield self.raw_connect()
        hs = NoiseHandshake(Identity.generate(), initiator=True, session_id=b"\x01" * 16)
        raw.send_raw(handshake_init(payload=cbor.dumps({"noise": hs.write_init()})))
        response = yield eventually(raw.arrived)
        self.assertEqual(response.type, MessageType.HANDSHAKE_RESPONSE)
        self.server_clock.advance(SETTINGS["handshake_timeout"])
        yield self.assert_raw_closed_with(raw, CloseCode.TIMEOUT)

    # After a handshake (sealed Close to the library client)

    def _seal_next(self, session, type_code, body):
        env = session.cipher.seal(session.version, type_code, session.session_id, session.send_seq, cbor.dumps(body))
        session.send_seq += 1
        return env

    @defer.inlineCallbacks
    def test_failed_aead(self):
        """A sealed envelope whose ciphertext does not authenticate gets Close 4."""
        session = yield self.connect()
        env = self._seal_next(session, MessageType.KEEPALIVE, {})
        flipped = env.payload[:-1] + bytes([env.payload[-1] ^ 1])
        forged = Envelope(env.version, env.type, env.session_id, env.seq, flipped)
        session.connection.transport.write_envelope(forged.to_bytes())
        yield self.assert_session_closed_with(session, CloseCode.DECRYPT_FAILED)

    @defer.inlineCallbacks
    def test_tampered_header(self):
        """A sealed envelope whose header type was changed in transit gets Close 4."""
        session = yield self.connect()
        env = self._seal_next(session, 0xF001, {"x": 1})
        tampered = Envelope(env.version, 0xF002, env.session_id, env.seq, env.payload)
        session.connection.transport.write_envelope(tampered.to_bytes())
        yield self.assert_session_closed_with(session, CloseCode.DECRYPT_FAILED)

    @defer.inlineCallbacks
    def test_replayed_sequence(self):
        """Sending an already accepted envelope again gets Close 5."""
        session = yield self.connect()
        handled = defer.Deferred()
        self.server.register_handler(0xF001, lambda s, body: handled.callback(body))
        env = self._seal_next(session, 0xF001, {"once": True})
        session.connection.transport.write_envelope(env.to_bytes())
        yield eventually(handled)
        session.connection.transport.write_envelope(env.to_bytes())
        yield self.assert_session_closed_with(session, CloseCode.REPLAY)

    @defer.inlineCallbacks
    def test_handshake_on_established_session(self):
        """A sealed HandshakeInit on an established session gets Close 6."""
        session = yield self.connect()
        session.send(MessageType.HANDSHAKE_INIT, {"noise": b""})
        yield self.assert_session_closed_with(session, CloseCode.UNEXPECTED_MESSAGE)

    @defer.inlineCallbacks
    def test_sealed_body_not_cbor(self):
        """A sealed body that is not CBOR gets Close 3."""
        session = yield self.connect()
        env = session.cipher.seal(1, MessageType.KEEPALIVE, session.session_id, session.send_seq, b"\xff")
        session.send_seq += 1
        session.connection.transport.write_envelope(env.to_bytes())
        yield self.assert_session_closed_with(session, CloseCode.BAD_CBOR)

    @defer.inlineCallbacks
    def test_body_breaking_schema(self):
        """A ChannelInit without a name gets Close 3."""
        session = yield self.connect()
        session.send(MessageType.CHANNEL_INIT, {"channel": 2})
        yield self.assert_session_closed_with(session, CloseCode.BAD_CBOR)

    @defer.inlineCallbacks
    def test_data_on_unopened_channel(self):
        """Data on a channel that was never opened gets Close 6."""
        session = yield self.connect()
        channel = session.open_channel("x")
        channel.id = 40  # as if ChannelInit for 40 was never sent
        channel.send(b"lost")
        yield self.assert_session_closed_with(session, CloseCode.UNEXPECTED_MESSAGE)

    @defer.inlineCallbacks
    def test_ratchet_message_forged(self):
        """Data whose ratchet message does not decrypt gets Close 4."""
        session = yield self.connect()
        session.open_channel("x")
        session.send(
            MessageType.DATA,
            {"channel": 2, "dr": {"pub": b"\x01" * 32, "pn": 0, "n": 0, "ct": b"\x00" * 48}},
        )
        yield self.assert_session_closed_with(session, CloseCode.DECRYPT_FAILED)


    @defer.inlineCallbacks
    def test_ratchet_key_of_wrong_length(self):
        """Data laid out as every sender lays it out, with a 31-byte ratchet key, gets Close 4 (as any other layout)."""
        session = yield self.connect()
        session.open_channel("x")
        session.send_payload(MessageType.DATA, cbor.dumps_data(2, b"\x01" * 31, 0, 0, b"\x00" * 48))
        yield self.assert_session_closed_with(session, CloseCode.DECRYPT_FAILED)

    @defer.inlineCallbacks
    def test_data_channel_above_32_bits(self):
        """A Data channel id above 2**32-1 gets Close 3, whatever the body's layout."""
        session = yield self.connect()
        session.open_channel("x")
        session.send_payload(MessageType.DATA, cbor.dumps_data(2**32, b"\x01" * 32, 0, 0, b"\x00" * 48))
        yield self.assert_session_closed_with(session, CloseCode.BAD_CBOR)

    @defer.inlineCallbacks
    def test_data_in_another_layout_delivered(self):
        """A genuine Data body encoded in another key order (not dumps_data's) is still read and delivered."""
        import cbor2

        session = yield self.connect()
        opened = channel_on_server(self.server, "x")
        channel = session.open_channel("x")
        server_channel = yield opened
        got = next_data(server_channel)
        message = session._channels._ratchet.encrypt(b"other order", channel.ad)
        body = cbor2.dumps({"dr": dict(reversed(list(message.items()))), "channel": channel.id})
        self.assertIsNone(cbor.loads_data(body))
        session.send_payload(MessageType.DATA, body)
        self.assertEqual((yield got), b"other order")

    @defer.inlineCallbacks
    def test_refused_final_reaches_initiator(self):
        """When the responder refuses HandshakeFinal, the initiator's session ends with that clear Close's code."""
        import os

        from cairn.crypto.identity import Identity

        class LyingIdentity(Identity):
            def noise_static_public(self):
                return os.urandom(32)  # signs a static key it does not use

        client = self.make_client()
        client.peer.identity = LyingIdentity.generate()
        session = yield eventually(client.connect(self.address))
        result = yield closed(session)
        self.assertEqual(result.code, CloseCode.HANDSHAKE_FAILED)
        yield self.assert_bystander_served()

    @defer.inlineCallbacks
    def test_sender_side_limits(self):
        """Over-long channel names are refused locally and over-long Close reasons are cut to 1024 bytes."""
        session = yield self.connect()
        other = self.server_session(session)
        self.assertRaises(ValueError, session.open_channel, "n" * 256)
        ended = closed(other)
        session.close(CloseCode.NORMAL, "\u00e9" * 1000)
        result = yield ended
        self.assertEqual(result.code, CloseCode.NORMAL)
        self.assertEqual(len(result.reason.encode("utf-8")), 1024)


class TCPBadInputTests(BadInputMixin, unittest.TestCase):
    websocket = False

    @defer.inlineCallbacks
    def test_truncated_header(self):
        """A truncated header is held until the handshake timeout, then gets Close 10."""
        raw = yield self.raw_connect()
        raw.send_raw(handshake_init()[:HEADER_SIZE - 5])
        self.server_clock.advance(SETTINGS["handshake_timeout"])
        yield self.assert_raw_closed_with(raw, CloseCode.TIMEOUT)


class WebSocketBadInputTests(BadInputMixin, unittest.TestCase):
    websocket = True

    @defer.inlineCallbacks
    def test_truncated_header(self):
        """A WebSocket message shorter than a header gets Close 1."""
        raw = yield self.raw_connect()
        raw.send_raw(handshake_init()[:HEADER_SIZE - 5])
        yield self.assert_raw_closed_with(raw, CloseCode.MALFORMED_ENVELOPE)

    @defer.inlineCallbacks
    def test_length_field_mismatch(self):
        """A WebSocket message whose length field disagrees with its size gets Close 1."""
        raw = yield self.raw_connect()
        raw.send_raw(handshake_init() + b"\x00")
        yield self.assert_raw_closed_with(raw, CloseCode.MALFORMED_ENVELOPE)

    @defer.inlineCallbacks
    def test_text_frame(self):
        """A text WebSocket message gets Close 1."""
        raw = yield self.raw_connect()
        raw.send_text("hello")
        yield self.assert_raw_closed_with(raw, CloseCode.MALFORMED_ENVELOPE)

    @defer.inlineCallbacks
    def test_oversized_message(self):
        """A WebSocket message longer than the maximum gets Close 2 before the WebSocket fails."""
        raw = yield self.raw_connect()
        raw.send_raw(b"\x01" * (MAX + HEADER_SIZE + 1))
        yield self.assert_raw_closed_with(raw, CloseCode.PAYLOAD_TOO_LARGE)
