"""
KeyUpdate (docs/protocol.md §8.3): each direction's key moves one way to
the next epoch every N envelopes or T seconds; a Reconnect still proves
the session across an update; a snapshot holds one epoch's keys.
"""

import os
import re

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.client import Client
from cairn.crypto.aead import KEY_UPDATE_INFO, next_key, nonce_for, split_bstr
from cairn.crypto.handshake import HandshakeResult
from cairn.crypto.identity import Identity
from cairn.service import make_node
from cairn.session import store
from cairn.session.peer import Peer
from cairn.session.session import Session
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import decode
from tests._harness import SETTINGS, ScenarioMixin, closed, drop_all, eventually, resumed, track_connections
from tests.test_service import config_for
from tests.test_vectors import DOC, documented_blocks

CUSTOM = 0xF000


class Received:
    """Collects custom-type bodies on a peer; C{wait(n)} fires once n arrived."""

    def __init__(self, peer):
        self.bodies = []
        self._waiting = []
        peer.register_handler(CUSTOM, self._got)

    def _got(self, session, body):
        self.bodies.append(body)
        for item in list(self._waiting):
            if len(self.bodies) >= item[0]:
                self._waiting.remove(item)
                item[1].callback(list(self.bodies))

    def wait(self, count):
        d = defer.Deferred()
        self._waiting.append((count, d))
        if len(self.bodies) >= count:
            self._waiting.remove((count, d))
            d.callback(list(self.bodies))
        return eventually(d)


class KeyUpdateScenarioMixin(ScenarioMixin):
    @defer.inlineCallbacks
    def test_keys_update_every_n_envelopes_both_ways(self):
        """With updates every 10 envelopes, 200 messages each way arrive in order while both keys move on."""
        self.server.rekey_envelopes = 10
        client = self.make_client()
        client.peer.rekey_envelopes = 10
        at_server, at_client = Received(self.server), Received(client.peer)
        session = yield self.connect(client)
        server_side = self.server_session(session)
        first_keys = (session.cipher.send_key, session.cipher.recv_key)
        # In rounds: a side updates again only once its last update is acknowledged.
        for start in range(0, 200, 40):
            for i in range(start, start + 40):
                session.send(CUSTOM, i)
                server_side.send(CUSTOM, i)
            yield at_server.wait(start + 40)
            yield at_client.wait(start + 40)
        self.assertEqual(at_server.bodies, list(range(200)))
        self.assertEqual(at_client.bodies, list(range(200)))
        self.assertGreaterEqual(session.cipher.send_epoch, 2)
        self.assertGreaterEqual(server_side.cipher.send_epoch, 2)
        self.assertEqual(server_side.cipher.recv_epoch, session.cipher.send_epoch)
        self.assertEqual(session.cipher.recv_epoch, server_side.cipher.send_epoch)
        self.assertNotIn(session.cipher.send_key, first_keys)
        # Memory keeps no handshake key once the keys moved on.
        self.assertIsNone(session.result.key_i2r)
        self.assertIsNone(server_side.result.key_r2i)

    @defer.inlineCallbacks
    def test_keys_update_after_the_interval(self):
        """After the rekey interval the next envelope follows a KeyUpdate."""
        self.server.rekey_interval = 20.0  # below the keepalive interval: no tick meanwhile
        client = self.make_client()
        at_client = Received(client.peer)
        session = yield self.connect(client)
        server_side = self.server_session(session)
        server_side.send(CUSTOM, "before")
        yield at_client.wait(1)
        self.assertEqual(server_side.cipher.send_epoch, 0)
        self.server_clock.advance(20.0)
        server_side.send(CUSTOM, "after")
        yield at_client.wait(2)
        self.assertEqual((server_side.cipher.send_epoch, session.cipher.recv_epoch), (1, 1))

    @defer.inlineCallbacks
    def test_resume_across_an_update_lost_with_the_transport(self):
        """A KeyUpdate written while detached: the Reconnect under the new key is accepted and the resend catches up."""
        client = self.make_client()
        client.peer.rekey_envelopes = 5
        at_server = Received(self.server)
        session = yield self.connect(client)
        server_side = self.server_session(session)
        lost = session.connection.lost
        session.connection.drop_transport()
        yield eventually(lost)
        for i in range(20):
            session.send(CUSTOM, i)  # buffered; a KeyUpdate among them
        self.assertEqual(session.cipher.send_epoch, 1)
        self.assertEqual(server_side.cipher.recv_epoch, 0)
        back = resumed(session)
        yield eventually(client.resume(session, self.address))
        yield back
        self.assertEqual((yield at_server.wait(20)), list(range(20)))
        self.assertEqual(server_side.cipher.recv_epoch, 1)

    @defer.inlineCallbacks
    def test_wrong_epoch_closes(self):
        """A KeyUpdate that skips an epoch ends the session with Close 6."""
        session = yield self.connect()
        server_side = self.server_session(session)
        session.send(MessageType.KEY_UPDATE, {"epoch": 2})
        self.assertEqual((yield closed(server_side)).code, CloseCode.UNEXPECTED_MESSAGE)


