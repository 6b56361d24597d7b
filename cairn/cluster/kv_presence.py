"""
Presence of a whole deployment in a JetStream KV bucket (L{IPresence}).

Bucket C{<prefix>_presence} (memory storage, the deployment's replicas,
a TTL of L{TTL} on every key), two kinds of keys:

  - C{n.<node>}: a node's heartbeat (C{{"at": <its clock>}}), written
    every L{HEARTBEAT} seconds and deleted on a clean stop. A node not
    heard from for L{NODE_TIMEOUT} seconds (on the reading node's own
    clock, so clocks need not agree) is gone, and so is everything it
    announced: a node killed with -9 stops counting within
    L{NODE_TIMEOUT}. A heartbeat read at start may be that old already
    (the TTL keeps a dead node's up to L{TTL}): it counts from the time
    it carries, never later than the reader's now, so a node that died
    before another started counts there only until L{NODE_TIMEOUT} after
    its last heartbeat, as it does everywhere else (it counted for
    L{NODE_TIMEOUT} from the start). Clocks apart then cost at most a
    heartbeat: a live node whose clock is behind is seen at its next one.
  - C{p.<peer id>.<node>}: the peer has an attached session on the node;
    written when a paired peer's session attaches, deleted when its last
    one detaches, and re-asserted every L{REASSERT} seconds (the TTL
    removes what a dead node left behind).

Every node keeps the bucket in memory through a watch, so L{locate} and
L{where} stay synchronous look-ups. A write that failed (NATS away) is
made good at the next heartbeat: the node compares what it announced
(as the watch shows it) with its live sessions and writes the difference.
"""

import json
import math

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster.common import one_line, open_bucket
from cairn.cluster.kv_whole import Followed
from cairn.cluster.presence import IPresence, attached_locally, local_peers
from cairn.storeservice import observe

log = Logger()

#: Seconds between a node's heartbeats.
HEARTBEAT = 2.0
#: Seconds without a heartbeat after which a node counts as gone.
NODE_TIMEOUT = 3 * HEARTBEAT + 1.0
#: Seconds between re-assertions of every peer key (well within L{TTL}).
REASSERT = 60.0
#: Seconds a key lives without being written again.
TTL = 300.0
#: Seconds a stop waits to withdraw this node from the bucket.
STOP_GRACE = 5.0


