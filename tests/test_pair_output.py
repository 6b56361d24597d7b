"""
What C{cairn-server pair} prints (docs/protocol.md §20.4.6), line by line.
"""

import json
import re

from twisted.trial import unittest

from cairn.cli import pairing_api as cli_pair

LINK = "cairn://pair?v=1&peer=QmU9Ssr7tTosi3mMX2rivKcX3BhKvajyVjZ7S5J5JUgQLT&addr=tcp%3A%2F%2Fh%3A1&secret=QEFCQ0RFRkdISUpLTE1OTw&exp=1700003600"
VALID = "(valid until 2023-11-14 23:13:20 UTC, single use)"


class PrintedFormTests(unittest.TestCase):
    def setUp(self):
        answers = {
            "/pairing/pin": {"pin": "7K3M-Q9TZ", "expires_at": 1700003600.0},
            "/pairing/link": {"link": LINK, "expires_at": 1700003600},
        }
        self.patch(cli_pair, "call", lambda url, token, method, path: ({}, json.dumps(answers[path]).encode()))
        self.env = {"CAIRN_MGMT_TOKEN": "t", "CAIRN_DATA_DIR": self.mktemp()}

    def test_pin(self):
        """--pin prints the PIN in its display form, then its expiry in UTC."""
        self.assertEqual(cli_pair.pair("pin", self.env).split("\n"), ["7K3M-Q9TZ", VALID])

    def test_link(self):
        """--link prints the link URI alone on the first line, then its expiry."""
        self.assertEqual(cli_pair.pair("link", self.env).split("\n"), [LINK, VALID])

    def test_qr(self):
        """--qr prints the QR code, then the same two lines as --link."""
        lines = cli_pair.pair("qr", self.env).split("\n")
        self.assertEqual(lines[-2:], [LINK, VALID])
        self.assertEqual([line for line in lines if re.match("cairn://", line)], [LINK])
        self.assertGreater(len(lines), 10)
