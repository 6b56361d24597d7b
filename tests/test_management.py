"""
The management REST API, driven through treq's StubTreq against in-memory
twins of the pairing service and trust store.
"""

import json
import os
import re
import shlex
from types import SimpleNamespace
from xml.etree import ElementTree

from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import fail, succeed
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cairn import __version__
from cairn.crypto.identity import Identity, peer_id_for
from cairn.mailbox.interfaces import StoreFull
from cairn.management import app as app_mod
from cairn.management import peer_routes, service_routes
from cairn.management.app import BODY_LIMIT, PUBLIC_PATHS, ManagementAPI, make_site
from cairn.management.metrics import Metrics
from cairn.management.openapi import openapi_document
from cairn.management.reports import IMailboxReports, INodeReports, IRelayReports, ISyncReports, NodeReports
from cairn.pairing.interfaces import (
    PAIRED,
    PENDING,
    REVOKED,
    IPairingService,
    ITrustStore,
    PeerRecord,
    UnknownPeer,
)
from cairn.session.peer import Peer

TOKEN = "test-token-0123456789abcdefghij"
BASE = "http://localhost:9090"


def new_peer_id():
    key = os.urandom(32)
    return peer_id_for(key), key


@implementer(ITrustStore)
class MemoryTrustStore:
    """An in-memory ITrustStore: just enough for the API's tests."""

    def __init__(self):
        self.records = {}

    def start(self):
        return succeed(None)

    def is_paired(self, peer_id):
        record = self.records.get(peer_id)
        return record is not None and record.state == PAIRED

    def catch_up(self, peer_ids):
        return succeed(None)

    def get(self, peer_id):
        return succeed(self.records.get(peer_id))

    def list(self, state=None):
        return succeed([r for _, r in sorted(self.records.items()) if state is None or r.state == state])

    def add_pending(self, peer_id, identity_key, name, when):
        if not self.is_paired(peer_id):
            self.records[peer_id] = PeerRecord(peer_id, identity_key, PENDING, name=name, requested_at=when)
        return succeed(self.records[peer_id])

    def set_paired(self, peer_id, identity_key, name, method, when):
        old = self.records.get(peer_id)
        self.records[peer_id] = PeerRecord(
            peer_id,
            identity_key,
            PAIRED,
            name=name,
            method=method,
            requested_at=old.requested_at if old else None,
            paired_at=when,
        )
        return succeed(self.records[peer_id])

    def reject(self, peer_id):
        record = self.records.get(peer_id)
        if record is None or record.state != PENDING:
            return fail(UnknownPeer(peer_id))
        del self.records[peer_id]
        return succeed(None)

    def revoke(self, peer_id, when):
        if not self.is_paired(peer_id):
            return fail(UnknownPeer(peer_id))
        old = self.records[peer_id]
        self.records[peer_id] = PeerRecord(
            peer_id, old.identity_key, REVOKED, name=old.name, method=old.method, paired_at=old.paired_at
        )
        return succeed(self.records[peer_id])

    def touch(self, peer_id, when):
        record = self.records.get(peer_id)
        if record is not None:
            self.records[peer_id] = PeerRecord(**{**record.__dict__, "last_seen": when})
        return succeed(None)


@implementer(IPairingService)
class FakePairingService:
    """An IPairingService over L{MemoryTrustStore} and a L{Peer}'s sessions."""

    def __init__(self, trust, peer, clock):
        self.trust = trust
        self.peer = peer
        self.clock = clock
        self.purged = []
        self.links = 0
        self._hooks = []

    def connected(self, peer_id):
        return any(s.attached and s.remote_peer_id == peer_id for s in self.peer.sessions.values())

    def create_pin(self):
        return {"pin": "ABCD-2345", "expires_at": self.clock.seconds() + 300}

    def create_link(self):
        self.links += 1
        return {"link": f"cairn://pair?id=server&secret=s{self.links}", "expires_at": self.clock.seconds() + 600}

    def codes_shared(self):
        return succeed(None)

    def approve(self, peer_id):
        record = self.trust.records.get(peer_id)
        if record is None or record.state != PENDING:
            return fail(UnknownPeer(peer_id))
        return self.trust.set_paired(peer_id, record.identity_key, record.name, "approval", self.clock.seconds())

    def reject(self, peer_id):
        return self.trust.reject(peer_id)

    def unpair(self, peer_id):
        d = self.trust.revoke(peer_id, self.clock.seconds())

        def purge(_):
            for hook in self._hooks:
                hook(peer_id)

        return d.addCallback(purge)

    def add_purge_hook(self, hook):
        self._hooks.append(hook)

    def pairing_status(self):
        return {"psk": {"enabled": False}, "pin": {"active": False, "burned": 0}, "links_active": self.links}

    def rotate_psk(self, psk=None):
        return {"psk": psk or "generated", "enabled": True}

    def disable_psk(self):
        return {"enabled": False}


