"""
Crash harness: C{kill -9} a real C{twistd -n cairn} node at random points
under mailbox and sync load, restart it on the same data directory, and
check after every restart that nothing acknowledged was lost.

    python -m bench.crash [--kills 20] [--seed 7] [--senders 3] [--publishers 2]
    python -m bench.crash --mode clean [--kills 20] ...   (SIGTERM, resume: bench/crash_clean.py)

The node runs in a child process (C{twistd -n cairn}, a temporary data
dir, PSK pairing, every listener on 127.0.0.1 port 0). The clients run
in this process: mailbox senders forward to one recipient over TCP, sync
publishers publish on two topics over WebSocket, and the recipient and a
watcher device receive while the load runs. Each round waits a random
delay (a seeded RNG) under load, then sends SIGKILL. While the node is
down the database is checked directly; after the restart every client
reconnects, retries what was sent but never acknowledged (same message
and update ids: the node must deduplicate), and the round waits until
everything acknowledged has arrived.

What is checked (L{Ledger} and L{check_database}):

  - every message whose ForwardAck arrived is delivered (lost = acked
    and never delivered), and no message id is stored twice (two server
    seqs for one id);
  - every update whose SyncAck arrived is seen by the watcher, no
    update id was given two seqs, and no seq was given to two updates
    (one shown to the watcher before it was durable, then lost);
  - the watcher's durable cursors never move backwards from one crash to
    the next, and never past what the watcher received;
  - C{PRAGMA integrity_check} is C{ok} after every kill.

This is a harness, not a test: the delays are wall-clock. The trial test
C{tests/test_crash.py} runs the same rounds and checks with kills at
event-driven points (after the Nth acknowledgement of a round).
"""

import argparse
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time

import attr
from twisted.internet import defer, protocol, task

from cairn.client import Client
from cairn.db import DB_FILE_NAME
from cairn.mailbox import client as mailbox
from cairn.mailbox.client import uuid7
from cairn.pairing import client as pairing
from cairn.sync import client as sync
from cairn.sync import sealing
from cairn.wire.constants import MessageType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSK = "crash harness pre-shared key, long enough"
TOPICS = ("notes", "photos")
#: Requests each sender (publisher) keeps in flight.
LANES = 4
_LISTENING = re.compile(r"listening: (\w+) on 127\.0\.0\.1:(\d+)")


class Node(protocol.ProcessProtocol):
    """A C{twistd -n cairn} child; C{listening} fires with {name: port}."""

    def __init__(self):
        self.ports = {}
        self.output = []
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        text = data.decode("utf-8", "replace")
        self.output.append(text)
        for name, port in _LISTENING.findall(text):
            self.ports[name] = int(port)
        if {"tcp", "websocket"} <= set(self.ports) and not self.listening.called:
            self.listening.callback(dict(self.ports))

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError("twistd ended early:\n" + "".join(self.output)))
        self.ended.callback((reason.value.exitCode, reason.value.signal))

    def kill(self):
        """SIGKILL; fires once the process is gone."""
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        return self.ended


def start_node(reactor, data_dir, ports=None):
    """Start C{twistd -n cairn} on C{data_dir}, listening on loopback C{ports} ({name: port}; default 0)."""
    ports = ports or {}
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        CAIRN_DATA_DIR=data_dir,
        CAIRN_LISTEN=f"tcp:{ports.get('tcp', 0)}:interface=127.0.0.1",
        CAIRN_WS_LISTEN=f"tcp:{ports.get('websocket', 0)}:interface=127.0.0.1",
        CAIRN_MGMT_LISTEN="none",
        CAIRN_PSK=PSK,
    )
    node = Node()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    argv += ["--nodaemon", "--pidfile=", "--logfile=-", "cairn"]
    reactor.spawnProcess(node, sys.executable, argv, env=env, path=REPO)
    return node


