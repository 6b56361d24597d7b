"""
TURN credentials (docs/protocol.md §22): the derivation, RelayRequest /
RelayResponse between library clients and a node over real loopback
sessions (TCP and WebSocket), the configuration, and -- when coturn is
installed -- allocations on a real coturn with credentials the node
handed out.
"""

import base64
import hashlib
import hmac
import os
import re
import shutil
import socket
import time

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent
from twisted.trial import unittest

from cairn.config import Config, ConfigError
from cairn.pairing.trust import MemoryTrustStore
from cairn.service import make_node
from cairn.session.session import SessionClosed
from cairn.turn import messages
from cairn.turn.client import TurnUnavailable, request_relay
from cairn.turn.credentials import turn_credentials, turn_password, turn_username
from cairn.turn.service import NOT_CONFIGURED, TurnService, secret_from_config
from cairn.wire.constants import CloseCode, MessageType
from cairn.wire.schema import BodyError
from tests._harness import Conditions, ScenarioMixin, closed, eventually, observe_logs

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")

SECRET = "turn-test-SECRET-4b1d"
SERVERS = ("turn:relay.example:3478", "turns:relay.example:5349")
NOW = 1_700_000_000
MAX_TTL = 3600

# The vector of docs/protocol.md §22.4.
VECTOR_SECRET = "cairn-turn-example-secret"
VECTOR_PEER = "QmU9Ssr7tTosi3mMX2rivKcX3BhKvajyVjZ7S5J5JUgQLT"
VECTOR_EXPIRES = 1_700_003_600
VECTOR_USERNAME = "1700003600:QmU9Ssr7tTosi3mMX2rivKcX3BhKvajyVjZ7S5J5JUgQLT"
VECTOR_HMAC_HEX = "7f6a40bf532f42ab30c0338292e86d2dc98a1df3"
VECTOR_PASSWORD = "f2pAv1MvQqswwDOCkuhtLcmKHfM="

INSTALL_COTURN = "turnserver/turnutils_uclient not on PATH: apt-get install coturn"


def independent_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)) computed without cairn code."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


class CredentialTests(unittest.TestCase):
    """The TURN REST API derivation."""

    def test_format_and_hmac(self):
        """The username is '<expiry>:<peer id>' and the password base64 HMAC-SHA1 of it under the secret."""
        username, password = turn_credentials(SECRET, "QmPeer", 1234567890)
        self.assertEqual(username, "1234567890:QmPeer")
        self.assertEqual(password, independent_password(SECRET, "1234567890:QmPeer"))
        self.assertEqual(len(base64.b64decode(password, validate=True)), 20)

    def test_vector(self):
        """The fixed vector gives the documented username, HMAC and password."""
        username, password = turn_credentials(VECTOR_SECRET, VECTOR_PEER, VECTOR_EXPIRES)
        self.assertEqual(username, VECTOR_USERNAME)
        self.assertEqual(password, VECTOR_PASSWORD)
        self.assertEqual(base64.b64decode(password).hex(), VECTOR_HMAC_HEX)
        self.assertEqual(independent_password(VECTOR_SECRET, VECTOR_USERNAME), VECTOR_PASSWORD)

    def test_vector_in_document(self):
        """docs/protocol.md §22.4 carries exactly the vector the code produces."""
        with open(DOC, encoding="utf-8") as f:
            text = f.read()
        block = re.search(r"<!-- turn-vector-begin -->(.*?)<!-- turn-vector-end -->", text, re.S)
        self.assertIsNotNone(block, "no TURN vector block in docs/protocol.md")
        values = dict(re.findall(r"^([a-z0-9_]+): (\S+)$", block.group(1), re.M))
        self.assertEqual(
            values,
            {
                "secret": VECTOR_SECRET,
                "peer_id": VECTOR_PEER,
                "now": str(NOW),
                "ttl": str(MAX_TTL),
                "expires_at": str(VECTOR_EXPIRES),
                "username": VECTOR_USERNAME,
                "hmac_sha1": VECTOR_HMAC_HEX,
                "password": VECTOR_PASSWORD,
            },
        )

    def test_service_reproduces_vector(self):
        """A service at the vector's clock and ttl grants the documented credential."""
        clock = task.Clock()
        clock.advance(NOW)
        service = TurnService(_NullPeer(), MemoryTrustStore(), clock, servers=SERVERS, secret=VECTOR_SECRET)
        body = service.grant(VECTOR_PEER, MAX_TTL)
        self.assertEqual((body["username"], body["password"]), (VECTOR_USERNAME, VECTOR_PASSWORD))

    def test_bad_expiry(self):
        """A negative or non-integer expiry is refused."""
        self.assertRaises(ValueError, turn_username, -1, "QmPeer")
        self.assertRaises(ValueError, turn_username, 1.5, "QmPeer")
        self.assertRaises(ValueError, turn_username, True, "QmPeer")

    def test_utf8(self):
        """Secret and username are hashed as UTF-8."""
        self.assertEqual(turn_password("sécret", "1:p"), independent_password("sécret", "1:p"))


