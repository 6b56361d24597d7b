"""
The node's delivery reads and sends of one session (cairn/mailbox/delivery.py),
driven directly: a store whose reads the test answers, a session that records
what goes out (issue 19, the drain).
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.mailbox import delivery
from cairn.mailbox.interfaces import Incoming, Limits
from cairn.mailbox.service import MailboxService
from cairn.mailbox.store import MemoryMailboxStore
from cairn.pairing.trust import MemoryTrustStore
from cairn.session.peer import Peer
from cairn.wire import cbor
from cairn.wire.constants import MessageType

SENDER = Identity.from_seed(b"\x01" * 32)
RECIPIENT = Identity.from_seed(b"\x02" * 32)


class Session:
    """The parts of a session the mailbox uses; each ForwardDeliver's seqs go to C{events}."""

    attached = True
    closed = None

    def __init__(self, local, events):
        self.local = local
        self.remote_peer_id = RECIPIENT.peer_id
        self.session_id = b"\x00" * 16
        self.events = events

    def send_if_open(self, type_code, body):
        if self.closed is not None:
            return False
        if type_code == MessageType.FORWARD_DELIVER:
            self.events.append(("sent", [m["seq"] for m in body["messages"]]))
        return True

    def send_payload_if_open(self, type_code, payload):
        return self.send_if_open(type_code, cbor.loads(payload))


class HeldReads(MemoryMailboxStore):
    """The memory store with its delivery reads answered by the test (L{answer}), each recorded in C{events}."""

    def __init__(self, events):
        super().__init__()
        self.events = events
        self.reads = []

    def fetch(self, recipient, after_seq, limit):
        self.events.append(("read", after_seq))
        d = defer.Deferred()
        self.reads.append((d, recipient, after_seq, limit))
        return d

    def answer(self):
        d, recipient, after_seq, limit = self.reads.pop(0)
        MemoryMailboxStore.fetch(self, recipient, after_seq, limit).chainDeferred(d)


class DeliveryReadTests(unittest.TestCase):
    def setUp(self):
        self.patch(delivery, "READ_ROWS", 3)
        self.events = []
        self.clock = task.Clock()
        self.clock.advance(1_765_000_000)

    def service(self, store, count, window=1024):
        """A mailbox on C{store} holding C{count} messages for RECIPIENT, and a session of RECIPIENT's."""
        node = Peer(Identity.from_seed(bytes(32)), self.clock)
        trust = MemoryTrustStore()
        for who in (SENDER, RECIPIENT):
            trust.set_paired(who.peer_id, who.public_key, "", "psk", 0.0)
        service = MailboxService(node, trust, store, self.clock, window=window)
        items = [Incoming(SENDER.peer_id, RECIPIENT.peer_id, b"%016d" % i, b"x") for i in range(count)]
        MemoryMailboxStore.enqueue(store, items, self.clock.seconds(), Limits())
        return service, Session(node, self.events)

    def test_next_page_read_before_this_one_is_sent(self):
        """A full page read starts the next page's read before its own rows go out, not after."""
        store = HeldReads(self.events)
        service, session = self.service(store, 7)
        service.session_established(session)
        store.answer()
        self.assertEqual(self.events, [("read", 0), ("read", 3), ("sent", [1, 2, 3])])

    def test_pages_sent_in_order_when_answered_at_once(self):
        """With a store that answers reads at once, a window's pages still go out in seq order, each once."""
        service, session = self.service(MemoryMailboxStore(), 8)
        service.session_established(session)
        sent = [seqs for kind, seqs in self.events if kind == "sent"]
        self.assertEqual(sent, [[1, 2, 3], [4, 5, 6], [7, 8]])

    def test_read_ahead_stays_within_the_window(self):
        """The read started beside a page's sending asks only for the room that page left in the window."""
        store = HeldReads(self.events)
        service, session = self.service(store, 7, window=5)
        service.session_established(session)
        store.answer()
        self.assertEqual([r[3] for r in store.reads], [2])
        store.answer()
        self.assertEqual([seqs for kind, seqs in self.events if kind == "sent"], [[1, 2, 3], [4, 5]])
        self.assertEqual(store.reads, [])

    def test_closed_session_reads_no_further(self):
        """A page that comes back for a session that has ended starts no further read."""
        store = HeldReads(self.events)
        service, session = self.service(store, 7)
        service.session_established(session)
        session.closed = Exception("ended")
        store.answer()
        self.assertEqual(self.events, [("read", 0)])
        self.assertEqual(store.reads, [])
