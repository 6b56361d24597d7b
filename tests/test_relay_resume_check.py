"""
A relay target MUST check the peer of a session resumed over a circuit
(docs/protocol.md §25.5): a Reconnect arriving on a circuit offered for
one peer may resume only that peer's session; any other is refused with a
clear Close 9 before the target answers, attaches or resends anything, and
the session stays detached for its own peer.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.relay.attached import AttachProtocol
from cairn.relay.transport import CircuitTransport
from cairn.session.peer import Peer
from cairn.transport.settings import TransportSettings
from cairn.wire import cbor
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.envelope import decode

TARGET = Identity.from_seed(b"\x31" * 32)
X = Identity.from_seed(b"\x32" * 32)
Y = Identity.from_seed(b"\x33" * 32)


class _Wire:
    """A frame transport that keeps what is written; C{expected_peer_id} as a circuit has it."""

    peer_address = "test"

    def __init__(self, expected_peer_id=None):
        self.expected_peer_id = expected_peer_id
        self.sent = []
        self.lost = False

    def write_envelope(self, data):
        self.sent.append(bytes(data))

    def lose(self, abort=False):
        self.lost = True


def deliver(connection, data):
    connection.envelope_received(decode(data, 2**20))


class ResumeCheckTests(unittest.TestCase):
    def setUp(self):
        """X and the target run a session over a circuit, which is then lost."""
        self.target = Peer(TARGET, Clock())
        self.x = Peer(X, Clock())
        i_conn = self.x.connection(initiator=True)
        r_conn = self.target.connection(initiator=False)
        i_wire, r_wire = _Wire(), _Wire(X.peer_id)
        r_conn.connection_made(r_wire)
        i_conn.connection_made(i_wire)
        deliver(r_conn, i_wire.sent.pop(0))
        deliver(i_conn, r_wire.sent.pop(0))
        deliver(r_conn, i_wire.sent.pop(0))
        self.x_session = i_conn.session
        self.session = self.target.sessions[self.x_session.session_id]
        self.assertEqual(self.session.remote_peer_id, X.peer_id)
        i_conn.connection_lost(None)
        r_conn.connection_lost(None)
        self.assertFalse(self.session.attached)

    def resume_over(self, expected_peer_id):
        """X's Reconnect arriving at the target on a circuit offered for C{expected_peer_id}."""
        dialer = self.x.connection(initiator=True, resume=self.x_session)
        d_wire = _Wire()
        dialer.connection_made(d_wire)
        listener = self.target.connection(initiator=False)
        wire = _Wire(expected_peer_id)
        listener.connection_made(wire)
        deliver(listener, d_wire.sent.pop(0))
        return wire

    def test_other_peer_refused(self):
        """A Reconnect of X's session on a circuit offered as from Y gets a clear Close 9 and nothing else."""
        wire = self.resume_over(Y.peer_id)
        self.assertEqual(len(wire.sent), 1)
        close = decode(wire.sent[0], 2**20)
        self.assertEqual(close.type, MessageType.CLOSE)
        self.assertEqual(cbor.loads(close.payload)["code"], CloseCode.UNKNOWN_SESSION)
        self.assertTrue(wire.lost)
        self.assertFalse(self.session.attached)
        self.assertIsNone(self.session.closed)
        # X's own circuit still resumes it afterwards.
        self.resume_over(X.peer_id)
        self.assertTrue(self.session.attached)

    def test_own_peer_resumes(self):
        """A Reconnect of X's session on a circuit offered as from X resumes it."""
        wire = self.resume_over(X.peer_id)
        self.assertEqual(decode(wire.sent[0], 2**20).type, MessageType.RECONNECT)
        self.assertTrue(self.session.attached)

    def test_plain_transport_unrestricted(self):
        """On a transport opened for no particular peer (TCP, WebSocket) any session may be resumed."""
        self.resume_over(None)
        self.assertTrue(self.session.attached)

    def test_circuit_transports_name_their_peer(self):
        """Both circuit transports give the circuit's other end as the expected peer."""

        class NodeSession:
            local = self.target

        transport = CircuitTransport(
            None, NodeSession(), b"\x01" * 16, Y.peer_id, TransportSettings.for_peer(self.target)
        )
        self.assertEqual(transport.expected_peer_id, Y.peer_id)

        class Circuit:
            connection = None
            remote_peer_id = Y.peer_id
            circuit_id = b"\x02" * 16

        protocol = AttachProtocol(Circuit(), b"\x03" * 32, TransportSettings(max_payload=1024))
        self.assertEqual(protocol.expected_peer_id, Y.peer_id)
