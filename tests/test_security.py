"""
Security checks of issue 7: secrets never logged (a whole scenario against
a real twistd process), pairing brute force limits, replayed pairing
proofs, and the data directory permission check at start-up.
"""

import base64
import os
import stat

import treq
from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel
from twisted.trial import unittest

from cairn.client import Client
from cairn.config import Config
from cairn.crypto.identity import KEY_FILE_NAME, load_or_create
from cairn.mailbox.client import forward
from cairn.management.token import TOKEN_FILE_NAME
from cairn.pairing import codes, proofs
from cairn.pairing.client import PairingRejected, pair_link, pair_pin, pair_psk
from cairn.permissions import PermissionProblem, check_data_dir
from cairn.service import StartupError, make_node
from cairn.turn.client import request_relay
from cairn.wire.constants import MessageType, PairRejectCode
from tests._harness import eventually
from tests.test_management_support import Captured
from tests.test_pairing_units import FakeSession, ServiceHarness
from tests.test_twistd import start_twistd

PSK = "security-test pre-shared key 0123456789"
TOKEN = "security-test-management-token-9f8e7d6c5b4a"
TURN_SECRET = "security-test-turn-secret-a1b2c3d4e5f6"


def _forms(secret: bytes):
    """The ways a byte secret could show up in text: hex, base64 (both alphabets), raw."""
    yield secret.hex()
    yield secret.hex().upper()
    yield base64.b64encode(secret).decode().rstrip("=")
    yield base64.urlsafe_b64encode(secret).decode().rstrip("=")
    yield repr(secret)[2:-1]


