"""
The relay's management side: per-peer figures and limits for the
management API (C{GET /relay}, C{PUT /relay/{peer_id}/quota}) and its
Prometheus metrics. A mixin of L{cairn.relay.service.RelayService}.
"""

from collections import Counter

import attr

from cairn.relay.interfaces import RelayLimits


def _whole(body, key, minimum):
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{key} must be a whole number at least {minimum}, or null")
    return value


def parse_limits(body):
    """
    A management body C{{"max_bytes": n|null, "max_rate": n|null,
    "reset_bytes": bool}} as C{(changes, reset)}: C{changes} holds the
    limits present in the body (None removes one; an absent key is left
    as it is), C{reset} whether to zero the byte counts.

    @raise ValueError: naming the bad key.
    """
    keys = ("max_bytes", "max_rate", "reset_bytes")
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(keys)}")
    reset = body.get("reset_bytes", False)
    if not isinstance(reset, bool):
        raise ValueError("reset_bytes must be true or false")
    changes = {key: _whole(body, key, minimum) for key, minimum in (("max_bytes", 0), ("max_rate", 1)) if key in body}
    return changes, reset


class RelayReports:
    """Figures and limits of a L{cairn.relay.service.RelayService} for the operator."""

    def peer_stats(self, peer_id):
        """One peer's relay figures and limits."""
        return {
            "peer_id": peer_id,
            "circuits": sum(peer_id in (c.a.remote_peer_id, c.b.remote_peer_id) for c in self.circuits.values()),
            "bytes_sent": self.bytes_sent[peer_id],
            "bytes_received": self.bytes_received[peer_id],
            "quota": self.accounts.quota(peer_id),
            "max_rate": self.accounts.rate(peer_id),
        }

    def put_quota(self, peer_id, body):
        """
        C{PUT /relay/{peer_id}/quota}: C{{"max_bytes": n|null, "max_rate":
        n|null, "reset_bytes": bool}} for a paired peer (see
        L{parse_limits}), persisted; fires with its L{peer_stats}.

        @raise ValueError: a bad body. @raise UnknownPeer: not paired.
        """
        from cairn.pairing.interfaces import UnknownPeer

        changes, reset = parse_limits(body)
        if not self.trust.is_paired(peer_id):
            raise UnknownPeer(peer_id)
        limits = attr.evolve(self.accounts.limits.get(peer_id, RelayLimits()), **changes)
        d = self.set_limits(peer_id, limits)
        if reset:
            d.addCallback(lambda _: self.accounts.reset_counts(peer_id))
        return d.addCallback(lambda _: self.peer_stats(peer_id))

    def stats(self):
        """C{GET /relay}: circuits, capacity, and per-peer byte counts and limits."""
        now = self.clock.seconds()
        per_peer = Counter()
        for circuit in self.circuits.values():
            for end in (circuit.a, circuit.b):
                per_peer[end.remote_peer_id] += 1
        peer_ids = sorted(set(self.bytes_sent) | set(self.bytes_received) | set(per_peer) | set(self.accounts.limits))
        peers = [dict(self.peer_stats(p), circuits=per_peer[p]) for p in peer_ids]
        circuits = [
            {
                "circuit": c.circuit_id.hex(),
                "state": c.state,
                "mode": c.mode,
                "requester": c.a.remote_peer_id,
                "target": c.b.remote_peer_id,
                "bytes": sum(c.forwarded.values()),
                "queued": sum(c.queued.values()),
                "age": None if c.opened_at is None else now - c.opened_at,
            }
            for c in self.circuits.values()
        ]
        return {
            "circuits": len(self.circuits),
            "capacity": self.capacity,
            "window": self.window,
            "peers": peers,
            "open": circuits,
            "statuses": dict(self.statuses),
        }

    def collect_metrics(self):
        """Prometheus families for L{cairn.management.metrics.Metrics.add_collector}."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        circuits = GaugeMetricFamily("cairn_relay_circuits", "Relay circuits offered or open.")
        circuits.add_metric([], len(self.circuits))
        capacity = GaugeMetricFamily("cairn_relay_capacity", "Relay circuits allowed at once.")
        capacity.add_metric([], self.capacity)
        sent = CounterMetricFamily(
            "cairn_relay_bytes_sent", "Bytes each peer sent through relay circuits.", labels=["peer"]
        )
        received = CounterMetricFamily(
            "cairn_relay_bytes_received", "Bytes relayed to each peer.", labels=["peer"]
        )
        for p, n in sorted(self.bytes_sent.items()):
            sent.add_metric([p], n)
        for p, n in sorted(self.bytes_received.items()):
            received.add_metric([p], n)
        queued = GaugeMetricFamily(
            "cairn_relay_queued_bytes", "Bytes waiting for their sender's relay rate limit.", labels=["peer"]
        )
        for p, pacer in sorted(self.accounts.pacers.items()):
            queued.add_metric([p], pacer.queued)
        statuses = CounterMetricFamily(
            "cairn_relay_route_responses", "RouteResponse statuses given to requesters.", labels=["status"]
        )
        for name, n in sorted(self.statuses.items()):
            statuses.add_metric([name], n)
        return [circuits, capacity, sent, received, queued, statuses]
