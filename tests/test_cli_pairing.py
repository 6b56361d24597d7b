"""
The device tools' pairing options: secrets come from the environment or
the terminal, never from the command line (cairn.cli.device).
"""

import argparse

from twisted.internet.defer import succeed
from twisted.trial import unittest

from cairn.cli import device as cli_pairing
from cairn.cli import mailbox as mailbox_cli
from cairn.cli import relay as relay_cli
from cairn.cli.device import SecretMissing, add_pairing_options, pairing_step


def parse(*argv):
    p = argparse.ArgumentParser()
    add_pairing_options(p)
    return p.parse_args(list(argv))


class PairingStepTests(unittest.TestCase):
    def setUp(self):
        self.calls = []
        self.patch(
            cli_pairing.pairing, "pair_psk", lambda s, psk, name: self.calls.append(("psk", psk, name)) or succeed(None)
        )
        self.patch(
            cli_pairing.pairing, "pair_pin", lambda s, pin, name: self.calls.append(("pin", pin, name)) or succeed(None)
        )

    def test_psk_from_environment(self):
        """--psk pairs with CAIRN_PSK."""
        step = pairing_step(parse("--psk"), "tool", environ={"CAIRN_PSK": "the key"})
        step(object())
        self.assertEqual(self.calls, [("psk", "the key", "tool")])

    def test_psk_missing(self):
        """--psk without CAIRN_PSK stops at once with a message naming the variable, not a secret."""
        error = self.assertRaises(SecretMissing, pairing_step, parse("--psk"), "tool", environ={})
        self.assertIn("CAIRN_PSK", str(error))

    def test_psk_takes_no_value(self):
        """A PSK written after --psk is not taken as one (it would be in argv for everyone to read)."""
        p = argparse.ArgumentParser()
        add_pairing_options(p)
        p.add_argument("command")
        args = p.parse_args(["--psk", "whoami"])
        self.assertEqual((args.psk, args.command), (True, "whoami"))
        for tool in (mailbox_cli, relay_cli):
            self.assertRaises(SystemExit, tool.parser().parse_args, ["--server", "s", "--psk", "KEY", "whoami"])

    def test_pin_from_environment_or_terminal(self):
        """--pin takes CAIRN_PIN, else asks on the terminal; an empty answer stops."""
        pairing_step(parse("--pin"), "tool", environ={"CAIRN_PIN": "ABCD-EFGH"})(object())
        asked = []
        step = pairing_step(parse("--pin"), "tool", environ={}, ask=lambda prompt: asked.append(prompt) or "1234-5678")
        step(object())
        self.assertEqual(self.calls, [("pin", "ABCD-EFGH", "tool"), ("pin", "1234-5678", "tool")])
        self.assertEqual(len(asked), 1)
        step = pairing_step(parse("--pin"), "tool", environ={}, ask=lambda prompt: " ")
        self.failureResultOf(step(object()), SecretMissing)

    def test_expect_peer_id_and_pins(self):
        """--expect-peer-id is parsed, and the pins live next to the identity file."""
        import os

        from cairn.pins import FilePins

        args = parse("--psk", "--expect-peer-id", "QmNode")
        self.assertEqual(args.expect_peer_id, "QmNode")
        self.assertIsNone(parse().expect_peer_id)
        args.identity = os.path.join(self.mktemp(), "me.key")
        pins = cli_pairing.device_pins(args)
        self.assertIsInstance(pins, FilePins)
        self.assertEqual(pins.path, args.identity + ".pins")

    def test_nothing(self):
        """Without either flag the step pairs nothing."""
        d = pairing_step(parse(), "tool", environ={"CAIRN_PSK": "k"})(object())
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.calls, [])
