"""
What the device command-line tools (C{cairn-mailbox}, C{cairn-relay})
share: the identity file, C{--name}, running under the reactor, and
pairing before a command.

The secrets never come from the command line, where any user of the
machine can read them (C{ps}, C{/proc/PID/cmdline}) and shells keep them
in their history: C{--psk} reads the node's pre-shared key from the
C{CAIRN_PSK} environment variable, C{--pin} reads the PIN from C{CAIRN_PIN}
or asks for it on the terminal (in a thread: the prompt blocks).

The node is pinned (docs/protocol.md §20.7.1): after the first pairing
its peer id is kept in C{<identity file>.pins} and every later run
refuses another node at that address; C{--expect-peer-id} (from
C{cairn-server pair --id}) refuses any other node from the first
connection on.
"""

import getpass
import os
import sys

from twisted.internet import defer, task, threads

from cairn.crypto.identity import Identity, load_or_create_file
from cairn.pairing import client as pairing
from cairn.pins import FilePins, pins_path


class SecretMissing(ValueError):
    """A pairing option was given but its secret is nowhere to be found."""


def add_pairing_options(parser) -> None:
    """Add the mutually exclusive C{--psk}, C{--pin} and C{--approval} flags to C{parser}."""
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
    pair.add_argument(
        "--approval",
        action="store_true",
        help="ask the operator to approve this device first, and wait until `cairn-server approve` (or reject)",
    )
    parser.add_argument(
        "--expect-peer-id",
        metavar="PEER_ID",
        help="refuse any node whose peer id is not this one (see `cairn-server pair --id`)",
    )


def add_server_option(parser) -> None:
    """
    C{--server}: the node's address; several for the nodes of one
    deployment (docs/scaling.md), by repeating the option or separating
    them with commas (like C{CAIRN_SIGNAL_SERVERS}). They are tried in
    order until one answers; see L{server_addresses}.
    """
    parser.add_argument(
        "--server",
        action="append",
        required=True,
        metavar="ADDRESS",
        help="node address: tcp:host=H:port=P or ws://H:P/; several nodes of one deployment: "
        "repeat the option or separate them with commas (tried in order)",
    )


def server_addresses(args) -> list:
    """Every address given with C{--server}, in order, commas split, blanks and duplicates dropped."""
    found = []
    for value in args.server:
        for item in value.split(","):
            item = item.strip()
            if item and item not in found:
                found.append(item)
    if not found:
        raise ValueError("--server: no node address given")
    return found


def device_pins(args):
    """The pin store of the device whose identity file is C{args.identity}."""
    return FilePins(pins_path(args.identity))


def _announce(result, name):
    # The user should know which node they now trust, and whether it is pinned.
    if result is not None and not result.already_paired:
        if result.verified:
            print(f"{name}: paired with node {result.peer_id} (pinned)", file=sys.stderr)
        else:
            print(
                f"{name}: approved by node {result.peer_id}: compare it with `cairn-server pair --id` "
                "on the node (not pinned; use --expect-peer-id to check it)",
                file=sys.stderr,
            )
    return result


def _ask_in_thread(prompt: str):
    # The terminal prompt blocks: keep it off the reactor thread.
    return threads.deferToThread(getpass.getpass, prompt)


def pairing_step(args, name: str, environ=None, ask=_ask_in_thread):
    """
    What C{args} ask for, as a callable taking the session with the node
    and returning a Deferred (None: no pairing). A secret from the
    environment is read now, so that a missing one stops the command
    before it connects; a PIN not in the environment is asked for (through
    C{ask(prompt)}, a string or a Deferred of one) when the step runs.

    @raise SecretMissing: C{--psk} without C{CAIRN_PSK}; for C{--pin}
        without C{CAIRN_PIN} and no answer, the step's Deferred fails so.
    """
    environ = os.environ if environ is None else environ
    if args.psk:
        psk = environ.get("CAIRN_PSK", "")
        if not psk:
            raise SecretMissing("--psk: set CAIRN_PSK in the environment to the node's pre-shared key")
        return lambda session: pairing.pair_psk(session, psk, name=name).addCallback(_announce, name)
    if args.pin:
        pin = environ.get("CAIRN_PIN", "")

        def pin_step(session):
            d = defer.succeed(pin) if pin else defer.maybeDeferred(ask, "PIN (from `cairn-server pair --pin`): ")
            d.addErrback(no_terminal)
            d.addCallback(paired, session)
            return d

        def no_terminal(failure):
            failure.trap(EOFError, OSError)  # no terminal to ask on: no answer
            return ""

        def paired(answer, session):
            if not answer.strip():
                raise SecretMissing("--pin: set CAIRN_PIN in the environment or type the PIN when asked")
            return pairing.pair_pin(session, answer, name=name).addCallback(_announce, name)

        return pin_step
    if getattr(args, "approval", False):

        def waiting():
            print(f"{name}: waiting for the operator to approve this device (cairn-server pending)", file=sys.stderr)

        def approval_step(session):
            expected = getattr(args, "expect_peer_id", None)
            d = pairing.request_approval(session, name=name, on_pending=waiting, expect_peer_id=expected)
            return d.addCallback(_announce, name)

        return approval_step
    return lambda session: defer.succeed(None)


DEFAULT_IDENTITY = os.path.join(os.path.expanduser("~"), ".cairn-mailbox.key")


def load_identity(path: str) -> Identity:
    """The identity in C{path}, created (mode 0600) if the file does not exist."""
    return load_or_create_file(path)


def add_name_option(parser, default: str) -> None:
    """C{--name}: what the node calls this device when it pairs."""
    parser.add_argument(
        "--name", default=default, help=f"this device's name, shown by the node once paired (default: {default})"
    )


def react(prog, run, argv=None):
    """
    Run C{run(reactor, argv)} under the reactor as command C{prog}: a
    failure is one line on stderr and exit status 1; a non-zero result is
    the exit status.
    """

    def go(reactor):
        d = run(reactor, sys.argv[1:] if argv is None else argv)

        def failed(failure):
            if failure.check(SystemExit):
                # argparse: --help (0) or a usage error (2), already printed.
                return failure.value.code
            print(f"{prog}: {failure.getErrorMessage()}", file=sys.stderr)
            return 1

        return d.addErrback(failed).addCallback(_exit_code)

    task.react(go)


def _exit_code(code):
    if code:
        raise SystemExit(code)
