"""Metrics for GET /metrics: hot-path histograms of our own, the rest through the OpenTelemetry SDK.

One `Metrics` per app, built in a cleanup_ctx. The two per-request histograms (HTTP duration,
stage duration) are plain bucket counters here: the SDK's `Histogram.record` cost ~7 us in
isolation and ~15 us in situ (attribute hashing, a Measurement object, a lock, an exemplar
check), five times per request, which made it the largest single cost of a cache hit.
Everything else (observable counters and gauges, the contrib client instrumentations'
metrics) goes through the SDK's MeterProvider with an in-memory reader that /metrics collects
on demand (no global provider, no background thread). Both render as one Prometheus text.

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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence

from opentelemetry.metrics import CallbackOptions, Observation
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
        self._histograms: list[Histogram] = []
        self.http_duration = self.histogram(
            "http.server.request.duration",
            ("http.request.method", "http.route", "http.response.status_code"),
            unit="s",
            description="Duration of HTTP server requests",
        )
        self.stage_duration = self.histogram(
            "gateway.stage.duration",
            ("stage", "outcome"),
            unit="s",
            description="Duration of one pipeline stage",
        )

    def histogram(
        self,
        name: str,
        label_names: Sequence[str],
        *,
        unit: str = "",
        description: str = "",
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        """A histogram to `record()` on a hot path (create it once, at start-up)."""
        histogram = Histogram(name, label_names, unit=unit, description=description, buckets=buckets)
        self._histograms.append(histogram)
        return histogram

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
        for histogram in self._histograms:
            histogram.render(lines)
        if data is not None:
            for resource_metrics in data.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        _render(metric, lines)
        lines.append("")
        return "\n".join(lines)

    def close(self) -> None:
        self.provider.shutdown()


class Histogram:
    """Cumulative bucket counts per label set; `record` is a dict lookup and a bisect.

    Label values are positional, in the order of `label_names`, so that recording builds no
    dict. Not thread-safe: record from the event loop thread only (as every caller does).
    """

    def __init__(
        self, name: str, label_names: Sequence[str], *, unit: str, description: str, buckets: Sequence[float]
    ) -> None:
        self.name = prometheus_name(name, unit)
        self.description = description
        self.label_names = tuple(_INVALID_LABEL.sub("_", label) for label in label_names)
        self.buckets = tuple(sorted(buckets))
        # per label values: [count in bucket 0, ..., count above the last bound, sum]
        self._series: dict[tuple[str | int, ...], list[float]] = {}

    def record(self, value: float, *label_values: str | int) -> None:
        series = self._series.get(label_values)
        if series is None:
            if len(label_values) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {label_values}")
            series = self._series[label_values] = [0] * (len(self.buckets) + 2)
        series[bisect_left(self.buckets, value)] += 1  # Prometheus buckets are "<= le"
        series[-1] += value

    def render(self, lines: list[str]) -> None:
        if not self._series:
            return
        name, names = self.name, self.label_names
        if self.description:
            lines.append(f"# HELP {name} {_escape_help(self.description)}")
        lines.append(f"# TYPE {name} histogram")
        for values, series in self._series.items():
            labels = [f"{key}={_quote(str(value))}" for key, value in zip(names, values, strict=True)]
            cumulative = 0
            for bound, count in zip(self.buckets, series, strict=False):
                cumulative += int(count)
                le = f"le={_quote(_number(bound))}"
                lines.append(f"{name}_bucket{_braces([*labels, le])} {cumulative}")
            total = cumulative + int(series[-2])
            lines.append(f"{name}_bucket{_braces([*labels, _LE_INF])} {total}")
            lines.append(f"{name}_sum{_braces(labels)} {_number(series[-1])}")
            lines.append(f"{name}_count{_braces(labels)} {total}")


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
