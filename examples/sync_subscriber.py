"""
A sync hub subscriber, and a publisher to feed it.

    CAIRN_PSK=... python examples/sync_subscriber.py tcp:host=127.0.0.1:port=7400 --count 2 &
    CAIRN_PSK=... python examples/sync_subscriber.py tcp:host=127.0.0.1:port=7400 --publish "buy milk"

Every device subscribed to a topic gets each update published on it by
another device, in order, including the updates published while it was
offline: the node keeps a durable cursor per device and topic. The
subscriber prints each note and exits after --count of them; the identity
key file (--identity) keeps it the same device, and the same cursor,
from one run to the next.
"""

import argparse
import os

from twisted.internet import defer, task

from cairn.client import Client
from cairn.crypto.identity import load_or_create_file
from cairn.pairing.client import pair_psk
from cairn.sync import client as sync
from cairn.sync.sealing import Keyring

TOPIC = "notes"


@defer.inlineCallbacks
def main(reactor, *argv):
    parser = argparse.ArgumentParser(prog="sync_subscriber")
    parser.add_argument("server")
    parser.add_argument("--identity", help="key file (default: subscriber.key, or publisher.key with --publish)")
    parser.add_argument("--count", type=int, default=1, help="exit after this many notes")
    parser.add_argument("--publish", metavar="TEXT", help="publish TEXT on the topic instead")
    args = parser.parse_args(argv)
    identity = args.identity or ("publisher.key" if args.publish else "subscriber.key")

    client = Client(reactor, load_or_create_file(identity))
    # Updates are sealed end to end with a group key all of a person's
    # devices share (docs/protocol.md §24.10); here both roles read it from
    # one file (devices apart would use sync.share_key / accept_keys_from).
    sync.set_keyring(client.peer, Keyring.load_or_create("notes.keyring"))
    session = yield client.connect(args.server)
    yield pair_psk(session, os.environ["CAIRN_PSK"], name=identity.removesuffix(".key"))

    if args.publish:
        seq = yield sync.sync_publish(session, TOPIC, args.publish.encode())
        print(f"published {TOPIC} #{seq}")
    else:
        notes = defer.DeferredQueue()
        sync.subscribe(session, [TOPIC], lambda topic, seq, sender, data: notes.put((seq, data)))
        print(f"subscribed to {TOPIC} as {client.peer_id}", flush=True)
        for _ in range(args.count):
            seq, data = yield notes.get()
            print(f"{TOPIC} #{seq}: {data.decode()}", flush=True)
    yield client.close()


if __name__ == "__main__":
    import sys

    task.react(main, sys.argv[1:])
