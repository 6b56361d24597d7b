"""
Mailbox bench: durable enqueue and drain rates, 1 KiB messages, many
concurrent senders over real sessions; anchored in the same run on
Mosquitto (QoS 1 to an offline persistent-session subscriber, then drain).

    python -m bench.mailbox [--messages N] [--senders S]

The node runs in a child process (C{python -m bench.mailbox --serve}:
make_node on a temporary data dir, PSK pairing). Enqueue = messages whose
ForwardAck (after fsync) arrived per second; drain = messages delivered
to the recipient (and acknowledged) per second. Mosquitto is started on
127.0.0.1 with persistence on (it does not fsync per message); it is
skipped, with a message, when not installed (apt-get install mosquitto).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

PSK = "bench pre-shared key, long enough to not be weak"
SIZE = 1024


def serve():
    """The child: a node on loopback; prints its TCP port, runs until stdin closes."""
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from bench._common import log_warnings_only
    from cairn.config import Config
    from cairn.service import make_node

    log_warnings_only()
    data_dir = tempfile.mkdtemp(prefix="cairn-bench-mailbox-")
    config = Config.from_env(
        {}, data_dir=data_dir, listen="tcp:0:interface=127.0.0.1", ws_listen="none", mgmt_listen="none", psk=PSK
    )
    node = make_node(config, reactor)
    node.startService()

    def ready(ports):
        print(json.dumps({"tcp": ports["tcp"].getHost().port}), flush=True)

    class Stdin(LineReceiver):
        delimiter = b"\n"

        def connectionLost(self, reason=None):
            d = node.stopService()
            d.addBoth(lambda _: shutil.rmtree(data_dir, ignore_errors=True))
            d.addBoth(lambda _: reactor.stop())

    node.ready.addCallback(ready)
    stdio.StandardIO(Stdin())
    reactor.run()


def cairn_rates(messages, senders):
    """(enqueue/s, drain/s) against a node child."""
    from twisted.internet import defer, task
    from twisted.internet import reactor as _reactor

    from cairn.client import Client
    from cairn.mailbox import client as mailbox
    from cairn.pairing import client as pairing

    child = subprocess.Popen(
        [sys.executable, "-m", "bench.mailbox", "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    port = json.loads(child.stdout.readline())["tcp"]
    address = f"tcp:host=127.0.0.1:port={port}"
    result = {}

    @defer.inlineCallbacks
    def run(reactor):
        bob = Client(reactor)
        b = yield bob.connect(address)
        yield pairing.pair_psk(b, PSK)
        b.close()
        sessions = []
        for _ in range(senders):
            c = Client(reactor)
            s = yield c.connect(address)
            yield pairing.pair_psk(s, PSK)
            yield mailbox.mailbox(c.peer).peer_key(s, bob.peer_id)
            sessions.append(s)
        payload = os.urandom(SIZE)
        per = messages // (senders * 8)

        def sender(s):
            return task.cooperate(mailbox.forward(s, bob.peer_id, payload) for _ in range(per)).whenDone()

        start = time.perf_counter()
        # 8 requests in flight per sender.
        yield defer.gatherResults([sender(s) for s in sessions for _ in range(8)])
        result["enqueue"] = per * senders * 8 / (time.perf_counter() - start)
        total = per * senders * 8
        got = [0]
        done = defer.Deferred()

        def inbox(sender_id, mid, data):
            got[0] += 1
            if got[0] == total and not done.called:
                done.callback(None)

        mailbox.set_inbox(bob.peer, inbox)
        start = time.perf_counter()
        yield bob.connect(address)
        yield done
        result["drain"] = total / (time.perf_counter() - start)
        result["count"] = total

    try:
        _run_once(run, _reactor)
    finally:
        child.stdin.close()
        child.wait(30)
    return result


def _run_once(run, reactor):
    failures = []

    def go():
        d = run(reactor)
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failures:
        failures[0].raiseException()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_rates(messages, senders):
    """(publish/s, drain/s) of Mosquitto with persistence, or None if not installed."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        print("anchor skipped: mosquitto is not installed (apt-get install -y mosquitto)")
        return None
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "paho-mqtt"])
        import paho.mqtt.client as mqtt
    tmp = tempfile.mkdtemp(prefix="bench-mosquitto-")
    port = free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
        )
    broker = subprocess.Popen([binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        version = mqtt.CallbackAPIVersion.VERSION2
        sub = mqtt.Client(version, client_id="bench-sub", clean_session=False)
        sub.connect("127.0.0.1", port)
        sub.subscribe("bench/inbox", qos=1)
        sub.loop(1.0)
        sub.disconnect()
        payload = os.urandom(SIZE)
        per = messages // senders
        pubs = []
        for i in range(senders):
            p = mqtt.Client(version, client_id=f"bench-pub-{i}")
            p.max_inflight_messages_set(8)
            p.connect("127.0.0.1", port)
            p.loop_start()
            pubs.append(p)
        start = time.perf_counter()
        infos = [p.publish("bench/inbox", payload, qos=1) for _ in range(per) for p in pubs]
        for info in infos:
            info.wait_for_publish(60)
        enqueue = len(infos) / (time.perf_counter() - start)
        for p in pubs:
            p.loop_stop()
            p.disconnect()
        received = [0]

        def on_message(client, userdata, message):
            received[0] += 1

        sub = mqtt.Client(version, client_id="bench-sub", clean_session=False)
        sub.on_message = on_message
        start = time.perf_counter()
        sub.connect("127.0.0.1", port)
        while received[0] < len(infos) and time.perf_counter() - start < 120:
            sub.loop(0.1)
        drain = received[0] / (time.perf_counter() - start)
        sub.disconnect()
        return {"enqueue": enqueue, "drain": drain, "count": len(infos)}
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--messages", type=int, default=4000, help="messages per run (split among senders)")
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve()
        return
    per_session = max(1, args.messages // (args.senders * 8))
    cairn = cairn_rates(per_session * args.senders * 8, args.senders)
    print(f"cairn mailbox: {cairn['count']} x 1 KiB, {args.senders} senders (fsync before every ack)")
    print(f"  enqueue {cairn['enqueue']:9.0f} msg/s   drain {cairn['drain']:9.0f} msg/s")
    anchor = mosquitto_rates(cairn["count"], args.senders)
    if anchor:
        print(f"mosquitto QoS1 persistent: {anchor['count']} x 1 KiB, {args.senders} publishers")
        print(f"  enqueue {anchor['enqueue']:9.0f} msg/s   drain {anchor['drain']:9.0f} msg/s")
        print(
            f"ratio enqueue {cairn['enqueue'] / anchor['enqueue']:.2f}x (target >= 1.0x), "
            f"drain {cairn['drain'] / anchor['drain']:.2f}x (target >= 1.0x)"
        )


if __name__ == "__main__":
    main()
