"""
Two devices exchanging store-and-forward messages through a node.

    CAIRN_PSK=... python examples/mailbox_chat.py tcp:host=127.0.0.1:port=7400

Alice and Bob keep their identities in key files (alice.key, bob.key,
created with mode 0600 on the first run), so they are the same peers at
every run and their pairing holds. Bob pairs and goes offline; Alice
leaves him a message; Bob connects, reads it and answers; Alice connects
again and reads the answer. The node only ever holds ciphertext.
"""

import os
import sys

from twisted.internet import defer, task

from cairn.client import Client
from cairn.crypto.identity import load_or_create_file
from cairn.mailbox import client as mailbox
from cairn.pairing.client import pair_psk


@defer.inlineCallbacks
def online(reactor, name, server):
    """Connect as C{name} (identity in C{name}.key), paired by PSK; fires with (client, session, inbox)."""
    client = Client(reactor, load_or_create_file(f"{name}.key"))
    inbox = defer.DeferredQueue()
    mailbox.set_inbox(client.peer, lambda sender, message_id, data: inbox.put((sender, data)))
    session = yield client.connect(server)
    yield pair_psk(session, os.environ["CAIRN_PSK"], name=name)  # harmless when already paired
    return client, session, inbox


@defer.inlineCallbacks
def main(reactor, server):
    bob, session, _ = yield online(reactor, "bob", server)
    print(f"bob is paired as {bob.peer_id}, and goes offline")
    yield bob.close()

    alice, session, _ = yield online(reactor, "alice", server)
    yield mailbox.forward(session, bob.peer_id, b"hello bob")  # fires once the node has it on disk
    print("alice left a message for bob")
    yield alice.close()

    bob, session, inbox = yield online(reactor, "bob", server)
    sender, data = yield inbox.get().addTimeout(10, reactor)
    print(f"bob received from {'alice' if sender == alice.peer_id else sender}: {data.decode()}")
    yield mailbox.forward(session, sender, b"hello alice")
    yield bob.close()

    alice, session, inbox = yield online(reactor, "alice", server)
    sender, data = yield inbox.get().addTimeout(10, reactor)
    print(f"alice received from {'bob' if sender == bob.peer_id else sender}: {data.decode()}")
    yield alice.close()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