class FakeSession:
    """What the API reads of a Session."""

    closed = None

    def __init__(self, remote_peer_id, attached):
        self.remote_peer_id = remote_peer_id
        self.attached = attached


class Node:
    """The API with its fakes around it, and helpers to call it."""

    def __init__(self, testcase, mailbox=None, sync=None, relay=None, reports=None):
        self.testcase = testcase
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.peer = Peer(Identity.generate(), self.clock)
        self.trust = MemoryTrustStore()
        self.pairing = FakePairingService(self.trust, self.peer, self.clock)
        self.metrics = Metrics(self.peer, self.clock, self.clock.seconds(), process_metrics=False)
        self.api = ManagementAPI(
            self.pairing,
            self.peer,
            TOKEN,
            self.metrics,
            self.clock,
            self.clock.seconds(),
            mailbox=mailbox,
            sync=sync,
            relay=relay,
            reports=reports,
        )
        self.stub = StubTreq(self.api.resource())

    def add_session(self, peer_id, attached=True):
        self.peer.sessions[os.urandom(16)] = FakeSession(peer_id, attached)

    def pending(self, name="laptop"):
        peer_id, key = new_peer_id()
        self.testcase.successResultOf(self.trust.add_pending(peer_id, key, name, self.clock.seconds()))
        return peer_id

    def paired(self, name="phone", method="pin"):
        peer_id, key = new_peer_id()
        self.testcase.successResultOf(self.trust.set_paired(peer_id, key, name, method, self.clock.seconds()))
        return peer_id

    def call(self, method, path, token=TOKEN, headers=None, **kwargs):
        """Make a request; return (response, body bytes)."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers[b"Authorization"] = [b"Bearer " + token.encode("utf-8")]
        d = self.stub.request(method, BASE + path, headers=all_headers, **kwargs)
        self.stub.flush()
        response = self.testcase.successResultOf(d)
        body = self.testcase.successResultOf(response.content())
        return response, body

    def json(self, method, path, expected_code=200, **kwargs):
        """Make a request expecting JSON with C{expected_code}; return the decoded body."""
        response, body = self.call(method, path, **kwargs)
        self.testcase.assertEqual(response.code, expected_code, body)
        self.testcase.assertEqual(header(response, "Content-Type"), "application/json")
        return json.loads(body.decode("utf-8"))


def header(response, name):
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


class FakesTests(unittest.TestCase):
    def test_fakes_provide_interfaces(self):
        """The in-memory twins provide ITrustStore and IPairingService."""
        node = Node(self)
        verifyObject(ITrustStore, node.trust)
        verifyObject(IPairingService, node.pairing)

    def test_services_provide_reports(self):
        """The node's services provide the report interfaces the management API reads."""
        from tests.fuzz.targets import InMemoryNode

        services = InMemoryNode()
        verifyObject(IMailboxReports, services.mailbox, tentative=True)
        verifyObject(ISyncReports, services.sync, tentative=True)
        verifyObject(IRelayReports, services.relay, tentative=True)
        verifyObject(INodeReports, NodeReports())


class HealthTests(unittest.TestCase):
    def test_health_without_token(self):
        """GET /health answers 200 without a token, with status, version, uptime and session count."""
        node = Node(self)
        node.add_session(new_peer_id()[0])
        node.clock.advance(12.5)
        body = node.json("GET", "/health", token=None)
        self.assertEqual(
            body, {"status": "ok", "version": __version__, "uptime": 12.5, "sessions": 1, "storage": "sqlite"}
        )

    def test_health_degraded_storage(self):
        """GET /health says which storage the node runs on and, when it cannot be used, degraded with the reason."""
        reason = "NATS unreachable (nats: no servers available for connection)"
        node = Node(self, reports=NodeReports(storage=lambda: ("jetstream", reason)))
        body = node.json("GET", "/health", token=None)
        self.assertEqual((body["status"], body["storage"], body["reason"]), ("degraded", "jetstream", reason))

    def test_health_reveals_nothing_sensitive(self):
        """GET /health shows no peer id, no path and no token."""
        node = Node(self)
        peer_id = node.paired()
        node.add_session(peer_id)
        _, raw = node.call("GET", "/health", token=None)
        for secret in (peer_id, node.peer.peer_id, TOKEN, "/"):
            self.assertNotIn(secret.encode(), raw)

    def test_health_no_cache(self):
        """API responses carry Cache-Control: no-store and nosniff."""
        response, _ = Node(self).call("GET", "/health", token=None)
        self.assertEqual(header(response, "Cache-Control"), "no-store")
        self.assertEqual(header(response, "X-Content-Type-Options"), "nosniff")