class _NullPeer:
    """Stands in for a Peer where only handler registration matters."""

    def __init__(self):
        self.handlers = {}

    def register_handler(self, type_code, handler):
        self.handlers[type_code] = handler


class MessageTests(unittest.TestCase):
    """RelayRequest / RelayResponse body checks."""

    def test_request(self):
        """RelayRequest is {} or {"ttl": 1..2**32-1}; anything else is a BodyError."""
        self.assertIsNone(messages.parse_relay_request({}))
        self.assertEqual(messages.parse_relay_request({"ttl": 60, "extra": 1}), 60)
        for bad in ([], {"ttl": 0}, {"ttl": -1}, {"ttl": "60"}, {"ttl": True}, {"ttl": 2**32}):
            self.assertRaises(BodyError, messages.parse_relay_request, bad)

    def test_response_forms(self):
        """Both RelayResponse forms parse; a bad one is a BodyError."""
        granted = messages.relay_granted(SERVERS, "1:p", "pw", 10, 1)
        self.assertEqual(messages.parse_relay_response(granted), dict(granted, servers=list(SERVERS)))
        refused = messages.relay_refused("none")
        self.assertEqual(messages.parse_relay_response(refused), {"servers": [], "error": "none"})
        for bad in ([], {"servers": "x"}, {"servers": [1]}, {"servers": list(SERVERS)}, dict(granted, ttl=-1)):
            self.assertRaises(BodyError, messages.parse_relay_response, bad)


class TurnHarness(ScenarioMixin):
    """A node peer with a memory trust store and a TurnService on C{self.clock}."""

    servers = SERVERS
    secret = SECRET

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.trust = MemoryTrustStore()
        self.turn = TurnService(
            self.server, self.trust, self.clock, servers=self.servers, secret=self.secret, max_ttl=MAX_TTL
        )

    def paired_client(self, paired=True):
        client = self.make_client()
        if paired:
            self.successResultOf(self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0))
        return client


