"""
Drive a running compose cluster (docker-compose.yml + docker-compose.cluster.yml)
from the host as devices would, and print what happens, with times:

  1. both nodes' /health: ok, storage jetstream, each seeing the other;
  2. a phone paired through node 1 and a laptop through node 2 (PINs made
     on node 1), a message forwarded through node 1 delivered on node 2;
  3. node 2 killed under the laptop's live session: the laptop moves to
     node 1 and gets what the phone left meanwhile;
  4. the NATS server that is JetStream metadata leader killed: forwards
     refused (STORAGE_ERROR) until a new leader, then stored once;
  5. with --lb (the stack started with --profile lb): a device on the
     balancer's port, its node killed, the device on the other node.

Killed containers are started again after each step.  It kills containers:
run it against a test stack only.  From the docker/ directory, with cairn
importable (PYTHONPATH=<the checkout>):

    python3 standins/check_cluster.py \\
        --compose "docker compose -f docker-compose.yml -f docker-compose.cluster.yml" [--lb]

Exit status 0 when every step did what it should.
"""

import argparse
import json
import os
import shlex
import sys
import time
import urllib.request

from twisted.internet import defer, task, threads, utils

from cairn.client import Client
from cairn.mailbox.client import forward, set_inbox, uuid7
from cairn.pairing.client import pair_pin

#: compose service -> (published cairn TCP port, published management port)
NODES = {"server": (7400, 9090), "server2": (7410, 9091)}
T0 = time.monotonic()


def say(*words):
    print(f"[{time.monotonic() - T0:7.2f}s]", *words, flush=True)


class Stack:
    def __init__(self, reactor, compose, host):
        self.reactor, self.compose, self.host = reactor, shlex.split(compose), host

    @defer.inlineCallbacks
    def run(self, *argv):
        out, err, code = yield utils.getProcessOutputAndValue(
            self.compose[0], [*self.compose[1:], *argv], env=dict(os.environ)
        )
        if code:
            raise RuntimeError(f"{' '.join(argv)}: exit {code}: {err.decode(errors='replace').strip()}")
        return out.decode()

    def health(self, service):
        url = f"http://{self.host}:{NODES[service][1]}/health"
        return threads.deferToThread(lambda: json.load(urllib.request.urlopen(url, timeout=5)))

    def address(self, port):
        return f"tcp:host={self.host}:port={port}"

    @defer.inlineCallbacks
    def pin(self):
        out = yield self.run("exec", "-T", "server", "cairn-server", "pair", "--pin")
        return out.split()[0]

    @defer.inlineCallbacks
    def until(self, predicate, what, timeout=90.0):
        start = self.reactor.seconds()
        while not (yield predicate()):
            if self.reactor.seconds() - start > timeout:
                raise RuntimeError(f"no {what} within {timeout:.0f} s")
            yield task.deferLater(self.reactor, 0.2, lambda: None)
        say(f"{what}: {self.reactor.seconds() - start:.1f} s")

    @defer.inlineCallbacks
    def healthy(self):
        def both_ok():
            d = defer.gatherResults([self.health(s) for s in NODES], consumeErrors=True)
            d.addCallback(lambda hs: all(h["status"] == "ok" and len(h["cluster"]["nodes"]) == 2 for h in hs))
            return d.addErrback(lambda _: False)

        yield self.until(both_ok, "both nodes ok, each seeing the other")


