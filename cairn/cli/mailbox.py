"""
C{cairn-mailbox}: send and receive store-and-forward messages through a
node, for humans.

    CAIRN_PSK=... cairn-mailbox --identity ~/.cairn.key --server tcp:host=node:port=7400 --psk whoami
    cairn-mailbox --identity ~/.cairn.key --server ws://node:7401/ send PEER_ID "text"
    cairn-mailbox --identity ~/.cairn.key --server ws://node:7401/ receive

The identity key file (a 32-byte Ed25519 seed) is created with mode 0600
on first use. With C{--psk} or C{--pin} the command pairs first (harmless
when already paired), the secret read from C{CAIRN_PSK} or C{CAIRN_PIN}
(or, for a PIN, asked for on the terminal), never from the command line
(L{cairn.cli.device}). C{receive} prints what is waiting, one line per
message (sender, then the text), and exits after C{--wait} seconds
without a new message; on a device that is not paired with the node (or
was revoked) it says so and exits with status 1, so that "nothing
waiting" (status 0) is never confused with "not allowed to receive".

C{--server} may name several nodes of one deployment (repeated, or
comma-separated); they are tried in order until one answers.

Exit statuses: 0 done, 1 the command failed (one line on stderr), 2 bad
command line.  C{--name} is the name the node shows for this device
when it pairs (default C{cairn-mailbox}).
"""

import argparse
import sys

from twisted.internet import defer, task

from cairn.cli.device import (
    DEFAULT_IDENTITY,
    add_name_option,
    add_pairing_options,
    add_server_option,
    device_pins,
    load_identity,
    pairing_step,
    react,
    server_addresses,
)
from cairn.client import Client
from cairn.mailbox.client import UnknownRecipient
from cairn.session.session import SessionClosed
from cairn.wire.constants import CloseCode


def parser():
    p = argparse.ArgumentParser(prog="cairn-mailbox", description="Store-and-forward messages through a cairn node.")
    p.add_argument("--identity", default=DEFAULT_IDENTITY, help="identity key file (created 0600)")
    add_server_option(p)
    add_pairing_options(p)
    add_name_option(p, "cairn-mailbox")
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser("whoami", help="print this identity's peer id")
    send = commands.add_parser("send", help="send TEXT to PEER_ID")
    send.add_argument("peer_id")
    send.add_argument("text")
    receive = commands.add_parser("receive", help="print waiting messages, then exit")
    receive.add_argument("--wait", type=float, default=2.0, help="seconds without a message before exiting")
    return p


@defer.inlineCallbacks
def run(reactor, argv, out=None):
    """Do what C{argv} says; fires with the exit status."""
    from cairn.mailbox import client as mailbox
    from cairn.mailbox import replay

    out = out or sys.stdout
    args = parser().parse_args(argv)
    identity = load_identity(args.identity)
    if args.command == "whoami" and not (args.psk or args.pin or args.approval):
        print(identity.peer_id, file=out)
        return 0
    pair = pairing_step(args, args.name)
    client = Client(reactor, identity, pins=device_pins(args))
    received = []
    mailbox.set_inbox(client.peer, lambda sender, mid, data: received.append((sender, data)))
    if args.command == "receive":
        # Ids already shown are kept next to the identity, so a node cannot replay them later (§21.11).
        seen = replay.SeenFile(args.identity + ".seen")
        mailbox.set_replay_guard(client.peer, replay.ReplayGuard(reactor.seconds, seen))
    session = yield client.connect(server_addresses(args), expect_peer_id=args.expect_peer_id)
    try:
        yield pair(session)
        if args.command == "whoami":
            print(identity.peer_id, file=out)
        elif args.command == "send":
            result = yield mailbox.forward(session, args.peer_id, args.text.encode("utf-8"))
            state = "already stored" if result.duplicate else "stored"
            print(f"{state} on the node as {result.message_id.hex()}", file=out)
        else:
            yield require_paired(mailbox.mailbox(client.peer), session, identity.peer_id)
            seen = -1
            while seen != len(received):
                seen = len(received)
                yield task.deferLater(reactor, args.wait, lambda: None)
            for sender, data in received:
                print(f"{sender}: {data.decode('utf-8', 'replace')}", file=out)
    finally:
        if session.closed is None:
            yield client.close(session)
    return 0


class NotPaired(Exception):
    """This device is not paired with the node (never was, or was revoked)."""


@defer.inlineCallbacks
def require_paired(box, session, peer_id):
    """
    Fail with L{NotPaired} unless the node serves this device's mailbox:
    any mailbox request from an unpaired (or revoked) peer ends its session
    with NOT_PAIRED, so ask for our own key and see.
    """
    try:
        yield box.peer_key(session, peer_id)
    except SessionClosed as e:
        if e.code in (CloseCode.NOT_PAIRED, CloseCode.PAIRING_REVOKED):
            raise NotPaired(
                "this device is not paired with the node (or was revoked): pair it with --psk or --pin, "
                "or have the operator approve it (cairn-server approve " + peer_id + ")"
            ) from None
        raise
    except UnknownRecipient:
        # Paired (the node answered) but it holds no key under our id:
        # it still serves our mailbox.
        return


def main(argv=None):
    """Console entry point."""
    react("cairn-mailbox", run, argv)


if __name__ == "__main__":
    main()
