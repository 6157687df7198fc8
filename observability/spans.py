"""Light spans for the per-request hot path: the server span and one span per pipeline stage.

Why not the SDK's `tracer.start_as_current_span`: its Span (a lock, attribute cleaning with ABC
checks, a ReadableSpan copy at end, context-manager plumbing) cost ~20 us each in isolation and
far more in situ; five per request doubled the gateway's CPU per request. These spans keep the
SDK's semantics where they matter: the configured sampler decides for the request span, stage
spans inherit its decision, and W3C ids and flags are the SDK's. A finished span goes into the
/debug/traces ring buffer as it is, and as the SDK's `ReadableSpan` to any other span processor's
`on_end` (batch exporter, test exporters): built only when there is one, since it is the priciest
part of a span. `on_start` is not called. While open, a span is the current span, so client
spans (Redis commands, the contrib aiohttp-client instrumentation, LLM calls) nest under it and
log lines carry its ids.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    set_span_in_context,
)

AttributeValue = str | bool | int | float
Emit = Callable[["LightSpan"], None]
# Tracing.client_span, as passed to code that makes outside calls (the LLM classifier).
ClientSpans = Callable[[str, dict[str, AttributeValue]], "LightSpan | NoSpan"]
_UNSET = Status(StatusCode.UNSET)


class LightSpan:
    """A span that is current between `__enter__` and `__exit__`, and reported at exit if recording."""

    __slots__ = ("_emit", "_resource", "_scope", "_token", "attributes", "context", "end_time", "events",
                 "kind", "name", "parent", "recording", "start_time", "status")  # fmt: skip

    def __init__(
        self,
        name: str,
        context: SpanContext,
        *,
        parent: SpanContext | None,
        kind: SpanKind,
        recording: bool,
        emit: Emit,
        resource: Resource,
        scope: InstrumentationScope,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.recording = recording
        self._emit = emit
        self._resource = resource
        self._scope = scope
        self.attributes: dict[str, AttributeValue] = attributes if attributes is not None else {}
        self.events: tuple[Event, ...] = ()  # a list per span would be one more object to free
        self.status = _UNSET
        self.start_time = 0  # ns since the epoch
        self.end_time = 0
        self._token: Any = None

    @property
    def trace_id(self) -> str:
        return f"{self.context.trace_id:032x}"

    @property
    def span_id(self) -> str:
        return f"{self.context.span_id:016x}"

    def __enter__(self) -> LightSpan:
        self.start_time = time.time_ns()
        self._token = otel_context.attach(set_span_in_context(NonRecordingSpan(self.context)))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        end = time.time_ns()
        otel_context.detach(self._token)
        if exc is not None:
            self.fail(exc, type(exc).__qualname__)
        self.report(self.start_time, end)

    def report(self, start: int, end: int) -> None:
        """Hand the finished span on (times in ns since the epoch), if it is recording."""
        if not self.recording:
            return
        self.start_time, self.end_time = start, end
        self._emit(self)

    def readable(self) -> ReadableSpan:
        """The SDK's form of the finished span, for span processors and exporters."""
        return ReadableSpan(
            self.name,
            context=self.context,
            parent=self.parent,
            resource=self._resource,
            attributes=self.attributes,
            events=self.events,
            kind=self.kind,
            status=self.status,
            start_time=self.start_time,
            end_time=self.end_time,
            instrumentation_scope=self._scope,
        )

    def set_error(self, description: str) -> None:
        self.status = Status(StatusCode.ERROR, description)

    def fail(self, exc: BaseException, description: str) -> None:
        """ERROR status and the exception as an event, with the SDK's attribute names."""
        if not self.recording:
            return
        cls = type(exc)
        module = cls.__module__
        name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        self.set_error(description)
        self.events += (
            Event(
                "exception",
                {
                    "exception.type": name,
                    "exception.message": str(exc),
                    "exception.stacktrace": "".join(traceback.format_exception(exc)),
                },
            ),
        )


class NoSpan:
    """Not sampled, or tracing is off: a stage span that does nothing at all."""

    recording = False

    def __init__(self) -> None:
        self.attributes: dict[str, AttributeValue] = {}  # written only when recording: never

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def set_error(self, description: str) -> None:
        pass

    def fail(self, exc: BaseException, description: str) -> None:
        pass


NO_SPAN = NoSpan()


def no_client_spans(name: str, attributes: dict[str, AttributeValue]) -> NoSpan:
    return NO_SPAN
