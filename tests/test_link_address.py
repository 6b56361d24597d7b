"""
The address of a pairing link (docs/protocol.md §20.3.2): the documented
vectors, the node writing the protocol's form, and links written before
in Twisted's endpoint form still pairing.
"""

import os
import re
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from cairn.addresses import derived_addresses
from cairn.pairing import codes
from cairn.pairing.client import pair_link
from tests._harness import eventually
from tests._pairing_harness import PairingScenarioMixin

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")


def documented_addresses():
    """(cases [(text, canonical or None)], link fields {name: [values]}) of the document's block."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"<!-- addr-vector-begin -->\n```text\n(.*?)```\n<!-- addr-vector-end -->", text, re.S)
    cases, link = [], {}
    for line in block.group(1).splitlines():
        if line.startswith("link."):
            name, _, value = line.partition(": ")
            link.setdefault(name[len("link.") :], []).append(value)
            continue
        given, _, result = line.partition(" => ")
        cases.append((given, None if result == "refused" else result))
    return cases, link


class VectorTests(unittest.TestCase):
    def setUp(self):
        self.cases, self.link = documented_addresses()

    def test_cases_present(self):
        """The document lists addresses of every scheme, legacy forms and refusals."""
        self.assertGreaterEqual(len(self.cases), 15)
        self.assertTrue(any(given.startswith("tcp:host=") for given, _ in self.cases))
        self.assertTrue(any(result is None for _, result in self.cases))

    def test_addresses(self):
        """Each documented address reads to its documented canonical form, or is refused."""
        for given, canonical in self.cases:
            if canonical is None:
                self.assertRaises(codes.InvalidCode, codes.format_address, given)
            else:
                self.assertEqual(codes.format_address(given), canonical, given)
                self.assertEqual(codes.format_address(canonical), canonical, "canonical is a fixed point")

    def test_link(self):
        """The documented link is what the node writes, and reads back to canonical addresses."""
        v = self.link
        link = codes.Link(v["peer"][0], tuple(v["addr"]), bytes.fromhex(v["secret"][0]), int(v["exp"][0]))
        self.assertEqual(link.to_uri(), v["uri"][0])
        read = codes.parse_link(v["uri"][0])
        self.assertEqual(read.addresses, tuple(codes.format_address(a) for a in v["addr"]))


class AddressTests(unittest.TestCase):
    def test_dial_strings(self):
        """tcp:// and tls:// become Twisted client endpoints (IPv6 colons escaped); WebSocket URLs stay URLs."""
        self.assertEqual(codes.dial_string("tcp://[::1]:7400"), "tcp:host=\\:\\:1:port=7400")
        self.assertEqual(codes.dial_string("tls://node.example:7443"), "tls:host=node.example:port=7443")
        self.assertEqual(codes.dial_string("ws://node.example"), "ws://node.example:80/")

    def test_unreadable_addresses_skipped(self):
        """A reader skips an address of an unknown scheme and keeps the others."""
        addrs = "addr=quic%3A%2F%2Fh%3A1&addr=tcp%3A%2F%2Fh%3A1"
        uri = f"cairn://pair?v=1&peer=QmPeer&{addrs}&secret={'A' * 22}&exp=5"
        self.assertEqual(codes.parse_link(uri).addresses, ("tcp://h:1",))

    def test_derived_addresses(self):
        """The node advertises its bound listeners in the protocol's form, not as endpoint strings."""

        class Port:
            def __init__(self, host, port):
                self.host, self.port = host, port

            def getHost(self):
                return self

        ports = {"tcp": Port("127.0.0.1", 7400), "websocket": Port("::1", 7401)}
        self.assertEqual(derived_addresses(ports), ("tcp://127.0.0.1:7400", "ws://[::1]:7401/"))


class LegacyLinkTests(PairingScenarioMixin, unittest.TestCase):
    """A link issued before this revision, with a Twisted endpoint string as its address."""

    @defer.inlineCallbacks
    def test_legacy_link_pairs(self):
        """A link whose addr is tcp:host=H:port=P still dials the node and pairs."""
        created = self.pairing.create_link()
        legacy = f"tcp:host=127.0.0.1:port={self.port_number}"
        uri = re.sub(r"addr=[^&]+", "addr=" + quote(legacy, safe=""), created["link"])
        self.assertIn("tcp%3Ahost%3D127.0.0.1", uri)
        client = self.make_client()
        session, result = yield eventually(pair_link(client, uri))
        self.assertEqual(result.peer_id, self.server.peer_id)

    @defer.inlineCallbacks
    def test_new_link_pairs(self):
        """The node's link carries tcp://host:port, and a client pairs through it."""
        created = self.pairing.create_link()
        self.assertIn(f"addr=tcp%3A%2F%2F127.0.0.1%3A{self.port_number}&", created["link"])
        session, result = yield eventually(pair_link(self.make_client(), created["link"]))
        self.assertEqual(result.method, "link")


