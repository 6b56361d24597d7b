"""
The byte-exact mailbox vectors of docs/protocol.md §21.10, produced by the
reference code and compared line by line with the document.

Each block sits between C{<!-- mailbox-vector-begin NAME -->} and
C{<!-- mailbox-vector-end NAME -->}, in the layout of §17 (see
L{tests.test_vectors}). The bodies come from the client's and the node's
own code paths, driven with a recording session; the pair box is also
re-derived from primitives, as §21.8 describes it.

Print the blocks for the document with C{python -m tests.test_mailbox_vectors}.
"""

import hashlib
import re
import sys
from collections import OrderedDict

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_sign_ed25519_pk_to_curve25519, crypto_sign_ed25519_sk_to_curve25519
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.mailbox import messages, sealing
from cairn.mailbox.client import MailboxClient
from cairn.mailbox.interfaces import Incoming, Receipt, Stored
from cairn.mailbox.service import MailboxService
from cairn.mailbox.store import MemoryMailboxStore
from cairn.mailbox.window import Outbox
from cairn.pairing.trust import MemoryTrustStore
from cairn.session.peer import Peer
from cairn.wire import cbor
from cairn.wire.constants import ForwardStatus, MessageType, ReceiptStatus
from tests.test_vectors import DOC, INITIATOR_SEED, RESPONDER_SEED, render

SENDER_SEED, RECIPIENT_SEED = INITIATOR_SEED, RESPONDER_SEED
MESSAGE_ID = bytes.fromhex("018f3a2b4c5d7e6f8091a2b3c4d5e6f7")
DATA = b"hello mailbox"
STORED_AT = 1700000000.5
RECEIPT_AT = 1700000001.25
BLOCKS = ("mailbox-pair-box", "mailbox-bodies")
BEGIN, END = "<!-- mailbox-vector-begin {} -->", "<!-- mailbox-vector-end {} -->"


class RecordingSession:
    """The parts of a L{cairn.session.session.Session} the mailbox uses; keeps what is sent."""

    attached = True
    closed = None

    def __init__(self, local, remote_peer_id, session_id=b"\x00" * 16):
        self.local = local
        self.remote_peer_id = remote_peer_id
        self.session_id = session_id
        self.sent = []

    def send(self, type_code, body):
        self.sent.append((type_code, body))
        return len(self.sent)

    def send_if_open(self, type_code, body):
        self.send(type_code, body)
        return True

    def send_payload_if_open(self, type_code, payload):
        return self.send_if_open(type_code, cbor.loads(payload))

    def bodies(self, type_code):
        return [body for t, body in self.sent if t == type_code]