class SecretsNotLoggedTests(unittest.TestCase):
    """
    A real C{twistd -n cairn} with a PSK, a management token and a TURN
    secret; a scenario that uses and misuses each of them; then its whole
    log and its command line are searched for every secret.
    """

    timeout = 120

    def _kill(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("KILL")
            return proc.ended.addErrback(lambda f: None)

    def api(self, method, path, token=TOKEN, json=None):
        headers = {b"Authorization": [b"Bearer " + token.encode()]} if token is not None else {}
        d = treq.request(method, f"{self.mgmt}{path}", headers=headers, json=json, persistent=False)
        return eventually(d.addCallback(lambda r: treq.json_content(r).addCallback(lambda body: (r.code, body))))

    @defer.inlineCallbacks
    def test_scenario_logs_no_secret(self):
        """No token, PSK, PIN, link secret, TURN secret or key appears in the log or argv."""
        data_dir = os.path.abspath(self.mktemp())
        proc = start_twistd(
            data_dir,
            expected=("tcp", "websocket", "management"),
            CAIRN_PSK=PSK,
            CAIRN_MGMT_TOKEN=TOKEN,
            CAIRN_MGMT_LISTEN="tcp:0:interface=127.0.0.1",
            CAIRN_TURN_SERVERS="turn:127.0.0.1:3478",
            CAIRN_TURN_SECRET=TURN_SECRET,
            # Every level, so that debug lines are checked for secrets too.
            CAIRN_LOG_LEVEL="debug",
        )
        self.addCleanup(self._kill, proc)
        ports = yield eventually(proc.listening, 60)
        self.mgmt = f"http://127.0.0.1:{ports['management']}"
        tcp = f"tcp:host=127.0.0.1:port={ports['tcp']}"
        secrets = {"token": [TOKEN], "psk": [PSK], "turn secret": [TURN_SECRET]}

        # Management: the right token, a wrong one, none.
        code, _ = yield self.api("GET", "/peers")
        self.assertEqual(code, 200)
        code, _ = yield self.api("GET", "/peers", token=TOKEN[:-1] + "X")
        self.assertEqual(code, 401)
        code, _ = yield self.api("GET", "/peers", token=None)
        self.assertEqual(code, 401)

        # Pairing by PSK (one wrong attempt first), by PIN (one wrong), by link.
        phone = Client(reactor, clock=task.Clock())
        session = yield eventually(phone.connect(tcp))
        yield self.assertFailure(eventually(pair_psk(session, PSK + "?")), PairingRejected)
        session = yield eventually(phone.connect(tcp))  # one failed exchange per session
        yield eventually(pair_psk(session, PSK, name="phone"))
        secrets["session key"] = [session.result.key_i2r, session.result.key_r2i]

        code, created = yield self.api("POST", "/pairing/pin")
        self.assertEqual(code, 201)
        pin = created["pin"]
        secrets["pin"] = [pin, codes.normalize_pin(pin)]
        laptop = Client(reactor, clock=task.Clock())
        laptop_session = yield eventually(laptop.connect(tcp))
        wrong = "ZZZZ-ZZZZ" if codes.normalize_pin(pin) != "ZZZZZZZZ" else "0000-0000"
        yield self.assertFailure(eventually(pair_pin(laptop_session, wrong)), PairingRejected)
        code, created = yield self.api("POST", "/pairing/pin")
        pin = created["pin"]
        secrets["pin"] += [pin, codes.normalize_pin(pin)]
        laptop_session = yield eventually(laptop.connect(tcp))
        yield eventually(pair_pin(laptop_session, pin, name="laptop"))

        code, created = yield self.api("POST", "/pairing/link")
        self.assertEqual(code, 201)
        link = codes.parse_link(created["link"])
        secrets["link secret"] = [link.secret]
        tablet = Client(reactor, clock=task.Clock())
        _, result = yield eventually(pair_link(tablet, created["link"], name="tablet"))
        self.assertEqual(result.method, "link")

        # A forwarded message, TURN credentials, and the peers as the API shows them.
        yield eventually(forward(session, laptop.peer_id, b"the mailbox payload"))
        granted = yield eventually(request_relay(laptop_session))
        secrets["turn password"] = [granted["password"]]
        code, peers = yield self.api("GET", "/peers")
        self.assertEqual(len(peers), 3)

        with open(f"/proc/{proc.transport.pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        self.assertIn("cairn", argv)
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 60)

        with open(os.path.join(data_dir, KEY_FILE_NAME), "rb") as f:
            secrets["identity key"] = [f.read()]
        secrets["noise static key"] = [load_or_create(data_dir).noise_static_private()]

        log = "".join(proc.output)
        # The log did record the scenario, down to debug level.
        for event in ("paired by psk", "paired by pin", "paired by link", "BAD_PROOF", "TURN credential", "#debug"):
            self.assertIn(event, log)
        for what, values in secrets.items():
            for value in values:
                forms = list(_forms(value)) if isinstance(value, bytes) else [value]
                for form in forms:
                    if len(form) < 8:
                        continue
                    self.assertNotIn(form, log, f"the {what} appears in the node's log")
                    self.assertNotIn(form, argv, f"the {what} appears in a command line")


class BruteForceTests(ServiceHarness, unittest.TestCase):
    """Guessing PINs and replaying link proofs, on the pairing service with stand-in sessions."""

    def pin_guess(self, session, pin):
        """One PIN attempt (PairRequest, then PairResponse); the final reply."""
        return self.pake_pair(session, "pin", pin)

    def test_pin_guesses_limited_per_source(self):
        """
        Wrong PINs count against the source address across PINs: after 5,
        that address is RATE_LIMITED even with the right PIN, while another
        address pairs with it.
        """
        guesses = 0
        while guesses < 5:
            pin = codes.normalize_pin(self.service.create_pin()["pin"])
            for _ in range(min(2, 5 - guesses)):
                wrong = "ZZZZZZZZ" if pin != "ZZZZZZZZ" else "00000000"
                _, body = self.pin_guess(FakeSession(host="198.51.100.7"), wrong)
                self.assertEqual(body["code"], PairRejectCode.BAD_PROOF)
                guesses += 1
        pin = codes.normalize_pin(self.service.create_pin()["pin"])
        _, body = self.pin_guess(FakeSession(host="198.51.100.7"), pin)
        self.assertEqual(body["code"], PairRejectCode.RATE_LIMITED)
        other = FakeSession(host="198.51.100.8")
        self.assertEqual(self.pin_guess(other, pin)[0], MessageType.PAIR_CONFIRM)

    def test_pin_burned_for_every_source(self):
        """Three wrong guesses from three addresses burn the PIN for a fourth address too."""
        pin = codes.normalize_pin(self.service.create_pin()["pin"])
        wrong = "ZZZZZZZZ" if pin != "ZZZZZZZZ" else "00000000"
        for n in range(3):
            _, body = self.pin_guess(FakeSession(host=f"203.0.113.{n + 1}"), wrong)
            self.assertEqual(body["code"], PairRejectCode.BAD_PROOF)
        _, body = self.pin_guess(FakeSession(host="203.0.113.9"), pin)
        self.assertEqual(body["code"], PairRejectCode.EXPIRED)

    def test_link_proof_not_replayable(self):
        """A link proof made for one session is BAD_PROOF on another: it is bound to the handshake hash."""
        link = codes.parse_link(self.service.create_link()["link"])
        link_id = proofs.link_id(link.secret)
        first, second = FakeSession(), FakeSession()
        proof, _ = proofs.link_proofs(proofs.link_key(link.secret), first.result.handshake_hash)
        _, body = self.request(second, {"method": "link", "link_id": link_id, "proof": proof})
        self.assertEqual(body["code"], PairRejectCode.BAD_PROOF)
        self.assertFalse(self.trust.is_paired(second.remote_peer_id))
        self.assertEqual(self.request(first, {"method": "link", "link_id": link_id, "proof": proof})[0],
                         MessageType.PAIR_CONFIRM)

    def test_source_limit_expires(self):
        """The per-source limit lifts after its window (10 minutes) on the service's clock."""
        for _ in range(5):
            session = FakeSession(host="198.51.100.20")
            self.psk_pair(session, psk="wrong")
        session = FakeSession(host="198.51.100.20")
        self.assertEqual(self.psk_pair(session)[1]["code"], PairRejectCode.RATE_LIMITED)
        self.clock.advance(601)
        self.assertEqual(self.psk_pair(session)[0], MessageType.PAIR_CONFIRM)


class PermissionTests(unittest.TestCase):
    """The data directory check at start-up (cairn.permissions)."""

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        self.logs = Captured()

    def write(self, name, mode):
        path = os.path.join(self.data_dir, name)
        with open(path, "wb") as f:
            f.write(b"the-secret-content")
        os.chmod(path, mode)
        return path

    def test_private_directory_quiet(self):
        """A 0700 directory with 0600 files gives no warning."""
        self.write(TOKEN_FILE_NAME, 0o600)
        self.assertEqual(check_data_dir(self.data_dir, self.logs.log), [])

    def test_directory_through_symlink_quiet(self):
        """A data directory reached through a symlink (systemd DynamicUser StateDirectory) is judged by its target."""
        link = os.path.abspath(self.mktemp())
        os.symlink(self.data_dir, link)
        target = self.write(TOKEN_FILE_NAME + ".real", 0o600)
        os.symlink(target, os.path.join(self.data_dir, TOKEN_FILE_NAME))
        self.assertEqual(check_data_dir(link, self.logs.log), [])

    def test_world_writable_directory_refused(self):
        """A directory others can write stops start-up, naming the directory and the fix."""
        os.chmod(self.data_dir, 0o777)
        error = self.assertRaises(PermissionProblem, check_data_dir, self.data_dir, self.logs.log)
        self.assertIn(self.data_dir, str(error))
        self.assertIn("chmod 700", str(error))

    def test_readable_directory_warned(self):
        """A 0755 directory is used, with one warning."""
        os.chmod(self.data_dir, 0o755)
        warnings = check_data_dir(self.data_dir, self.logs.log)
        self.assertEqual(len(warnings), 1)
        self.assertIn(LogLevel.warn, self.logs.levels())

    def test_world_readable_identity_key_refused(self):
        """An identity key others can read stops start-up (as OpenSSH refuses such a key)."""
        path = self.write(KEY_FILE_NAME, 0o644)
        error = self.assertRaises(PermissionProblem, check_data_dir, self.data_dir, self.logs.log)
        self.assertIn(path, str(error))
        self.assertIn("0644", str(error))

    def test_group_readable_identity_key_warned(self):
        """An identity key its group can read is used, with a warning naming it."""
        path = self.write(KEY_FILE_NAME, 0o640)
        warnings = check_data_dir(self.data_dir, self.logs.log)
        self.assertEqual(len(warnings), 1)
        self.assertIn(path, warnings[0])

    def test_world_writable_database_refused(self):
        """A database others can write stops start-up."""
        self.write("cairn.sqlite", 0o666)
        self.assertRaises(PermissionProblem, check_data_dir, self.data_dir, self.logs.log)

    def test_readable_token_and_sessions_warned(self):
        """A readable token or session file is warned about, one line each, without content."""
        self.write(TOKEN_FILE_NAME, 0o644)
        self.write("sessions.cbor", 0o604)
        warnings = check_data_dir(self.data_dir, self.logs.log)
        self.assertEqual(len(warnings), 2)
        self.assertNotIn("the-secret-content", "".join(warnings) + self.logs.text())

    def test_make_node_refuses(self):
        """make_node stops with a one-line StartupError when the check refuses."""
        load_or_create(self.data_dir)
        os.chmod(os.path.join(self.data_dir, KEY_FILE_NAME), 0o604)
        config = Config.from_env({}, data_dir=self.data_dir, mgmt_listen="none")
        error = self.assertRaises(StartupError, make_node, config, task.Clock())
        self.assertTrue(str(error).startswith("cairn: "))
        self.assertNotIn("\n", str(error))
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.data_dir, KEY_FILE_NAME)).st_mode), 0o604)
