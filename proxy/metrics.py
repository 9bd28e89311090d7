"""Every Prometheus metric flowgate exports, in one place.

Rules (they keep cardinality bounded and secrets out): base units, ``_total`` / ``_seconds`` /
``_bytes`` suffixes, histograms up to the 300 s run cap, and labels only from bounded sets: flow id
(from the config, or ``unknown``), dialect, route name, status class, outcome, reason, backend name,
store operation. Never a key, token, owner-supplied string or raw path.

Per-chunk work is limited to one histogram observation (the inter-chunk gap, a lock-free
:class:`LoopHistogram`); everything else is counted once per run.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class LoopHistogram:
    """A histogram for observations made on the hot path, exposed exactly like prometheus-client's
    (``_bucket``/``_count``/``_sum``). Only the event loop's thread observes and collects, so it
    needs no lock: an observation is a bisect and a list increment (~0.2 µs against ~0.9 µs)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.bounds = (*buckets, float("inf"))
        self._le = [floatToGoString(b) for b in self.bounds]
        self._children: dict[tuple[str, ...], _LoopHistogramChild] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> _LoopHistogramChild:
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = _LoopHistogramChild(self.bounds)
        return found

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._le, child.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class _LoopHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 240, 300)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

UNKNOWN_FLOW = "unknown"

REQUESTS = Counter("flowgate_requests_total", "HTTP requests answered.",
                   ["dialect", "route", "flow", "status_class"])
RUNS_STARTED = Counter("flowgate_runs_started_total", "Runs admitted and forwarded to a backend.",
                       ["dialect", "flow"])
RUNS_ENDED = Counter("flowgate_runs_ended_total", "Admitted runs by how they ended.",
                     ["dialect", "flow", "outcome"])
REJECTIONS = Counter("flowgate_rejections_total", "Requests refused before reaching a backend, by reason.",
                     ["dialect", "reason"])
STREAMS_OPEN = Gauge("flowgate_streams_open", "Runs currently streaming.", ["dialect", "flow"])
BACKEND_TTFB = Histogram("flowgate_backend_ttfb_seconds", "From forwarding to the backend's first body byte.",
                         ["flow"], buckets=LATENCY_BUCKETS)
CLIENT_TTFB = Histogram("flowgate_client_ttfb_seconds", "From the request's arrival to the first byte written to "
                        "the client.", ["dialect", "flow"], buckets=LATENCY_BUCKETS)
CHUNK_GAP = LoopHistogram("flowgate_chunk_gap_seconds", "Time between consecutive backend chunks.", ["flow"],
                          buckets=LATENCY_BUCKETS)
RUN_DURATION = Histogram("flowgate_run_duration_seconds", "Admitted run length.", ["dialect", "flow", "outcome"],
                         buckets=RUN_BUCKETS)
BYTES_IN = Counter("flowgate_backend_received_bytes_total", "Body bytes read from backends.", ["flow"])
BYTES_OUT = Counter("flowgate_client_sent_bytes_total", "Body bytes written to clients.", ["dialect", "flow"])
TOKENS = Counter("flowgate_tokens_total", "Tokens metered (output is what is charged).", ["flow", "kind"])
CREDITS = Counter("flowgate_credits_charged_total", "Credits charged at settlement.", ["flow"])
STREAM_TOKENS_MINTED = Counter("flowgate_stream_tokens_minted_total", "Single-use stream tokens minted.")
STREAM_TOKENS_CONSUMED = Counter("flowgate_stream_tokens_consumed_total", "Stream tokens spent on a run.")
STREAM_TOKENS_REFUSED = Counter("flowgate_stream_tokens_refused_total", "Stream tokens refused, by reason.",
                                ["reason"])
BACKEND_FAILURES = Counter("flowgate_backend_failures_total", "Backend failures, by kind.", ["backend", "kind"])
STORE_SECONDS = Histogram("flowgate_store_operation_seconds", "State store operation latency.", ["op"],
                          buckets=STORE_BUCKETS)
STORE_ERRORS = Counter("flowgate_store_errors_total", "State store operations that failed.", ["op"])
HOLDS_RECOVERED = Counter("flowgate_holds_recovered_total", "Expired credit holds of dead replicas settled here.")


_children: dict[tuple, object] = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, cached: prometheus-client validates labels on every call."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def status_class(status: int) -> str:
    return f"{status // 100}xx" if status else "0xx"


OUTCOMES = ("completed", "client_disconnected", "deadline", "backend_error", "credits_cut")
REJECTION_REASONS = ("bad_request", "unauthorized", "invalid_token", "forbidden", "no_credits", "not_found",
                     "payload_too_large", "rate_limited", "store_unavailable")


def init_series(flows: list[str], dialects: list[str], backends: list[str]) -> None:
    """Create the known label sets at zero, so dashboards show 0 rather than "no data"."""
    for dialect in dialects:
        for reason in REJECTION_REASONS:
            REJECTIONS.labels(dialect, reason)
        for flow in flows:
            RUNS_STARTED.labels(dialect, flow)
            STREAMS_OPEN.labels(dialect, flow)
            for outcome in OUTCOMES:
                RUNS_ENDED.labels(dialect, flow, outcome)
    for flow in flows:
        CREDITS.labels(flow)
        for kind in ("input", "output"):
            TOKENS.labels(flow, kind)
    for backend in backends:
        for kind in ("connect", "timeout", "status", "broken"):
            BACKEND_FAILURES.labels(backend, kind)
    for reason in ("malformed", "unknown", "expired", "used", "wrong_flow", "key_revoked"):
        STREAM_TOKENS_REFUSED.labels(reason)
