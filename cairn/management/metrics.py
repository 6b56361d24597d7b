"""
The node's Prometheus metrics, on a registry of its own.

Values are computed at scrape time by collectors, so nothing here has to be
updated as sessions come and go.  Services add their own metrics with
L{Metrics.add_gauge}, L{Metrics.add_counter} or L{Metrics.add_collector}.

The pairing counts are the one exception: the trust store only answers
asynchronously, so the management API refreshes L{Metrics.peer_counts}
just before each scrape (see L{Metrics.refresh_peer_counts}).
"""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from cairn import __version__
from cairn.pairing.interfaces import STATES

log = Logger()

#: The C{Content-Type} of L{Metrics.exposition}.
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Collector:
    """
    Adapts a callable returning metric families to the registry's protocol;
    with C{node}, every sample also carries the label C{node="<node>"}.
    """

    def __init__(self, collect, name, node=None):
        self._collect = collect
        self._name = name
        self._node = node

    def collect(self):
        # One failing service must not take the whole scrape down.
        try:
            families = list(self._collect())
        except Exception:
            log.failure("metrics collector {name} failed", name=self._name)
            return []
        if self._node is not None:
            for family in families:
                family.samples = [s._replace(labels={**s.labels, "node": self._node}) for s in family.samples]
        return families


def _samples(value):
    """Normalise a callable's result: a number, or {label values tuple: number}."""
    if isinstance(value, dict):
        return [(labels if isinstance(labels, tuple) else (labels,), v) for labels, v in value.items()]
    return [((), value)]


class Metrics:
    """
    A per-node L{CollectorRegistry} with the core cairn metrics.

    @param peer: the local L{cairn.session.peer.Peer} (sessions, unknown types).
    @param clock: an C{IReactorTime} for the uptime gauge, or C{None}.
    @param started_at: the node's start time in C{clock} seconds.
    @param process_metrics: also export the standard C{process_*} metrics.
    @param node: this node's name (C{CAIRN_NODE_NAME}): every sample is
        labelled C{node="<name>"}, so that one Prometheus tells the nodes
        of a deployment apart; None: no such label.
    """

    def __init__(self, peer, clock=None, started_at=None, process_metrics=True, node=None):
        self.peer = peer
        self.node = node
        self.clock = clock
        self.started_at = started_at
        #: Records per pairing state, as of the last refresh.
        self.peer_counts = dict.fromkeys(STATES, 0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.add_collector(self._core, name="core")
        if process_metrics:
            self.add_collector(ProcessCollector(registry=None).collect, name="process")

    def add_collector(self, collect, name=None) -> None:
        """
        Export what C{collect()} returns (an iterable of
        C{prometheus_client.core.*MetricFamily}) at every scrape.
        """
        self.registry.register(_Collector(collect, name or getattr(collect, "__name__", "collector"), self.node))

    def add_gauge(self, name, documentation, value, labels=()) -> None:
        """
        Export a gauge whose value is C{value()} at scrape time.

        C{value()} returns a number, or (with C{labels}) a dict from label
        value tuples (or a single label value) to numbers.
        """
        self._add(GaugeMetricFamily, name, documentation, value, labels)

    def add_counter(self, name, documentation, value, labels=()) -> None:
        """Like L{add_gauge}, for a monotonic counter (exported as C{name_total})."""
        self._add(CounterMetricFamily, name, documentation, value, labels)

    def _add(self, family, name, documentation, value, labels):
        labels = list(labels)

        def collect():
            metric = family(name, documentation, labels=labels)
            for label_values, number in _samples(value()):
                metric.add_metric(list(label_values), number)
            return [metric]

        self.add_collector(collect, name=name)

    def set_peer_counts(self, records) -> None:
        """Recount L{peer_counts} from an iterable of L{PeerRecord}s."""
        counts = dict.fromkeys(STATES, 0)
        for record in records:
            counts[record.state] = counts.get(record.state, 0) + 1
        self.peer_counts = counts

    def refresh_peer_counts(self, trust):
        """Deferred: recount L{peer_counts} from C{trust} (an C{ITrustStore})."""
        return maybeDeferred(trust.list).addCallback(self.set_peer_counts)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (see L{CONTENT_TYPE})."""
        return generate_latest(self.registry)

    def _core(self):
        sessions = GaugeMetricFamily("cairn_sessions", "Live sessions by state.", labels=["state"])
        attached = sum(1 for s in list(self.peer.sessions.values()) if s.attached)
        sessions.add_metric(["attached"], attached)
        sessions.add_metric(["detached"], len(self.peer.sessions) - attached)
        yield sessions

        peers = GaugeMetricFamily("cairn_peers", "Known peers by pairing state.", labels=["state"])
        for state in STATES:
            peers.add_metric([state], self.peer_counts.get(state, 0))
        yield peers

        yield CounterMetricFamily(
            "cairn_unknown_types",
            "Envelopes of an unknown type, ignored.",
            value=sum(self.peer.unknown_types.values()),
        )

        build = GaugeMetricFamily("cairn_build_info", "The running cairn-server version.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build

        if self.clock is not None and self.started_at is not None:
            yield GaugeMetricFamily(
                "cairn_uptime_seconds",
                "Seconds since the node started.",
                value=max(0.0, self.clock.seconds() - self.started_at),
            )
