"""What the mailbox reports: the JSON of C{GET /mailbox} (and per peer), the
validation of per-peer limits, and its Prometheus families."""

from cairn.mailbox.interfaces import PeerLimits
from cairn.wire.constants import ForwardStatus


def peer_json(store, limits, peer_id, depth, now) -> dict:
    """One recipient's depth, bytes, oldest age and effective limits."""
    override = store.limits.get(peer_id)
    max_messages = limits.max_per_peer
    if override is not None and override.max_messages is not None:
        max_messages = override.max_messages
    return {
        "peer_id": peer_id,
        "messages": depth.messages,
        "bytes": depth.bytes,
        "oldest_age": None if depth.oldest is None else round(max(0.0, now - depth.oldest), 3),
        "limits": {
            "max_messages": max_messages,
            "max_bytes": override.max_bytes if override is not None else None,
            "override": override.to_json() if override is not None else None,
        },
    }


def stats(store, limits, enabled, now) -> dict:
    """C{GET /mailbox}: every recipient holding mail, and the totals."""
    depths = store.depths()
    peers = [peer_json(store, limits, p, d, now) for p, d in sorted(depths.items())]
    ages = [p["oldest_age"] for p in peers if p["oldest_age"] is not None]
    return {
        "enabled": enabled,
        "peers": peers,
        "messages": sum(d.messages for d in depths.values()),
        "bytes": store.total_bytes(),
        "oldest_age": max(ages) if ages else None,
        "limits": {
            "max_per_peer": limits.max_per_peer,
            "max_total": limits.max_total,
            "max_age": limits.max_age,
        },
    }


def parse_peer_limits(body) -> PeerLimits:
    """
    The body of C{PUT /mailbox/{peer_id}/limits}.

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(body, dict) or set(body) - {"max_messages", "max_bytes"}:
        raise ValueError("body must be an object with max_messages and/or max_bytes")
    values = {}
    for key in ("max_messages", "max_bytes"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{key} must be a positive integer or null")
        values[key] = value
    return PeerLimits(**values)


def collect_metrics(store, statuses, delivered, now):
    """The mailbox's Prometheus families."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    depths = store.depths()
    per_peer = [
        ("cairn_mailbox_messages", "Messages held per recipient.", lambda d: d.messages),
        ("cairn_mailbox_bytes", "Payload bytes held per recipient.", lambda d: d.bytes),
        (
            "cairn_mailbox_oldest_age_seconds",
            "Age of the oldest message held per recipient.",
            lambda d: max(0.0, now - d.oldest) if d.oldest is not None else 0.0,
        ),
    ]
    families = []
    for name, doc, value in per_peer:
        family = GaugeMetricFamily(name, doc, labels=["peer"])
        for peer_id, depth in sorted(depths.items()):
            family.add_metric([peer_id], value(depth))
        families.append(family)
    families.append(
        GaugeMetricFamily(
            "cairn_mailbox_total_messages",
            "Messages held in all mailboxes.",
            value=sum(d.messages for d in depths.values()),
        )
    )
    families.append(
        GaugeMetricFamily(
            "cairn_mailbox_total_bytes", "Payload bytes held in all mailboxes.", value=store.total_bytes()
        )
    )
    acks = CounterMetricFamily("cairn_mailbox_requests", "ForwardRequests answered, by status.", labels=["status"])
    for status in ForwardStatus:
        acks.add_metric([status.name.lower()], statuses.get(status.name, 0))
    families.append(acks)
    families.append(
        CounterMetricFamily("cairn_mailbox_delivered", "Messages delivered and acknowledged.", value=delivered)
    )
    return families
