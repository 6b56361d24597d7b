"""
Relay bench: throughput of one circuit through a node, against a bare
Twisted port-forward proxy, in the same run.

    python -m bench.relay [--mib N]

The node runs in a child process (C{python -m bench.relay --serve}:
make_node on a temporary data dir, PSK pairing); two clients in this
process pair with it, open a circuit (C{relay_to}) and push N MiB on one
channel of their end-to-end session, the receiver granting credit as it
consumes. The anchor is C{twisted.protocols.portforward} in a child
process (C{--proxy PORT}) between a sender and a sink in this process.
TODO: 16 concurrent circuits, magic-wormhole-transit-relay as an anchor,
and the node's RSS under a stalled receiver.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time

PSK = "bench pre-shared key, long enough to not be weak"
#: Bytes per write into the bare proxy.
CHUNK = 60 * 1024
#: Bytes per channel message on the circuit: the largest that keeps two
#: inner envelopes (message + ~200 bytes of ratchet, CBOR and sealing)
#: within the 256 KiB flow-control window (docs/protocol.md §25.3), so
#: the sender never idles waiting for credit. Per-message costs (ratchet
#: step, two seals, CBOR, dispatch) are paid half as often as with CHUNK.
CIRCUIT_CHUNK = 256 * 1024 // 2 - 4096


def serve():
    """The child: a node on loopback; prints its TCP port, runs until stdin closes."""
    from twisted.internet import reactor

    from bench._common import log_warnings_only
    from cairn.config import Config
    from cairn.service import make_node

    log_warnings_only()
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-relay-")
    config = Config.from_env(
        {}, data_dir=data_dir, listen="tcp:0:interface=127.0.0.1", ws_listen="none", mgmt_listen="none", psk=PSK
    )
    node = make_node(config, reactor)
    node.startService()
    node.ready.addCallback(lambda ports: print(json.dumps({"port": ports["tcp"].getHost().port}), flush=True))
    _until_stdin_closes(reactor, lambda: node.stopService().addBoth(lambda _: shutil.rmtree(data_dir, True)))


def proxy(target):
    """The child: a bare Twisted port-forward proxy to 127.0.0.1:target."""
    from twisted.internet import reactor
    from twisted.protocols.portforward import ProxyFactory

    port = reactor.listenTCP(0, ProxyFactory("127.0.0.1", target), interface="127.0.0.1")
    print(json.dumps({"port": port.getHost().port}), flush=True)
    _until_stdin_closes(reactor, lambda: None)


def _until_stdin_closes(reactor, stop):
    from twisted.internet import defer, stdio
    from twisted.protocols.basic import LineReceiver

    class Stdin(LineReceiver):
        def connectionLost(self, reason=None):
            defer.maybeDeferred(stop).addBoth(lambda _: reactor.stop())

    stdio.StandardIO(Stdin())
    reactor.run()


def _child(*args):
    command = [sys.executable, "-m", "bench.relay", *args]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return child, json.loads(child.stdout.readline())["port"]


def cairn_rate(total):
    """MiB/s through one relay circuit, node in a child process."""
    from twisted.internet import defer, reactor

    from cairn.client import Client
    from cairn.pairing import client as pairing
    from cairn.relay.client import relay_endpoint, relay_to

    child, port = _child("--serve")
    address = f"tcp:host=127.0.0.1:port={port}"
    result = {}

    @defer.inlineCallbacks
    def run():
        alice, bob = Client(reactor), Client(reactor)
        node_a = yield alice.connect(address)
        yield pairing.pair_psk(node_a, PSK)
        node_b = yield bob.connect(address)
        yield pairing.pair_psk(node_b, PSK)
        accepted = defer.Deferred()
        relay_endpoint(bob).on_session = accepted.callback
        a = yield relay_to(alice, node_a, bob.peer_id)
        b = yield accepted
        done = defer.Deferred()
        got = [0]

        def on_data(data):
            got[0] += len(data)
            if got[0] >= total and not done.called:
                done.callback(None)

        b.on_channel = lambda channel: setattr(channel, "on_data", on_data)
        bulk = a.open_channel("bulk")
        chunk = b"\x00" * CIRCUIT_CHUNK
        sent = [0]

        class Pusher:
            paused = False

            def pauseProducing(self):
                self.paused = True

            def resumeProducing(self):
                self.paused = False
                while not self.paused and sent[0] < total:
                    bulk.send(chunk)
                    sent[0] += len(chunk)

            def stopProducing(self):
                self.paused = True

        pusher = Pusher()
        a.connection.transport.registerProducer(pusher, True)
        start = time.perf_counter()
        pusher.resumeProducing()
        yield done
        result["rate"] = got[0] / (time.perf_counter() - start) / 2**20

    _run(reactor, run, child)
    return result["rate"]


def proxy_rate(total):
    """MiB/s through a bare Twisted port-forward proxy in a child process."""
    from twisted.internet import defer, reactor
    from twisted.internet.protocol import Factory, Protocol

    done = defer.Deferred()

    class Sink(Protocol):
        got = 0

        def dataReceived(self, data):
            self.got += len(data)
            if self.got >= total and not done.called:
                done.callback(None)

    sink = reactor.listenTCP(0, Factory.forProtocol(Sink), interface="127.0.0.1")
    child, port = _child("--proxy", str(sink.getHost().port))
    result = {}

    class Source(Protocol):
        sent = 0

        def connectionMade(self):
            self.transport.registerProducer(self, False)

        def resumeProducing(self):
            if self.sent < total:
                self.transport.write(b"\x00" * CHUNK)
                self.sent += CHUNK

        def stopProducing(self):
            pass

    @defer.inlineCallbacks
    def run():
        from twisted.internet.endpoints import TCP4ClientEndpoint

        start = time.perf_counter()
        proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Source))
        yield done
        result["rate"] = total / (time.perf_counter() - start) / 2**20
        proto.transport.loseConnection()
        yield sink.stopListening()

    _run(reactor, run, child)
    return result["rate"]


def _run(reactor, run, child):
    """Run C{run()} on the reactor (once per process: the reactor cannot restart)."""
    failures = []

    def go():
        d = run()
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(go)
        reactor.run()
    finally:
        child.stdin.close()
        child.wait(30)
    if failures:
        failures[0].raiseException()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.relay")
    parser.add_argument("--mib", type=int, default=64, help="MiB pushed through each path")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["cairn", "proxy"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    if args.proxy:
        return proxy(args.proxy)
    total = args.mib * 2**20
    if args.only:
        rate = cairn_rate(total) if args.only == "cairn" else proxy_rate(total)
        print(json.dumps({"rate": rate}), flush=True)
        return None
    # Each measurement in its own process: a reactor runs once per process.
    rates = {}
    for name in ("cairn", "proxy"):
        out = subprocess.check_output([sys.executable, "-m", "bench.relay", "--only", name, "--mib", str(args.mib)])
        rates[name] = json.loads(out.decode().strip().splitlines()[-1])["rate"]
    print(f"relay, one circuit, {args.mib} MiB")
    print(f"  cairn relay circuit     {rates['cairn']:8.1f} MiB/s")
    print(f"  bare Twisted proxy      {rates['proxy']:8.1f} MiB/s")
    print(f"  ratio cairn / proxy     {rates['cairn'] / rates['proxy']:8.2f}x")
    return None


if __name__ == "__main__":
    main()