class TurnScenarioMixin(TurnHarness):
    """The scenarios, run over TCP and WebSocket."""

    @defer.inlineCallbacks
    def test_paired_peer_gets_credentials(self):
        """A paired peer gets the configured servers and a credential for its peer id, valid max_ttl from now."""
        client = self.paired_client()
        session = yield self.connect(client)
        relay = yield eventually(request_relay(session))
        username = f"{NOW + MAX_TTL}:{client.peer_id}"
        self.assertEqual(
            relay,
            {
                "servers": list(SERVERS),
                "username": username,
                "password": independent_password(SECRET, username),
                "ttl": MAX_TTL,
                "expires_at": NOW + MAX_TTL,
            },
        )
        self.assertEqual(self.turn.granted, 1)

    @defer.inlineCallbacks
    def test_unpaired_peer_closed(self):
        """A RelayRequest from an unpaired peer closes its session with NOT_PAIRED and yields no credential."""
        session = yield self.connect(self.paired_client(paired=False))
        d = request_relay(session)
        ended = yield closed(session)
        self.assertEqual(ended.code, CloseCode.NOT_PAIRED)
        yield self.assertFailure(eventually(d), SessionClosed)
        self.assertEqual(self.turn.granted, 0)

    @defer.inlineCallbacks
    def test_ttl_capped(self):
        """A requested ttl below the maximum is granted as asked; above it, the maximum is granted."""
        session = yield self.connect(self.paired_client())
        short = yield eventually(request_relay(session, ttl=60))
        self.assertEqual((short["ttl"], short["expires_at"]), (60, NOW + 60))
        self.assertTrue(short["username"].startswith(f"{NOW + 60}:"))
        long = yield eventually(request_relay(session, ttl=10**6))
        self.assertEqual((long["ttl"], long["expires_at"]), (MAX_TTL, NOW + MAX_TTL))

    @defer.inlineCallbacks
    def test_expiry_uses_injected_clock(self):
        """The expiry is the injected clock's whole seconds plus the ttl, and moves with that clock."""
        session = yield self.connect(self.paired_client())
        self.clock.advance(1000.75)
        relay = yield eventually(request_relay(session, ttl=100))
        self.assertEqual(relay["expires_at"], NOW + 1000 + 100)
        self.assertEqual(relay["username"].split(":", 1)[0], str(NOW + 1100))

    @defer.inlineCallbacks
    def test_requests_answered_in_order(self):
        """Several RelayRequests on one session are answered one each, in order."""
        session = yield self.connect(self.paired_client())
        results = yield eventually(defer.gatherResults([request_relay(session, ttl=ttl) for ttl in (10, 20, 30)]))
        self.assertEqual([r["ttl"] for r in results], [10, 20, 30])

    @defer.inlineCallbacks
    def test_bad_request_closes(self):
        """A RelayRequest with a ttl of 0 closes the session with BAD_CBOR."""
        session = yield self.connect(self.paired_client())
        session.send(MessageType.RELAY_REQUEST, {"ttl": 0})
        ended = yield closed(session)
        self.assertEqual(ended.code, CloseCode.BAD_CBOR)

    @defer.inlineCallbacks
    def test_secret_never_logged(self):
        """Granting credentials logs nothing that contains the secret, and the service's repr hides it."""
        events = observe_logs(self)
        session = yield self.connect(self.paired_client())
        yield eventually(request_relay(session))
        self.assertNotIn(SECRET, repr(self.turn))
        for event in events:
            self.assertNotIn(SECRET, formatEvent(event) or "")
            self.assertNotIn(SECRET, repr(event))


class TCPTurnTests(TurnScenarioMixin, unittest.TestCase):
    pass


class WebSocketTurnTests(TurnScenarioMixin, unittest.TestCase):
    websocket = True


class NotConfiguredMixin(TurnHarness):
    @defer.inlineCallbacks
    def test_error_form(self):
        """Without servers or secret a paired peer gets the error form: no servers, a reason, no credential."""
        client = self.paired_client()
        got = defer.Deferred()
        client.peer.register_handler(MessageType.RELAY_RESPONSE, lambda s, body: got.callback(body))
        session = yield self.connect(client)
        session.send(MessageType.RELAY_REQUEST, {})
        self.assertEqual((yield eventually(got)), {"servers": [], "error": NOT_CONFIGURED})
        self.assertEqual(self.turn.refused, 1)

    @defer.inlineCallbacks
    def test_client_fails(self):
        """request_relay fails with TurnUnavailable carrying the node's reason."""
        session = yield self.connect(self.paired_client())
        failure = yield self.assertFailure(eventually(request_relay(session)), TurnUnavailable)
        self.assertEqual(failure.reason, NOT_CONFIGURED)


