"""
An echo service reached through the node's relay, end to end encrypted.

    ECHO=$(CAIRN_PSK=... python examples/relay_echo.py tcp:host=127.0.0.1:port=7400 id)
    CAIRN_PSK=... python examples/relay_echo.py tcp:host=127.0.0.1:port=7400 echo &
    CAIRN_PSK=... python examples/relay_echo.py tcp:host=127.0.0.1:port=7400 send "$ECHO" "ping"

C{id} pairs the echo device (identity in echo.key) and prints its peer id;
C{echo} waits for circuits and sends back every text on channel C{echo},
exiting once one caller has hung up; C{send} (identity in caller.key)
opens a circuit to the echo device, sends a text and prints the answer.
The node splices the circuit but sees only ciphertext: the two devices run
their own Noise session through it.
"""

import os
import sys

from twisted.internet import defer, task

from cairn.client import Client
from cairn.crypto.identity import load_or_create_file
from cairn.pairing.client import pair_psk
from cairn.relay.client import relay_endpoint, relay_to


@defer.inlineCallbacks
def connect(reactor, server, key):
    client = Client(reactor, load_or_create_file(key))
    session = yield client.connect(server)
    yield pair_psk(session, os.environ["CAIRN_PSK"], name=key.removesuffix(".key"))
    return client, session


class Echo:
    """Echoes on every relayed session; C{done} fires once a caller has hung up."""

    def __init__(self, client):
        self.done = defer.Deferred()
        self.callers = set()
        relay_endpoint(client).on_session = self.accepted
        client.peer.add_observer(self)

    def accepted(self, session):
        self.callers.add(session.session_id)

        def channel(chan):
            chan.on_data = chan.send  # the echo

        session.on_channel = channel

    # Peer observer: a caller hangs up with a Close, or by exiting (its
    # circuit, hence the relayed session's transport, is then gone).
    def session_closed(self, session):
        if session.session_id in self.callers and not self.done.called:
            self.done.callback(None)

    session_detached = session_closed


@defer.inlineCallbacks
def main(reactor, server, command, *args):
    if command == "id":
        client, _ = yield connect(reactor, server, "echo.key")
        print(client.peer_id)
    elif command == "echo":
        client, _ = yield connect(reactor, server, "echo.key")
        echo = Echo(client)
        print(f"echoing as {client.peer_id}", flush=True)
        yield echo.done
    else:  # send PEER_ID TEXT
        peer_id, text = args
        client, node = yield connect(reactor, server, "caller.key")
        session = yield relay_to(client, node, peer_id)
        answer = defer.Deferred()
        chan = session.open_channel("echo")
        chan.on_data = answer.callback
        chan.send(text.encode())
        print((yield answer.addTimeout(10, reactor)).decode())
    yield client.close()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
