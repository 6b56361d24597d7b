"""
The byte-exact sync access vectors of docs/protocol.md §24.9 (SyncAck
status 5 FORBIDDEN, SyncDenied, and SyncAck status 4 for a grant the node
cannot check), produced by the node's own code paths
and compared line by line with the document.

The block sits between C{<!-- sync-access-vector-begin -->} and
C{<!-- sync-access-vector-end -->}, in the layout of §17 (see
L{tests.test_vectors}). Print it for the document with
C{python -m tests.test_sync_vectors}.
"""

import sys
from collections import OrderedDict

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.pairing.trust import MemoryTrustStore
from cairn.session.peer import Peer
from cairn.sync import access, messages
from cairn.sync.service import SyncService
from cairn.sync.store import MemorySyncStore
from cairn.wire import cbor
from cairn.wire.constants import MessageType, SyncStatus
from tests.test_mailbox_vectors import RecordingSession
from tests.test_vectors import DOC, INITIATOR_SEED, render

UPDATE_ID = bytes(range(0x10, 0x20))
TOPIC = "notes"
BEGIN, END = "<!-- sync-access-vector-begin -->", "<!-- sync-access-vector-end -->"


def produce():
    """The block's values, from the node's sync service with a device that may neither read nor write."""
    clock = Clock()
    device = Identity.from_seed(INITIATOR_SEED)
    trust = MemoryTrustStore()
    trust.set_paired(device.peer_id, device.public_key, "", "psk", 0.0)
    node = SyncService(
        Peer(Identity.from_seed(bytes(32)), clock), trust, MemorySyncStore(), clock, default_access=access.NONE
    )
    session = RecordingSession(node.peer, device.peer_id)
    node._publish(session, {"topic": TOPIC, "id": UPDATE_ID, "payload": b"hello sync"})
    node._subscribe(session, {"topics": [TOPIC]})
    # A node that cannot read the device's grant (another node may have widened it): retry, not FORBIDDEN.
    node.store.catch_up_access = lambda device: defer.succeed(False)
    node._publish(session, {"topic": TOPIC, "id": UPDATE_ID, "payload": b"hello sync"})
    ack, unchecked = session.bodies(MessageType.SYNC_ACK)
    (denied,) = session.bodies(MessageType.SYNC_DENIED)
    return OrderedDict(
        [
            ("sync_ack_forbidden", cbor.dumps(ack).hex()),
            ("sync_denied", cbor.dumps(denied).hex()),
            ("sync_ack_unchecked", cbor.dumps(unchecked).hex()),
        ]
    )


def documented():
    """The block's values as the document holds them."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    values, last = OrderedDict(), None
    for line in block.splitlines():
        if not line.strip() or line.startswith("```"):
            continue
        if not line[0].isspace():
            last, _, value = line.partition(":")
            values[last] = value.strip()
        else:
            values[last] += line.strip()
    return values


class SyncAccessVectorTests(unittest.TestCase):
    def test_block_present_once(self):
        """§24.9 holds the sync access vector block exactly once."""
        with open(DOC, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual((text.count(BEGIN), text.count(END)), (1, 1))

    def test_bodies(self):
        """The SyncAck FORBIDDEN, SyncDenied and SyncAck STORAGE_ERROR (unchecked) bodies are what the node sends."""
        self.assertEqual(documented(), produce())

    def test_bodies_parse(self):
        """Each documented body is what §24.4 and §24.9 say and parses with the client's parsers."""
        bodies = {name: cbor.loads(bytes.fromhex(value)) for name, value in documented().items()}
        self.assertEqual(
            messages.parse_ack(bodies["sync_ack_forbidden"]),
            (UPDATE_ID, SyncStatus.FORBIDDEN, None, "this device may not write the topic"),
        )
        self.assertEqual(int(SyncStatus.FORBIDDEN), 5)
        self.assertEqual(messages.parse_denied(bodies["sync_denied"]), (TOPIC, "this device may not read the topic"))
        self.assertEqual(int(MessageType.SYNC_DENIED), 0x0806)
        self.assertEqual(
            messages.parse_ack(bodies["sync_ack_unchecked"]),
            (UPDATE_ID, SyncStatus.STORAGE_ERROR, None, "the node cannot check this device's access now"),
        )


def main():
    text = render({"sync-access": produce()})
    sys.stdout.write(
        text.replace("<!-- vector-begin sync-access -->", BEGIN).replace("<!-- vector-end sync-access -->", END)
    )


if __name__ == "__main__":
    main()
