"""
Drive the three machines of systemd-host.sh's cluster3 (containers booted
to systemd, each with nats-server.service; cairn-node@cairn1 on the
first, cairn-node@cairn2 on the second) from this machine as devices
would, and print what happens, with times:

  1. every NATS server routed to the other two (over TLS), all agreeing
     on one JetStream metadata leader; both nodes' /health ok, storage
     jetstream, each seeing the other;
  2. a phone paired through cairn1 and a laptop through cairn2 (PINs made
     on cairn1), a message forwarded across;
  3. a load of forwards from the phone (each refusal sent again with the
     same message id) while `systemctl kill -s KILL nats-server` hits the
     machine holding the mailbox stream's leader: every acknowledged
     message received once; systemd restarts the server, which is back in
     the cluster;
  4. `systemctl reload nats-server` on every machine: reloaded (TLS on).

It kills servers: run it against a test stack only.  With cairn
importable (PYTHONPATH=<the checkout>):

    python3 check_machines.py cairn-systemd-1 cairn-systemd-2 cairn-systemd-3

Exit status 0 when every step did what it should.
"""

import argparse
import collections
import json
import sys

from check_cluster import Device, Stack, say
from twisted.internet import defer, task

#: Forwards in the load, and how many are acknowledged before the kill.
LOAD, BEFORE_KILL = 100, 10


class Machines(Stack):
    """The containers, reached with `docker exec` (their APIs listen on their loopback)."""

    def __init__(self, reactor, containers):
        super().__init__(reactor, "docker", None)
        self.containers = containers

    def on(self, machine, *argv):
        return self.run("exec", machine, *argv)

    @defer.inlineCallbacks
    def get(self, machine, url):
        out = yield self.on(machine, "curl", "-sS", "--max-time", "5", url)
        return json.loads(out)

    def health_of(self, machine):
        return self.get(machine, "http://127.0.0.1:9090/health")

    @defer.inlineCallbacks
    def pin(self):
        out = yield self.on(
            self.containers[0],
            "env",
            "CAIRN_MGMT_TOKEN_FILE=/etc/cairn/mgmt.token",
            "/opt/cairn/venv/bin/cairn-server",
            "pair",
            "--pin",
        )
        return out.split()[0]

    @defer.inlineCallbacks
    def node_address(self, machine):
        out = yield self.run("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", machine)
        return f"tcp:host={out.strip()}:port=7400"

    @defer.inlineCallbacks
    def nats_view(self, machine):
        """C{(host name, the other servers routed to, metadata leader)} as C{machine}'s server sees them."""
        routes = yield self.get(machine, "http://127.0.0.1:8222/routez")
        jsz = yield self.get(machine, "http://127.0.0.1:8222/jsz")
        leader = (jsz.get("meta_cluster") or {}).get("leader")
        return routes["server_name"], sorted({r["remote_name"] for r in routes["routes"]}), leader

    def formed(self):
        """Each server routed to the other two, all naming the same metadata leader."""

        @defer.inlineCallbacks
        def check():
            try:
                views = yield defer.gatherResults([self.nats_view(m) for m in self.containers], consumeErrors=True)
            except Exception:
                return False
            names = {name for name, _, _ in views}
            leaders = {leader for _, _, leader in views}
            whole = all(routes == sorted(names - {name}) for name, routes, _ in views)
            if whole and len(leaders) == 1 and None not in leaders:
                self.views = views
                return True
            return False

        return self.until(check, "NATS cluster formed: every server routed to the other two, one metadata leader")

    def nodes_ok(self, machines):
        def check():
            d = defer.gatherResults([self.health_of(m) for m in machines], consumeErrors=True)
            d.addCallback(
                lambda hs: all(
                    h["status"] == "ok" and h["storage"] == "jetstream" and len(h["cluster"]["nodes"]) == len(machines)
                    for h in hs
                )
            )
            return d.addErrback(lambda _: False)

        return self.until(check, "both nodes ok, storage jetstream, each seeing the other")

    @defer.inlineCallbacks
    def journal_count(self, machine, text):
        out = yield self.on(machine, "journalctl", "-u", "nats-server", "-o", "cat", "--no-pager")
        return out.count(text)


