"""What the sync hub reports: the JSON of C{GET /sync} and its Prometheus families."""

from cairn.sync.interfaces import Topic
from cairn.wire.constants import SyncStatus


def stats(store, limits, resets, connected):
    """Every topic with its devices' cursors and lag (C{head - cursor}), and the totals."""
    topics = store.topics()
    by_topic = {}
    for device, held in store.cursors().items():
        for name, seq in held.items():
            by_topic.setdefault(name, []).append((device, seq))
    out = []
    for name in sorted(set(topics) | set(by_topic)):
        state = topics.get(name, Topic())
        devices = [
            {
                "peer_id": device,
                "cursor": seq,
                "lag": max(0, state.head - seq),
                "behind_retention": seq < state.floor,
                "connected": device in connected,
            }
            for device, seq in sorted(by_topic.get(name, []))
        ]
        out.append(
            {
                "topic": name,
                "head": state.head,
                "oldest_seq": state.oldest_seq,
                "updates": state.updates,
                "bytes": state.bytes,
                "devices": devices,
            }
        )
    return {
        "topics": out,
        "updates": sum(t.updates for t in topics.values()),
        "bytes": store.total_bytes(),
        "resets": resets,
        "limits": {"max_total": limits.max_total, "max_age": limits.max_age},
    }


def collect_metrics(store, statuses, resets):
    """Per-topic gauges, per-device lag, totals and counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    topics = store.topics()
    for name, doc, value in [
        ("cairn_sync_topic_head", "Last sequence number given per topic.", lambda t: t.head),
        ("cairn_sync_topic_updates", "Updates held per topic.", lambda t: t.updates),
        ("cairn_sync_topic_bytes", "Payload bytes held per topic.", lambda t: t.bytes),
    ]:
        family = GaugeMetricFamily(name, doc, labels=["topic"])
        for topic, state in sorted(topics.items()):
            family.add_metric([topic], value(state))
        yield family
    lag = GaugeMetricFamily("cairn_sync_cursor_lag", "Updates after a device's cursor.", labels=["peer", "topic"])
    for device, held in sorted(store.cursors().items()):
        for topic, seq in sorted(held.items()):
            lag.add_metric([device, topic], max(0, topics.get(topic, Topic()).head - seq))
    yield lag
    yield GaugeMetricFamily("cairn_sync_total_bytes", "Payload bytes held in all topics.", value=store.total_bytes())
    acks = CounterMetricFamily("cairn_sync_publish", "SyncPublishes answered, by status.", labels=["status"])
    for status in SyncStatus:
        acks.add_metric([status.name.lower()], statuses.get(status.name, 0))
    yield acks
    yield CounterMetricFamily("cairn_sync_resets", "SyncResets sent.", value=resets)