class AuthTests(unittest.TestCase):
    def _all_routes(self):
        for rule in ManagementAPI.app.url_map.iter_rules():
            path = rule.rule.replace("<peer_id>", new_peer_id()[0])
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield rule.rule, method, path

    def test_every_private_route_needs_token(self):
        """Every route except /health and /openapi.json answers 401 with WWW-Authenticate without a token."""
        node = Node(self)
        checked = 0
        for rule, method, path in self._all_routes():
            response, body = node.call(method, path, token=None)
            if rule in PUBLIC_PATHS:
                self.assertEqual(response.code, 200, rule)
                continue
            checked += 1
            self.assertEqual(response.code, 401, rule)
            self.assertEqual(json.loads(body), {"error": "missing or invalid bearer token"})
            self.assertEqual(header(response, "WWW-Authenticate"), 'Bearer realm="cairn"')
        self.assertEqual(checked, 24)

    def test_wrong_token_refused(self):
        """A wrong token gets 401 on every private route, and does nothing."""
        node = Node(self)
        pending = node.pending()
        for rule, method, path in self._all_routes():
            if rule in PUBLIC_PATHS:
                continue
            response, _ = node.call(method, path, token=TOKEN + "x", json={"peer_id": pending})
            self.assertEqual(response.code, 401, rule)
            self.assertEqual(header(response, "WWW-Authenticate"), 'Bearer realm="cairn"')
        self.assertEqual(node.trust.records[pending].state, PENDING)
        self.assertEqual(node.pairing.links, 0)

    def test_other_schemes_refused(self):
        """Basic auth, a bare token or an empty Bearer header get 401."""
        node = Node(self)
        for value in [b"Basic " + TOKEN.encode(), TOKEN.encode(), b"Bearer", b"Bearer "]:
            response, _ = node.call("GET", "/peers", token=None, headers={b"Authorization": [value]})
            self.assertEqual(response.code, 401, value)

    def test_scheme_case_insensitive(self):
        """The Bearer scheme name is matched case-insensitively."""
        node = Node(self)
        response, _ = node.call("GET", "/peers", token=None, headers={b"Authorization": [b"bearer " + TOKEN.encode()]})
        self.assertEqual(response.code, 200)

    def test_empty_token_refused_at_construction(self):
        """ManagementAPI refuses an empty token rather than serving an open API."""
        node = Node(self)
        self.assertRaises(ValueError, ManagementAPI, node.pairing, node.peer, "", node.metrics, node.clock, 0.0)