def produce():
    """The vector blocks, from the reference code."""
    clock = Clock()
    sender, recipient = Identity.from_seed(SENDER_SEED), Identity.from_seed(RECIPIENT_SEED)
    sender_peer, recipient_peer = Peer(sender, clock), Peer(recipient, clock)
    blocks = OrderedDict()

    box = blocks["mailbox-pair-box"] = OrderedDict()
    box["sender.ed25519"] = sender.public_key.hex()
    box["recipient.ed25519"] = recipient.public_key.hex()
    pair = sealing.Sealer(sender)._pair({}, recipient.public_key, True)
    shared = crypto_scalarmult(
        sender.noise_static_private(), crypto_sign_ed25519_pk_to_curve25519(recipient.public_key)
    )
    box["shared"] = shared.hex()
    box["nonce_key"] = pair.nonce_key.hex()
    payload = sealing.Sealer(sender).seal(recipient.peer_id, recipient.public_key, MESSAGE_ID, DATA)
    box["id"] = MESSAGE_ID.hex()
    box["data"] = DATA.hex()
    box["nonce"] = payload[33:45].hex()
    box["payload"] = payload.hex()

    bodies = blocks["mailbox-bodies"] = OrderedDict()
    # The client's ForwardRequest (its key for the recipient already fetched).
    client = MailboxClient(sender_peer)
    client._keys[recipient.peer_id] = recipient.public_key
    to_node = RecordingSession(sender_peer, "node")
    client.forward(to_node, recipient.peer_id, DATA, MESSAGE_ID)
    (request,) = to_node.bodies(MessageType.FORWARD_REQUEST)
    bodies["forward_request"] = cbor.dumps(request).hex()

    # The node's ForwardAck, ForwardDeliver and ForwardReceipt.
    trust = MemoryTrustStore()
    for who in (sender, recipient):  # the node pushes to paired peers only
        trust.set_paired(who.peer_id, who.public_key, "", "psk", 0.0)
    node = MailboxService(Peer(Identity.from_seed(bytes(32)), clock), trust, MemoryMailboxStore(), clock)
    from_sender = RecordingSession(node.peer, sender.peer_id)
    node._stored(
        [(ForwardStatus.STORED, 1)], from_sender, [Incoming(sender.peer_id, recipient.peer_id, MESSAGE_ID, payload)]
    )
    (ack,) = from_sender.bodies(MessageType.FORWARD_ACK)
    bodies["forward_ack"] = cbor.dumps(ack).hex()
    to_recipient = RecordingSession(node.peer, recipient.peer_id)
    stored = Stored(1, recipient.peer_id, sender.peer_id, MESSAGE_ID, STORED_AT, STORED_AT + 60, payload)
    node._deliver_batch(Outbox(to_recipient), [stored])
    (deliver,) = to_recipient.bodies(MessageType.FORWARD_DELIVER)
    bodies["forward_deliver"] = cbor.dumps(deliver).hex()
    node.store.receipts = lambda who, after, limit: _fired(
        [Receipt(1, who, recipient.peer_id, MESSAGE_ID, int(ReceiptStatus.DELIVERED), RECEIPT_AT)]
    )
    node._pump_receipts(Outbox(from_sender))
    (receipt,) = from_sender.bodies(MessageType.FORWARD_RECEIPT)
    bodies["forward_receipt"] = cbor.dumps(receipt).hex()

    # The recipient's client opens the delivery and acknowledges it.
    got = []
    inbox = MailboxClient(recipient_peer)
    inbox.on_message = lambda *message: got.append(message)
    from_node = RecordingSession(recipient_peer, "node")
    inbox._deliver(from_node, cbor.loads(cbor.dumps(deliver)))
    if got != [(sender.peer_id, MESSAGE_ID, DATA)]:
        raise AssertionError(f"the delivery did not open: {got}")
    (purge,) = from_node.bodies(MessageType.FORWARD_PURGE)
    bodies["forward_purge"] = cbor.dumps(purge).hex()

    # The sender's PeerKeyRequest, and the node's three answers: the key, null
    # (not paired), null with "retry" (its trust store could not check, §21.7).
    asking = RecordingSession(sender_peer, "node")
    MailboxClient(sender_peer).peer_key(asking, recipient.peer_id)
    (key_request,) = asking.bodies(MessageType.PEER_KEY_REQUEST)
    bodies["peer_key_request"] = cbor.dumps(key_request).hex()
    stranger = Identity.from_seed(bytes(range(64, 96))).peer_id
    for name, peer_id, unsure in [
        ("peer_key_response", recipient.peer_id, False),
        ("peer_key_response_not_paired", stranger, False),
        ("peer_key_response_retry", stranger, True),
    ]:
        node.trust.catch_up = lambda peer_ids, unsure=unsure: _fired(frozenset(peer_ids) if unsure else frozenset())
        answered = RecordingSession(node.peer, sender.peer_id)
        node._peer_key(answered, {"peer": peer_id})
        (response,) = answered.bodies(MessageType.PEER_KEY_RESPONSE)
        bodies[name] = cbor.dumps(response).hex()
    return blocks


def _fired(value):
    return defer.succeed(value)


