"""Metrics through the OpenTelemetry SDK, rendered as Prometheus text for GET /metrics.

One `Metrics` per app, built in a cleanup_ctx: its own MeterProvider and an in-memory reader
that /metrics collects on demand (no global provider, no background thread). Instruments are
created once here; hot paths only call `record`/`add` on them.

Other modules publish their counters without touching the hot path: register an observable
callback that reads them at scrape time, in the cleanup_ctx that owns the object, e.g.

    metrics.gauge("gateway.breaker.state", lambda: breaker.state_code,
                  description="LLM circuit breaker: 0 closed, 1 half-open, 2 open")
    metrics.counter("gateway.llm.tokens", lambda: [(llm.prompt_tokens, {"kind": "prompt"}),
                                                   (llm.completion_tokens, {"kind": "completion"})])
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from opentelemetry.metrics import CallbackOptions, Histogram, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.resources import Resource

Labels = Mapping[str, str | int | float | bool]
# What an observable callback returns: one number, or (number, labels) pairs.
Reading = float | int | Iterable[tuple[float | int, Labels]]
Read = Callable[[], Reading]

# Request and stage latencies: sub-millisecond stages up to LLM calls of several seconds.
LATENCY_BUCKETS: Sequence[float] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_UNIT_SUFFIX = {"s": "_seconds", "ms": "_milliseconds", "By": "_bytes", "1": "_ratio", "USD": "_usd"}
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_LE_INF = 'le="+Inf"'


class Metrics:
    """The app's instruments. Create once per app; call `close()` on shutdown."""

    def __init__(self, *, resource: Resource | None = None) -> None:
        self._reader = InMemoryMetricReader()
        # No exemplars: the text format served here has none, and offering each measurement
        # to a reservoir inside a sampled span costs ~2 us per record.
        self.provider = MeterProvider(
            metric_readers=[self._reader],
            resource=resource,
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )
        self.meter = self.provider.get_meter("intent-gateway")
        self.http_duration = self.histogram(
            "http.server.request.duration", unit="s", description="Duration of HTTP server requests"
        )
        self.stage_duration = self.histogram(
            "gateway.stage.duration", unit="s", description="Duration of one pipeline stage"
        )

    def histogram(
        self, name: str, *, unit: str = "", description: str = "", buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        """A histogram to `record()` on a hot path (create it once, at start-up)."""
        return self.meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )

    def counter(self, name: str, read: Read, *, unit: str = "", description: str = "") -> None:
        """A monotonic total read from `read()` at scrape time (rendered as `<name>_total`)."""
        self.meter.create_observable_counter(
            name, callbacks=[_callback(read)], unit=unit, description=description
        )

    def gauge(self, name: str, read: Read, *, unit: str = "", description: str = "") -> None:
        """A current value (slots in use, breaker state, buffered rows) read at scrape time."""
        self.meter.create_observable_gauge(
            name, callbacks=[_callback(read)], unit=unit, description=description
        )

    def render_prometheus(self) -> str:
        """Collect now and render the Prometheus text exposition format (version 0.0.4)."""
        data = self._reader.get_metrics_data()
        lines: list[str] = []
        if data is not None:
            for resource_metrics in data.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        _render(metric, lines)
        lines.append("")
        return "\n".join(lines)

    def close(self) -> None:
        self.provider.shutdown()


def _callback(read: Read) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        reading = read()
        if isinstance(reading, int | float):
            return [Observation(reading)]
        return [Observation(value, dict(labels)) for value, labels in reading]

    return observe


def prometheus_name(name: str, unit: str) -> str:
    base = _INVALID_NAME.sub("_", name)
    suffix = _UNIT_SUFFIX.get(unit, "")
    return base if not suffix or base.endswith(suffix) else base + suffix


def _render(metric: Metric, lines: list[str]) -> None:
    name = prometheus_name(metric.name, metric.unit or "")
    data = metric.data
    if isinstance(data, Sum) and data.is_monotonic:
        kind, name = "counter", name.removesuffix("_total") + "_total"
    elif isinstance(data, Sum | Gauge):
        kind = "gauge"
    elif isinstance(data, HistogramData):
        kind = "histogram"
    else:  # exponential histograms: not configured here
        return
    if metric.description:
        lines.append(f"# HELP {name} {_escape_help(metric.description)}")
    lines.append(f"# TYPE {name} {kind}")
    for point in data.data_points:
        labels = _labels(point.attributes or {})
        if isinstance(point, HistogramDataPoint):
            _render_histogram(name, labels, point, lines)
        elif isinstance(point, NumberDataPoint):
            lines.append(f"{name}{_braces(labels)} {_number(point.value)}")


def _render_histogram(name: str, labels: list[str], point: HistogramDataPoint, lines: list[str]) -> None:
    cumulative = 0
    for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
        cumulative += count
        lines.append(f"{name}_bucket{_braces([*labels, f'le={_quote(_number(bound))}'])} {cumulative}")
    lines.append(f"{name}_bucket{_braces([*labels, _LE_INF])} {point.count}")
    lines.append(f"{name}_sum{_braces(labels)} {_number(point.sum)}")
    lines.append(f"{name}_count{_braces(labels)} {point.count}")


def _labels(attributes: Mapping[str, object]) -> list[str]:
    return [f"{_INVALID_LABEL.sub('_', key)}={_quote(str(value))}" for key, value in attributes.items()]


def _braces(labels: list[str]) -> str:
    return "{" + ",".join(labels) + "}" if labels else ""


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)