class PeersTests(unittest.TestCase):
    def test_list_peers_is_array(self):
        """GET /peers (the seed's curl) returns a JSON array of paired peers with their connection status."""
        node = Node(self)
        online, offline = node.paired(name="phone"), node.paired(name="desk", method="psk")
        node.pending()
        node.add_session(online, attached=True)
        node.add_session(offline, attached=False)
        body = node.json("GET", "/peers")
        self.assertIsInstance(body, list)
        by_id = {p["peer_id"]: p for p in body}
        self.assertEqual(set(by_id), {online, offline})
        self.assertEqual(
            by_id[online],
            {
                "peer_id": online,
                "name": "phone",
                "connected": True,
                "paired_at": node.clock.seconds(),
                "last_seen": None,
                "method": "pin",
                "transport": "other",  # a session of an embedding application's transport
            },
        )
        self.assertFalse(by_id[offline]["connected"])
        self.assertIsNone(by_id[offline]["transport"])
        self.assertEqual(by_id[offline]["method"], "psk")

    def test_list_peers_empty(self):
        """GET /peers with nothing paired is an empty array."""
        self.assertEqual(Node(self).json("GET", "/peers"), [])

    def test_list_pending(self):
        """GET /peers/pending lists pending requests as records without key material."""
        node = Node(self)
        pending = node.pending(name="laptop")
        node.paired()
        body = node.json("GET", "/peers/pending")
        self.assertEqual([r["peer_id"] for r in body], [pending])
        self.assertEqual(body[0]["state"], PENDING)
        self.assertEqual(body[0]["name"], "laptop")
        self.assertNotIn("identity_key", body[0])

    def test_approve_seed_shape(self):
        """POST /peers/approve with the seed's JSON body and Content-Type pairs the pending peer."""
        node = Node(self)
        pending = node.pending()
        body = node.json(
            "POST",
            "/peers/approve",
            headers={b"Content-Type": [b"application/json"]},
            data=json.dumps({"peer_id": pending}).encode(),
        )
        self.assertEqual(body["peer_id"], pending)
        self.assertEqual(body["state"], PAIRED)
        self.assertEqual(body["method"], "approval")
        self.assertTrue(node.trust.is_paired(pending))
        self.assertEqual([p["peer_id"] for p in node.json("GET", "/peers")], [pending])

    def test_approve_without_content_type(self):
        """POST /peers/approve accepts a JSON object body whatever the Content-Type."""
        node = Node(self)
        pending = node.pending()
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        node.json("POST", "/peers/approve", headers=headers, data=json.dumps({"peer_id": pending}).encode())
        self.assertTrue(node.trust.is_paired(pending))

    def test_approve_unknown_404(self):
        """Approving a well-formed peer id with no pending request is 404 with a JSON error."""
        node = Node(self)
        stranger = new_peer_id()[0]
        body = node.json("POST", "/peers/approve", 404, json={"peer_id": stranger})
        self.assertEqual(body, {"error": f"no pending pairing request from {stranger}"})

    def test_approve_already_paired_404(self):
        """Approving an already paired peer is 404: there is no pending request for it."""
        node = Node(self)
        node.json("POST", "/peers/approve", 404, json={"peer_id": node.paired()})

    def test_approve_bad_bodies_400(self):
        """A malformed body or peer_id on POST /peers/approve is 400 naming the problem."""
        node = Node(self)
        cases = [
            (b"", "body is not valid JSON: Expecting value at line 1 column 1"),
            (b"not json", "body is not valid JSON: Expecting value at line 1 column 1"),
            (b'{"peer_id": ', "body is not valid JSON: Expecting value at line 1 column 13"),
            (b"\xff\xfe", "body is not UTF-8"),
            (b'["x"]', "body must be a JSON object"),
            (b"{}", "peer_id is required"),
            (b'{"peer_id": null}', "peer_id is required"),
            (b'{"peer_id": 5}', "peer_id must be a string"),
            (b'{"peer_id": ["a"]}', "peer_id must be a string"),
            (b'{"peer_id": NaN}', "body is not valid JSON: NaN is not valid JSON"),
            (b"[" * 30000, "body is not valid JSON: nested too deeply"),
            (b'{"peer_id": "5Hb7..."}', "peer_id is not a valid peer id (peer id is not base58)"),
            (b'{"peer_id": "abc"}', "peer_id is not a valid peer id (peer id is not a sha2-256 multihash)"),
            (b'{"peer_id": "\xc3\xa9t\xc3\xa9"}', "peer_id is not a valid peer id (peer id is not base58)"),
        ]
        for data, error in cases:
            body = node.json("POST", "/peers/approve", 400, data=data)
            self.assertEqual(body, {"error": error}, data)

    def test_oversized_body_413(self):
        """A body over the 64 KiB limit gets 413 and is not acted on."""
        node = Node(self)
        pending = node.pending()
        data = json.dumps({"peer_id": pending, "pad": "x" * BODY_LIMIT}).encode()
        body = node.json("POST", "/peers/approve", 413, data=data)
        self.assertEqual(body, {"error": f"request body is over {BODY_LIMIT} bytes"})
        self.assertEqual(node.trust.records[pending].state, PENDING)

    def test_body_at_limit_accepted(self):
        """A body of exactly the limit is accepted."""
        node = Node(self)
        pending = node.pending()
        padded = json.dumps({"peer_id": pending, "pad": ""}).encode()
        padded = padded[:-2] + b"x" * (BODY_LIMIT - len(padded)) + b'"}'
        self.assertEqual(len(padded), BODY_LIMIT)
        node.json("POST", "/peers/approve", data=padded)
        self.assertTrue(node.trust.is_paired(pending))

    def test_reject(self):
        """POST /peers/reject drops a pending request; a second reject is 404."""
        node = Node(self)
        pending = node.pending()
        body = node.json("POST", "/peers/reject", json={"peer_id": pending})
        self.assertEqual(body, {"peer_id": pending, "rejected": True})
        self.assertNotIn(pending, node.trust.records)
        node.json("POST", "/peers/reject", 404, json={"peer_id": pending})

    def test_reject_bad_body_400(self):
        """POST /peers/reject without a peer_id is 400."""
        self.assertEqual(Node(self).json("POST", "/peers/reject", 400, json={}), {"error": "peer_id is required"})

    def test_unpair(self):
        """DELETE /peers/{peer_id} revokes the peer and runs the purge hooks."""
        node = Node(self)
        paired = node.paired()
        node.pairing.add_purge_hook(node.pairing.purged.append)
        body = node.json("DELETE", f"/peers/{paired}")
        self.assertEqual(body, {"peer_id": paired, "state": REVOKED})
        self.assertEqual(node.trust.records[paired].state, REVOKED)
        self.assertEqual(node.pairing.purged, [paired])
        self.assertEqual(node.json("GET", "/peers"), [])

    def test_unpair_store_full_507(self):
        """
        DELETE /peers/{peer_id} whose purge meets a full store answers 507
        saying the peer is revoked but not purged, and logs no traceback.
        """
        node = Node(self)
        paired = node.paired()

        def full(peer_id):
            raise StoreFull("the disk reserve is reached")

        node.pairing.add_purge_hook(full)
        body = node.json("DELETE", f"/peers/{paired}", 507)
        self.assertEqual(
            body["error"],
            f"{paired} is revoked and its sessions are closed, but what is held for it was not purged"
            " (storage full: the disk reserve is reached); it can no longer be fetched, and the mailbox's"
            " sweep purges it once the store has room",
        )
        self.assertEqual(node.trust.records[paired].state, REVOKED)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_approve_and_reject_store_full_507(self):
        """
        An approval or rejection the store cannot take (a full disk,
        JetStream's limit or NATS away: StoreFull) answers 507 naming the
        peer, logs no traceback, and leaves the request pending.
        """
        node = Node(self)
        pending = node.pending()

        def full(*args):
            raise StoreFull("JetStream unavailable (no room)")

        self.patch(node.trust, "set_paired", full)
        self.patch(node.trust, "reject", full)
        for path, what in (("/peers/approve", "approved"), ("/peers/reject", "rejected")):
            body = node.json("POST", path, 507, json={"peer_id": pending})
            why = "the store cannot take it now (JetStream unavailable (no room))"
            self.assertEqual(body["error"], f"{pending} is not {what}: {why}")
        self.assertEqual(node.trust.records[pending].state, PENDING)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unpair_unknown_404(self):
        """DELETE /peers/{peer_id} for a peer that is not paired is 404."""
        node = Node(self)
        stranger = new_peer_id()[0]
        self.assertEqual(node.json("DELETE", f"/peers/{stranger}", 404), {"error": f"{stranger} is not paired"})
        node.json("DELETE", f"/peers/{node.pending()}", 404)

    def test_unpair_invalid_id_400(self):
        """DELETE /peers/{peer_id} with a malformed id is 400."""
        body = Node(self).json("DELETE", "/peers/not-a-peer-id", 400)
        self.assertIn("peer_id is not a valid peer id", body["error"])

    def test_unknown_peer_from_service_is_404(self):
        """An UnknownPeer escaping a handler maps to 404 in the central error handler."""
        node = Node(self, mailbox=SimpleNamespace(peer_stats=lambda peer_id: fail(UnknownPeer(peer_id))))
        self.assertEqual(node.json("GET", f"/mailbox/{new_peer_id()[0]}", 404), {"error": "unknown peer"})


