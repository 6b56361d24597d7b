"""
C{cairn-relay}: a relay circuit between two devices through a node, for
humans (a demonstration of L{cairn.relay.client}).

    CAIRN_PSK=... cairn-relay --identity laptop.key --server tcp:host=node:port=7400 --psk listen --count 1
    CAIRN_PSK=... cairn-relay --identity phone.key --server tcp:host=node:port=7400 --psk send PEER_ID "text"

C{listen} connects to the node (pairing first with C{--psk}/C{--pin}, the
secret from C{CAIRN_PSK}/C{CAIRN_PIN}: L{cairn.cli.device}),
prints C{listening as PEER_ID}, accepts circuits, prints each text
received on channel C{chat} (sender, then the text) and echoes it back;
it exits once C{--count} texts were echoed and the sender closed, or on
Ctrl-C. C{send} opens a circuit to PEER_ID (retrying for C{--wait}
seconds while the peer is offline), sends TEXT on channel C{chat} and
prints the echo. The node relays ciphertext only: the circuit carries an
end-to-end session between the two devices. C{--server} may name several
nodes of one deployment (repeated, or comma-separated), tried in order.
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
from cairn.wire.constants import RouteStatus

CHANNEL = "chat"
RETRY_EVERY = 0.25


def parser():
    p = argparse.ArgumentParser(prog="cairn-relay", description="A relay circuit between two devices via a cairn node.")
    p.add_argument("--identity", default=DEFAULT_IDENTITY, help="identity key file (created 0600)")
    add_server_option(p)
    add_pairing_options(p)
    add_name_option(p, "cairn-relay")
    commands = p.add_subparsers(dest="command", required=True)
    listen = commands.add_parser("listen", help="accept circuits, print and echo what arrives on 'chat'")
    listen.add_argument("--count", type=int, default=0, help="exit after echoing this many texts (0: never)")
    send = commands.add_parser("send", help="send TEXT to PEER_ID over a circuit and print the echo")
    send.add_argument("peer_id")
    send.add_argument("text")
    send.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the peer and its echo")
    return p


@defer.inlineCallbacks
def run(reactor, argv, out=None):
    """Do what C{argv} says; fires with the exit status."""
    from cairn.relay import client as relay

    out = out or sys.stdout
    args = parser().parse_args(argv)
    pair = pairing_step(args, args.name)
    client = Client(reactor, load_identity(args.identity), pins=device_pins(args))
    endpoint = relay.relay_endpoint(client)
    node = yield client.connect(server_addresses(args), expect_peer_id=args.expect_peer_id)
    try:
        yield pair(node)
        if args.command == "listen":
            yield _listen(endpoint, node, args.count, out)
        else:
            yield _send(reactor, client, node, args, out)
    finally:
        if node.closed is None:
            yield client.close(node)
    return 0


def _listen(endpoint, node, count, out):
    done = defer.Deferred()
    echoed = [0]

    def finish(result=None):
        if not done.called:
            done.callback(result)

    def accepted(session):
        def channel(chat):
            if chat.name != CHANNEL:
                return

            def data(text):
                print(f"{session.remote_peer_id}: {text.decode('utf-8', 'replace')}", file=out, flush=True)
                chat.send(text)
                echoed[0] += 1

            chat.on_data = data

        session.on_channel = channel
        # Exit once enough was echoed and the sender hung up.
        session.on_close = lambda closed: finish() if count and echoed[0] >= count else None

    class SenderGone:
        """The sender's process may exit before its Close goes out: its circuit's loss counts as hanging up."""

        @staticmethod
        def session_detached(session):
            if count and echoed[0] >= count and session.session_id not in endpoint.relayed:
                finish()

    endpoint.on_session = accepted
    endpoint.peer.add_observer(SenderGone())
    node.on_close = lambda closed: done.called or done.errback(RuntimeError(f"the node closed the session: {closed}"))
    print(f"listening as {endpoint.client.peer_id}", file=out, flush=True)
    return done


@defer.inlineCallbacks
def _send(reactor, client, node, args, out):
    from cairn.relay.client import RouteRefused, relay_to

    deadline = reactor.seconds() + args.wait
    while True:
        try:
            session = yield relay_to(client, node, args.peer_id)
            break
        except RouteRefused as e:
            if e.status != RouteStatus.OFFLINE or reactor.seconds() >= deadline:
                raise
            yield task.deferLater(reactor, RETRY_EVERY, lambda: None)
    try:
        echo = defer.Deferred()
        chat = session.open_channel(CHANNEL)
        chat.on_data = lambda data: echo.called or echo.callback(data)
        chat.send(args.text.encode("utf-8"))
        data = yield echo.addTimeout(max(deadline - reactor.seconds(), 1.0), reactor)
        print(data.decode("utf-8", "replace"), file=out, flush=True)
    finally:
        if session.closed is None:
            session.close()


def main(argv=None):
    """Console entry point."""
    react("cairn-relay", run, argv)


if __name__ == "__main__":
    main()
