"""
The relay's management side: per-peer figures and limits for the
management API (C{GET /relay}, C{PUT /relay/{peer_id}/quota}) and its
Prometheus metrics: functions of a L{cairn.relay.service.RelayService},
which exposes them as its L{cairn.management.reports.IRelayReports}
methods.
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


def peer_stats(relay, peer_id):
    """One peer's relay figures and limits."""
    return {
        "peer_id": peer_id,
        "circuits": sum(peer_id in (c.a.remote_peer_id, c.b.remote_peer_id) for c in relay.circuits.values()),
        "bytes_sent": relay.bytes_sent[peer_id],
        "bytes_received": relay.bytes_received[peer_id],
        "quota": relay.accounts.quota(peer_id),
        "max_rate": relay.accounts.rate(peer_id),
    }


def put_quota(relay, peer_id, body):
    """
    C{PUT /relay/{peer_id}/quota}: C{{"max_bytes": n|null, "max_rate":
    n|null, "reset_bytes": bool}} for a paired peer (see
    L{parse_limits}), persisted; fires with its L{peer_stats}.

    @raise ValueError: a bad body. @raise UnknownPeer: not paired.
    """
    from cairn.pairing.interfaces import UnknownPeer

    changes, reset = parse_limits(body)
    if not relay.trust.is_paired(peer_id):
        raise UnknownPeer(peer_id)
    limits = attr.evolve(relay.accounts.limits.get(peer_id, RelayLimits()), **changes)
    d = relay.set_limits(peer_id, limits)
    if reset:
        d.addCallback(lambda _: relay.accounts.reset_counts(peer_id))
    return d.addCallback(lambda _: peer_stats(relay, peer_id))


def stats(relay):
    """C{GET /relay}: circuits, capacity, and per-peer byte counts and limits."""
    now = relay.clock.seconds()
    per_peer = Counter()
    for circuit in relay.circuits.values():
        for end in (circuit.a, circuit.b):
            per_peer[end.remote_peer_id] += 1
    peer_ids = sorted(set(relay.bytes_sent) | set(relay.bytes_received) | set(per_peer) | set(relay.accounts.limits))
    peers = [dict(peer_stats(relay, p), circuits=per_peer[p]) for p in peer_ids]
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
        for c in relay.circuits.values()
    ]
    # Circuits another node owns whose target is on this one: listed with
    # their owner node, counted against this node's capacity; their bytes
    # count on the owner (each byte once, cluster-wide).
    carried = [] if relay.remote is None else relay.remote.listing()
    return {
        "circuits": relay.load(),
        "carried": len(carried),
        "capacity": relay.capacity,
        "window": relay.window,
        "peers": peers,
        "open": circuits + carried,
        "statuses": dict(relay.statuses),
    }


def collect_metrics(relay):
    """Prometheus families for L{cairn.management.metrics.Metrics.add_collector}."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    circuits = GaugeMetricFamily("cairn_relay_circuits", "Relay circuits offered or open (carried ones too).")
    circuits.add_metric([], relay.load())
    capacity = GaugeMetricFamily("cairn_relay_capacity", "Relay circuits allowed at once.")
    capacity.add_metric([], relay.capacity)
    sent = CounterMetricFamily(
        "cairn_relay_bytes_sent", "Bytes each peer sent through relay circuits.", labels=["peer"]
    )
    received = CounterMetricFamily("cairn_relay_bytes_received", "Bytes relayed to each peer.", labels=["peer"])
    for p, n in sorted(relay.bytes_sent.items()):
        sent.add_metric([p], n)
    for p, n in sorted(relay.bytes_received.items()):
        received.add_metric([p], n)
    queued = GaugeMetricFamily(
        "cairn_relay_queued_bytes", "Bytes waiting for their sender's relay rate limit.", labels=["peer"]
    )
    for p, pacer in sorted(relay.accounts.pacers.items()):
        queued.add_metric([p], pacer.queued)
    statuses = CounterMetricFamily(
        "cairn_relay_route_responses", "RouteResponse statuses given to requesters.", labels=["status"]
    )
    for name, n in sorted(relay.statuses.items()):
        statuses.add_metric([name], n)
    return [circuits, capacity, sent, received, queued, statuses]