class NoServersTests(NotConfiguredMixin, unittest.TestCase):
    servers = ()


class NoSecretTests(NotConfiguredMixin, unittest.TestCase):
    secret = None


class NoSecretWebSocketTests(NotConfiguredMixin, unittest.TestCase):
    secret = None
    websocket = True


class ConfigTests(unittest.TestCase):
    """CAIRN_TURN_* settings reach the node."""

    def secret_file(self, content):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        return path

    def test_secret_file(self):
        """CAIRN_TURN_SECRET_FILE supplies the secret, stripped, hidden from the repr."""
        path = self.secret_file("  file-SECRET-9\n")
        config = Config.from_env({"CAIRN_TURN_SECRET_FILE": path})
        self.assertEqual(config.turn_secret, "file-SECRET-9")
        self.assertNotIn("file-SECRET-9", repr(config))

    def test_both_set(self):
        """Setting the secret and the secret file is an error naming both, never the secret."""
        path = self.secret_file("file-SECRET-9")
        error = self.assertRaises(
            ConfigError, Config.from_env, {"CAIRN_TURN_SECRET": "env-SECRET-1", "CAIRN_TURN_SECRET_FILE": path}
        )
        self.assertIn("CAIRN_TURN_SECRET ", str(error))
        self.assertIn("CAIRN_TURN_SECRET_FILE", str(error))
        self.assertNotIn("SECRET-", str(error))

    def test_unreadable(self):
        """A missing secret file is an error naming the variable and the path."""
        path = self.mktemp()
        error = self.assertRaises(ConfigError, Config.from_env, {"CAIRN_TURN_SECRET_FILE": path})
        self.assertEqual(error.variable, "CAIRN_TURN_SECRET_FILE")
        self.assertIn(repr(path), str(error))

    def test_direct_config_reads_file(self):
        """A Config built directly with turn_secret_file has the file read when the node is built."""
        path = self.secret_file("direct-SECRET\n")
        self.assertEqual(secret_from_config(Config(turn_secret_file=path)), "direct-SECRET")
        self.assertEqual(secret_from_config(Config(turn_secret="x")), "x")
        self.assertIsNone(secret_from_config(Config()))

    def test_make_node_wires_turn(self):
        """make_node builds a TurnService from CAIRN_TURN_SERVERS, the secret and CAIRN_TURN_TTL."""
        config = Config(
            data_dir=os.path.abspath(self.mktemp()),
            listen=None,
            ws_listen=None,
            mgmt_enabled=False,
            turn_servers=SERVERS,
            turn_secret=SECRET,
            turn_ttl=600.0,
        )
        node = make_node(config, reactor)
        self.assertTrue(node.turn.configured)
        self.assertEqual((node.turn.servers, node.turn.max_ttl), (SERVERS, 600))
        self.assertIsNotNone(node.peer.handler_for(MessageType.RELAY_REQUEST))


# A real coturn


