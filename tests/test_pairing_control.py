"""
The operator's control over pairing (issue 21 items 4 and 8): PSK limits,
rotation and disabling (service, API, `cairn-server psk`, a real twistd
restart), and the limits against pairing floods and PIN guessing.
"""

import json
import os
import stat

from treq.testing import StubTreq
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.management.app import ManagementAPI
from cairn.management.metrics import Metrics
from cairn.pairing import exchange as exchange_module
from cairn.pairing import service as service_module
from cairn.pairing.psk import PSK_FILE, PskError, PskSetting
from cairn.pairing.trust import MemoryTrustStore
from cairn.session.peer import Peer
from cairn.wire.constants import MessageType, PairRejectCode
from tests._harness import eventually
from tests.test_pairing_units import PSK, FakeSession, ServiceHarness

TOKEN = "control-test-token"


class PskSettingTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, PSK_FILE)

    def test_limits(self):
        """A PSK stops working after max_uses pairings or after its lifetime."""
        setting = PskSetting(self.clock, "k" * 20, max_uses=2, lifetime=3600)
        self.assertIsNone(setting.refusal())
        setting.used()
        setting.used()
        self.assertEqual(setting.refusal()[0], PairRejectCode.EXPIRED)
        setting = PskSetting(self.clock, "k" * 20, lifetime=3600)
        self.clock.advance(3600)
        self.assertEqual(setting.refusal()[0], PairRejectCode.EXPIRED)
        setting.rotate("a new long passphrase")  # the lifetime runs from the rotation
        self.assertIsNone(setting.refusal())

    def test_rotation_persisted_and_overrides_env(self):
        """A rotated or disabled PSK is written 0600 and wins over CAIRN_PSK at the next start."""
        setting = PskSetting(self.clock, "the env psk, long enough", path=self.path)
        self.assertEqual(setting.source, "CAIRN_PSK")
        generated = setting.rotate()
        self.assertEqual(len(generated), 32)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        again = PskSetting(self.clock, "the env psk, long enough", path=self.path)
        self.assertEqual((again.source, again.w), ("api", setting.w))
        again.disable()
        self.assertFalse(PskSetting(self.clock, "the env psk, long enough", path=self.path).enabled)
        self.assertEqual(sorted(os.listdir(self.directory)), [PSK_FILE])

    def test_bad_values(self):
        """Empty, oversized or control-character PSKs are refused; a damaged file is a PskError naming it."""
        setting = PskSetting(self.clock, None, path=self.path)
        for bad in ("", "x" * 1025, "line\nbreak", 5):
            self.assertRaises(PskError, setting.rotate, bad)
        with open(self.path, "w") as f:
            f.write("{not json")
        error = self.assertRaises(PskError, PskSetting, self.clock, None, path=self.path)
        self.assertIn(self.path, str(error))


class PskServiceTests(ServiceHarness, unittest.TestCase):
    def test_expired_psk_told_only_to_holders(self):
        """An expired PSK answers EXPIRED to a device that proves it and BAD_PROOF to one that does not."""
        self.peer = Peer(Identity.generate(), task.Clock())
        self.service = self.make_service(psk_lifetime=60)
        self.clock.advance(61)
        self.assertEqual(self.psk_pair(FakeSession(), psk="wrong")[1]["code"], PairRejectCode.BAD_PROOF)
        self.assertEqual(self.psk_pair(FakeSession())[1]["code"], PairRejectCode.EXPIRED)

    def test_max_uses(self):
        """After max_uses pairings the PSK pairs no one more."""
        self.peer = Peer(Identity.generate(), task.Clock())
        self.service = self.make_service(psk_max_uses=1)
        self.assertEqual(self.psk_pair(FakeSession())[0], MessageType.PAIR_CONFIRM)
        self.assertEqual(self.psk_pair(FakeSession())[1]["code"], PairRejectCode.EXPIRED)

    def test_rotate_and_disable(self):
        """After a rotation the old PSK fails and the new one pairs; after disabling, METHOD_UNAVAILABLE."""
        rotated = self.service.rotate_psk()
        self.assertEqual(self.psk_pair(FakeSession())[1]["code"], PairRejectCode.BAD_PROOF)
        self.assertEqual(self.psk_pair(FakeSession(host="192.0.2.9"), psk=rotated["psk"])[0], MessageType.PAIR_CONFIRM)
        self.service.disable_psk()
        reply = self.psk_pair(FakeSession(host="192.0.2.10"), psk=rotated["psk"])
        self.assertEqual(reply[1]["code"], PairRejectCode.METHOD_UNAVAILABLE)


