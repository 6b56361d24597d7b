"""
Disk-full harness: a real C{twistd -n cairn} on a small tmpfs, senders
that never stop, and a recipient that comes and goes.

    python -m bench.diskfull [--size 64] [--reserve 8] [--payload 16384] [--senders 3] [--seconds 10]
                             [--tree DIR]

Needs root (it mounts a tmpfs of C{--size} MiB in a temporary directory
and unmounts it at the end). The node runs with C{CAIRN_DISK_RESERVE} of
C{--reserve} MiB; the clients run in this process:

  1. the recipient is offline; the senders (4 forwards in flight each)
     fill the mailbox until the node refuses with STORAGE_ERROR;
  2. the senders carry on (refused messages are counted, not retried)
     while the recipient connects and drains its mailbox;
  3. after C{--seconds} the recipient disconnects and reconnects once;
  4. the senders stop; the harness waits until the mailbox is empty.

It prints what held: messages stored at the mark, free space there,
time to drain, DELIVERED receipts, messages delivered twice (seen again
by the recipient's client), the node's log lines about the reserve, and
any traceback in the node's log. A harness, not a test: wall-clock.
C{--tree} runs the node from another source tree (e.g. C{git archive} of
an older commit, to compare); every wait then gives up after 30 s and
says so.
"""

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, protocol, task

from cairn.client import Client
from cairn.db import DB_FILE_NAME
from cairn.mailbox import client as mailbox
from cairn.mailbox.client import ForwardRejected
from cairn.pairing import client as pairing
from cairn.wire.constants import ReceiptStatus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSK = "disk-full harness pre-shared key, long enough"
LANES = 4
MiB = 2**20


