"""
The byte-exact test vectors of docs/protocol.md, regenerated from the code.

Each vector block of the document sits between C{<!-- vector-begin NAME -->}
and C{<!-- vector-end NAME -->} and holds C{name: value} lines; a long
value continues on the following indented lines. The vectors are produced
by the real code paths -- two L{Connection}s talking to each other with
pinned Noise ephemeral keys and pinned ratchet keys -- and every block must
equal, line for line, what the code produces: editing the document or
changing the wire format breaks these tests. Where it is cheap the values
are also re-derived from primitives (struct, cryptography, PyNaCl), so that
the document's prose and the code agree with each other too.

Print the blocks for the document with `python -m tests.test_vectors`.
"""

import hashlib
import os
import re
import struct
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.signing import VerifyKey
from noise.connection import Keypair, NoiseConnection
from twisted.internet.task import Clock
from twisted.trial import unittest

from cairn.crypto import handshake as handshake_mod
from cairn.crypto import ratchet
from cairn.crypto.identity import Identity
from cairn.crypto.ratchet import Ratchet
from cairn.crypto.ratchet_seed import derive_seed
from cairn.session import opening as opening_mod
from cairn.session.peer import Peer
from cairn.wire import cbor
from cairn.wire.constants import MessageType
from cairn.wire.envelope import decode, encode_header

DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md"
)

# Inputs. Everything else follows from them, because Ed25519 signatures and
# the Noise handshake are deterministic once the ephemeral keys are pinned.
INITIATOR_SEED = bytes(range(0x00, 0x20))
RESPONDER_SEED = bytes(range(0x20, 0x40))
INITIATOR_EPHEMERAL = bytes(range(0x40, 0x60))
RESPONDER_EPHEMERAL = bytes(range(0x60, 0x80))
SESSION_ID = bytes(range(0xA0, 0xB0))
RATCHET_A1 = bytes.fromhex("a1" * 32)  # the initiator's first ratchet key
RATCHET_B1 = bytes.fromhex("b1" * 32)  # the responder's first ratchet key (not shown)
HELLO = b"hello"
MAX_PAYLOAD = 1_000_000
BINDING_PREFIX = b"cairn-noise-static:"

BLOCKS = ("header", "identity", "handshake", "sealed", "data", "version-close", "reconnect")


def _show(value) -> str:
    if isinstance(value, bool):
        raise TypeError("no booleans in vectors")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return bytes(value).hex() if value else "(empty)"


