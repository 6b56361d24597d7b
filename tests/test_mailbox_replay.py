"""
A node that hands a recipient the same sealed message again, or an old
one, gets it to the application at most once (docs/protocol.md §21.11).
"""

import os

from twisted.internet import task
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.mailbox import client as mailbox
from cairn.mailbox import replay, sealing
from cairn.session.peer import Peer
from cairn.wire.constants import MessageType

DAY = 86400.0
NOW = 1_900_000_000.0


class FakeSession:
    """What MailboxClient._deliver needs of a session: the purges it sends are recorded."""

    def __init__(self):
        self.sent = []
        self.session_id = b"s" * 16

    def send_if_open(self, type_code, body):
        self.sent.append((type_code, body))
        return True


class Recipient:
    """A client Peer with a mailbox dispatcher, at Unix time L{NOW} on a task.Clock."""

    def __init__(self, identity, seen=None):
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.peer = Peer(identity, self.clock)
        self.inbox = []
        mailbox.set_inbox(self.peer, lambda sender, message_id, data: self.inbox.append((sender, message_id, data)))
        if seen is not None:
            mailbox.set_replay_guard(self.peer, replay.ReplayGuard(self.clock.seconds, seen))

    def deliver(self, *messages):
        """Hand the recipient one ForwardDeliver holding C{messages} ((sender id, message id, payload))."""
        session = FakeSession()
        body = {
            "messages": [
                {"id": message_id, "from": sender, "seq": seq, "stored_at": NOW, "payload": payload}
                for seq, (sender, message_id, payload) in enumerate(messages, 1)
            ]
        }
        mailbox.mailbox(self.peer)._deliver(session, body)
        return session.sent


