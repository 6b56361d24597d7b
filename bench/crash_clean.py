"""
The clean-restart mode of the crash harness (C{python -m bench.crash
--mode clean}): SIGTERM instead of SIGKILL, and clients that resume.

The node listens on the same ports at every start, and every client is a
C{Client(auto_resume=True)}; once the node listens again each client's
clock is moved to its first resume attempt. After a SIGTERM nothing
is retried by hand and no new session is made. The load goes on across
the stop (the clients do not know it is coming), so requests are in
flight when it lands. What is checked, beyond L{bench.crash}'s checks:

  - every request sent gets an answer (ForwardAck or SyncAck, or an
    error) -- none waits forever, as the acks of a commit in progress did
    when the node saved its sessions before its services had answered;
  - the load flows again after each restart (the sender is not stalled
    behind requests whose answers never come);
  - every session comes back: same session ids, resumed, not replaced by
    a new handshake; the watcher is not subscribed again, so every
    update it sees after a restart reached it through the subscription
    restored with its session.
"""

import time

from twisted.internet import defer, task

from bench._ports import free_port
from bench.crash import Harness, start_node
from cairn.failover import RESUME_BACKOFF

#: Answers the load must get after a restart before the round stops it.
FLOWING = 100



class CleanHarness(Harness):
    """L{Harness} with SIGTERM and resuming clients; C{stops} holds one dict of figures per stop."""

    def __init__(self, *args, **kwargs):
        self.ports = {"tcp": free_port(), "websocket": free_port()}
        self.errors = {}  # request id -> error message
        self.stops = []
        super().__init__(*args, **kwargs)

    def _client(self):
        # Each client's timers (auto-resume backoff, keepalive, autobahn's
        # close timers) run on its own clock: the harness moves it to the
        # first resume attempt once the node listens, so the figures show
        # the resume itself, not the backoff, and no timer outlives the run.
        client = super()._client()
        client.auto_resume = True
        return client

    def _answered(self, failure, rid):
        self.errors[rid] = failure.getErrorMessage()
        self.changed()
        return failure

    def _forward(self, index, mid):
        return super()._forward(index, mid).addErrback(self._answered, mid)

    def _publish(self, index, uid):
        return super()._publish(index, uid).addErrback(self._answered, uid)

    def _waiting(self):
        """Requests sent and not answered (neither acknowledged nor failed)."""
        ledger = self.ledger
        messages = [m for m in ledger.unacked_messages() if m not in self.errors]
        updates = [u for u in ledger.unacked_updates() if u not in self.errors]
        return len(messages) + len(updates)

    def _answers(self):
        return len(self.ledger.acked) + len(self.ledger.update_seqs) + len(self.errors)

    @defer.inlineCallbacks
    def start(self):
        """The first time as the kill harness; later, wait until every session resumed by itself."""
        if not self.sessions:
            ports = yield super().start()
            for session in self.sessions.values():
                session.on_resume = self.changed
            return ports
        self.node = start_node(self.reactor, self.data_dir, self.ports)
        ports = yield self.node.listening.addTimeout(self.wait, self.reactor)
        listening = time.monotonic()
        ids = {key: s.session_id for key, s in self.sessions.items()}
        for client in [self.recipient, self.watcher] + self.senders + self.publishers:
            client.clock.advance(RESUME_BACKOFF[0])
        yield self.until(
            lambda: all(s.attached for s in self.sessions.values()), self.wait, "every session resumed"
        )
        stop = self.stops[-1]
        stop["resume_s"] = time.monotonic() - listening
        stop["resumed"] = sum(s.closed is None and s.session_id == ids[k] for k, s in self.sessions.items())
        stop["sessions"] = len(self.sessions)
        return ports

    @defer.inlineCallbacks
    def run_round(self, kill):
        """Wait for the load to flow again and for every answer, check; then load and SIGTERM."""
        self.rounds += 1
        if self.running:
            since = self._answers()
            yield self.until(lambda: self._answers() >= since + FLOWING, self.wait, "the load flowing again")
            self.running = False
        yield self.until(lambda: not self._waiting(), self.wait, "an answer to every request sent")
        yield self.until(self.ledger.everything_arrived, self.wait, "every acknowledged message and update")
        if not kill:
            return
        self.running = True
        for lane in self._lanes():
            task.cooperate(lane)
        yield self.kill_point(self.rounds)
        answers = self._answers()
        self.node.transport.signalProcess("TERM")
        status = yield self.node.ended.addTimeout(self.wait, self.reactor)
        self.stops.append(
            {"status": status, "in_flight": self._waiting(), "answered_while_stopping": self._answers() - answers}
        )
        self._check_database()

    def ok(self):
        return not self.errors and all(s.get("resumed") == s.get("sessions") for s in self.stops)

    def summary(self, kills):
        stops = self.stops
        in_flight = [s["in_flight"] for s in stops]
        resumes = [s["resume_s"] for s in stops if "resume_s" in s]
        lines = super().summary(kills)
        lines[0] = f"clean stops: {kills} (SIGTERM under load), restarts verified: {self.rounds}"
        lines[1:1] = [
            f"exit status of the stopped nodes: {sorted({str(s['status']) for s in stops})}",
            f"requests in flight when a stopped node's transports dropped: total {sum(in_flight)},"
            f" per stop min {min(in_flight, default=0)} max {max(in_flight, default=0)};"
            f" every one answered after the resume (no waiting request left: {not self._waiting()})",
            f"answers written while stopping (between SIGTERM and the exit):"
            f" {sum(s['answered_while_stopping'] for s in stops)}",
            f"errors answered: {len(self.errors)} {sorted(set(self.errors.values()))[:3]}",
            f"sessions resumed (same id, no new handshake): {sum(s.get('resumed', 0) for s in stops)}"
            f"/{sum(s.get('sessions', 0) for s in stops)}",
            f"resume after the node listened (first auto-resume attempt then): min {min(resumes, default=0):.2f} s,"
            f" max {max(resumes, default=0):.2f} s",
        ]
        return lines