class _Wire:
    """A transport that keeps what the connection writes."""

    peer_address = "test-vector"

    def __init__(self):
        self.sent = []
        self.lost = False

    def write_envelope(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def lose(self, abort: bool = False) -> None:
        self.lost = True


def _pinned(factory, identity, initiator, ephemeral, **binding):
    # noiseprotocol warns whenever an ephemeral key is set by hand; here
    # that is the point.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One of ephemeral keypairs", category=UserWarning)
        return factory(identity, initiator, ephemeral_private=ephemeral, **binding)


def _deliver(connection, data: bytes) -> None:
    connection.envelope_received(decode(data, MAX_PAYLOAD))


def _payload(data: bytes):
    return cbor.loads(data[31:])


def run_conversation(patch: Callable) -> dict[str, dict[str, str]]:
    """
    Run the documented conversation through the real session code.

    @param patch: C{patch(obj, name, value)}, e.g. trial's C{TestCase.patch}.
    @return: block name -> ordered {line name: rendered value}.
    """
    real_handshake = handshake_mod.NoiseHandshake

    def pinned_handshake(identity, initiator, ephemeral_private=None, **binding):
        eph = INITIATOR_EPHEMERAL if initiator else RESPONDER_EPHEMERAL
        return _pinned(real_handshake, identity, initiator, eph, **binding)

    ratchet_keys = iter([RATCHET_A1, RATCHET_B1])
    patch(opening_mod, "NoiseHandshake", pinned_handshake)
    patch(ratchet, "generate_private_key", lambda: next(ratchet_keys))

    i_ident = Identity.from_seed(INITIATOR_SEED)
    r_ident = Identity.from_seed(RESPONDER_SEED)
    i_peer = Peer(i_ident, Clock(), max_payload=MAX_PAYLOAD)
    r_clock = Clock()
    r_peer = Peer(r_ident, r_clock, max_payload=MAX_PAYLOAD)
    received = []
    r_peer.on_data = lambda session, channel, data: received.append((channel.name, data))

    blocks: dict[str, dict[str, str]] = OrderedDict((name, OrderedDict()) for name in BLOCKS)

    def put(block, name, value):
        assert name not in blocks[block], name
        blocks[block][name] = _show(value)

    # (a) A header on its own.
    hdr = encode_header(1, MessageType.DATA, bytes(range(16)), (1 << 32) | 2, 300)
    put("header", "in.version", 1)
    put("header", "in.type", "0x0300")
    put("header", "in.session_id", bytes(range(16)))
    put("header", "in.seq", (1 << 32) | 2)
    put("header", "in.length", 300)
    put("header", "bytes[0:1].version", hdr[0:1])
    put("header", "bytes[1:3].type", hdr[1:3])
    put("header", "bytes[3:19].session_id", hdr[3:19])
    put("header", "bytes[19:27].seq", hdr[19:27])
    put("header", "bytes[27:31].length", hdr[27:31])
    put("header", "header", hdr)

    # (b) Identities.
    for role, ident, seed in (("initiator", i_ident, INITIATOR_SEED), ("responder", r_ident, RESPONDER_SEED)):
        put("identity", f"{role}.seed", seed)
        put("identity", f"{role}.ed25519_public", ident.public_key)
        put("identity", f"{role}.multihash", b"\x12\x20" + hashlib.sha256(ident.public_key).digest())
        put("identity", f"{role}.peer_id", ident.peer_id)
        put("identity", f"{role}.x25519_private", ident.noise_static_private())
        put("identity", f"{role}.x25519_public", ident.noise_static_public())

    # (c) The handshake, through two Connections.
    i_conn = i_peer.connection(initiator=True, session_id=SESSION_ID)
    r_conn = r_peer.connection(initiator=False)
    i_wire, r_wire = _Wire(), _Wire()
    r_conn.connection_made(r_wire)
    i_conn.connection_made(i_wire)
    env1 = i_wire.sent.pop(0)
    _deliver(r_conn, env1)
    env2 = r_wire.sent.pop(0)
    _deliver(i_conn, env2)
    env3 = i_wire.sent.pop(0)
    assert not i_wire.sent, "nothing sealed before the first channel"
    _deliver(r_conn, env3)
    i_session = i_conn.session
    r_session = r_peer.sessions[SESSION_ID]
    result = i_session.result

    put("handshake", "session_id", SESSION_ID)
    put("handshake", "prologue", handshake_mod.handshake_prologue(1, SESSION_ID))
    put("handshake", "initiator.ephemeral_private", INITIATOR_EPHEMERAL)
    put("handshake", "responder.ephemeral_private", RESPONDER_EPHEMERAL)
    put("handshake", "msg1.noise", _payload(env1)["noise"])
    put("handshake", "msg1.envelope", env1)
    r_signed = BINDING_PREFIX + r_ident.noise_static_public()
    put("handshake", "responder.signed", r_signed)
    put("handshake", "responder.sig", r_ident.sign(r_signed))
    put("handshake", "responder.noise_payload", handshake_mod.identity_payload(r_ident))
    put("handshake", "msg2.noise", _payload(env2)["noise"])
    put("handshake", "msg2.envelope", env2)
    i_signed = BINDING_PREFIX + i_ident.noise_static_public()
    put("handshake", "initiator.signed", i_signed)
    put("handshake", "initiator.sig", i_ident.sign(i_signed))
    put("handshake", "initiator.noise_payload", handshake_mod.identity_payload(i_ident))
    put("handshake", "msg3.noise", _payload(env3)["noise"])
    put("handshake", "msg3.envelope", env3)
    put("handshake", "handshake_hash", result.handshake_hash)
    put("handshake", "key_i2r", result.key_i2r)
    put("handshake", "key_r2i", result.key_r2i)

    # (d) Sealed control envelopes: the responder's first keepalive tick
    # (seq 1, acking the HandshakeFinal) and the initiator's ChannelInit
    # (seq 3, after the ratchet start at seq 2 that its first channel sends).
    r_clock.advance(r_peer.keepalive_interval)
    keepalive = r_wire.sent.pop(0)
    chat = i_session.open_channel("chat")
    data0, channel_init = i_wire.sent.pop(0), i_wire.sent.pop(0)
    chat.send(HELLO)
    data4 = i_wire.sent.pop(0)
    for name, env, body, key in (
        ("keepalive", keepalive, {"ack": 1}, result.key_r2i),
        ("channel_init", channel_init, {"channel": 2, "name": "chat"}, result.key_i2r),
    ):
        seq = struct.unpack(">Q", env[19:27])[0]
        put("sealed", f"{name}.seq", seq)
        put("sealed", f"{name}.key", key)
        put("sealed", f"{name}.body", cbor.dumps(body))
        put("sealed", f"{name}.nonce", b"\x00" * 4 + struct.pack("<Q", seq))
        put("sealed", f"{name}.ad", env[:31])
        put("sealed", f"{name}.envelope", env)

    # (f) The ratchet, seeded from (c), and the Data envelopes it protects.
    seed = derive_seed(result.handshake_hash, result.key_i2r, result.key_r2i)
    put("data", "seed.shared_secret", seed.shared_secret)
    put("data", "seed.responder_private", seed.responder_private)
    put("data", "seed.responder_public", seed.responder_public)
    put("data", "in.A1_private", RATCHET_A1)
    for name, env, plaintext in (("start", data0, b""), ("hello", data4, HELLO)):
        seq = struct.unpack(">Q", env[19:27])[0]
        opened = _open(result.key_i2r, env)
        put("data", f"{name}.seq", seq)
        put("data", f"{name}.plaintext", plaintext)
        dr = opened["dr"]
        put("data", f"{name}.channel", opened["channel"])
        for field in ("pub", "pn", "n", "ct"):
            put("data", f"{name}.dr.{field}", dr[field])
        put("data", f"{name}.body", cbor.dumps(opened))
        put("data", f"{name}.envelope", env)

    # Deliver all but the "hello" Data, as if the transport died with it in
    # flight; the keepalive reaches the initiator.
    _deliver(r_conn, data0)
    _deliver(r_conn, channel_init)
    _deliver(i_conn, keepalive)
    assert r_session.channels[2].name == "chat"
    assert r_session.recv_seq == 3 and i_session.recv_seq == 1

    # (e) A HandshakeInit with version 2 answered by a clear Close.
    v_conn = r_peer.connection(initiator=False)
    v_wire = _Wire()
    v_conn.connection_made(v_wire)
    init_v2 = b"\x02" + env1[1:]
    _deliver(v_conn, init_v2)
    close = v_wire.sent.pop(0)
    assert v_wire.lost and not v_wire.sent
    put("version-close", "init.envelope", init_v2)
    put("version-close", "close.body", close[31:])
    put("version-close", "close.envelope", close)

    # Reconnect: both transports are gone; the initiator resumes.
    i_conn.connection_lost(None)
    r_conn.connection_lost(None)
    i_conn2 = i_peer.connection(initiator=True, resume=i_session)
    r_conn2 = r_peer.connection(initiator=False)
    i_wire2, r_wire2 = _Wire(), _Wire()
    r_conn2.connection_made(r_wire2)
    i_conn2.connection_made(i_wire2)
    reconnect = i_wire2.sent.pop(0)
    _deliver(r_conn2, reconnect)
    reply = r_wire2.sent.pop(0)
    assert not r_wire2.sent  # the responder had nothing unacknowledged
    _deliver(i_conn2, reply)
    resent = i_wire2.sent.pop(0)
    assert not i_wire2.sent
    assert resent == data4, "resent envelopes keep their original bytes"
    _deliver(r_conn2, resent)
    assert received == [("chat", HELLO)], received
    for name, env, key in (("reconnect", reconnect, result.key_i2r), ("reply", reply, result.key_r2i)):
        put("reconnect", f"{name}.seq", struct.unpack(">Q", env[19:27])[0])
        put("reconnect", f"{name}.body", cbor.dumps(_open(key, env)))
        put("reconnect", f"{name}.envelope", env)
    put("reconnect", "resent.seq", struct.unpack(">Q", resent[19:27])[0])
    return blocks


def _open(key: bytes, env: bytes):
    """Open a sealed envelope with primitives only (no cairn code)."""
    header, payload = env[:31], env[31:]
    assert struct.unpack(">I", header[27:31])[0] == len(payload)
    head = payload[0]
    assert head >> 5 == 2
    info = head & 0x1F
    start = 1 if info < 24 else 1 + (1 << (info - 24))
    seq = struct.unpack(">Q", header[19:27])[0]
    nonce = b"\x00" * 4 + struct.pack("<Q", seq)
    return cbor.loads(ChaCha20Poly1305(key).decrypt(nonce, payload[start:], header))


def documented_blocks(text: str) -> dict[str, dict[str, str]]:
    """Parse every vector block of the document."""
    blocks: dict[str, dict[str, str]] = OrderedDict()
    pattern = re.compile(r"<!-- vector-begin ([a-z-]+) -->(.*?)<!-- vector-end \1 -->", re.S)
    for match in pattern.finditer(text):
        name = match.group(1)
        if name in blocks:
            raise AssertionError(f"vector block {name!r} appears twice")
        values: dict[str, str] = OrderedDict()
        last = None
        for line in match.group(2).splitlines():
            if not line.strip() or line.startswith("```"):
                continue
            head = re.match(r"^([A-Za-z0-9_.\[\]:-]+?): ?(\S*)$", line)
            if head and not line[0].isspace():
                last = head.group(1)
                if last in values:
                    raise AssertionError(f"{name}: {last!r} appears twice")
                values[last] = head.group(2)
            elif line[0].isspace() and last is not None and re.match(r"^\s+\S+$", line):
                values[last] += line.strip()
            else:
                raise AssertionError(f"{name}: unparsable vector line {line!r}")
        blocks[name] = values
    return blocks


def render(blocks: dict[str, dict[str, str]], width: int = 64) -> str:
    """The blocks as they appear in the document."""
    out = []
    for name, values in blocks.items():
        out.append(f"<!-- vector-begin {name} -->")
        out.append("```text")
        for key, value in values.items():
            if len(value) <= width:
                out.append(f"{key}: {value}")
            else:
                out.append(f"{key}:")
                for i in range(0, len(value), width):
                    out.append("    " + value[i : i + width])
        out.append("```")
        out.append(f"<!-- vector-end {name} -->")
        out.append("")
    return "\n".join(out)


class VectorTests(unittest.TestCase):
    def setUp(self):
        self.produced = run_conversation(self.patch)
        with open(DOC, encoding="utf-8") as f:
            self.documented = documented_blocks(f.read())

    def test_blocks_present(self):
        """docs/protocol.md holds exactly the expected vector blocks."""
        self.assertEqual(sorted(self.documented), sorted(BLOCKS))

    def test_header(self):
        """The header vector matches the code."""
        self.assertEqual(self.documented["header"], self.produced["header"])

    def test_identity(self):
        """The identity vector (public key, peer id, X25519 static key) matches the code."""
        self.assertEqual(self.documented["identity"], self.produced["identity"])

    def test_handshake(self):
        """The three handshake envelopes, handshake hash and Split() keys match the code."""
        self.assertEqual(self.documented["handshake"], self.produced["handshake"])

    def test_sealed(self):
        """The sealed Keepalive and ChannelInit envelopes match the code."""
        self.assertEqual(self.documented["sealed"], self.produced["sealed"])

    def test_data(self):
        """The ratchet seed and the two Data envelopes match the code."""
        self.assertEqual(self.documented["data"], self.produced["data"])

    def test_version_close(self):
        """The clear Close answering an unsupported version matches the code."""
        self.assertEqual(self.documented["version-close"], self.produced["version-close"])

    def test_reconnect(self):
        """The Reconnect, its reply and the resent sequence number match the code."""
        self.assertEqual(self.documented["reconnect"], self.produced["reconnect"])


class PrimitiveTests(unittest.TestCase):
    """The documented values re-derived from primitives, as the prose describes them."""

    def setUp(self):
        with open(DOC, encoding="utf-8") as f:
            blocks = documented_blocks(f.read())
        self.v = {
            f"{block}.{name}": value for block, values in blocks.items() for name, value in values.items()
        }

    def b(self, name) -> bytes:
        value = self.v[name]
        return b"" if value == "(empty)" else bytes.fromhex(value)

    def test_header_layout(self):
        """The header is >BH16sQI of its five fields."""
        packed = struct.pack(">BH16sQI", 1, 0x0300, bytes(range(16)), (1 << 32) | 2, 300)
        self.assertEqual(self.b("header.header"), packed)

    def test_peer_id(self):
        """The peer id is base58 (Bitcoin alphabet) of 0x12 0x20 || sha256(public key)."""
        alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
        for role in ("initiator", "responder"):
            mh = b"\x12\x20" + hashlib.sha256(self.b(f"identity.{role}.ed25519_public")).digest()
            self.assertEqual(self.b(f"identity.{role}.multihash"), mh)
            n, text = int.from_bytes(mh, "big"), ""
            while n:
                n, r = divmod(n, 58)
                text = alphabet[r] + text
            text = "1" * (len(mh) - len(mh.lstrip(b"\0"))) + text
            self.assertEqual(self.v[f"identity.{role}.peer_id"], text)

    def test_signatures(self):
        """Each identity signs the binding prefix and its X25519 static key; the payload is the canonical map."""
        for role in ("initiator", "responder"):
            pub = self.b(f"identity.{role}.ed25519_public")
            signed = self.b(f"handshake.{role}.signed")
            self.assertEqual(signed, BINDING_PREFIX + self.b(f"identity.{role}.x25519_public"))
            sig = self.b(f"handshake.{role}.sig")
            VerifyKey(pub).verify(signed, sig)
            payload = b"\xa2" + b"\x63sig\x58\x40" + sig + b"\x68identity\x58\x20" + pub
            self.assertEqual(self.b(f"handshake.{role}.noise_payload"), payload)

    def test_handshake_envelopes(self):
        """Each handshake envelope is a clear header plus {"noise": bstr}, with sequence numbers 0, 0, 1."""
        sid = self.b("handshake.session_id")
        for n, type_code, seq in ((1, 0x0100, 0), (2, 0x0101, 0), (3, 0x0102, 1)):
            noise = self.b(f"handshake.msg{n}.noise")
            body = cbor.dumps({"noise": noise})
            expected = struct.pack(">BH16sQI", 1, type_code, sid, seq, len(body)) + body
            self.assertEqual(self.b(f"handshake.msg{n}.envelope"), expected)

    def test_prologue(self):
        """The Noise prologue is "cairn", the HandshakeInit's version byte, then its session id."""
        envelope = self.b("handshake.msg1.envelope")
        self.assertEqual(self.b("handshake.prologue"), b"cairn" + envelope[0:1] + envelope[3:19])

    def test_handshake_replays(self):
        """Plain noiseprotocol with the documented prologue and pinned keys reproduces messages, hash and keys."""
        prologue = self.b("handshake.prologue")
        ends = []
        for role, initiator in (("initiator", True), ("responder", False)):
            conn = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_SHA256")
            conn.set_as_initiator() if initiator else conn.set_as_responder()
            conn.set_prologue(prologue)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="One of ephemeral keypairs", category=UserWarning)
                conn.set_keypair_from_private_bytes(Keypair.STATIC, self.b(f"identity.{role}.x25519_private"))
                conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, self.b(f"handshake.{role}.ephemeral_private"))
            conn.start_handshake()
            ends.append(conn)
        i, r = ends
        m1 = bytes(i.write_message(b""))
        r.read_message(m1)
        m2 = bytes(r.write_message(self.b("handshake.responder.noise_payload")))
        i.read_message(m2)
        m3 = bytes(i.write_message(self.b("handshake.initiator.noise_payload")))
        r.read_message(m3)
        self.assertEqual([m1, m2, m3], [self.b(f"handshake.msg{n}.noise") for n in (1, 2, 3)])
        for conn, initiator in ((i, True), (r, False)):
            proto = conn.noise_protocol
            send, receive = bytes(proto.cipher_state_encrypt.k), bytes(proto.cipher_state_decrypt.k)
            self.assertEqual(bytes(conn.get_handshake_hash()), self.b("handshake.handshake_hash"))
            self.assertEqual(send if initiator else receive, self.b("handshake.key_i2r"))
            self.assertEqual(receive if initiator else send, self.b("handshake.key_r2i"))

    def _check_sealed(self, prefix, key):
        env = self.b(prefix + ".envelope")
        seq = int(self.v[prefix + ".seq"])
        nonce = b"\x00" * 4 + seq.to_bytes(8, "little")
        if prefix + ".nonce" in self.v:
            self.assertEqual(self.b(prefix + ".nonce"), nonce)
        body = self.b(prefix + ".body")
        ct = ChaCha20Poly1305(key).encrypt(nonce, body, env[:31])
        head = bytes([0x40 | len(ct)]) if len(ct) < 24 else (
            bytes([0x58, len(ct)]) if len(ct) < 256 else b"\x59" + struct.pack(">H", len(ct))
        )
        self.assertEqual(env[31:], head + ct)
        self.assertEqual(struct.unpack(">I", env[27:31])[0], len(head) + len(ct))
        self.assertEqual(struct.unpack(">Q", env[19:27])[0], seq)
        self.assertEqual(env[3:19], self.b("handshake.session_id"))

    def test_sealed_layout(self):
        """Sealed payload = bstr head || ChaCha20-Poly1305(key, 0^4 || seq LE, body, AD = header)."""
        self._check_sealed("sealed.keepalive", self.b("handshake.key_r2i"))
        self._check_sealed("sealed.channel_init", self.b("handshake.key_i2r"))
        self.assertEqual(self.b("sealed.keepalive.ad"), self.b("sealed.keepalive.envelope")[:31])
        self._check_sealed("data.start", self.b("handshake.key_i2r"))
        self._check_sealed("data.hello", self.b("handshake.key_i2r"))
        self._check_sealed("reconnect.reconnect", self.b("handshake.key_i2r"))
        self._check_sealed("reconnect.reply", self.b("handshake.key_r2i"))

    def test_data_ratchet(self):
        """The seed comes from the handshake; both Data bodies open with ad = session id || u32be(channel)."""
        seed = derive_seed(
            self.b("handshake.handshake_hash"), self.b("handshake.key_i2r"), self.b("handshake.key_r2i")
        )
        self.assertEqual(seed.shared_secret, self.b("data.seed.shared_secret"))
        self.assertEqual(seed.responder_public, self.b("data.seed.responder_public"))
        sid = self.b("handshake.session_id")
        start = cbor.loads(self.b("data.start.body"))
        hello = cbor.loads(self.b("data.hello.body"))
        self.assertEqual(start["channel"], 0)
        # The ratchet's ad is the session id, then the channel as u32 big-endian.
        responder, plain = Ratchet.start_responder(seed, start["dr"], sid + b"\x00\x00\x00\x00")
        self.assertEqual(plain, b"")
        self.assertRaises(ratchet.RatchetError, responder.decrypt, hello["dr"], sid)
        self.assertEqual(responder.decrypt(hello["dr"], sid + b"\x00\x00\x00\x02"), HELLO)

    def test_version_close(self):
        """The clear Close echoes the session id, has sequence 0 and lists the supported versions."""
        env = self.b("version-close.close.envelope")
        body = cbor.dumps({"code": 7, "reason": "version 2 not supported", "supported": [1]})
        expected = struct.pack(">BH16sQI", 1, 0x0201, self.b("handshake.session_id"), 0, len(body)) + body
        self.assertEqual(env, expected)


if __name__ == "__main__":
    _saved = []

    def _patch(obj, name, value):
        _saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    try:
        sys.stdout.write(render(run_conversation(_patch)))
    finally:
        for obj, name, value in reversed(_saved):
            setattr(obj, name, value)