@attr.s(auto_attribs=True)
class Ledger:
    """What the clients sent, were acknowledged, and received."""

    #: message id -> (sender index, data) of every forward attempted
    sent: dict = attr.Factory(dict)
    acked: set = attr.Factory(set)
    #: message id -> server seqs it was delivered under
    deliveries: dict = attr.Factory(dict)
    #: update id -> (publisher index, topic, data) of every publish attempted
    published: dict = attr.Factory(dict)
    #: update id -> seqs the node acknowledged it with
    update_seqs: dict = attr.Factory(dict)
    #: (topic, seq) -> payloads the watcher was given under it
    seen: dict = attr.Factory(dict)
    #: topic -> the watcher's durable cursor found at the previous crash
    cursors: dict = attr.Factory(dict)
    #: forwards and publishes sent again after a restart, and how many of
    #: those forwards the node already had (acknowledged as duplicates)
    retried: int = 0
    already_stored: int = 0
    #: deliveries of a message again under the same seq (the client drops them)
    redelivered: int = 0
    #: one entry per problem found by the database checks
    problems: list = attr.Factory(list)
    integrity: list = attr.Factory(list)

    def unacked_messages(self):
        return [mid for mid in self.sent if mid not in self.acked]

    def unacked_updates(self):
        return [uid for uid in self.published if uid not in self.update_seqs]

    def acked_updates(self):
        """{(topic, seq)} acknowledged to publishers."""
        return {(self.published[uid][1], seq) for uid, seqs in self.update_seqs.items() for seq in seqs}

    def lost_messages(self):
        return self.acked - set(self.deliveries)

    def duplicate_messages(self):
        return [mid for mid, seqs in self.deliveries.items() if len(seqs) > 1]

    def lost_updates(self):
        return {key for key in self.acked_updates() if key not in self.seen}

    def duplicate_updates(self):
        stored_twice = [uid for uid, seqs in self.update_seqs.items() if len(seqs) > 1]
        by_payload = {}
        for (topic, seq), payloads in self.seen.items():
            for payload in payloads:
                by_payload.setdefault(payload, set()).add((topic, seq))
        seen_twice = [p for p, keys in by_payload.items() if len(keys) > 1]
        # One seq given to two updates: one of them was shown before it was durable, then lost to a kill.
        seq_reused = [key for key, payloads in self.seen.items() if len(payloads) > 1]
        return stored_twice + seen_twice + seq_reused

    def everything_arrived(self):
        return not self.lost_messages() and not self.lost_updates()


