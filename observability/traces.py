"""An in-memory ring buffer of recent traces, for GET /debug/traces on a laptop with no collector.

It is a span processor: `on_end` files the finished span under its trace (O(1), on the loop
thread); turning spans into JSON or a waterfall page happens only when someone asks.
"""

from __future__ import annotations

import html
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

MAX_SPANS_PER_TRACE = 500  # a long stream with many Redis calls must not grow without bound
# All traces together: a caller's traceparent chooses the trace id, so without it requests that
# all name one trace filled every trace to its 500 (200 traces: 100,000 spans). Requests make ~5-30.
MAX_SPANS = 20_000


class SpanView(msgspec.Struct, kw_only=True):
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_unix_nano: int
    offset_ms: float  # from the trace's first span
    duration_ms: float
    status: str  # UNSET | OK | ERROR
    attributes: dict[str, object]
    events: list[dict[str, object]]


class TraceView(msgspec.Struct, kw_only=True, omit_defaults=True):
    trace_id: str
    root: str  # name of the earliest span: the HTTP server span for requests
    started: str  # ISO 8601, UTC
    duration_ms: float
    span_count: int
    error: bool
    spans: list[SpanView] | None = None


class FinishedSpan(Protocol):
    """What the buffer reads of a span: the SDK's ReadableSpan and our LightSpan both have it."""

    @property
    def name(self) -> str: ...
    @property
    def context(self) -> SpanContext | None: ...
    @property
    def parent(self) -> SpanContext | None: ...
    @property
    def kind(self) -> SpanKind: ...
    @property
    def status(self) -> Status: ...
    @property
    def start_time(self) -> int | None: ...
    @property
    def end_time(self) -> int | None: ...
    @property
    def attributes(self) -> Mapping[str, AttributeValue] | None: ...
    @property
    def events(self) -> Sequence[Event]: ...


class TraceBuffer(SpanProcessor):
    """Keeps the spans of the last `limit` traces, oldest dropped first."""

    def __init__(self, limit: int = 200, max_spans: int = MAX_SPANS) -> None:
        self.limit = max(1, limit)
        self.max_spans = max_spans
        self.spans = 0  # kept, over all traces
        self._traces: OrderedDict[int, list[FinishedSpan]] = OrderedDict()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.keep(span.context.trace_id if span.context is not None else 0, span)

    def keep(self, trace_id: int, *spans: FinishedSpan) -> None:
        kept = self._traces.get(trace_id)
        if kept is None:
            if len(self._traces) >= self.limit:
                self.spans -= len(self._traces.popitem(last=False)[1])
            kept = self._traces[trace_id] = []
        added = spans[: MAX_SPANS_PER_TRACE - len(kept)]
        kept.extend(added)
        self.spans += len(added)
        while self.spans > self.max_spans and len(self._traces) > 1:  # the oldest go first
            self.spans -= len(self._traces.popitem(last=False)[1])

    def shutdown(self) -> None:
        self._traces.clear()
        self.spans = 0

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def recent(self, limit: int | None = None) -> list[TraceView]:
        """Summaries, newest first."""
        ids = list(reversed(self._traces))[:limit]
        return [_view(trace_id, self._traces[trace_id], with_spans=False) for trace_id in ids]

    def get(self, trace_id: str) -> TraceView | None:
        try:
            spans = self._traces.get(int(trace_id, 16))
        except ValueError:
            return None
        return None if spans is None else _view(int(trace_id, 16), spans, with_spans=True)


def _view(trace_id: int, spans: Sequence[FinishedSpan], *, with_spans: bool) -> TraceView:
    ordered = sorted(spans, key=lambda s: s.start_time or 0)
    origin = ordered[0].start_time or 0
    end = max((s.end_time or origin) for s in ordered)
    return TraceView(
        trace_id=f"{trace_id:032x}",
        root=ordered[0].name,
        started=_iso(origin),
        duration_ms=round((end - origin) / 1e6, 3),
        span_count=len(ordered),
        error=any(s.status.status_code is StatusCode.ERROR for s in ordered),
        spans=[_span_view(s, origin) for s in ordered] if with_spans else None,
    )


def _span_view(span: FinishedSpan, origin: int) -> SpanView:
    start = span.start_time or origin
    return SpanView(
        span_id=f"{span.context.span_id:016x}" if span.context is not None else "",
        parent_span_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
        name=span.name,
        kind=span.kind.name,
        start_unix_nano=start,
        offset_ms=round((start - origin) / 1e6, 3),
        duration_ms=round(((span.end_time or start) - start) / 1e6, 3),
        status=span.status.status_code.name,
        attributes=dict(span.attributes or {}),
        events=[{"name": e.name, **dict(e.attributes or {})} for e in span.events],
    )


def _iso(unix_nano: int) -> str:
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1_000_000:03d}Z"


def render_waterfall(trace: TraceView) -> str:
    """A self-contained HTML page: one row per span, indented under its parent, bars to scale."""
    spans = trace.spans or []
    depth = _depths(spans)
    total = max(trace.duration_ms, 0.001)
    rows = []
    for span in spans:
        left = 100.0 * span.offset_ms / total
        width = max(0.3, 100.0 * span.duration_ms / total)
        attributes = ", ".join(f"{k}={v}" for k, v in span.attributes.items())
        if span.status == "ERROR":  # what failed, in words: a red bar alone says only that it did
            failures = [f"{e.get('exception.type', e['name'])}: {e.get('exception.message', '')}"
                        for e in span.events if e["name"] == "exception"]
            attributes = "; ".join(filter(None, ["ERROR", *failures, attributes]))
        css = "bar error" if span.status == "ERROR" else "bar"
        rows.append(
            "<tr>"
            f'<td style="padding-left:{depth[span.span_id] * 1.2}em">{html.escape(span.name)}</td>'
            f"<td>{span.duration_ms:.3f} ms</td>"
            f'<td class="lane"><div class="{css}" style="left:{left:.2f}%;width:{width:.2f}%"></div></td>'
            f"<td class=attrs>{html.escape(attributes)}</td>"
            "</tr>"
        )
    title = html.escape(f"trace {trace.trace_id}")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title><style>"
        "body{font:13px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}"
        "td{padding:3px 6px;border-bottom:1px solid #eee;white-space:nowrap}"
        ".lane{position:relative;width:40%}.bar{position:absolute;top:4px;height:12px;"
        "background:#4a7fd6;border-radius:2px}.bar.error{background:#d64a4a}"
        ".attrs{white-space:normal;color:#555;font-size:12px}</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(trace.root)} · {trace.duration_ms:.3f} ms · "
        f"{trace.span_count} spans · started {html.escape(trace.started)}</p>"
        "<table><tr><th>span</th><th>duration</th><th>timeline</th><th>attributes</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def _depths(spans: Sequence[SpanView]) -> dict[str, int]:
    parents = {s.span_id: s.parent_span_id for s in spans}
    depths: dict[str, int] = {}
    for span in spans:
        depth, parent, seen = 0, parents.get(span.span_id), set()
        while parent in parents and parent not in seen:
            seen.add(parent)
            depth += 1
            parent = parents[parent]
        depths[span.span_id] = depth
    return depths
