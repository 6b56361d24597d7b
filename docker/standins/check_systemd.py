"""
Drive cairn nodes that systemd runs on this machine (docker/systemd/*,
inside the container of systemd-host.sh) as devices would:

  1. every node's /health ok (with --cluster: storage jetstream, each node
     seeing the others);
  2. a phone paired through the first node, a laptop through the last (PINs
     from `cairn-server pair --pin` against the first node's management
     API), a message forwarded by the phone delivered to the laptop;
  3. with --restart UNIT: `systemctl restart UNIT` under both live
     sessions; both resume (the node saved them at the stop), and a second
     message arrives.

One node (cairn-server.socket): --node 7400:9090 (--websocket 7401: the
laptop over WebSocket).  Two cluster nodes:
--cluster --node 7400:9090 --node 7410:9091.  The management token is
read from --token-file (the node's generated one, or /etc/cairn/mgmt.token).

    python3 check_systemd.py --token-file /var/lib/cairn/mgmt.token --node 7400:9090

Exit status 0 when the message arrived once.
"""

import argparse
import json
import os
import sys
import urllib.request

from check_cluster import Device, Stack, say
from twisted.internet import defer, task, threads, utils


class Machine(Stack):
    """The nodes of this machine, in place of check_cluster's compose stack."""

    def __init__(self, reactor, nodes, token_file, cairn_server, cluster):
        super().__init__(reactor, "true", "127.0.0.1")
        self.nodes, self.token_file, self.cairn_server, self.cluster = nodes, token_file, cairn_server, cluster

    def health_of(self, mgmt_port):
        url = f"http://127.0.0.1:{mgmt_port}/health"
        return threads.deferToThread(lambda: json.load(urllib.request.urlopen(url, timeout=5)))

    @defer.inlineCallbacks
    def pin(self):
        out, err, code = yield utils.getProcessOutputAndValue(
            self.cairn_server,
            ["pair", "--pin", "--url", f"http://127.0.0.1:{self.nodes[0][1]}"],
            env=dict(os.environ, CAIRN_MGMT_TOKEN_FILE=self.token_file),
        )
        if code:
            raise RuntimeError(f"cairn-server pair --pin: exit {code}: {err.decode(errors='replace').strip()}")
        return out.decode().split()[0]

    @defer.inlineCallbacks
    def healthy(self):
        def all_ok():
            d = defer.gatherResults([self.health_of(mgmt) for _, mgmt in self.nodes], consumeErrors=True)
            d.addCallback(lambda hs: all(self.ok(h) for h in hs))
            return d.addErrback(lambda _: False)

        yield self.until(all_ok, "every node ok" + (", each seeing the others" if self.cluster else ""))

    def ok(self, health):
        if health["status"] != "ok":
            return False
        if not self.cluster:
            return True
        return health["storage"] == "jetstream" and len(health["cluster"]["nodes"]) == len(self.nodes)


def node(text):
    cairn, mgmt = text.split(":")
    return int(cairn), int(mgmt)


@defer.inlineCallbacks
def main(reactor, argv):
    options = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    options.add_argument("--node", type=node, action="append", required=True, help="CAIRN_PORT:MGMT_PORT")
    options.add_argument("--token-file", required=True)
    options.add_argument("--cairn-server", default="/opt/cairn/venv/bin/cairn-server")
    options.add_argument("--cluster", action="store_true")
    options.add_argument("--restart", metavar="UNIT", help="restart UNIT under the live sessions")
    options.add_argument("--websocket", type=int, metavar="PORT", help="the laptop over ws://127.0.0.1:PORT/")
    args = options.parse_args(argv)
    machine = Machine(reactor, args.node, args.token_file, args.cairn_server, args.cluster)

    yield machine.healthy()
    for _, mgmt in machine.nodes:
        h = yield machine.health_of(mgmt)
        say(f"127.0.0.1:{mgmt}/health", {k: h.get(k) for k in ("status", "storage", "node", "cluster")})

    first, last = machine.address(machine.nodes[0][0]), machine.address(machine.nodes[-1][0])
    if args.websocket:
        last = f"ws://127.0.0.1:{args.websocket}/"
    phone, laptop = Device(reactor, "phone"), Device(reactor, "laptop")
    yield phone.pair(machine, first, f"{first}")
    yield laptop.pair(machine, last, f"{last}")
    yield phone.send(reactor, laptop, b"m1 under systemd")
    yield machine.until(lambda: laptop.received(b"m1 under systemd"), "m1 delivered to the laptop")
    expected = [b"m1 under systemd"]
    if args.restart:
        yield utils.getProcessValue("systemctl", ["restart", args.restart], env=dict(os.environ))
        say(f"systemctl restart {args.restart}")

        def resumed():
            return defer.succeed(
                all(d.client.current(d.session) is d.session and d.session.attached for d in (phone, laptop))
            )

        yield machine.until(resumed, "both sessions resumed (not replaced)")
        yield phone.send(reactor, laptop, b"m2 after the restart")
        yield machine.until(lambda: laptop.received(b"m2 after the restart"), "m2 delivered to the laptop")
        expected.append(b"m2 after the restart")
    for d in (phone, laptop):
        yield d.client.close()
    if laptop.got != expected:
        raise SystemExit(f"laptop got {laptop.got!r}")


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