class PairingTests(unittest.TestCase):
    def test_pin(self):
        """POST /pairing/pin returns 201 with a PIN and its expiry."""
        node = Node(self)
        body = node.json("POST", "/pairing/pin", 201)
        self.assertEqual(body, {"pin": "ABCD-2345", "expires_at": node.clock.seconds() + 300})

    def test_link(self):
        """POST /pairing/link returns 201 with a link and its expiry."""
        node = Node(self)
        body = node.json("POST", "/pairing/link", 201)
        self.assertEqual(body, {"link": "cairn://pair?id=server&secret=s1", "expires_at": node.clock.seconds() + 600})

    def test_qr_png_default(self):
        """GET /pairing/qr returns a PNG of a new link, with the link and expiry in headers."""
        node = Node(self)
        response, body = node.call("GET", "/pairing/qr")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "Content-Type"), "image/png")
        self.assertTrue(body.startswith(b"\x89PNG\r\n\x1a\n"))
        self.assertEqual(header(response, "X-Cairn-Link"), "cairn://pair?id=server&secret=s1")
        self.assertEqual(header(response, "X-Cairn-Expires-At"), str(int(node.clock.seconds() + 600)))
        self.assertEqual(header(response, "Cache-Control"), "no-store")

    def test_qr_svg(self):
        """GET /pairing/qr?format=svg returns well-formed SVG; each call makes a new link."""
        node = Node(self)
        node.call("GET", "/pairing/qr?format=png")
        response, body = node.call("GET", "/pairing/qr?format=svg")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "Content-Type"), "image/svg+xml")
        root = ElementTree.fromstring(body)
        self.assertTrue(root.tag.endswith("svg"))
        self.assertEqual(header(response, "X-Cairn-Link"), "cairn://pair?id=server&secret=s2")

    def test_qr_other_format_400(self):
        """GET /pairing/qr?format=gif is 400 and creates no link."""
        node = Node(self)
        self.assertEqual(node.json("GET", "/pairing/qr?format=gif", 400), {"error": "format must be png or svg"})
        self.assertEqual(node.pairing.links, 0)