class FloodTests(ServiceHarness, unittest.TestCase):
    """Item 8: pairing denial of service and PIN guessing."""

    def replies(self, session, method, secret):
        """The types and codes of the node's replies to one whole exchange."""
        self.pake_pair(session, method, secret)
        return [(t, b.get("code"), b.get("reason")) for t, b in session.sent]

    def test_no_pin_answers_like_a_wrong_pin(self):
        """Without an active PIN the node answers exactly as to a wrong PIN: PairChallenge, then BAD_PROOF."""
        no_pin = self.replies(FakeSession(host="192.0.2.1"), "pin", "AAAA-AAAA")
        pin = self.service.create_pin()["pin"]
        wrong = "ZZZZ-ZZZZ" if pin != "ZZZZ-ZZZZ" else "0000-0000"
        wrong_pin = self.replies(FakeSession(host="192.0.2.2"), "pin", wrong)
        self.assertEqual(no_pin, wrong_pin)
        self.assertEqual([t for t, _, _ in no_pin], [MessageType.PAIR_CHALLENGE, MessageType.PAIR_REJECT])
        self.assertEqual(no_pin[1][1], PairRejectCode.BAD_PROOF)

    def test_used_pin_state_hidden_from_guessers(self):
        """A used PIN is ALREADY_USED only to a device that proves it; a guesser gets BAD_PROOF."""
        pin = self.service.create_pin()["pin"]
        self.assertEqual(self.pake_pair(FakeSession(host="192.0.2.1"), "pin", pin)[0], MessageType.PAIR_CONFIRM)
        wrong = "ZZZZ-ZZZZ" if pin != "ZZZZ-ZZZZ" else "0000-0000"
        self.assertEqual(
            self.pake_pair(FakeSession(host="192.0.2.2"), "pin", wrong)[1]["code"], PairRejectCode.BAD_PROOF
        )
        self.assertEqual(
            self.pake_pair(FakeSession(host="192.0.2.3"), "pin", pin)[1]["code"], PairRejectCode.ALREADY_USED
        )

    def test_one_failed_exchange_per_session(self):
        """After a failed exchange a session gets RATE_LIMITED for the next; a successful one lifts the limit."""
        session = FakeSession()
        self.assertEqual(self.psk_pair(session, psk="wrong")[1]["code"], PairRejectCode.BAD_PROOF)
        self.assertEqual(self.psk_pair(session)[1]["code"], PairRejectCode.RATE_LIMITED)
        good = self.attach(FakeSession(host="192.0.2.50"))
        self.assertEqual(self.psk_pair(good)[0], MessageType.PAIR_CONFIRM)
        self.assertEqual(self.psk_pair(good)[0], MessageType.PAIR_CONFIRM)

    def test_unfinished_exchanges_limited_per_source(self):
        """Unproven exchanges use up a source's budget (then RATE_LIMITED, with no PAKE run); proven ones do not."""
        self.peer = Peer(Identity.generate(), task.Clock())
        self.service = self.make_service(max_source_exchanges=5)
        side = self.side(FakeSession())
        for _ in range(8):  # successful pairings are given back
            self.assertEqual(self.psk_pair(self.attach(FakeSession(host="198.51.100.1")))[0], MessageType.PAIR_CONFIRM)
        for _ in range(5):
            type_code, _ = self.request(FakeSession(host="198.51.100.1"), {"method": "psk", "pake": side.share})
            self.assertEqual(type_code, MessageType.PAIR_CHALLENGE)
        _, body = self.request(FakeSession(host="198.51.100.1"), {"method": "psk", "pake": side.share})
        self.assertEqual(body["code"], PairRejectCode.RATE_LIMITED)
        other = self.request(FakeSession(host="198.51.100.2"), {"method": "psk", "pake": side.share})
        self.assertEqual(other[0], MessageType.PAIR_CHALLENGE)
        self.clock.advance(61)
        again = self.request(FakeSession(host="198.51.100.1"), {"method": "psk", "pake": side.share})
        self.assertEqual(again[0], MessageType.PAIR_CHALLENGE)

    def test_ipv6_sources_grouped_by_64(self):
        """Failures from different addresses of one IPv6 /64 count together; another /64 is separate."""
        for n in range(5):
            self.psk_pair(FakeSession(host=f"2001:db8:0:1::{n + 1}"), psk="wrong")
        _, body = self.psk_pair(FakeSession(host="2001:db8:0:1:ffff::99"))
        self.assertEqual(body["code"], PairRejectCode.RATE_LIMITED)
        self.assertEqual(self.psk_pair(FakeSession(host="2001:db8:0:2::1"))[0], MessageType.PAIR_CONFIRM)

    def test_burned_pin_reported(self):
        """A PIN burned by wrong answers is logged as a warning and counted in the pairing status."""
        warnings = []
        self.patch(exchange_module.log, "warn", lambda fmt, **kw: warnings.append((fmt, kw)))
        pin = self.service.create_pin()["pin"]
        wrong = "ZZZZ-ZZZZ" if pin != "ZZZZ-ZZZZ" else "0000-0000"
        for n in range(3):
            self.clock.advance(1)
            self.pake_pair(FakeSession(host=f"203.0.113.{n}"), "pin", wrong)
        status = self.service.pairing_status()["pin"]
        self.assertEqual((status["burned"], status["last_burned_at"], status["active"]), (1, 3.0, False))
        self.assertEqual(len(warnings), 1)
        self.assertIn("PIN invalidated", warnings[0][0])
        self.assertNotIn(pin, repr(warnings))