def _free_port() -> int:
    """A loopback port free for both UDP and TCP right now."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            tcp.close()
            udp.close()
        return port
    raise RuntimeError("no free loopback port")


class _Collect(ProcessProtocol):
    def __init__(self):
        self.output = []
        self.ended = defer.Deferred()
        self.conditions = Conditions()

    def outReceived(self, data):
        self.output.append(data)
        self.conditions.changed()

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    def text(self):
        return b"".join(self.output).decode("utf-8", "replace")


class CoturnTests(ScenarioMixin, unittest.TestCase):
    """Credentials from a node over the protocol allocate on a real coturn; expired ones are refused."""

    timeout = 120
    secret = "coturn-test-SECRET-" + base64.b16encode(os.urandom(8)).decode()

    if not (shutil.which("turnserver") and shutil.which("turnutils_uclient")):
        skip = INSTALL_COTURN

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.turn_port = _free_port()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        args = [
            "turnserver",
            "-n",
            "-v",  # verbose: logs "UDP listener opened on: ..." once it listens
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={self.turn_port}",
            "--use-auth-secret",
            f"--static-auth-secret={self.secret}",
            "--realm=cairn.test",
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--log-file=stdout",
            "--simple-log",
            f"--pidfile={os.path.join(workdir, 'turnserver.pid')}",
            f"--userdb={os.path.join(workdir, 'turndb')}",
        ]
        self.turnserver = _Collect()
        self.process = reactor.spawnProcess(
            self.turnserver, shutil.which("turnserver"), args, env=dict(os.environ), path=workdir
        )
        self.addCleanup(self._stop_turnserver)
        yield self._wait_listening()
        self.trust = MemoryTrustStore()
        self.turn = TurnService(
            self.server,
            self.trust,
            reactor,
            servers=[f"turn:127.0.0.1:{self.turn_port}"],
            secret=self.secret,
            max_ttl=MAX_TTL,
        )

    def _wait_listening(self):
        """Fires once coturn logs its UDP listener (it logs it with -v)."""
        opened = f"UDP listener opened on: 127.0.0.1:{self.turn_port}"

        def failed(failure):
            self.fail(f"turnserver did not listen on {self.turn_port}:\n{self.turnserver.text()}")

        waiting = self.turnserver.conditions.until(lambda: opened in self.turnserver.text(), 15)
        return waiting.addErrback(failed)

    @defer.inlineCallbacks
    def _stop_turnserver(self):
        if self.turnserver.ended.called:
            return
        self.process.signalProcess("TERM")
        try:
            yield eventually(self.turnserver.ended, timeout=10)
        except defer.TimeoutError:
            self.process.signalProcess("KILL")
            yield eventually(self.turnserver.ended, timeout=10)

    def uclient(self, relay):
        args = ["-v", "-y", "-n", "10", "-u", relay["username"], "-w", relay["password"], "-p", str(self.turn_port)]
        args.append("127.0.0.1")
        executable = shutil.which("turnutils_uclient")
        if shutil.which("timeout"):  # a hung client must not outlive the test
            args = ["60", executable] + args
            executable = shutil.which("timeout")
        d = getProcessOutputAndValue(executable, args, env=dict(os.environ))
        return d.addCallback(lambda r: ((r[0] + r[1]).decode("utf-8", "replace"), r[2]))

    def paired_client(self):
        client = self.make_client()
        self.successResultOf(self.trust.set_paired(client.peer_id, client.peer.identity.public_key, "", "psk", 0.0))
        return client

    @defer.inlineCallbacks
    def test_allocate_then_expired_refused(self):
        """coturn's own client allocates with the node's credential; one already expired is refused."""
        session = yield self.connect(self.paired_client())
        relay = yield eventually(request_relay(session))
        self.assertEqual(relay["servers"], [f"turn:127.0.0.1:{self.turn_port}"])
        self.assertGreater(relay["expires_at"], time.time())
        output, code = yield self.uclient(relay)
        self.assertEqual(code, 0, f"uclient failed:\n{output}\nturnserver:\n{self.turnserver.text()}")
        self.assertIn("allocate response received", output)
        self.assertRegex(output, r"(?m)^\d+: : success")
        self.assertNotIn("Cannot complete Allocation", output)

        # The node's clock two hours back: the credential it hands out is already expired.
        past = task.Clock()
        past.advance(time.time() - 7200)
        self.turn.clock = past
        stale = yield eventually(request_relay(session, ttl=60))
        self.assertLess(stale["expires_at"], time.time())
        output, code = yield self.uclient(stale)
        self.assertNotEqual(code, 0, f"expired credential accepted:\n{output}")
        self.assertTrue(
            "401" in output or "Cannot complete Allocation" in output,
            f"no refusal in uclient output:\n{output}",
        )
        self.assertNotRegex(output, r"(?m)^\d+: : success")
