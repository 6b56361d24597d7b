"""
The C{cairn-server} command.

C{cairn-server} and C{cairn-server run [options]} run the same service as
C{twistd -n cairn [options]}, in the foreground and without a pid file.
C{cairn-server pair} asks the running node for a pairing code; the admin
commands (C{status}, C{peers}, C{approve} ...) are in L{cairn.cli.admin}.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from twisted.python import usage

import cairn
from cairn.cli import admin
from cairn.startup import StartupError


def _parser() -> argparse.ArgumentParser:
    """The top-level parser: subcommands, C{--help}, C{--version}."""
    parser = argparse.ArgumentParser(
        prog="cairn-server",
        description="cairn server node: mailbox, relay, sync hub.",
        epilog="Without a command, 'run' is assumed. Settings come from CAIRN_* environment "
        "variables: 'cairn-server run --help' lists them. Admin commands exit with: "
        + "; ".join(f"{code} {meaning}" for code, meaning in admin.EXIT_CODES.items()) + ".",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {cairn.__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the server node in the foreground "
        "(options as for 'twistd cairn'; see 'cairn-server run --help')",
        add_help=False,
        # No prefix character: every word after "run", --help included, is
        # handed to the twistd plugin's own option parser untouched.
        prefix_chars="\0",
    )
    run.add_argument("options", nargs="*")
    pair = commands.add_parser(
        "pair",
        help="ask the running node for a pairing PIN, link or QR code",
        description="Ask the running node (through its management API on loopback) for a single-use "
        "pairing code. The token comes from --token-file, CAIRN_MGMT_TOKEN, CAIRN_MGMT_TOKEN_FILE or "
        "the node's <data dir>/mgmt.token.",
    )
    what = pair.add_mutually_exclusive_group(required=True)
    what.add_argument("--pin", dest="kind", action="store_const", const="pin", help="a PIN (XXXX-XXXX)")
    what.add_argument("--link", dest="kind", action="store_const", const="link", help="a cairn://pair link")
    what.add_argument("--qr", dest="kind", action="store_const", const="qr", help="a link drawn as a QR code")
    what.add_argument("--id", dest="kind", action="store_const", const="id", help="the node's peer id (to pin)")
    pair.add_argument("--url", help="management API URL (default: derived from CAIRN_MGMT_LISTEN)")
    pair.add_argument("--token-file", metavar="PATH", help="read the management token from PATH")
    psk = commands.add_parser(
        "psk",
        help="rotate or disable the running node's pre-shared key",
        description="Rotate the running node's PSK (a generated one, or one read from stdin with "
        "--psk-stdin; printed once) or disable PSK pairing. Takes effect at once and survives restarts.",
    )
    psk.add_argument("action", choices=("rotate", "disable"))
    psk.add_argument("--psk-stdin", action="store_true", help="rotate: read the new PSK from stdin (one line)")
    psk.add_argument("--url", help="management API URL (default: derived from CAIRN_MGMT_LISTEN)")
    psk.add_argument("--token-file", metavar="PATH", help="read the management token from PATH")
    admin.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{cairn-server} with C{argv} (default: C{sys.argv[1:]}).

    @return: the process exit status.
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "pair":
        return pair(args.kind, args.url, args.token_file)
    if args.command == "psk":
        return psk(args.action, args.url, args.psk_stdin, args.token_file)
    if args.command in admin.COMMANDS:
        return admin.run(args, os.environ, sys.stdout, sys.stderr)
    return run(getattr(args, "options", []))


def pair(kind: str, url: str | None, token_file: str | None = None) -> int:
    """Print a pairing PIN, link or QR code issued by the running node."""
    from cairn.cli.pairing_api import PairCommandError
    from cairn.cli.pairing_api import pair as ask

    try:
        # Wakes a socket-activated node that never ran, so that its token
        # file exists before cairn.cli.pairing_api reads it.
        admin.connect(os.environ, url, token_file)
    except admin.AdminError:
        pass  # cairn.cli.pairing_api reports the problem in its own words
    try:
        sys.stdout.write(ask(kind, os.environ, url, token_file=token_file) + "\n")
    except PairCommandError as e:
        sys.stderr.write(f"cairn-server pair: {e}\n")
        return 1
    if kind in ("link", "qr"):
        warning = admin.host_name_warning(os.environ, url)
        if warning:
            sys.stderr.write(f"cairn-server pair: warning: {warning}\n")
    return 0


def psk(action: str, url: str | None, from_stdin: bool = False, token_file: str | None = None) -> int:
    """Rotate (printing the new PSK once) or disable the running node's PSK."""
    import os

    from cairn.cli.pairing_api import PairCommandError
    from cairn.cli.pairing_api import psk as change

    new_psk = sys.stdin.readline().rstrip("\r\n") if from_stdin else None
    try:
        sys.stdout.write(change(action, os.environ, url, new_psk, token_file) + "\n")
    except PairCommandError as e:
        sys.stderr.write(f"cairn-server psk: {e}\n")
        return 1
    return 0


def run(options: Sequence[str]) -> int:
    """
    Run the node in the foreground with C{twistd cairn} C{options}.

    The options (and the environment) are checked first, so that a mistake
    is reported in one line, without twistd's whole usage text.

    @return: the process exit status.
    """
    from cairn.tap import Options  # the whole node: only for this command

    try:
        Options().parseOptions(list(options))
    except usage.UsageError as e:
        sys.stderr.write(f"cairn-server run: {e}\n")
        return 2
    except StartupError as e:
        sys.stderr.write(f"cairn-server run: {e.problem}\n")
        return 2
    return _twistd(["--nodaemon", "--pidfile=", "cairn", *options])


def _twistd(argv: list[str]) -> int:
    """Run twistd with C{argv} (without the program name) until it stops."""
    from twisted.scripts.twistd import ServerOptions, runApp

    config = ServerOptions()
    try:
        config.parseOptions(argv)
    except usage.UsageError as e:
        sys.stderr.write(f"cairn-server run: twistd {' '.join(argv)}: {e}\n")
        return 2
    runApp(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
