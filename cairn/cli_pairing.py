"""
Pairing before a command, for the device command-line tools
(C{cairn-mailbox}, C{cairn-relay}).

The secrets never come from the command line, where any user of the
machine can read them (C{ps}, C{/proc/PID/cmdline}) and shells keep them
in their history: C{--psk} reads the node's pre-shared key from the
C{CAIRN_PSK} environment variable, C{--pin} reads the PIN from C{CAIRN_PIN}
or asks for it on the terminal.
"""

import getpass
import os

from twisted.internet import defer

from cairn.pairing import client as pairing


class SecretMissing(ValueError):
    """A pairing option was given but its secret is nowhere to be found."""


def add_pairing_options(parser) -> None:
    """Add the mutually exclusive C{--psk} and C{--pin} flags to C{parser}."""
    pair = parser.add_mutually_exclusive_group()
    pair.add_argument(
        "--psk",
        action="store_true",
        help="pair first with the node's pre-shared key, read from $CAIRN_PSK",
    )
    pair.add_argument(
        "--pin",
        action="store_true",
        help="pair first with a PIN from `cairn-server pair --pin`, read from $CAIRN_PIN or asked for",
    )


def pairing_step(args, name: str, environ=None, ask=getpass.getpass):
    """
    What C{args} ask for, as a callable taking the session with the node
    and returning a Deferred (None: no pairing). The secret is read now, so
    that a missing one stops the command before it connects.

    @raise SecretMissing: C{--psk} without C{CAIRN_PSK}, or C{--pin}
        without C{CAIRN_PIN} and no answer on the terminal.
    """
    environ = os.environ if environ is None else environ
    if args.psk:
        psk = environ.get("CAIRN_PSK", "")
        if not psk:
            raise SecretMissing("--psk: set CAIRN_PSK in the environment to the node's pre-shared key")
        return lambda session: pairing.pair_psk(session, psk, name=name)
    if args.pin:
        pin = environ.get("CAIRN_PIN", "")
        if not pin:
            try:
                pin = ask("PIN (from `cairn-server pair --pin`): ")
            except (EOFError, OSError):
                pin = ""
        if not pin.strip():
            raise SecretMissing("--pin: set CAIRN_PIN in the environment or type the PIN when asked")
        return lambda session: pairing.pair_pin(session, pin, name=name)
    return lambda session: defer.succeed(None)
