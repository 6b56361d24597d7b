"""
A client's extensions (mailbox, sync, TURN, pairing, relay) as lazy
attributes of L{cairn.client.Client}, the module-level functions as thin
wrappers over them, and the one coded error type.
"""

import os
import subprocess
import sys

from twisted.internet import task
from twisted.trial import unittest

from cairn.client import Client
from cairn.mailbox.client import ForwardRejected, UnknownRecipient, mailbox
from cairn.pairing.client import PairingRejected, dispatcher
from cairn.relay.client import relay_endpoint
from cairn.session.errors import Rejected
from cairn.sync.client import PublishRejected, sync_client
from cairn.turn.client import turn_client
from cairn.wire.constants import ForwardStatus, PairRejectCode, SyncStatus

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AttributeTests(unittest.TestCase):
    def test_one_each(self):
        """Each extension is made once per client, and the module functions return that same object."""
        client = Client(task.Clock())
        peer = client.peer
        self.assertIs(client.mailbox, mailbox(peer))
        self.assertIs(client.mailbox, client.mailbox)
        self.assertIs(client.sync, sync_client(peer))
        self.assertIs(client.turn, turn_client(peer))
        self.assertIs(client.pairing, dispatcher(peer))
        self.assertIs(client.relay, relay_endpoint(client))

    def test_separate_clients(self):
        """Two clients never share an extension."""
        a, b = Client(task.Clock()), Client(task.Clock())
        self.assertIsNot(a.mailbox, b.mailbox)
        self.assertIsNot(a.sync, b.sync)

    def test_no_cycle(self):
        """Importing the peer-side API loads none of the relay, mailbox, sync or TURN packages."""
        code = (
            "import sys, cairn.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['cairn','relay'],['cairn','mailbox'],['cairn','sync'],['cairn','turn'])))"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")


class RejectedTests(unittest.TestCase):
    def test_one_coded_error(self):
        """Every family's refusal is a Rejected with its code as the family's enum (or the bare unknown int)."""
        for cls, codes, known in [
            (ForwardRejected, ForwardStatus, 4),
            (UnknownRecipient, ForwardStatus, 6),
            (PublishRejected, SyncStatus, 2),
            (PairingRejected, PairRejectCode, 1),
        ]:
            e = cls(known, "why")
            self.assertIsInstance(e, Rejected)
            self.assertEqual((e.code, e.reason), (codes(known), "why"))
            self.assertIn(codes(known).name, str(e))
            self.assertEqual(cls(60000).code, 60000)