class Device:
    def __init__(self, reactor, name):
        self.name, self.got = name, []
        self.client = Client(reactor, auto_resume=True)
        self.client.on_session_replaced = lambda old, new: say(f"{name}: session replaced (new handshake)")
        set_inbox(self.client.peer, lambda sender, mid, data: (self.got.append(data), say(f"{name} got {data!r}")))

    @defer.inlineCallbacks
    def pair(self, stack, addresses, via):
        pin = yield stack.pin()
        self.session = yield self.client.connect(addresses)
        yield pair_pin(self.session, pin, name=self.name)
        say(f"{self.name} paired through {via} ({self.client.peer_id})")

    @defer.inlineCallbacks
    def send(self, reactor, to, data):
        """Forward; on a refusal send again with the same message id, as docs/scaling.md says."""
        message_id, start, refused = uuid7(), reactor.seconds(), 0
        while True:
            try:
                yield forward(self.client.current(self.session), to.client.peer_id, data, message_id=message_id)
                break
            except Exception as e:  # ForwardRejected, or SessionClosed (9) as the session moves
                refused += 1
                if refused == 1:
                    say(f"{self.name}: forward refused ({type(e).__name__}: {e}); sending again")
                if reactor.seconds() - start > 60:
                    raise
                yield task.deferLater(reactor, 0.5, lambda: None)
        say(f"{self.name} -> {to.name} {data!r} stored after {reactor.seconds() - start:.1f} s ({refused} refused)")

    def received(self, data):
        return defer.succeed(data in self.got)


@defer.inlineCallbacks
def main(reactor, argv):
    options = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    options.add_argument("--compose", default="docker compose -f docker-compose.yml -f docker-compose.cluster.yml")
    options.add_argument("--host", default="127.0.0.1", help="the host's address as devices reach it")
    options.add_argument("--lb", action="store_true", help="also the balancer (started with --profile lb)")
    args = options.parse_args(argv)
    stack = Stack(reactor, args.compose, args.host)

    yield stack.healthy()
    for service in NODES:
        h = yield stack.health(service)
        say(service, json.dumps({k: h.get(k) for k in ("status", "storage", "node", "cluster")}))

    phone, laptop = Device(reactor, "phone"), Device(reactor, "laptop")
    yield phone.pair(stack, stack.address(7400), "node 1")
    yield laptop.pair(stack, [stack.address(7410), stack.address(7400)], "node 2")
    yield phone.send(reactor, laptop, b"m1 across nodes")
    yield stack.until(lambda: laptop.received(b"m1 across nodes"), "m1 delivered on node 2")

    yield stack.run("kill", "server2")
    say("killed server2")
    yield phone.send(reactor, laptop, b"m2 while node 2 is dead")
    yield stack.until(lambda: laptop.received(b"m2 while node 2 is dead"), "m2 delivered after the move to node 1")

    leader = (yield stack.health("server"))["cluster"]["leader"]
    yield stack.run("kill", leader)
    say(f"killed {leader} (JetStream metadata leader)")
    yield phone.send(reactor, laptop, b"m3 with a NATS server dead")
    yield stack.until(lambda: laptop.received(b"m3 with a NATS server dead"), "m3 delivered")
    yield stack.run("start", leader, "server2")
    yield stack.healthy()

    devices = [phone, laptop]
    if args.lb:
        a, b = Device(reactor, "lb-device-a"), Device(reactor, "lb-device-b")
        yield a.pair(stack, stack.address(7500), "the balancer (7500)")
        yield b.pair(stack, f"ws://{args.host}:7501/", "the balancer (7501, WebSocket)")
        peers = yield stack.run("exec", "-T", "server", "cairn-server", "peers", "--json")
        node = {p["peer_id"]: p["node"] for p in json.loads(peers)}[a.client.peer_id]
        victim = {"cairn1": "server", "cairn2": "server2"}[node]
        yield stack.run("kill", victim)
        say(f"killed {victim}, which served lb-device-a")
        yield b.send(reactor, a, b"l1 after the kill")
        yield stack.until(lambda: a.received(b"l1 after the kill"), "l1 delivered through the balancer")
        yield stack.run("start", victim)
        yield stack.healthy()
        devices += [a, b]

    duplicates = sum(len(d.got) - len(set(d.got)) for d in devices)
    say(f"delivered {sum(len(d.got) for d in devices)} messages, {duplicates} duplicates")
    for d in devices:
        yield d.client.close()
    if duplicates:
        raise SystemExit(1)


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