class TCPKeyUpdateTests(KeyUpdateScenarioMixin, unittest.TestCase):
    pass


class WebSocketKeyUpdateTests(KeyUpdateScenarioMixin, unittest.TestCase):
    websocket = True


class SnapshotEpochTests(unittest.TestCase):
    """A clean restart after key updates: one epoch's keys on disk, and the session goes on."""

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.connections = []

    def tearDown(self):
        return drop_all(self.connections)

    @defer.inlineCallbacks
    def start(self):
        node = make_node(config_for(self.data_dir, ws_listen="none"), reactor)
        node.peer.rekey_envelopes = 4
        track_connections(node.peer, self.connections)
        node.startService()
        ports = yield node.ready
        return node, f"tcp:host=127.0.0.1:port={ports['tcp'].getHost().port}"

    @defer.inlineCallbacks
    def test_snapshot_holds_only_the_current_epoch(self):
        """After updates the snapshot has neither handshake key, and the resumed session exchanges messages."""
        node, address = yield self.start()
        client = Client(reactor, clock=task.Clock())
        client.peer.rekey_envelopes = 4
        track_connections(client.peer, self.connections)
        at_node, at_client = Received(node.peer), Received(client.peer)
        session = yield eventually(client.connect(address))
        # Only paired peers' sessions are saved at a stop (§16.1).
        yield node.pairing.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0)
        handshake_keys = {session.result.key_i2r, session.result.key_r2i}
        for i in range(40):
            session.send(CUSTOM, i)
        yield at_node.wait(40)
        server_side = node.peer.sessions[session.session_id]
        for i in range(40):
            server_side.send(CUSTOM, i)
        yield at_client.wait(40)
        lost = session.connection.lost
        yield node.stopService()
        yield eventually(lost)
        with open(os.path.join(self.data_dir, store.FILE_NAME), "rb") as f:
            saved = f.read()
        for key in handshake_keys:
            self.assertNotIn(key, saved)
        [state] = cbor.loads(saved)["sessions"]
        self.assertGreaterEqual(state["send_epoch"], 1)
        self.assertGreaterEqual(state["recv_epoch"], 1)

        node, address = yield self.start()
        at_node = Received(node.peer)
        yield eventually(client.resume(session, address))
        for i in range(40):
            session.send(CUSTOM, 100 + i)
        self.assertEqual((yield at_node.wait(40)), [100 + i for i in range(40)])
        server_side = node.peer.sessions[session.session_id]
        for i in range(40):
            server_side.send(CUSTOM, 200 + i)
        self.assertEqual((yield at_client.wait(80))[40:], [200 + i for i in range(40)])
        # A channel opened after the restore (the peer is paired, §10) still
        # starts its ratchet from the right seed.
        opened = defer.Deferred()
        node.peer.on_channel = lambda s, ch: opened.callback(ch)
        node.peer.on_data = lambda s, ch, data: got.callback(data)
        got = defer.Deferred()
        session.open_channel("late").send(b"ratchet after restore")
        yield eventually(opened)
        self.assertEqual((yield eventually(got)), b"ratchet after restore")
        yield node.stopService()


