"""
A real C{twistd -n cairn} node whose data directory really fills up: a
tmpfs of a few MiB mounted for the test, no disk reserve
(C{CAIRN_DISK_RESERVE=0}), and another program filling the file system
while the node holds messages. The node must keep running and answer
every forward (refused with STORAGE_ERROR); after a kill -9 it must start
again on the same full file system and deliver exactly what it
acknowledged; once space is freed, forwards are stored again. Needs root and permission to mount (skipped otherwise,
like L{tests.test_diskspace.RealDiskTests}).
"""

import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.client import Client
from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected, uuid7
from cairn.wire.constants import ForwardStatus
from tests._harness import Conditions, drop_all, eventually, track_connections
from tests._nats import free_port
from tests.test_diskspace import fill_file_system, small_tmpfs
from tests.test_twistd import kill_at_end, paired_by_psk, start_twistd

PSK = "a long pre-shared key for the full disk tests"
MiB = 2**20
#: Incompressible payloads of this size; the tmpfs holds a few dozen of them.
PAYLOAD = 48 * 1024
#: Messages stored before the disk is filled.
STORED = 40


class RealFullDiskTests(unittest.TestCase):
    timeout = 240
    capacity = 16 * MiB

    def setUp(self):
        mount_point = small_tmpfs(self, self.capacity)
        self.data_dir = os.path.join(mount_point, "data")
        self.port = free_port()
        self.address = f"tcp:host=127.0.0.1:port={self.port}"
        self.connections = []
        self.conditions = Conditions()
        self.runs = []

    def tearDown(self):
        return drop_all(self.connections)

    @defer.inlineCallbacks
    def start(self):
        proc = start_twistd(
            self.data_dir,
            expected=("tcp",),
            CAIRN_PSK=PSK,
            CAIRN_DISK_RESERVE="0",
            CAIRN_LISTEN=f"tcp:{self.port}:interface=127.0.0.1",
            CAIRN_WS_LISTEN="none",
        )
        self.runs.append(proc)
        self.addCleanup(kill_at_end, proc)
        yield eventually(proc.listening, 60)
        return proc

    def client(self):
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, self.connections)
        return client

    @defer.inlineCallbacks
    def stored_then_filled(self):
        """
        A node holding STORED messages for an offline recipient, then the
        disk filled from outside and three forwards refused with
        STORAGE_ERROR, the node still running. Fires with
        C{(proc, sender, bob, sender's session, {id: payload} stored, filler's path)}.
        """
        proc = yield self.start()
        sender, bob = self.client(), self.client()
        s = yield paired_by_psk(sender, self.address, PSK)
        b = yield paired_by_psk(bob, self.address, PSK)
        yield eventually(bob.close(b))

        acked = {}
        for _ in range(STORED):
            mid, payload = uuid7(), os.urandom(PAYLOAD)
            yield eventually(mailbox.forward(s, bob.peer_id, payload, mid), 30)
            acked[mid] = payload
        filler = fill_file_system(self, os.path.dirname(self.data_dir))
        for _ in range(3):
            with self.assertRaises(ForwardRejected) as caught:
                yield eventually(mailbox.forward(s, bob.peer_id, os.urandom(PAYLOAD)), 30)
            self.assertEqual(caught.exception.code, ForwardStatus.STORAGE_ERROR)
        self.assertFalse(proc.ended.called, "".join(proc.output))
        return proc, sender, bob, s, acked, filler

    @defer.inlineCallbacks
    def delivered_exactly(self, bob, acked):
        """C{bob} connects and gets exactly the messages C{acked}, each once."""
        delivered = []

        def got(sender_id, message_id, data):
            delivered.append((message_id, data))
            self.conditions.changed()

        mailbox.set_inbox(bob.peer, got)
        yield paired_by_psk(bob, self.address, PSK)
        yield self.conditions.until(lambda: len(delivered) >= len(acked), 60)
        self.assertEqual(dict(delivered), acked)
        self.assertEqual(len(delivered), len(acked))

    @defer.inlineCallbacks
    def test_sigterm_on_a_full_disk(self):
        """
        SIGTERM on a full disk: the node stops (its sessions cannot be saved:
        one line says so, no traceback, no partial snapshot left), starts
        again, and delivers exactly what it acknowledged.
        """
        proc, sender, bob, s, acked, filler = yield self.stored_then_filled()
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 60)
        log = "".join(proc.output)
        self.assertIn("could not save 1 session(s) for resume (No space left on device)", log)
        self.assertNotIn("Traceback", log)
        self.assertEqual(sorted(n for n in os.listdir(self.data_dir) if n.startswith("sessions")), [])
        proc = yield self.start()
        yield self.delivered_exactly(bob, acked)
        self.assertNotIn("Traceback", "".join(proc.output))

    @defer.inlineCallbacks
    def test_disk_filled_from_outside_then_kill_and_restart(self):
        """
        Another program fills the disk: new forwards are refused with
        STORAGE_ERROR and the node runs on; after kill -9 it starts again on
        the full disk and delivers exactly what it acknowledged; once space
        is freed, forwards are stored again.
        """
        proc, sender, bob, s, acked, filler = yield self.stored_then_filled()
        proc.transport.signalProcess("KILL")
        yield eventually(proc.ended, 30)

        yield self.start()  # on the full disk
        yield self.delivered_exactly(bob, acked)

        os.unlink(filler)
        s = yield paired_by_psk(sender, self.address, PSK)
        for _ in range(5):
            yield eventually(mailbox.forward(s, bob.peer_id, os.urandom(PAYLOAD)), 30)
        log = "".join("".join(run.output) for run in self.runs)
        self.assertNotIn("Traceback", log)