@defer.inlineCallbacks
def main(reactor, argv):
    options = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    options.add_argument("machines", nargs=3, help="the three containers; nodes on the first two")
    args = options.parse_args(argv)
    stack = Machines(reactor, args.machines)
    first, second = args.machines[:2]

    yield stack.formed()
    for name, routes, leader in stack.views:
        say(f"{name}: routes to {routes}, metadata leader {leader}")
    yield stack.nodes_ok([first, second])
    for machine in (first, second):
        h = yield stack.health_of(machine)
        say(machine, json.dumps({k: h.get(k) for k in ("status", "storage", "node", "cluster")}))

    phone, laptop = Device(reactor, "phone"), Device(reactor, "laptop")
    yield phone.pair(stack, (yield stack.node_address(first)), "cairn1")
    yield laptop.pair(stack, (yield stack.node_address(second)), "cairn2")
    yield phone.send(reactor, laptop, b"m1 across machines")
    yield stack.until(lambda: laptop.received(b"m1 across machines"), "m1 delivered on cairn2")

    # The load, and the kill of the mailbox stream's leader in the middle of it.
    sent = []

    @defer.inlineCallbacks
    def load():
        for i in range(LOAD):
            data = b"load %03d" % i
            yield phone.send(reactor, laptop, data)
            sent.append(data)

    leader = (yield stack.health_of(first))["cluster"]["leader"]
    hosts = yield defer.gatherResults([stack.on(m, "hostname") for m in args.machines])
    victim = args.machines[[h.strip() for h in hosts].index(leader)]
    restarts = int((yield stack.on(victim, "systemctl", "show", "-p", "NRestarts", "--value", "nats-server")))
    running = load()
    yield stack.until(lambda: defer.succeed(len(sent) >= BEFORE_KILL or running.called), f"{BEFORE_KILL} acknowledged")
    yield stack.on(victim, "systemctl", "kill", "-s", "KILL", "nats-server")
    say(f"systemctl kill -s KILL nats-server on {victim} ({leader}, the mailbox stream's leader)")

    @defer.inlineCallbacks
    def restarted():
        out = yield stack.on(victim, "systemctl", "show", "-p", "NRestarts", "-p", "ActiveState", "nats-server")
        return f"NRestarts={restarts + 1}" in out and "ActiveState=active" in out

    yield stack.until(restarted, f"nats-server on {victim} restarted by systemd (NRestarts={restarts + 1})")
    yield running
    say(f"{len(sent)} forwards acknowledged")
    yield stack.until(
        lambda: defer.succeed(all(m in laptop.got for m in sent)), "every acknowledged message delivered on cairn2"
    )
    yield stack.formed()
    for name, routes, leader in stack.views:
        say(f"{name}: routes to {routes}, metadata leader {leader}")
    yield stack.nodes_ok([first, second])
    h = yield stack.health_of(first)
    say(f"the mailbox stream's leader now: {h['cluster']['leader']}")
    for machine in args.machines:
        connz = yield stack.get(machine, "http://127.0.0.1:8222/connz")
        clients = [(c.get("name"), c.get("tls_version")) for c in connz["connections"]]
        say(f"{machine}: client connections (name, TLS version): {clients}")

    for machine in args.machines:
        before = yield stack.journal_count(machine, "Reloaded server configuration")
        yield stack.on(machine, "systemctl", "reload", "nats-server")

        def reloaded(machine=machine, before=before):
            d = stack.journal_count(machine, "Reloaded server configuration")
            return d.addCallback(lambda n: n > before)

        yield stack.until(reloaded, f"systemctl reload nats-server on {machine}: reloaded")
    yield stack.formed()

    counts = collections.Counter(laptop.got)
    duplicates = sum(n - 1 for n in counts.values())
    lost = [m for m in [b"m1 across machines", *sent] if m not in counts]
    say(f"laptop received {len(laptop.got)} messages: {len(lost)} acknowledged ones lost, {duplicates} duplicates")
    for d in (phone, laptop):
        yield d.client.close()
    if lost or duplicates:
        raise SystemExit(1)


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