class StatsTests(unittest.TestCase):
    def test_missing_services(self):
        """Without a service or a report, its endpoints are 404 naming it."""
        node = Node(self)
        for path, name in [
            ("/mailbox", "the mailbox"),
            (f"/mailbox/{new_peer_id()[0]}", "the mailbox"),
            ("/relay", "the relay"),
            ("/sync", "the sync hub"),
            (f"/sync/{new_peer_id()[0]}/access", "the sync hub"),
            ("/history", "the history"),
            ("/node", "the node status"),
            ("/config", "the configuration report"),
        ]:
            self.assertEqual(node.json("GET", path, 404), {"error": f"{name} is not served by this node"}, path)

    def test_providers(self):
        """Stats providers (plain or Deferred) are served as they return."""
        known = new_peer_id()[0]
        node = Node(
            self,
            mailbox=SimpleNamespace(
                stats=lambda: {"enabled": True, "peers": [known], "messages": 3, "bytes": 300},
                peer_stats=lambda peer_id: succeed({"messages": 3}) if peer_id == known else None,
            ),
            relay=SimpleNamespace(stats=lambda: succeed({"circuits": 1, "capacity": 64, "peers": []})),
            sync=SimpleNamespace(stats=lambda: {"topics": [{"name": "notes", "devices": 2}]}),
        )
        self.assertEqual(node.json("GET", "/mailbox")["messages"], 3)
        self.assertEqual(node.json("GET", f"/mailbox/{known}"), {"messages": 3})
        self.assertEqual(node.json("GET", f"/mailbox/{new_peer_id()[0]}", 404)["error"][:15], "no mailbox for ")
        self.assertEqual(node.json("GET", "/relay")["capacity"], 64)
        self.assertEqual(node.json("GET", "/sync")["topics"][0]["name"], "notes")

    def test_mailbox_peer_invalid_id_400(self):
        """GET /mailbox/{peer_id} with a malformed id is 400."""
        Node(self).json("GET", "/mailbox/0OIl", 400)


