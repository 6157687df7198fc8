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

import asyncio
import contextvars
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

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
    get_current_span,
    set_span_in_context,
)

AttributeValue = str | bool | int | float
# Tracing.client_span, as passed to code that makes outside calls (the LLM classifier).
ClientSpans = Callable[[str, dict[str, AttributeValue]], "LightSpan | NoSpan"]
_UNSET = Status(StatusCode.UNSET)


class SpanHome(Protocol):
    """Where light spans come from and go to: the app's Tracing."""

    resource: Resource
    scope: InstrumentationScope

    def new_span_id(self) -> int: ...

    def end_span(self, span: LightSpan, children: Sequence[LightSpan] = ()) -> None: ...


class CurrentSpan(NonRecordingSpan):
    """A request's current span, as one object in the context that the server span attaches.

    Stage spans (and client spans made in the request's task, e.g. the limiter's calls) take
    its place in turn (`span` swapped) instead of attaching a context each: a context copy, a
    contextvar set and reset and a SpanContext per stage were ~3 us, ~40% of a stage span.
    Whatever asks for the current span (client spans, the aiohttp client instrumentation, log
    lines) asks this object and gets the innermost open span's.

    Only the task that entered the server span swaps (stages in other tasks, e.g. pipelines run
    side by side, attach a context of their own, since swaps would interleave). A task that may
    outlive the stage it starts in must start from `pinned_context()`: through this object it
    would see whichever stage is current when it calls out.

    Spans that end here are filed with the server span when it ends (`ended`): one trip
    to the ring buffer per request instead of one per span.
    """

    def __init__(self, span: LightSpan) -> None:
        super().__init__(span.context)
        self.span = span
        self.owner = _current_task()
        self.ended: list[LightSpan] | None = []  # None once the server span has ended

    def get_span_context(self) -> SpanContext:
        return self.span.context

    def owned_here(self) -> bool:
        """Whether the running task is the one that entered the server span (and may swap)."""
        return self.owner is _current_task()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), None outside any trace."""
    context = get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def pinned_context() -> contextvars.Context:
    """A copy of the current context whose current span stays the one current now."""
    context = contextvars.copy_context()
    current = get_current_span()
    if isinstance(current, CurrentSpan):
        pinned = NonRecordingSpan(current.get_span_context())
        context.run(otel_context.attach, set_span_in_context(pinned))  # only the copy changes
    return context


class LightSpan:
    """A span that is current between `__enter__` and `__exit__`, and reported at exit if recording
    (a stage span that took its request's place: with the request's server span, as that ends).

    A child's SpanContext (and span id) is built from its parent the first time something asks
    for it: a stage span that makes no outside call is asked only when its trace is read.
    """

    __slots__ = ("_context", "_current", "_home", "_previous", "_swap", "_token", "attributes",
                 "end_time", "events", "kind", "name", "parent", "recording", "start_time", "status",
                 "trace_number")  # fmt: skip

    def __init__(
        self,
        name: str,
        context: SpanContext | None,
        parent: SpanContext | None,
        kind: SpanKind,
        recording: bool,
        home: SpanHome,
        attributes: dict[str, AttributeValue] | None = None,
        swap: CurrentSpan | None = None,
    ) -> None:
        self.name = name
        self._context = context  # None: built from `parent` when first asked for
        self.parent = parent
        self.trace_number = context.trace_id if context is not None else parent.trace_id if parent else 0
        self.kind = kind
        self.recording = recording
        self._home = home
        self._swap = swap  # the request's CurrentSpan, for stage spans: current by swapping
        self._previous: LightSpan | None = None
        self._current: CurrentSpan | None = None  # a server span's, while it is entered
        self.attributes: dict[str, AttributeValue] = attributes if attributes is not None else {}
        self.events: tuple[Event, ...] = ()  # a list per span would be one more object to free
        self.status = _UNSET
        self.start_time = 0  # ns since the epoch
        self.end_time = 0
        self._token: Any = None

    @property
    def context(self) -> SpanContext:
        context = self._context
        if context is None:
            parent = self.parent
            assert parent is not None, "a span without a context of its own has a parent"
            # Positional (trace_id, span_id, is_remote, flags, state): keywords cost SpanContext's
            # tuple __new__ a dict, ~0.7 us a span.
            context = SpanContext(parent.trace_id, self._home.new_span_id(), False, parent.trace_flags,
                                  parent.trace_state)  # fmt: skip
            self._context = context
        return context

    @property
    def trace_id(self) -> str:
        return f"{self.trace_number:032x}"

    @property
    def span_id(self) -> str:
        return f"{self.context.span_id:016x}"

    def __enter__(self) -> LightSpan:
        self.start_time = time.time_ns()
        if (swap := self._swap) is not None:
            self._previous, swap.span = swap.span, self
        elif self.kind is SpanKind.SERVER:
            self._current = CurrentSpan(self)
            self._token = otel_context.attach(set_span_in_context(self._current))
        else:
            self._token = otel_context.attach(set_span_in_context(NonRecordingSpan(self.context)))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        end = time.time_ns()
        if isinstance(exc, asyncio.CancelledError):
            # Cut short (the client left, or shutdown): no error of this span's, so the status
            # stays unset, as a 499 is no server error. A span already failed by our own
            # deadline (an LLM call) was not cut short by anyone: it stays only failed.
            if self.recording and self.status.status_code is not StatusCode.ERROR:
                self.attributes["cancelled"] = True
        elif exc is not None:
            self.fail(exc, type(exc).__qualname__)
        self.end_time = end
        if (swap := self._swap) is not None:  # a stage span: hand the request its place back
            swap.span = self._previous  # type: ignore[assignment]  # set by __enter__
            self._swap = self._previous = None  # a finished span keeps no request alive
            if swap.ended is not None:  # filed with the server span (always, unless misused)
                swap.ended.append(self)
                return
        else:
            otel_context.detach(self._token)
        children: list[LightSpan] = []
        if (current := self._current) is not None:  # a server span: its stage spans go with it
            children = current.ended or children
            current.ended = self._current = None
        if self.recording:
            self._home.end_span(self, children)

    def report(self, start: int, end: int) -> None:
        """Hand the finished span on (times in ns since the epoch), if it is recording."""
        if not self.recording:
            return
        self.start_time, self.end_time = start, end
        self._home.end_span(self)

    def readable(self) -> ReadableSpan:
        """The SDK's form of the finished span, for span processors and exporters."""
        return ReadableSpan(
            self.name,
            context=self.context,
            parent=self.parent,
            resource=self._home.resource,
            attributes=self.attributes,
            events=self.events,
            kind=self.kind,
            status=self.status,
            start_time=self.start_time,
            end_time=self.end_time,
            instrumentation_scope=self._home.scope,
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