# The vectors of §8.3

VECTOR_KEY = bytes(range(0x00, 0x20))
VECTOR_SESSION_ID = bytes(range(0xA0, 0xB0))
VECTOR_SEQ = 41


class _Wire:
    def __init__(self, written):
        self.write = written.append


def key_update_vectors() -> dict:
    """The §8.3 block, made by the session code (a responder session with a pinned key)."""
    peer = Peer(Identity.from_seed(bytes(32)), task.Clock(), **SETTINGS)
    result = HandshakeResult(
        remote_identity=Identity.from_seed(bytes([1]) * 32).public_key,
        handshake_hash=bytes(32),
        key_i2r=bytes(32),
        key_r2i=VECTOR_KEY,
        initiator=False,
    )
    session = Session(peer, VECTOR_SESSION_ID, result, 1, send_seq=VECTOR_SEQ, recv_seq=1)
    written = []
    session.connection = _Wire(written)  # attached, without timers
    session._epoch_sent = peer.rekey_envelopes  # an update is due
    session.send(MessageType.KEEPALIVE, {"ack": 1})
    [update, keepalive] = written
    update_seq, keepalive_seq = VECTOR_SEQ, VECTOR_SEQ + 1
    assert session.cipher.send_key == next_key(VECTOR_KEY)
    values = {
        "info": KEY_UPDATE_INFO,
        "key.0": VECTOR_KEY,
        "key.1": next_key(VECTOR_KEY),
        "key.2": next_key(next_key(VECTOR_KEY)),
        "update.seq": update_seq,
        "update.body": cbor.dumps({"epoch": 1}),
        "update.nonce": nonce_for(update_seq),
        "update.envelope": update,
        "keepalive.seq": keepalive_seq,
        "keepalive.body": cbor.dumps({"ack": 1}),
        "keepalive.envelope": keepalive,
    }
    return {name: (v if isinstance(v, int) else bytes(v).hex()) for name, v in values.items()}


def documented() -> dict:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"<!-- keyupdate-vector-begin -->(.*?)<!-- keyupdate-vector-end -->", text, re.S)
    assert match, "no key update vectors in docs/protocol.md"
    block = f"<!-- vector-begin key-update -->{match.group(1)}<!-- vector-end key-update -->"
    return documented_blocks(block)["key-update"]


class KeyUpdateVectorTests(unittest.TestCase):
    def test_document_matches_code(self):
        """The §8.3 vectors are what the session code produces."""
        made = {name: str(value) for name, value in key_update_vectors().items()}
        self.assertEqual(documented(), made)

    def test_vectors_from_primitives(self):
        """The documented keys are HKDF-Expand-SHA-256 steps, and each envelope opens under its epoch's key."""
        import hashlib
        import hmac

        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        doc = documented()
        key0 = bytes.fromhex(doc["key.0"])
        # HKDF-Expand with L = 32 is one HMAC block: T(1) = HMAC(PRK, info || 0x01).
        key1 = hmac.new(key0, b"cairn key update\x01", hashlib.sha256).digest()
        key2 = hmac.new(key1, b"cairn key update\x01", hashlib.sha256).digest()
        self.assertEqual((key1.hex(), key2.hex()), (doc["key.1"], doc["key.2"]))
        for name, key in (("update", key0), ("keepalive", key1)):
            envelope = decode(bytes.fromhex(doc[f"{name}.envelope"]), 1 << 20)
            sealed = split_bstr(envelope.payload)
            plain = ChaCha20Poly1305(key).decrypt(nonce_for(envelope.seq), sealed, envelope.header())
            self.assertEqual(plain.hex(), doc[f"{name}.body"])


if __name__ == "__main__":
    from tests.test_vectors import render

    print(render({"key-update": {k: str(v) for k, v in key_update_vectors().items()}}))