class ErrorTests(unittest.TestCase):
    def test_unexpected_exception_500(self):
        """An unexpected exception is 500 {"error": "internal error"}, logged, with no traceback sent."""
        node = Node(self, relay=SimpleNamespace(stats=lambda: 1 / 0))
        response, body = node.call("GET", "/relay")
        self.assertEqual(response.code, 500)
        self.assertEqual(json.loads(body), {"error": "internal error"})
        self.assertNotIn(b"Traceback", body)
        self.assertNotIn(b"ZeroDivision", body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unserialisable_result_500(self):
        """A provider returning something JSON cannot encode is a logged 500."""
        node = Node(self, sync=SimpleNamespace(stats=lambda: {"topics": {object()}}))
        self.assertEqual(node.json("GET", "/sync", 500), {"error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_unknown_path_404_json(self):
        """An unknown path is a JSON 404, with or without a token."""
        node = Node(self)
        self.assertEqual(node.json("GET", "/nope", 404), {"error": "no such endpoint"})
        self.assertEqual(node.json("GET", "/nope", 404, token=None), {"error": "no such endpoint"})

    def test_non_utf8_path_400_json(self):
        """A path that is not UTF-8 is a JSON 400, logged as no error."""
        node = Node(self)
        self.assertEqual(node.json("GET", "/%ff", 400, token=None), {"error": "the path is not UTF-8"})

    def test_wrong_method_405_json(self):
        """A wrong method is a JSON 405 naming the allowed ones, with an Allow header."""
        node = Node(self)
        response, body = node.call("GET", "/peers/approve")
        self.assertEqual(response.code, 405)
        self.assertEqual(json.loads(body), {"error": "method GET not allowed; use POST"})
        self.assertEqual(header(response, "Allow"), "POST")
        # DELETE /peers/{peer_id} does not take the fixed names for peer ids.
        self.assertEqual(node.json("DELETE", "/peers/pending", 405)["error"], "method DELETE not allowed; use GET")
        self.assertEqual(node.json("DELETE", "/peers/approve", 405)["error"], "method DELETE not allowed; use POST")
        self.assertEqual(node.json("PUT", "/health", 405)["error"], "method PUT not allowed; use GET")


class MetricsEndpointTests(unittest.TestCase):
    def test_metrics(self):
        """GET /metrics serves the Prometheus text with the core cairn metrics, peer counts refreshed."""
        node = Node(self)
        node.paired()
        node.paired()
        node.pending()
        node.add_session(new_peer_id()[0], attached=True)
        node.add_session(new_peer_id()[0], attached=False)
        node.add_session(new_peer_id()[0], attached=False)
        node.peer.unknown_type(0xF123)
        response, body = node.call("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(header(response, "Content-Type").startswith("text/plain"))
        text = body.decode("utf-8")
        for line in [
            'cairn_sessions{state="attached"} 1.0',
            'cairn_sessions{state="detached"} 2.0',
            'cairn_peers{state="paired"} 2.0',
            'cairn_peers{state="pending"} 1.0',
            'cairn_peers{state="revoked"} 0.0',
            "cairn_unknown_types_total 1.0",
            f'cairn_build_info{{version="{__version__}"}} 1.0',
        ]:
            self.assertIn(line + "\n", text)

    def test_metrics_no_token_leak(self):
        """The metrics text holds no token and no peer id."""
        node = Node(self)
        peer_id = node.paired()
        node.add_session(peer_id)
        _, body = node.call("GET", "/metrics")
        self.assertNotIn(TOKEN.encode(), body)
        self.assertNotIn(peer_id.encode(), body)


def _rules():
    """(OpenAPI path, method) for every Klein route."""
    routes = set()
    for rule in ManagementAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def _rules_upper():
    return {(path, method.upper()) for path, method in _rules()}


def _documented(document):
    return {(path, method) for path, item in document["paths"].items() for method in item}


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


class OpenAPITests(unittest.TestCase):
    def setUp(self):
        self.document = openapi_document(__version__)

    def test_routes_match_document(self):
        """Every Klein route is in the OpenAPI document, and every documented operation is a route."""
        self.assertEqual(_rules(), _documented(self.document))
        self.assertEqual(len(_rules()), 26)

    def test_served(self):
        """GET /openapi.json serves the document without a token."""
        node = Node(self)
        self.assertEqual(node.json("GET", "/openapi.json", token=None), self.document)

    def test_security(self):
        """Only /health and /openapi.json are public; the rest inherit the bearer requirement and document 401."""
        self.assertEqual(self.document["openapi"], "3.1.0")
        self.assertEqual(self.document["security"], [{"bearerAuth": []}])
        scheme = self.document["components"]["securitySchemes"]["bearerAuth"]
        self.assertEqual((scheme["type"], scheme["scheme"]), ("http", "bearer"))
        for path, item in self.document["paths"].items():
            for operation in item.values():
                if path in PUBLIC_PATHS:
                    self.assertEqual(operation["security"], [], path)
                else:
                    self.assertNotIn("security", operation, path)
                    self.assertIn("401", operation["responses"], path)

    def test_references_resolve(self):
        """Every $ref points at a component that exists, and the error schema is {"error": string}."""
        components = self.document["components"]
        for ref in _refs(self.document):
            _, section, name = ref.rsplit("/", 2)
            self.assertIn(name, components[section], ref)
        error = components["schemas"]["Error"]
        self.assertEqual(error["required"], ["error"])
        self.assertEqual(error["properties"]["error"]["type"], "string")

    def test_operations_complete(self):
        """Each operation has a unique id, a success response, declared path parameters and a body when it reads one."""
        ids = []
        for path, item in self.document["paths"].items():
            for operation in item.values():
                ids.append(operation["operationId"])
                self.assertTrue(any(code.startswith("2") for code in operation["responses"]), path)
                declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
                self.assertEqual(declared, set(re.findall(r"{(\w+)}", path)), path)
                if path in ("/peers/approve", "/peers/reject"):
                    self.assertIn("requestBody", operation)
        self.assertEqual(len(ids), len(set(ids)))


class SiteTests(unittest.TestCase):
    def _site(self):
        self.node = Node(self)
        self.clock = task.Clock()
        return make_site(self.node.api, timeout=17, reactor=self.clock)

    def _send(self, site, raw):
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        self.addCleanup(protocol.connectionLost, None)
        return protocol, transport

    def test_site_settings(self):
        """make_site turns tracebacks off, sets the idle timeout and disables form parsing."""
        site = self._site()
        self.assertFalse(site.displayTracebacks)
        self.assertEqual(site.timeOut, 17)
        self.assertFalse(site._parsePOSTFormSubmission)

    def test_site_serves_api(self):
        """A raw HTTP request through the Site reaches the API."""
        site = self._site()
        _, transport = self._send(site, b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertIn(b'"status": "ok"', transport.value())

    def test_site_body_limit(self):
        """Through the Site, an oversized body is buffered only up to the limit and answered with 413."""
        site = self._site()
        pending = self.node.pending()
        body = json.dumps({"peer_id": pending, "pad": "x" * (2 * BODY_LIMIT)}).encode()
        head = (
            b"POST /peers/approve HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        protocol, transport = self._send(site, head + body)
        self.assertIn(b"HTTP/1.1 413 Request Entity Too Large", transport.value())
        self.assertEqual(self.node.trust.records[pending].state, PENDING)

    def test_site_drops_endless_body(self):
        """Through the Site, a client sending far more than the limit is disconnected."""
        site = self._site()
        head = b"POST /peers/approve HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        protocol, transport = self._send(site, head)
        chunk = b"%x\r\n%s\r\n" % (BODY_LIMIT, b"x" * BODY_LIMIT)
        for _ in range(20):
            protocol.dataReceived(chunk)
        self.assertTrue(transport.disconnecting)

    def test_site_no_traceback(self):
        """Through the Site, an internal error shows no traceback."""
        self.node = Node(self, relay=SimpleNamespace(stats=lambda: 1 / 0))
        site = make_site(self.node.api, reactor=task.Clock())
        raw = b"GET /relay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        _, transport = self._send(site, raw)
        self.assertIn(b"500 Internal Server Error", transport.value())
        self.assertNotIn(b"Traceback", transport.value())
        self.assertNotIn(b"ZeroDivision", transport.value())
        self.flushLoggedErrors(ZeroDivisionError)


class ModuleTests(unittest.TestCase):
    def test_no_app_run(self):
        """The app module never starts a server itself (no app.run)."""
        for module in (app_mod, peer_routes, service_routes):
            with open(module.__file__, encoding="utf-8") as f:
                self.assertNotIn(".run(", f.read())


DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "management.md")
DOC_PAIRED = "QmX94g6gcY7xsJ5GXACF2WnXUykf2ue3BnCDcmGmEHAXK7"
DOC_PENDING = "QmWUGgbBaSWVfY81uDmiAr6y4ZXCRAnYaw4psH5PdBTD7Y"


def doc_curls():
    """Every curl command in docs/management.md, as argument lists."""
    with open(DOCS, encoding="utf-8") as f:
        text = f.read()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.startswith("curl "):
                yield shlex.split(command)


def curl_request(args):
    """(method, path, headers, body) of a curl argument list."""
    method, headers, data, url = None, {}, None, None
    words = iter(args[1:])
    for word in words:
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(": ")
            headers.setdefault(name.encode(), []).append(value.encode())
        elif word == "-d":
            data = next(words).encode()
        elif word in ("-o", "-D"):
            next(words)
        elif word.startswith("http"):
            url = word
    method = method or ("POST" if data is not None else "GET")
    return method, url[len(BASE):], headers, data


class DocsTests(unittest.TestCase):
    def test_doc_curls_work(self):
        """Every curl command in docs/management.md (the seed's included) succeeds against the API."""
        seen = set()
        for args in doc_curls():
            node = Node(
                self,
                mailbox=SimpleNamespace(
                    stats=lambda: {"enabled": True, "peers": [], "messages": 0, "bytes": 0},
                    peer_stats=lambda peer_id: {"messages": 0},
                    set_peer_limits=lambda peer_id, body: {"peer_id": peer_id, "limits": body},
                ),
                relay=SimpleNamespace(
                    stats=lambda: {"circuits": 0, "capacity": None, "peers": []},
                    put_quota=lambda peer_id, body: {"peer_id": peer_id, "quota": body["max_bytes"]},
                ),
                sync=SimpleNamespace(
                    stats=lambda: {"topics": []},
                    access_report=lambda peer_id: {"peer_id": peer_id},
                    set_access=lambda peer_id, body: {"peer_id": peer_id, "access": body},
                ),
                reports=NodeReports(
                    history=lambda: {"interval": 60.0, "now": None, "series": [], "minutes": []},
                    status=lambda: {"peer_id": None, "listeners": [], "warnings": []},
                    config=lambda: {"settings": []},
                ),
            )
            key = os.urandom(32)
            node.trust.records[DOC_PAIRED] = PeerRecord(DOC_PAIRED, key, PAIRED, name="phone", method="pin")
            node.trust.records[DOC_PENDING] = PeerRecord(DOC_PENDING, key, PENDING, name="laptop")
            method, path, headers, data = curl_request(
                [a.replace("your-secret-token", TOKEN).replace("$TOKEN", TOKEN).replace("5Hb7...", DOC_PENDING)
                 for a in args]
            )
            response, body = node.call(method, path, token=None, headers=headers, data=data)
            self.assertLess(response.code, 300, (args, body))
            seen.add((re.sub(r"Qm\w+", "{peer_id}", path.split("?")[0]), method))
        self.assertEqual(seen, _rules_upper())
