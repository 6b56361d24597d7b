"""
The web console's server side: its files and headers under /ui/, the
redirect from /, the activity history (GET /history), the node status
(GET /node) and each peer's transport. The pages themselves are driven
in a real browser by tests/test_console_browser.py.
"""

import configparser
import fnmatch
import json
import os
import re
from unittest import mock

from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cairn.management.console import ConsoleRoot
from cairn.management.console.resource import CONTENT_SECURITY_POLICY, load_assets
from cairn.management.history import MINUTE, SAMPLE, History
from cairn.management.reports import NodeReports
from cairn.management.status import NodeStatus, management_warnings, transport_of
from cairn.service import make_node
from cairn.transport.settings import TransportSettings
from cairn.transport.tcp import StreamProtocol
from cairn.transport.websocket import ServerProtocol
from tests import (
    _browser,
    test_console_browser,  # the module, not the class: trial would run it here too
)
from tests.test_management import BASE, TOKEN, FakeSession, Node, header, new_peer_id
from tests.test_service import LOOPBACK, config_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(REPO, "cairn", "management", "console", "static")


class ConsoleNode(Node):
    """The API behind the console's root resource, as make_site serves it."""

    def __init__(self, testcase, **services):
        super().__init__(testcase, **services)
        self.stub = StubTreq(ConsoleRoot(self.api.resource()))


class StaticFilesTests(unittest.TestCase):
    def test_root_redirects_to_console(self):
        """GET / and GET /ui answer 302 to /ui/."""
        node = ConsoleNode(self)
        for path in ("/", "/ui"):
            response, _ = node.call("GET", path, token=None, allow_redirects=False)
            self.assertEqual(response.code, 302, path)
            self.assertEqual(header(response, "Location"), "/ui/")

    def test_index_served_without_token_with_strict_csp(self):
        """/ui/ is the console's HTML, served without a token, with the strict CSP and no framing."""
        node = ConsoleNode(self)
        response, body = node.call("GET", "/ui/", token=None)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "Content-Type"), "text/html; charset=utf-8")
        self.assertIn(b'<script type="module" src="app.js"></script>', body)
        csp = header(response, "Content-Security-Policy")
        self.assertEqual(csp, CONTENT_SECURITY_POLICY)
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        self.assertEqual(directives["default-src"], "'none'")
        self.assertEqual(directives["script-src"], "'self'")
        self.assertEqual(directives["style-src"], "'self'")
        self.assertEqual(directives["connect-src"], "'self'")
        self.assertEqual(directives["frame-ancestors"], "'none'")
        self.assertNotIn("unsafe", csp)
        self.assertEqual(header(response, "X-Frame-Options"), "DENY")
        self.assertEqual(header(response, "Cache-Control"), "no-store")

    def test_every_file_served_with_its_type(self):
        """Each file in static/ is served under /ui/ with its content type and its exact bytes."""
        node = ConsoleNode(self)
        types = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
        names = sorted(os.listdir(STATIC))
        self.assertGreaterEqual(len(names), 9)
        for name in names:
            response, body = node.call("GET", "/ui/" + name, token=None)
            self.assertEqual(response.code, 200, name)
            self.assertTrue(header(response, "Content-Type").startswith(types[os.path.splitext(name)[1]]), name)
            with open(os.path.join(STATIC, name), "rb") as f:
                self.assertEqual(body, f.read(), name)

    def test_references_resolve(self):
        """Every file index.html links and every module a script imports is shipped."""
        assets = load_assets()
        index = assets["index.html"][0].decode()
        referenced = set(re.findall(r'(?:src|href)="([\w.-]+\.(?:js|css|svg))"', index))
        for name, (body, _) in assets.items():
            if name.endswith(".js"):
                referenced |= set(re.findall(r'from "\./([\w.-]+\.js)"', body.decode()))
        self.assertIn("app.js", referenced)
        self.assertLessEqual(referenced, set(assets))
        self.assertEqual({n for n in assets if n.endswith(".js")} - referenced, set(), "an unused script")

    def test_nothing_inline(self):
        """No inline script, style or handler in the HTML; no eval, innerHTML or style attribute in scripts."""
        assets = load_assets()
        index = assets["index.html"][0].decode()
        self.assertEqual(re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", index), [])
        self.assertNotIn("<style", index)
        self.assertEqual(re.findall(r"\s(?:style|on\w+)=", index), [])
        for name, (body, _) in assets.items():
            if name.endswith(".js"):
                text = body.decode()
                for forbidden in ("eval(", "innerHTML", "new Function", 'setAttribute("style"', "document.write"):
                    self.assertNotIn(forbidden, text, name)

    def test_token_never_in_url_or_cookie(self):
        """The scripts keep the token in sessionStorage and send it only as a Bearer header."""
        assets = load_assets()
        scripts = "".join(body.decode() for name, (body, _) in assets.items() if name.endswith(".js"))
        self.assertNotIn("document.cookie", scripts)
        self.assertNotIn("localStorage", scripts)
        self.assertIn("sessionStorage", scripts)
        self.assertIn('Authorization: "Bearer "', scripts)
        self.assertIn('credentials: "omit"', scripts)

    def test_unknown_file_and_wrong_method(self):
        """An unknown console file is a JSON 404; HEAD is answered; a POST is a 405 naming GET and HEAD."""
        node = ConsoleNode(self)
        for path in ("/ui/nope.js", "/ui/../openapi.json", "/ui/static/app.js"):
            response, body = node.call("GET", path, token=None)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body), {"error": "no such console file"})
        response, body = node.call("HEAD", "/ui/app.js", token=None)
        self.assertEqual((response.code, body), (200, b""))
        response, body = node.call("POST", "/ui/", token=None, data=b"{}")
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, "Allow"), "GET, HEAD")

    def test_api_still_served_beside_console(self):
        """Behind the console's root, the API answers as before: 401 without the token, JSON with it."""
        node = ConsoleNode(self)
        response, _ = node.call("GET", "/peers", token=None)
        self.assertEqual(response.code, 401)
        self.assertEqual(node.json("GET", "/peers"), [])
        self.assertEqual(node.json("GET", "/nope", expected_code=404), {"error": "no such endpoint"})

    def test_package_data_ships_static_files(self):
        """setup.cfg's package_data covers every console file, so an installed wheel serves the console."""
        parser = configparser.ConfigParser()
        parser.read(os.path.join(REPO, "setup.cfg"))
        patterns = [p.strip() for p in parser["options.package_data"]["cairn.management.console"].split(",")]
        for name in os.listdir(STATIC):
            self.assertTrue(any(fnmatch.fnmatch("static/" + name, p) for p in patterns), name)


class HistoryTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.counts = {"stored": 0, "delivered": 0, "relay_bytes": 0}
        self.history = History(self.clock, {name: (lambda n=name: self.counts[n]) for name in self.counts})

    def test_minutes_of_increments(self):
        """Each finished minute holds its own increments, and the minute in progress comes last."""
        self.counts["relay_bytes"] = 10_000  # loaded from the database before start: not activity
        self.history.start()
        self.counts["stored"] += 3
        self.counts["relay_bytes"] += 500
        self.clock.advance(MINUTE)
        self.counts["delivered"] += 2
        self.clock.advance(10)
        report = self.history.to_json()
        self.assertEqual(report["interval"], 60.0)
        self.assertEqual(report["series"], ["delivered", "relay_bytes", "stored"])
        self.assertEqual(report["now"], 1_700_000_070)
        self.assertEqual(
            report["minutes"],
            [
                {"start": 1_700_000_000, "stored": 3, "delivered": 0, "relay_bytes": 500},
                {"start": 1_700_000_060, "stored": 0, "delivered": 2, "relay_bytes": 0},
            ],
        )

    def test_keeps_one_hour(self):
        """At most sixty finished minutes are kept, the oldest dropped first."""
        self.history.start()
        for minute in range(75):
            self.counts["stored"] += minute
            self.clock.advance(MINUTE)
        minutes = self.history.to_json()["minutes"]
        self.assertEqual(len(minutes), 61)
        self.assertEqual([m["stored"] for m in minutes[:-1]], list(range(15, 75)))
        self.assertEqual(minutes[-1]["stored"], 0)

    def test_counter_reset_counts_nothing(self):
        """A counter that goes down (a relay byte count reset) gives 0 that minute, then counts from its new value."""
        self.history.start()
        self.counts["relay_bytes"] = 900
        self.clock.advance(MINUTE)
        self.counts["relay_bytes"] = 100
        self.clock.advance(MINUTE)
        self.counts["relay_bytes"] = 150
        self.clock.advance(MINUTE)
        self.assertEqual([m["relay_bytes"] for m in self.history.to_json()["minutes"]], [900, 0, 50, 0])

    def test_per_key_counter(self):
        """Bytes per peer are compared peer by peer: a peer forgotten (unpaired) takes nothing from the others."""
        relayed = {"a": 100}
        self.history.sources["relay_bytes"] = lambda: relayed
        self.history.start()
        relayed["a"] += 50
        relayed["b"] = 70  # a peer's first circuit: counted from 0
        self.clock.advance(SAMPLE)
        del relayed["b"]
        relayed["a"] += 30
        self.clock.advance(MINUTE - SAMPLE)
        self.assertEqual(self.history.to_json()["minutes"][0]["relay_bytes"], 150)
        relayed["a"] = 0  # reset_bytes
        self.clock.advance(SAMPLE)
        relayed["a"] += 5
        self.assertEqual(self.history.to_json()["minutes"][-1]["relay_bytes"], 5)

    def test_failing_source_logged_and_ring_goes_on(self):
        """A failing source is logged and counts 0; the others go on, and its next reading counts what it missed."""
        self.history.start()
        broken = [True]

        def flaky():
            if broken[0]:
                raise ZeroDivisionError()
            return 7

        self.history.sources["delivered"] = flaky
        self.counts["stored"] = 4
        self.clock.advance(MINUTE)
        broken[0] = False
        self.clock.advance(MINUTE)
        self.assertGreaterEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        minutes = self.history.to_json()["minutes"]
        self.assertEqual([(m["stored"], m["delivered"]) for m in minutes], [(4, 0), (0, 7), (0, 0)])

    def test_stop(self):
        """After stop, no more minutes are added."""
        self.history.start()
        self.history.stop()
        self.clock.advance(10 * MINUTE)
        self.assertEqual(len(self.history.ring), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_served_by_api(self):
        """GET /history returns the ring's report, behind the token."""
        self.history.start()
        self.counts["stored"] = 2
        node = ConsoleNode(self, reports=NodeReports(history=self.history.to_json))
        self.assertEqual(node.json("GET", "/history")["minutes"][-1]["stored"], 2)
        response, _ = node.call("GET", "/history", token=None)
        self.assertEqual(response.code, 401)

    def test_no_history(self):
        """A node without a history report answers 404 naming it."""
        body = ConsoleNode(self).json("GET", "/history", 404)
        self.assertEqual(body, {"error": "the history is not served by this node"})


class PeerTransportTests(unittest.TestCase):
    def test_transport_of(self):
        """GET /peers tells TCP from WebSocket for an attached session, and null for an offline peer."""
        node = ConsoleNode(self)
        over_tcp, over_ws, offline = node.paired("laptop"), node.paired("phone"), node.paired("desk")
        over_tcp_transport = StreamProtocol(None, TransportSettings(max_payload=1024))
        for peer_id, transport in ((over_tcp, over_tcp_transport), (over_ws, ServerProtocol())):
            session = FakeSession(peer_id, attached=True)
            session.connection = type("Connection", (), {"transport": transport})()
            node.peer.sessions[os.urandom(16)] = session
        node.add_session(offline, attached=False)
        by_id = {p["peer_id"]: p["transport"] for p in node.json("GET", "/peers")}
        self.assertEqual(by_id, {over_tcp: "tcp", over_ws: "websocket", offline: None})
        self.assertIsNone(transport_of(node.peer, new_peer_id()[0]))


class NodeStatusTests(unittest.TestCase):
    def test_warnings(self):
        """An exposed management listener and a short token are each one warning naming what to change."""
        self.assertEqual(management_warnings("tcp:9090:interface=127.0.0.1", TOKEN, False), [])
        warnings = management_warnings("tcp:9090", "short", True)
        self.assertEqual(len(warnings), 2)
        self.assertIn("tcp:9090 in clear text", warnings[0])
        self.assertIn("shorter than 16 characters", warnings[1])
        self.assertNotIn("short", warnings[1].replace("shorter", ""))

    @defer.inlineCallbacks
    def test_real_node(self):
        """GET /node of a started node: its peer id, each listener's endpoint and bound address, its warnings."""
        node = make_node(config_for(self.mktemp(), mgmt_listen="tcp:0", mgmt_token=TOKEN), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        ports = yield node.ready
        api = node.listeners["management"].factory.resource.api
        stub = StubTreq(ConsoleRoot(api))
        response = yield stub.get(BASE + "/node", headers={b"Authorization": [b"Bearer " + TOKEN.encode()]})
        body = yield response.json()
        self.assertEqual(body["peer_id"], node.peer.peer_id)
        listeners = {entry["name"]: entry for entry in body["listeners"]}
        self.assertEqual(set(listeners), {"tcp", "websocket", "management"})
        self.assertEqual(listeners["tcp"]["endpoint"], LOOPBACK)
        self.assertEqual(listeners["tcp"]["address"], f"127.0.0.1:{ports['tcp'].getHost().port}")
        self.assertEqual(listeners["management"]["endpoint"], "tcp:0")
        self.assertEqual(len(body["warnings"]), 1)
        self.assertIn("tcp:0 in clear text", body["warnings"][0])
        self.assertTrue(node.history._loop.running)

    def test_live_warnings(self):
        """A mailbox at 90 % of its limit and a relay at capacity (carried circuits too) are warned about."""
        stats = {"bytes": 95, "limits": {"max_total": 100}}
        mailbox = type("Mailbox", (), {"enabled": True, "stats": lambda self: stats})()
        # One circuit of its own, one carried for another node's requester: full.
        relay = type("Relay", (), {"capacity": 2, "circuits": {1: None}, "load": lambda self: 2})()
        peer = type("Peer", (), {"peer_id": "Qm"})()
        node = type("Node", (), {"listeners": {}, "mailbox": mailbox, "relay": relay, "peer": peer})()
        body = self.successResultOf(NodeStatus(node, {}, ["static"])())
        self.assertEqual(body["listeners"], [])
        self.assertEqual(body["warnings"][0], "static")
        self.assertIn("95 of its 100 bytes", body["warnings"][1])
        self.assertIn("2 circuits open, CAIRN_RELAY_CAPACITY is 2", body["warnings"][2])


class DocsTests(unittest.TestCase):
    def test_screenshots_shown(self):
        """docs/console.md shows every screenshot in docs/console/, and each one it shows exists."""
        with open(os.path.join(REPO, "docs", "console.md"), encoding="utf-8") as f:
            text = f.read()
        shown = set(re.findall(r"!\[[^\]]*\]\(console/([\w.-]+\.png)\)", text))
        present = {n for n in os.listdir(os.path.join(REPO, "docs", "console")) if n.endswith(".png")}
        self.assertGreaterEqual(len(present), 11)
        self.assertEqual(shown, present)
        self.assertIn(CONTENT_SECURITY_POLICY, text)


class BrowserGateTests(unittest.TestCase):
    def test_missing_browser_fails_under_ci(self):
        """Without Chromium the browser test skips, but fails when CI=true (CI must not skip it silently)."""
        self.patch(_browser, "CHROMIUM", None)
        case = test_console_browser.ConsoleBrowserTests("test_console_end_to_end")
        with mock.patch.dict(os.environ, {"CI": "true"}):
            failure = self.failureResultOf(case.setUp(), unittest.FailTest)
        self.assertIn("chromium", str(failure.value))
        with mock.patch.dict(os.environ, {"CI": ""}):
            self.failureResultOf(case.setUp(), unittest.SkipTest)
