"""
The mailbox client's ForwardRequests in flight per session (the window,
L{cairn.mailbox.client.WINDOW}), against a recording session: what goes
when, acks in and out of order, a session ending with several in flight.
The node's side of several requests in flight is in tests/test_mailbox.py.
"""

from twisted.internet import task
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.mailbox import client as mailbox
from cairn.mailbox.messages import DELIVER_OVERHEAD
from cairn.session.errors import SessionClosed
from cairn.wire.constants import ForwardStatus, MessageType


class FakePeer:
    """What L{mailbox.MailboxClient} uses of a client L{Peer}: its handlers are kept, not wrapped."""

    def __init__(self):
        self.identity = Identity.generate()
        self.clock = task.Clock()
        self.handlers = {}
        self.observers = []

    def register_guarded(self, handlers, name, failed=None):
        self.handlers.update(handlers)

    def add_observer(self, observer):
        self.observers.append(observer)


class RecordingSession:
    """A session that records what is sent on it; C{end()} ends it as the session layer would."""

    def __init__(self, peer, session_id=b"s" * 8):
        self.local = peer
        self.session_id = session_id
        self.closed = None
        self.sent = []  # (type, body)

    def send_if_open(self, type_code, body):
        if self.closed is not None:
            return False
        self.sent.append((type_code, body))
        return True

    def requests(self):
        """The ForwardRequests sent so far, each as its list of message ids."""
        return [[e["id"] for e in body["messages"]] for t, body in self.sent if t == MessageType.FORWARD_REQUEST]

    def end(self):
        self.closed = SessionClosed(0, "ended")
        for observer in self.local.observers:
            observer.session_closed(self)