def documented():
    """The mailbox vector blocks of the document."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    blocks = OrderedDict()
    pattern = re.compile(r"<!-- mailbox-vector-begin ([a-z-]+) -->(.*?)<!-- mailbox-vector-end \1 -->", re.S)
    for match in pattern.finditer(text):
        values, last = OrderedDict(), None
        for line in match.group(2).splitlines():
            if not line.strip() or line.startswith("```"):
                continue
            if not line[0].isspace():
                last, _, value = line.partition(":")
                values[last] = value.strip()
            else:
                values[last] += line.strip()
        blocks[match.group(1)] = values
    return blocks


def render_blocks(blocks):
    """The blocks as the document holds them."""
    text = render(blocks)
    return text.replace("<!-- vector-begin ", "<!-- mailbox-vector-begin ").replace(
        "<!-- vector-end ", "<!-- mailbox-vector-end "
    )


class MailboxVectorTests(unittest.TestCase):
    def setUp(self):
        self.produced = produce()
        self.documented = documented()

    def test_blocks_present(self):
        """§21.10 holds exactly the mailbox vector blocks."""
        self.assertEqual(sorted(self.documented), sorted(BLOCKS))

    def test_pair_box(self):
        """The pair-box vector matches the code."""
        self.assertEqual(self.documented["mailbox-pair-box"], self.produced["mailbox-pair-box"])

    def test_bodies(self):
        """The five bodies match what the client and the node send."""
        self.assertEqual(self.documented["mailbox-bodies"], self.produced["mailbox-bodies"])


class PrimitiveTests(unittest.TestCase):
    """The documented values re-derived from primitives, as §21.8 and §21.1 describe them."""

    def setUp(self):
        self.box = documented()["mailbox-pair-box"]
        self.bodies = {k: cbor.loads(bytes.fromhex(v)) for k, v in documented()["mailbox-bodies"].items()}

    def b(self, name):
        return bytes.fromhex(self.box[name])

    def test_pair_box_from_primitives(self):
        """Both ends derive the same keys; the payload is 0x02 || S || nonce || ChaCha20-Poly1305(data, ad=id)."""
        sender, recipient = Identity.from_seed(SENDER_SEED), Identity.from_seed(RECIPIENT_SEED)
        s, r = self.b("sender.ed25519"), self.b("recipient.ed25519")
        self.assertEqual((s, r), (sender.public_key, recipient.public_key))
        recipient_secret = crypto_sign_ed25519_sk_to_curve25519(bytes(recipient.signing_key) + r)
        shared = crypto_scalarmult(recipient_secret, crypto_sign_ed25519_pk_to_curve25519(s))
        self.assertEqual(shared, self.b("shared"))
        enc_key = hashlib.blake2b(b"cairn-forward-v2 key" + s + r, key=shared, digest_size=32).digest()
        nonce_key = hashlib.blake2b(b"cairn-forward-v2 nonce" + s + r, key=shared, digest_size=32).digest()
        self.assertEqual(nonce_key, self.b("nonce_key"))
        message_id, data = self.b("id"), self.b("data")
        nonce = hashlib.blake2b(message_id + data, key=nonce_key, digest_size=12).digest()
        self.assertEqual(nonce, self.b("nonce"))
        payload = b"\x02" + s + nonce + ChaCha20Poly1305(enc_key).encrypt(nonce, data, message_id)
        self.assertEqual(payload, self.b("payload"))
        self.assertEqual((message_id, data), (MESSAGE_ID, DATA))

    def test_bodies_parse(self):
        """Each documented body is what §21 says and parses with the reference parsers."""
        sender, recipient = Identity.from_seed(SENDER_SEED), Identity.from_seed(RECIPIENT_SEED)
        payload = self.b("payload")
        request = self.bodies["forward_request"]
        self.assertEqual(request, {"messages": [{"to": recipient.peer_id, "id": MESSAGE_ID, "payload": payload}]})
        self.assertEqual(messages.parse_forward_request(messages.request_entries(request)[0])[2], payload)
        self.assertEqual(messages.parse_acks(self.bodies["forward_ack"]), [(MESSAGE_ID, 0, "")])
        (delivery,) = messages.parse_deliveries(self.bodies["forward_deliver"])
        self.assertEqual(delivery, (MESSAGE_ID, sender.peer_id, 1, STORED_AT, payload))
        self.assertEqual(self.bodies["forward_purge"], {"upto": 1})
        (receipt,) = messages.parse_receipts(self.bodies["forward_receipt"])
        self.assertEqual(receipt, (MESSAGE_ID, recipient.peer_id, 1, ReceiptStatus.DELIVERED, RECEIPT_AT))


def main():
    sys.stdout.write(render_blocks(produce()))


if __name__ == "__main__":
    main()