class Node(protocol.ProcessProtocol):
    """The twistd child: its log, and its TCP port once listening."""

    def __init__(self):
        self.output = []
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output.append(data.decode("utf-8", "replace"))
        match = re.search(r"listening: tcp on 127\.0\.0\.1:(\d+)", "".join(self.output))
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    def log(self):
        return "".join(self.output)


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait(reactor, predicate, what, limit=30.0):
    """Poll C{predicate} every 50 ms; whether it held within C{limit} seconds (a harness: wall-clock)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            print(f"gave up after {limit:.0f} s waiting for {what}")
            return False
        yield sleep(reactor, 0.05)
    return True


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def held(db_path):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT COUNT(*) FROM mailbox_messages").fetchone()[0]
    finally:
        conn.close()


class Senders:
    """Senders forwarding without end (C{LANES} in flight each) until stopped."""

    def __init__(self, sessions, recipient, payload):
        self.sessions = sessions
        self.recipient = recipient
        self.payload = payload
        self.stored = []
        self.refused = 0
        self.running = True
        self.first_refusal = defer.Deferred()

    def start(self):
        return defer.DeferredList([self._lane(s) for s in self.sessions for _ in range(LANES)])

    @defer.inlineCallbacks
    def _lane(self, session):
        while self.running:
            try:
                result = yield mailbox.forward(session, self.recipient, os.urandom(self.payload))
            except ForwardRejected:
                self.refused += 1
                if not self.first_refusal.called:
                    self.first_refusal.callback(None)
            else:
                self.stored.append(result.message_id)


@defer.inlineCallbacks
def run(reactor, args):
    mount = tempfile.mkdtemp(prefix="cairn-diskfull-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size}m,mode=0700", "tmpfs", mount], check=True)
    data_dir = os.path.join(mount, "data")
    node = Node()
    env = dict(
        os.environ,
        PYTHONPATH=args.tree,
        CAIRN_DATA_DIR=data_dir,
        CAIRN_LISTEN="tcp:0:interface=127.0.0.1",
        CAIRN_WS_LISTEN="none",
        CAIRN_MGMT_LISTEN="none",
        CAIRN_PSK=PSK,
        CAIRN_DISK_RESERVE=f"{args.reserve}MiB",
    )
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    argv += ["--nodaemon", "--pidfile=", "--logfile=-", "cairn"]
    process = reactor.spawnProcess(node, sys.executable, argv, env=env, path=args.tree)
    try:
        port = yield node.listening
        address = f"tcp:host=127.0.0.1:port={port}"
        clients = [Client(reactor, clock=task.Clock()) for _ in range(args.senders + 1)]
        recipient = clients[0]
        seen, again, receipts = set(), [], set()
        box = mailbox.mailbox(recipient.peer)
        remember = box._remember

        def counting(key):
            new = remember(key)
            if not new and key[0] != "receipt":
                again.append(key)
            return new

        box._remember = counting  # the client drops a redelivery: count it first
        mailbox.set_inbox(recipient.peer, lambda sender, mid, data: seen.add(mid))
        sessions = []
        for client in clients:
            session = yield client.connect(address)
            yield pairing.pair_psk(session, PSK)
            session.close()
            if client is not recipient:
                session = yield client.connect(address)
                mailbox.set_receipts(
                    client.peer, lambda r: receipts.add(r.message_id) if r.status == ReceiptStatus.DELIVERED else None
                )
                sessions.append(session)
        db_path = os.path.join(data_dir, DB_FILE_NAME)

        load = Senders(sessions, recipient.peer_id, args.payload)
        started = time.monotonic()
        running = load.start()
        yield load.first_refusal
        filled = time.monotonic() - started
        at_mark = list(load.stored)
        free_at_mark, held_at_mark = free_bytes(mount), held(db_path)
        print(f"disk {args.size} MiB tmpfs, reserve {args.reserve} MiB, {args.senders} senders x {LANES} in flight, "
              f"{args.payload} byte payloads")
        print(f"mark reached after {filled:.2f} s: {len(at_mark)} messages stored "
              f"({held_at_mark} held), free space {free_at_mark / MiB:.2f} MiB")

        # The recipient comes while the senders carry on.
        started = time.monotonic()
        session = yield recipient.connect(address)
        wanted = set(at_mark)
        yield wait(reactor, lambda: wanted <= seen and wanted <= receipts, "the mark's messages and receipts")
        drained = time.monotonic() - started
        print(f"after {drained:.2f} s with senders sending on: {len(wanted & seen)} of the {len(wanted)} messages "
              f"of the mark delivered, {len(wanted & receipts)} DELIVERED receipts; held now {held(db_path)}, "
              f"free {free_bytes(mount) / MiB:.2f} MiB")
        yield sleep(reactor, args.seconds)
        session.close()
        yield sleep(reactor, 1.0)
        before = len(again)
        session = yield recipient.connect(address)
        load.running = False
        yield running
        everything = set(load.stored)
        yield wait(reactor, lambda: everything <= seen and not held(db_path), "the mailbox to empty")
        log = node.log()
        failed = log.count("cannot delete delivered") + log.count("deleting delivered messages failed")
        print(f"senders: {len(load.stored)} stored, {load.refused} refused (STORAGE_ERROR); "
              f"recipient got {len(seen)} distinct messages, {len(again)} deliveries seen twice "
              f"({len(again) - before} after the reconnect); {held(db_path)} held at the end")
        print(f"node log: {log.count('down to the reserve')} 'down to the reserve' line(s), "
              f"{log.count('above the reserve again')} 'above again', {log.count('Traceback')} tracebacks, "
              f"{failed} failed deletions")
        session.close()
    finally:
        if not node.ended.called:
            process.signalProcess("TERM")
            yield node.ended
        subprocess.run(["umount", mount], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size", type=int, default=64, help="tmpfs size, MiB")
    parser.add_argument("--reserve", type=int, default=8, help="CAIRN_DISK_RESERVE, MiB")
    parser.add_argument("--payload", type=int, default=16384)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="time at the mark before the reconnect")
    parser.add_argument("--tree", default=REPO, help="source tree the node runs from")
    args = parser.parse_args()
    task.react(run, (args,))


if __name__ == "__main__":
    main()