class ApiTests(unittest.TestCase):
    """GET /pairing, POST and DELETE /pairing/psk on a real PairingService."""

    def setUp(self):
        self.clock = task.Clock()
        self.peer = Peer(Identity.generate(), self.clock)
        self.pairing = service_module.PairingService(self.peer, MemoryTrustStore(), self.clock, psk=PSK)
        self.pairing.start()
        metrics = Metrics(self.peer, self.clock, 0, process_metrics=False)
        self.stub = StubTreq(ManagementAPI(self.pairing, self.peer, TOKEN, metrics, self.clock, 0).resource())

    def call(self, method, path, **kwargs):
        d = self.stub.request(
            method, "http://node" + path, headers={b"Authorization": [b"Bearer " + TOKEN.encode()]}, **kwargs
        )
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response, json.loads(body)

    def test_status_rotate_disable(self):
        """The status names the node and never the PSK; a rotation returns the new PSK once; DELETE disables."""
        response, status = self.call("GET", "/pairing")
        self.assertEqual(
            (response.code, status["node_peer_id"], status["psk"]["enabled"]), (200, self.peer.peer_id, True)
        )
        self.assertNotIn(PSK, json.dumps(status))
        response, rotated = self.call("POST", "/pairing/psk", data=b"")
        self.assertEqual((response.code, rotated["enabled"], len(rotated["psk"])), (201, True, 32))
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        response, rotated = self.call("POST", "/pairing/psk", json={"psk": "my own long passphrase"})
        self.assertEqual(rotated["psk"], "my own long passphrase")
        self.assertNotIn("my own long passphrase", json.dumps(self.call("GET", "/pairing")[1]))
        response, error = self.call("POST", "/pairing/psk", json={"psk": ""})
        self.assertEqual(response.code, 400)
        for bad in (5, None):
            response, error = self.call("POST", "/pairing/psk", json={"psk": bad})
            self.assertEqual(response.code, 400)
        response, disabled = self.call("DELETE", "/pairing/psk")
        self.assertEqual((response.code, disabled["enabled"]), (200, False))


class TwistdPskTests(unittest.TestCase):
    """`cairn-server psk rotate` against a real node, across a restart."""

    def _kill(self, proc):
        if not proc.ended.called:
            proc.transport.signalProcess("KILL")
            return proc.ended.addErrback(lambda f: None)

    @defer.inlineCallbacks
    def start(self, data_dir, old_psk):
        from tests.test_twistd import start_twistd

        proc = start_twistd(
            data_dir,
            expected=("tcp", "websocket", "management"),
            CAIRN_PSK=old_psk,
            CAIRN_MGMT_TOKEN=TOKEN,
            CAIRN_MGMT_LISTEN="tcp:0:interface=127.0.0.1",
        )
        self.addCleanup(self._kill, proc)
        ports = yield eventually(proc.listening, 60)
        return proc, ports

    @defer.inlineCallbacks
    def pair(self, ports, psk):
        from cairn.client import Client
        from cairn.pairing.client import pair_psk

        client = Client(reactor, clock=task.Clock())
        session = yield eventually(client.connect(f"tcp:host=127.0.0.1:port={ports['tcp']}"))
        try:
            result = yield eventually(pair_psk(session, psk))
        finally:
            if session.closed is None:
                yield client.close(session)
        return result

    @defer.inlineCallbacks
    def test_rotate_survives_restart(self):
        """After `cairn-server psk rotate` the old PSK is refused, the new one pairs, and a restart keeps it so."""
        from cairn.cli.pairing_api import psk as psk_command
        from cairn.pairing.client import PairingRejected

        old = "the original pre-shared key of this node"
        data_dir = os.path.abspath(self.mktemp())
        proc, ports = yield self.start(data_dir, old)
        environ = {"CAIRN_MGMT_TOKEN": TOKEN, "CAIRN_DATA_DIR": data_dir}
        url = f"http://127.0.0.1:{ports['management']}"
        printed = yield threads.deferToThread(psk_command, "rotate", environ, url)
        new = printed.splitlines()[0]
        self.assertEqual(len(new), 32)
        error = yield self.assertFailure(self.pair(ports, old), PairingRejected)
        self.assertEqual(error.code, PairRejectCode.BAD_PROOF)
        result = yield self.pair(ports, new)
        self.assertEqual(result.method, "psk")
        self.assertNotIn(new, "".join(proc.output))
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 30)
        proc, ports = yield self.start(data_dir, old)
        error = yield self.assertFailure(self.pair(ports, old), PairingRejected)
        self.assertEqual(error.code, PairRejectCode.BAD_PROOF)
        printed = yield threads.deferToThread(
            psk_command, "disable", environ, f"http://127.0.0.1:{ports['management']}"
        )
        self.assertIn("disabled", printed)
        error = yield self.assertFailure(self.pair(ports, new), PairingRejected)
        self.assertEqual(error.code, PairRejectCode.METHOD_UNAVAILABLE)
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 30)