class ReplayTests(unittest.TestCase):
    def setUp(self):
        self.sender = Identity.generate()
        self.identity = Identity.generate()
        self.sealer = sealing.Sealer(self.sender)

    def message(self, data=b"hello", at=NOW):
        message_id = mailbox.uuid7(at)
        payload = self.sealer.seal(self.identity.peer_id, self.identity.public_key, message_id, data)
        return (self.sender.peer_id, message_id, payload)

    def test_uuid7_time(self):
        """The time of a UUIDv7 id is read back to the millisecond; other ids have none."""
        self.assertEqual(replay.uuid7_time(mailbox.uuid7(NOW)), NOW)
        self.assertIsNone(replay.uuid7_time(os.urandom(6) + b"\x40" + os.urandom(9)))
        self.assertIsNone(replay.uuid7_time(b"short"))

    def test_uuid7_times(self):
        """A batch's ids are timed as each alone: UUIDv7s to the millisecond, anything else none."""
        ids = [
            mailbox.uuid7(NOW),
            mailbox.uuid7(NOW - 86400),
            os.urandom(6) + b"\x40" + os.urandom(9),  # version 4
            mailbox.uuid7(NOW)[:8] + b"\x00" + os.urandom(7),  # variant 0
            mailbox.uuid7(NOW) + b"x",
            b"short",
            b"",
        ]
        self.assertEqual(replay.uuid7_times(ids), [replay.uuid7_time(message_id) for message_id in ids])
        self.assertEqual(replay.uuid7_times(ids)[:3], [NOW, NOW - 86400, None])

    def test_admit_reasons(self):
        """Each pair of a batch (list or iterator) is admitted once or dropped with its reason, in both memories."""
        not_uuid7, old = (
            "the message id is not a UUIDv7",
            "the message id is older than any genuine delivery (a replay)",
        )
        for seen in (None, replay.SeenFile(self.mktemp())):
            guard = replay.ReplayGuard(lambda: NOW, seen)
            fresh, stale = mailbox.uuid7(NOW), mailbox.uuid7(NOW - guard.window - 1)
            batch = [
                ("a", fresh),
                ("a", os.urandom(6) + b"\x40" + os.urandom(9)),
                ("a", stale),
                ("b", fresh),
                ("a", fresh),
            ]
            self.assertEqual(guard.admit(iter(batch)), ([0, 3], [(1, not_uuid7), (2, old), (4, "duplicate")]))
            later = batch + [("a", mailbox.uuid7(NOW + 1))]
            dropped = [(0, "duplicate"), (1, not_uuid7), (2, old), (3, "duplicate"), (4, "duplicate")]
            self.assertEqual(guard.admit(later), ([5], dropped))
            guard.close()

    def test_redelivery_given_once(self):
        """The same message delivered twice, in one batch or in two, reaches the inbox once; both are purged."""
        recipient = Recipient(self.identity)
        message = self.message()
        purges = recipient.deliver(message, message) + recipient.deliver(message)
        self.assertEqual(recipient.inbox, [(message[0], message[1], b"hello")])
        self.assertEqual([type_code for type_code, _ in purges], [MessageType.FORWARD_PURGE] * 2)

    def test_old_id_dropped(self):
        """An id older than twice the maximum age plus the skew is a replay: dropped, and still purged."""
        recipient = Recipient(self.identity)
        guard = mailbox.mailbox(recipient.peer).guard
        old = self.message(at=NOW - guard.window - 1)
        fresh = self.message(b"fresh", at=NOW - guard.window + 60)
        purges = recipient.deliver(old, fresh)
        self.assertEqual([data for _, _, data in recipient.inbox], [b"fresh"])
        self.assertEqual(purges, [(MessageType.FORWARD_PURGE, {"upto": 2})])

    def test_not_uuid7_dropped(self):
        """An id that is not a UUIDv7 carries no time to check, so it is never handed over."""
        recipient = Recipient(self.identity)
        message_id = os.urandom(6) + b"\x40" + os.urandom(9)  # version nibble 4: never a UUIDv7
        payload = self.sealer.seal(self.identity.peer_id, self.identity.public_key, message_id, b"x")
        recipient.deliver((self.sender.peer_id, message_id, payload))
        self.assertEqual(recipient.inbox, [])

    def test_forged_payload_does_not_shadow(self):
        """A payload that does not open is not recorded: the genuine message with that id still arrives."""
        recipient = Recipient(self.identity)
        sender, message_id, payload = self.message()
        recipient.deliver((sender, message_id, payload[:-1] + bytes([payload[-1] ^ 1])))
        recipient.deliver((sender, message_id, payload))
        self.assertEqual([data for _, _, data in recipient.inbox], [b"hello"])

    def test_replay_after_restart_refused(self):
        """A recipient that restarts with its SeenFile refuses a message it was given before the restart."""
        path = self.mktemp()
        message = self.message()
        first = Recipient(self.identity, replay.SeenFile(path))
        first.deliver(message)
        mailbox.mailbox(first.peer).guard.close()
        again = Recipient(self.identity, replay.SeenFile(path))
        again.deliver(message)
        self.assertEqual((len(first.inbox), len(again.inbox)), (1, 0))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_memory_guard_forgets_on_restart(self):
        """Without a file the guard is per process: what it documents, checked so the SeenFile test means something."""
        message = self.message()
        first, again = Recipient(self.identity), Recipient(self.identity)
        first.deliver(message)
        again.deliver(message)
        self.assertEqual((len(first.inbox), len(again.inbox)), (1, 1))


class SeenStoreTests(unittest.TestCase):
    def stores(self):
        return [replay.MemorySeen(), replay.SeenFile(self.mktemp())]

    def test_prune_expired_then_earliest(self):
        """Pruning forgets what expired, then the earliest-expiring beyond the limit."""
        for seen in self.stores():
            seen.add_all([("a", b"1", 10.0), ("a", b"2", 30.0), ("b", b"3", 20.0), ("b", b"4", 40.0)])
            seen.prune(15.0, 2)
            self.assertEqual(
                [key in seen for key in [("a", b"1"), ("b", b"3"), ("a", b"2"), ("b", b"4")]],
                [False, False, True, True],
                seen,
            )
            self.assertEqual(len(seen), 2)
            seen.close()