def check_database(path, ledger, watcher_id, watcher_seen):
    """
    Check the database of a dead node: integrity, acknowledged messages
    and updates at rest, the watcher's cursors. Problems go to C{ledger}.

    @param watcher_seen: {topic: last seq the watcher was given}.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        ledger.integrity.append(integrity)
        if integrity != "ok":
            ledger.problems.append(f"integrity_check: {integrity}")
        held = {bytes(row[0]) for row in conn.execute("SELECT message_id FROM mailbox_messages")}
        for mid in ledger.acked - set(ledger.deliveries) - held:
            ledger.problems.append(f"acknowledged message {mid.hex()} neither delivered nor on disk")
        logged = set(conn.execute("SELECT topic, seq FROM sync_log").fetchall())
        for key in ledger.acked_updates() - set(ledger.seen) - logged:
            ledger.problems.append(f"acknowledged update {key} neither seen nor on disk")
        rows = conn.execute("SELECT topic, seq FROM sync_cursors WHERE device = ?", (watcher_id,)).fetchall()
        for topic, seq in rows:
            before = ledger.cursors.get(topic, 0)
            if seq < before:
                ledger.problems.append(f"cursor of {topic} moved back from {before} to {seq}")
            if seq > watcher_seen.get(topic, 0):
                ledger.problems.append(f"cursor of {topic} at {seq}, past what the watcher got")
            ledger.cursors[topic] = max(before, seq)
    finally:
        conn.close()


class Harness:
    """
    The clients, their load, and the node they drive.

    @param kill_point: C{kill_point(round)} returns a Deferred that fires
        when the node of that round should be killed (load is running).
    """

    def __init__(self, reactor, data_dir, senders=3, publishers=2, kill_point=None, wait=60.0):
        self.reactor = reactor
        self.data_dir = data_dir
        self.kill_point = kill_point
        self.wait = wait
        self.ledger = Ledger()
        self.node = None
        self.rounds = 0
        self.running = False
        self._changed = []
        self._connections = []
        self.keyring = sealing.Keyring.generate()
        self.recipient = self._client()
        self.watcher = self._client()
        self.senders = [self._client() for _ in range(senders)]
        self.publishers = [self._client() for _ in range(publishers)]
        self.sessions = {}
        self._paired = False
        self._watch()

    # Plumbing

    def _client(self):
        client = Client(self.reactor, clock=task.Clock())
        # One person's devices: one sync group key (docs/protocol.md §24.10).
        sync.set_keyring(client.peer, self.keyring)
        make = client.peer.connection

        def connection(*args, **kwargs):
            # Track every transport, so that stop() can wait until all are gone.
            conn = make(*args, **kwargs)
            conn.gone = defer.Deferred()
            lost = conn.connection_lost

            def connection_lost(reason=None):
                lost(reason)
                if not conn.gone.called:
                    conn.gone.callback(None)

            conn.connection_lost = connection_lost
            self._connections.append(conn)
            return conn

        client.peer.connection = connection
        return client

    def changed(self, result=None):
        """Re-check what L{until} waits for."""
        for item in list(self._changed):
            predicate, d = item
            if predicate():
                self._changed.remove(item)
                d.callback(None)
        return result

    def until(self, predicate, timeout, what):
        """Fires once C{predicate()} holds; fails after C{timeout} seconds."""
        d = defer.Deferred()
        self._changed.append((predicate, d))
        self.changed()

        def late(failure):
            if (predicate, d) in self._changed:
                self._changed.remove((predicate, d))
            raise AssertionError(f"round {self.rounds}: timed out waiting for {what}")

        return d.addTimeout(timeout, self.reactor).addErrback(late)

    def _watch(self):
        ledger = self.ledger

        def delivered(session, body):
            # One delivery per ForwardDeliver, or a batch under "messages".
            batch = body.get("messages", [body]) if isinstance(body, dict) else []
            for entry in batch:
                seqs = ledger.deliveries.setdefault(entry["id"], set())
                if entry["seq"] in seqs:
                    ledger.redelivered += 1
                seqs.add(entry["seq"])
            inner(session, body)
            self.changed()

        mailbox.mailbox(self.recipient.peer)  # its handlers first, then wrap them
        inner = self.recipient.peer.handler_for(MessageType.FORWARD_DELIVER)
        self.recipient.peer.register_handler(MessageType.FORWARD_DELIVER, delivered)

        def update(topic, seq, sender, data):
            ledger.seen.setdefault((topic, seq), set()).add(data)
            self.changed()

        sync.sync_client(self.watcher.peer).on_update = update

    # Rounds

    @defer.inlineCallbacks
    def start(self):
        """Start the node and (re)connect every client; fires with the ports."""
        self.node = start_node(self.reactor, self.data_dir, getattr(self, "ports", None))
        ports = yield self.node.listening.addTimeout(self.wait, self.reactor)
        yield self.connect_clients(ports)
        return ports

    @defer.inlineCallbacks
    def connect_clients(self, ports):
        """Connect every client to the node on C{ports} (pairing them the first time)."""
        tcp = f"tcp:host=127.0.0.1:port={ports['tcp']}"
        ws = f"ws://127.0.0.1:{ports['websocket']}/"
        for old in list(self.sessions.values()):
            if old.closed is None:
                old.close()  # a dead node's session: fail what it waits for
        clients = [(self.recipient, tcp), (self.watcher, ws)]
        clients += [(c, tcp) for c in self.senders] + [(c, ws) for c in self.publishers]
        connecting = [c.connect(address) for c, address in clients]
        sessions = yield defer.gatherResults(connecting, consumeErrors=True)
        if not self._paired:
            yield defer.gatherResults([pairing.pair_psk(s, PSK) for s in sessions], consumeErrors=True)
            self._paired = True
            # The watcher subscribes at every new session from now on.
            watching = sync.sync_client(self.watcher.peer).topics
            for topic in TOPICS:
                watching.setdefault(topic, 0)
            # Sessions established before pairing: subscribe (and get mail) on fresh ones.
            for s in sessions:
                s.close()
            sessions = yield defer.gatherResults(
                [c.connect(address) for c, address in clients], consumeErrors=True
            )
        self.sessions = {id(c): s for (c, _), s in zip(clients, sessions)}

    def _session(self, client):
        return self.sessions[id(client)]

    def _forward(self, index, mid):
        sender = self.senders[index]
        _, data = self.ledger.sent[mid]
        d = mailbox.forward(self._session(sender), self.recipient.peer_id, data, mid)

        def acked(result):
            if result.duplicate:
                self.ledger.already_stored += 1
            self.ledger.acked.add(result.message_id)
            self.changed()

        return d.addCallback(acked)

    def _publish(self, index, uid):
        publisher = self.publishers[index]
        _, topic, data = self.ledger.published[uid]
        d = sync.sync_publish(self._session(publisher), topic, data, uid)

        def acked(seq):
            self.ledger.update_seqs.setdefault(uid, set()).add(seq)
            self.changed()

        return d.addCallback(acked)

    def retry_unacknowledged(self):
        """Send again, with the same ids, what the previous node never acknowledged."""
        retries = []
        for mid in self.ledger.unacked_messages():
            retries.append(self._forward(self.ledger.sent[mid][0], mid))
        for uid in self.ledger.unacked_updates():
            retries.append(self._publish(self.ledger.published[uid][0], uid))
        self.ledger.retried += len(retries)
        return defer.gatherResults(retries, consumeErrors=True)

    def _lanes(self):
        """Generators keeping LANES requests in flight per client while running."""
        counter = [0]

        def sender(index):
            while self.running:
                counter[0] += 1
                mid = uuid7()
                self.ledger.sent[mid] = (index, b"m%d" % counter[0])
                yield self._forward(index, mid).addErrback(lambda f: None)

        def publisher(index):
            rng = random.Random(index)
            while self.running:
                counter[0] += 1
                uid = os.urandom(16)
                data = b"u%d:%s" % (counter[0], uid.hex().encode())
                self.ledger.published[uid] = (index, rng.choice(TOPICS), data)
                yield self._publish(index, uid).addErrback(lambda f: None)

        lanes = [sender(i) for i in range(len(self.senders)) for _ in range(LANES)]
        lanes += [publisher(i) for i in range(len(self.publishers)) for _ in range(LANES)]
        return lanes

    def _watcher_seen(self):
        return dict(sync.sync_client(self.watcher.peer).topics)

    @defer.inlineCallbacks
    def run_round(self, kill):
        """
        One round on a started node: retry, wait until everything
        acknowledged has arrived, then (if C{kill}) load it, kill it at
        the kill point and check its database.
        """
        self.rounds += 1
        yield self.retry_unacknowledged().addTimeout(self.wait, self.reactor)
        yield self.until(self.ledger.everything_arrived, self.wait, "every acknowledged message and update")
        if not kill:
            return
        self.running = True
        for lane in self._lanes():
            task.cooperate(lane)
        yield self.kill_point(self.rounds)
        yield self.node.kill()
        self.running = False
        self._check_database()

    @defer.inlineCallbacks
    def run(self, kills):
        """C{kills} rounds of start, load, kill; then a last start and check."""
        for round_ in range(kills + 1):
            yield self.start()
            yield self.run_round(kill=round_ < kills)
        yield self.stop()

    @defer.inlineCallbacks
    def stop(self):
        """Close every session and stop the node (TERM); check its database once more."""
        for s in self.sessions.values():
            if s.closed is None:
                s.close()
        if self.node is not None and not self.node.ended.called:
            self.node.transport.signalProcess("TERM")
            yield self.node.ended.addTimeout(self.wait, self.reactor)
            self._check_database()
        for conn in self._connections:
            if not conn.gone.called and conn.transport is not None:
                conn.transport.lose(abort=True)
        gone = [c.gone for c in self._connections if c.transport is not None]
        yield defer.gatherResults(gone).addTimeout(self.wait, self.reactor)

    def _check_database(self):
        path = os.path.join(self.data_dir, DB_FILE_NAME)
        check_database(path, self.ledger, self.watcher.peer_id, self._watcher_seen())

    def summary(self, kills):
        """The figures, as lines."""
        ledger = self.ledger
        return [
            f"kills: {kills} (SIGKILL under load), restarts verified: {self.rounds}",
            f"forwards sent: {len(ledger.sent)}, acknowledged: {len(ledger.acked)},"
            f" lost: {len(ledger.lost_messages())}, stored twice: {len(ledger.duplicate_messages())},"
            f" redelivered under the same seq (dropped by the client's filter): {ledger.redelivered}",
            f"sync publishes: {len(ledger.published)}, acknowledged: {len(ledger.update_seqs)},"
            f" lost: {len(ledger.lost_updates())}, duplicates: {len(ledger.duplicate_updates())}",
            f"sent again after a restart (same ids): {ledger.retried}; forwards the node already had"
            f" (ForwardAck DUPLICATE): {ledger.already_stored}",
            f"watcher cursors at the last check: {dict(sorted(ledger.cursors.items()))}",
            f"integrity_check: {sum(1 for r in ledger.integrity if r == 'ok')}/{len(ledger.integrity)} ok",
            f"problems: {len(ledger.problems)}",
        ] + [f"  {p}" for p in ledger.problems[:20]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("kill", "clean"), default="kill",
                        help="kill: SIGKILL, clients start new sessions; clean: SIGTERM, clients resume theirs")
    parser.add_argument("--kills", type=int, default=20, help="stops under load (SIGKILL or SIGTERM)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--min-delay", type=float, default=0.3, help="seconds of load before a kill, at least")
    parser.add_argument("--max-delay", type=float, default=2.5, help="seconds of load before a kill, at most")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    rng = random.Random(args.seed)
    data_dir = tempfile.mkdtemp(prefix="cairn-crash-")
    delays = []

    def kill_point(round_):
        delay = rng.uniform(args.min_delay, args.max_delay)
        delays.append(delay)
        return task.deferLater(reactor, delay, lambda: None)

    if args.mode == "clean":
        from bench.crash_clean import CleanHarness as harness_class
    else:
        harness_class = Harness
    harness = harness_class(reactor, data_dir, args.senders, args.publishers, kill_point)
    outcome = {}
    started = time.monotonic()

    def done(result):
        outcome["failure"] = result
        if reactor.running:
            reactor.stop()

    def cleanup():
        if harness.node is not None and not harness.node.ended.called:
            harness.node.transport.signalProcess("KILL")

    reactor.addSystemEventTrigger("before", "shutdown", cleanup)
    reactor.callWhenRunning(lambda: harness.run(args.kills).addBoth(done))
    reactor.run()
    shutil.rmtree(data_dir, ignore_errors=True)

    failure = outcome.get("failure")
    signal = "SIGTERM" if args.mode == "clean" else "SIGKILL"
    print(f"crash ({args.mode}): seed {args.seed}, {args.senders} senders (TCP) and {args.publishers} publishers"
          f" (WebSocket), {LANES} requests in flight each, {signal} after {args.min_delay}-{args.max_delay} s of load")
    if delays:
        print(f"kill delays: min {min(delays):.2f} s, max {max(delays):.2f} s, mean {sum(delays) / len(delays):.2f} s")
    for line in harness.summary(args.kills):
        print(line)
    print(f"wall time: {time.monotonic() - started:.1f} s")
    if failure is not None:
        print(f"FAILED: {failure.getErrorMessage()}")
        return 1
    ok = harness.ok() if hasattr(harness, "ok") else True
    ok = ok and not harness.ledger.problems and not harness.ledger.lost_messages() and not harness.ledger.lost_updates()
    ok = ok and not harness.ledger.duplicate_messages() and not harness.ledger.duplicate_updates()
    print("result: " + ("OK" if ok else "PROBLEMS FOUND"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
