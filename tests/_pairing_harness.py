"""
Pairing test harness: the L{ScenarioMixin} responder peer on loopback
plus a L{PairingService} with its own L{task.Clock} (so that expiry and
rate windows can be advanced without tripping session keepalives).
"""

import os

from twisted.internet import defer, reactor, task

from cairn.db import Database
from cairn.pairing.service import PairingService
from cairn.pairing.trust import TRUST_SCHEMA, MemoryTrustStore, SQLiteTrustStore
from cairn.wire.constants import MessageType
from tests._harness import ScenarioMixin, eventually

PSK = "a long random pre-shared key used by the tests only"


class PairingScenarioMixin(ScenarioMixin):
    """
    @ivar pairing: the node's L{PairingService}; C{self.clock} drives it.
    @ivar trust: its trust store (memory, or SQLite when C{sqlite} is set).
    """

    psk = PSK
    sqlite = False

    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self._start_pairing())
        return d

    @defer.inlineCallbacks
    def _start_pairing(self):
        self.clock = task.Clock()
        self.trust = yield self.make_trust()
        #: What the links carry (a test may change it; the service asks it at each link).
        self.link_addresses = [self.address]
        self.pairing = PairingService(
            self.server, self.trust, self.clock, psk=self.psk, link_addresses=lambda: self.link_addresses
        )
        yield self.pairing.start()

    @defer.inlineCallbacks
    def make_trust(self):
        """The trust store under test (a Deferred): memory, or SQLite when C{sqlite} is set."""
        if not self.sqlite:
            return MemoryTrustStore()
        directory = self.mktemp()
        os.makedirs(directory)
        db = Database(reactor, os.path.join(directory, "cairn.sqlite"), [TRUST_SCHEMA])
        yield db.start()
        self.addCleanup(db.stop)
        return SQLiteTrustStore(db)


class Replies:
    """
    Collects the node's pairing replies on a client peer (for tests that
    speak raw pairing messages instead of the client API).
    """

    TYPES = (MessageType.PAIR_CHALLENGE, MessageType.PAIR_CONFIRM, MessageType.PAIR_REJECT)

    def __init__(self, peer):
        self.received = []
        self._waiters = []
        for type_code in self.TYPES:
            peer.register_handler(type_code, self._handler(type_code))

    def _handler(self, type_code):
        def handle(session, body):
            self.received.append((session, type_code, body))
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback((type_code, body))

        return handle

    def next(self):
        """A Deferred firing with the next (type, body) received."""
        d = defer.Deferred()
        self._waiters.append(d)
        return eventually(d)