@implementer(IPresence)
class KVPresence:
    """
    @param jet: the node's L{cairn.cluster.connection.JetStream}.
    @param peer: the node's L{Peer} (this object observes its sessions).
    @param node: this node's name.
    @param clock: the node's clock (heartbeats and liveness).
    """

    def __init__(self, jet, peer, node, clock, heartbeat=HEARTBEAT, node_timeout=NODE_TIMEOUT, reassert=REASSERT):
        self.jet = jet
        self.peer = peer
        self.node = node
        self.clock = clock
        self.heartbeat = heartbeat
        self.node_timeout = node_timeout
        self.reassert = reassert
        self.bucket = f"{jet.prefix}_presence"
        self.kv = None
        self._where = {}  # peer id -> {node names} as the bucket says
        self._heard = {}  # node name -> when its heartbeat was last seen (our clock)
        self._beating = None
        self._last_reassert = None
        self._watcher = None
        self._stopped = False
        self._others = []  # callbacks: another node is heard of
        peer.add_observer(self)

    def on_other_node(self, callback):
        """
        Call C{callback()} whenever a heartbeat of another node is seen (e.g.
        the mailbox's watch): before L{elsewhere} can name that node.
        """
        self._others.append(callback)

    # Life cycle

    def start(self):
        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._open))
        d.addCallback(self._loaded)
        return d

    async def _open(self):

        from nats.js.api import KeyValueConfig, StorageType

        config = KeyValueConfig(
            bucket=self.bucket,
            description="cairn presence: which node holds each peer's session",
            history=1,
            ttl=TTL,
            replicas=self.jet.settings.replicas,
            storage=StorageType.MEMORY,
        )
        self.kv = await open_bucket(self.jet.js, config, self.jet.nc)
        self._watcher = Followed(self.jet, self.kv, self._changed)
        return [_change(entry, _beat_time(entry)) for entry in await self._watcher.start()]

    def _changed(self, entries, whole):
        """On the NATS loop: changes the watch brought (C{whole}: the bucket read again, its heartbeats' times read)."""
        self.jet.thread.to_reactor(
            self._apply, [_change(entry, _beat_time(entry) if whole else None) for entry in entries]
        )

    def _loaded(self, initial):
        self._apply(initial)
        self._beating = task.LoopingCall(self._beat)
        self._beating.clock = self.clock
        self._beating.start(self.heartbeat, now=True)

    def stop(self):
        self._stopped = True
        if self._beating is not None and self._beating.running:
            self._beating.stop()
        if self.kv is None:
            return defer.succeed(None)
        mine = [p for p, nodes in self._where.items() if self.node in nodes]

        async def leave():
            import asyncio

            # The node key first: the others forget everything of ours at once.
            await self.kv.delete(f"n.{self.node}")
            await asyncio.gather(*(self.kv.delete(f"p.{p}.{self.node}") for p in mine), return_exceptions=True)

        d = self.jet.run(leave)
        d.addErrback(lambda f: log.warn("presence: could not withdraw this node ({why})", why=one_line(f.value)))
        # NATS away: the stop does not wait for it (the others see the heartbeat stop).
        waiting = observe(d).addTimeout(STOP_GRACE, self.clock, onTimeoutCancel=lambda result, timeout: None)
        watcher = self._watcher
        if watcher is not None:
            waiting.addBoth(lambda _: self.jet.thread.call(watcher.cancel))
        return waiting

    # The mirror

    def _apply(self, changes):
        now = self.clock.seconds()
        for kind, name, node, present, at in changes:
            if kind == "n":
                if present:
                    heard = now if at is None else min(now, at)
                    # Never earlier than heard already: a bucket read again brings a heartbeat's own time.
                    self._heard[name] = max(heard, self._heard.get(name, heard))
                    if name != self.node:
                        for callback in self._others:
                            callback()
                else:
                    self._heard.pop(name, None)
            elif kind == "p":
                nodes = self._where.setdefault(name, set())
                if present:
                    nodes.add(node)
                else:
                    nodes.discard(node)
                    if not nodes:
                        del self._where[name]

    def _alive(self, node):
        if node == self.node:
            return True
        heard = self._heard.get(node)
        return heard is not None and self.clock.seconds() - heard <= self.node_timeout

    # IPresence

    def locate(self, peer_id):
        found = self.where(peer_id)
        return found[0] if found else None

    def where(self, peer_id):
        here = attached_locally(self.peer, peer_id)
        others = sorted(n for n in self._where.get(peer_id, ()) if n != self.node and self._alive(n))
        return ((self.node,) if here else ()) + tuple(others)

    def elsewhere(self, peer_id):
        """
        The other live nodes holding a session of C{peer_id}, as L{where}
        without this node; safe to call from the NATS loop's thread (it
        reads the mirror, which the reactor writes, one copy at a time).
        """
        nodes = tuple(self._where.get(peer_id, ()))
        heard = dict(self._heard)
        now = self.clock.seconds()
        return sorted(n for n in nodes if n != self.node and n in heard and now - heard[n] <= self.node_timeout)

    def peers(self):
        result = {}
        for peer_id, nodes in self._where.items():
            alive = sorted(n for n in nodes if n != self.node and self._alive(n))
            if alive:
                result[peer_id] = tuple(alive)
        for peer_id in local_peers(self.peer):
            result[peer_id] = (self.node,) + result.get(peer_id, ())
        return result

    def nodes(self):
        now = self.clock.seconds()
        seen = {node: max(0.0, now - heard) for node, heard in self._heard.items() if self._alive(node)}
        seen[self.node] = 0.0
        return seen

    # Writing

    def _beat(self):
        """The heartbeat; and whatever the bucket lacks (or has too much) of ours, made good."""
        now = self.clock.seconds()
        announced = {p for p, nodes in self._where.items() if self.node in nodes}
        live = {s.remote_peer_id for s in self._attached_trusted()}
        reassert = self._last_reassert is None or now - self._last_reassert >= self.reassert
        if reassert:
            self._last_reassert = now
        put = live if reassert else live - announced
        delete = announced - live
        beat = json.dumps({"at": now}).encode()

        async def write():
            import asyncio

            await self.kv.put(f"n.{self.node}", beat)
            writes = [self.kv.put(f"p.{p}.{self.node}", b"") for p in put]
            writes += [self.kv.delete(f"p.{p}.{self.node}") for p in delete]
            for outcome in await asyncio.gather(*writes, return_exceptions=True):
                if isinstance(outcome, Exception):
                    raise outcome

        self._write(write, "heartbeat")

    def _attached_trusted(self):
        return [
            s for s in list(self.peer.sessions.values()) if s.closed is None and s.attached and self.peer.trusted(s)
        ]

    def _write(self, write, what):
        if self._stopped or self.kv is None:
            return
        d = self.jet.run(write)
        # The next heartbeat makes good what failed.
        d.addErrback(lambda f: log.debug("presence: {what} not written ({why})", what=what, why=one_line(f.value)))

    def _announce(self, peer_id):
        async def write():
            await self.kv.put(f"p.{peer_id}.{self.node}", b"")

        self._write(write, "arrival")

    def _withdraw(self, peer_id):
        async def write():
            await self.kv.delete(f"p.{peer_id}.{self.node}")

        self._write(write, "departure")

    # Session observer

    def session_established(self, session):
        if session.attached and self.peer.trusted(session):
            self._announce(session.remote_peer_id)

    session_resumed = session_established

    def peer_paired(self, peer_id):
        # Also told for every trust change another node makes (last-seen
        # times): write only what the bucket does not show yet.
        if attached_locally(self.peer, peer_id) and self.node not in self._where.get(peer_id, ()):
            self._announce(peer_id)

    def session_detached(self, session):
        self._departed(session)

    def session_closed(self, session):
        self._departed(session)

    def _departed(self, session):
        peer_id = session.remote_peer_id
        if peer_id is not None and not attached_locally(self.peer, peer_id):
            self._withdraw(peer_id)


def _change(entry, at=None):
    """
    C{(kind, name, node, present, at)} of a KV entry: C{("n", node, None, …)}
    or C{("p", peer id, node, …)}; C{at}: when a heartbeat was written (read
    at start), or None (it arrives through the watch: written just now).
    """
    present = entry.operation not in ("DEL", "PURGE")
    parts = entry.key.split(".")
    if parts[0] == "n" and len(parts) == 2:
        return ("n", parts[1], None, present, at)
    if parts[0] == "p" and len(parts) == 3:
        return ("p", parts[1], parts[2], present, None)
    return ("?", entry.key, None, present, None)


def _beat_time(entry):
    """The time a heartbeat entry says it was written (on its node's clock), or None if it says none."""
    try:
        at = float(json.loads(entry.value)["at"])
    except (ValueError, TypeError, KeyError):
        return None
    return at if math.isfinite(at) else None