class WindowTests(unittest.TestCase):
    def setUp(self):
        self.peer = FakePeer()
        self.client = mailbox.MailboxClient(self.peer)
        self.client.window = 3
        self.recipient = Identity.generate()
        self.client._keys[self.recipient.peer_id] = self.recipient.public_key  # no PeerKeyRequest
        self.session = RecordingSession(self.peer)
        self.results = {}  # message id -> ForwardResult or Failure

    def forward(self, size=10):
        """Forward C{size} bytes; a list that gets the outcome (a L{ForwardResult} or a Failure)."""
        box = []
        self.client.forward(self.session, self.recipient.peer_id, b"x" * size).addBoth(box.append)
        return box

    def forwards(self, count, size=10):
        return [self.forward(size) for _ in range(count)]

    def ack(self, ids, status=ForwardStatus.STORED):
        """The node's ForwardAck for C{ids}, handed to the client."""
        body = {"acks": [{"id": i, "status": int(status)} for i in ids]}
        self.peer.handlers[MessageType.FORWARD_ACK](self.session, body)

    def full(self):
        """How many messages of 10 bytes' data fill one ForwardRequest (L{mailbox.BATCH_BYTES})."""
        self.forwards(1)
        (request,) = self.session.requests()
        one = len(self.session.sent[0][1]["messages"][0]["payload"]) + DELIVER_OVERHEAD
        self.ack(request)
        self.session.sent.clear()
        return mailbox.BATCH_BYTES // one

    def test_first_goes_at_once_the_rest_together_on_the_ack(self):
        """A request made while nothing awaits goes at once; the next ones queue and go as one on its ack."""
        boxes = self.forwards(5)
        requests = self.session.requests()
        self.assertEqual([len(r) for r in requests], [1])
        self.ack(requests[0])
        self.assertEqual(len(boxes[0]), 1)
        self.assertEqual([len(r) for r in self.session.requests()], [1, 4])

    def test_made_from_the_ack_callbacks_go_with_the_queue(self):
        """What the callbacks of an ack's entries ask for goes in the same ForwardRequest as what was queued."""
        first = self.client.forward(self.session, self.recipient.peer_id, b"a")
        first.addCallback(lambda _: self.forwards(2))
        self.forwards(3)
        self.ack(self.session.requests()[0])
        self.assertEqual([len(r) for r in self.session.requests()], [1, 5])

    def test_full_request_goes_while_others_await(self):
        """Once more than a full ForwardRequest's worth is queued, a full one goes without waiting for an ack."""
        per = self.full()
        self.forwards(1)  # awaits
        self.forwards(per)  # not more than a full one: they wait
        self.assertEqual([len(r) for r in self.session.requests()], [1])
        self.forwards(1)
        self.assertEqual([len(r) for r in self.session.requests()], [1, per])  # one stays queued
        self.forwards(per - 1)
        self.assertEqual(len(self.session.requests()), 2)
        self.forwards(1)
        self.assertEqual([len(r) for r in self.session.requests()], [1, per, per])

    def test_window_bounds_requests_awaiting(self):
        """Never more than the window's ForwardRequests await; each ack lets one more go, the last one partial."""
        per = self.full()
        self.forwards(1)
        self.forwards(per * 5 + 2)
        sent = self.session.requests()
        self.assertEqual([len(r) for r in sent], [1, per, per])  # the window is 3
        self.ack(sent[1])  # out of order: the second first
        sent = self.session.requests()
        self.assertEqual([len(r) for r in sent], [1, per, per, per])
        self.ack(sent[0])
        self.ack(sent[2])
        self.assertEqual([len(r) for r in self.session.requests()], [1, per, per, per, per, per])
        for request in self.session.requests()[3:]:
            self.ack(request)
        self.assertEqual([len(r) for r in self.session.requests()], [1, per, per, per, per, per, 2])

    def test_window_of_one(self):
        """With a window of 1, one ForwardRequest at a time, each as full as the queue allows."""
        self.client.window = 1
        per = self.full()
        self.forwards(1)
        self.forwards(per * 2)
        self.assertEqual([len(r) for r in self.session.requests()], [1])
        self.ack(self.session.requests()[0])
        self.assertEqual([len(r) for r in self.session.requests()], [1, per])
        self.ack(self.session.requests()[1])
        self.assertEqual([len(r) for r in self.session.requests()], [1, per, per])

    def test_acks_in_any_order_fire_their_own_deferreds(self):
        """Several requests in flight, acked out of order and with other statuses: each entry's Deferred fires."""
        per = self.full()
        first = self.forward()
        rest = self.forwards(per * 2 + 1)  # two full requests go; the window (3) is then full
        sent = self.session.requests()
        self.assertEqual([len(r) for r in sent], [1, per, per])
        self.ack(sent[2][:1], ForwardStatus.MAILBOX_FULL)  # part of the third request's ack, first
        self.ack(sent[2][1:] + sent[1], ForwardStatus.DUPLICATE)  # the rest, with the second's
        self.ack(sent[0])
        self.assertEqual(first[0].message_id, sent[0][0])
        self.assertFalse(first[0].duplicate)
        self.assertEqual(rest[per][0].value.code, ForwardStatus.MAILBOX_FULL)
        self.assertTrue(all(box[0].duplicate for box in rest[:per] + rest[per + 1 : 2 * per]))
        # Three acks, three requests done: the one left queued went when the window opened.
        self.assertEqual([len(r) for r in self.session.requests()], [1, per, per, 1])
        self.assertEqual(rest[-1], [])

    def test_session_end_fails_sent_and_queued(self):
        """A session ending with several requests in flight and more queued fails every one's Deferred."""
        per = self.full()
        boxes = self.forwards(per * 4)
        self.assertEqual([len(r) for r in self.session.requests()], [1, per, per])
        first = self.session.requests()[0]
        self.ack(first)  # one succeeds first; a fourth request goes
        self.assertEqual(len(self.session.requests()), 4)
        self.session.end()
        outcomes = [box[0] for box in boxes]
        self.assertIsInstance(outcomes[0], mailbox.ForwardResult)
        for failure in outcomes[1:]:
            failure.trap(SessionClosed)
        self.assertEqual(len(self.client._acks), 0)
        self.assertEqual(self.client._outgoing, {})
        # A late ack after the end sends nothing.
        sent = len(self.session.sent)
        self.ack(self.session.requests()[1])
        self.assertEqual(len(self.session.sent), sent)

    def test_same_id_again_before_its_ack(self):
        """A message id forwarded again before its ack: each forward gets its own answer, or fails with the session."""
        mid = b"\x07" * 16
        boxes = []
        for _ in range(3):
            self.client.forward(self.session, self.recipient.peer_id, b"again", message_id=mid).addBoth(boxes.append)
        self.assertEqual(self.session.requests(), [[mid]])  # the others queue behind it
        self.ack([mid])
        self.assertEqual(self.session.requests(), [[mid], [mid, mid]])
        self.assertEqual(len(boxes), 1)
        self.ack([mid], ForwardStatus.DUPLICATE)  # the node answers the second copy alone
        self.assertEqual([b.duplicate for b in boxes], [False, True])
        self.session.end()  # the third never had its answer
        self.assertEqual(len(boxes), 3)
        boxes[2].trap(SessionClosed)
        self.assertEqual(len(self.client._acks), 0)

    def test_ack_while_sending(self):
        """An ack handled during the send of its request (a transport that answers at once): nothing twice, no stall."""
        send = self.session.send_if_open

        def answering(type_code, body):
            sent = send(type_code, body)
            self.ack([e["id"] for e in body["messages"]])
            return sent

        self.session.send_if_open = answering
        per = self.full()
        boxes = self.forwards(per * 5)
        ids = [i for request in self.session.requests() for i in request]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(len(ids), per * 5)
        self.assertTrue(all(isinstance(box[0], mailbox.ForwardResult) for box in boxes))
        self.assertEqual(self.client._outgoing[self.session.session_id].awaiting, 0)

    def test_window_at_least_one(self):
        """A window below one ForwardRequest would never send: refused when the client is made."""
        self.assertRaises(ValueError, mailbox.MailboxClient, FakePeer(), window=0)
        self.assertEqual(mailbox.MailboxClient(FakePeer()).window, mailbox.WINDOW)
