"""Tracing: one TracerProvider per app, built from explicit options at start-up.

Nothing here reads the environment or sets the global provider: the gateway maps the standard
OTEL_* variables onto Settings and passes them in, so tests can build several apps side by side.
Spans always go to an in-memory ring buffer (GET /debug/traces); with an OTLP endpoint they are
also batched to it over HTTP/protobuf from the SDK's background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NoOpTracer,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TraceState,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from redis.exceptions import NoScriptError

from observability.metrics import Histogram
from observability.spans import NO_SPAN, AttributeValue, CurrentSpan, LightSpan, NoSpan
from observability.traces import TraceBuffer

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.metrics import MeterProvider

MAX_STATEMENT = 2000  # characters of SQL kept on a span
CLOSE_SECONDS = 2.0  # how long shutting down waits for the collector to take the last spans
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_NO_PARENT = Context()  # what the propagator extracts from headers without a traceparent
log = logging.getLogger(__name__)

SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)  # fmt: skip


def make_sampler(name: str, arg: float | None = None) -> Sampler:
    """The SDK sampler an OTEL_TRACES_SAMPLER name stands for (ratio defaults to 1.0),
    refusing to start traces from background client calls (see RequestRootSampler)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")
    base = name.removeprefix("parentbased_")
    root: Sampler = (
        ALWAYS_ON if base == "always_on"
        else ALWAYS_OFF if base == "always_off"
        else TraceIdRatioBased(1.0 if arg is None else arg)
    )  # fmt: skip
    inner = ParentBased(root) if name.startswith("parentbased_") else root
    fixed = {"always_on": Decision.RECORD_AND_SAMPLE, "always_off": Decision.DROP}.get(base)
    return RequestRootSampler(inner, root_decision=fixed)


class RequestRootSampler(Sampler):
    """Drops CLIENT spans that would start a trace of their own.

    Redis health pings and background flushes run outside any request; as roots they would
    fill the /debug/traces buffer and the collector with one-span traces. Inside a request
    they are children and the wrapped sampler decides as usual.

    `root_decision`: what the wrapped sampler decides for every new trace's server span, when
    that is fixed (always_on/always_off, parent-based or not); Tracing then skips asking it
    (~10k instructions, 1.4% of a cache hit).
    """

    def __init__(self, inner: Sampler, *, root_decision: Decision | None = None) -> None:
        self.inner = inner
        self.root_decision = root_decision

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RequestRoot{{{self.inner.get_description()}}}"


def parse_headers(text: str | None) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS: comma-separated key=value pairs, values URL-encoded."""
    headers: dict[str, str] = {}
    for pair in (text or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            headers[key.strip().lower()] = unquote(value.strip())
    return headers


def otlp_traces_url(endpoint: str | None, traces_endpoint: str | None) -> str | None:
    """The signal-specific endpoint is used as is; the base endpoint gets /v1/traces appended."""
    if traces_endpoint:
        return traces_endpoint
    if endpoint:
        return endpoint.rstrip("/") + "/v1/traces"
    return None


def trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) naming the current span, for a call to an outside service
    made through a client no instrumentation reaches (the openai SDK's): the upstream, or a
    proxy in front of it, can continue the request's trace. Empty outside any trace."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)  # stateless; once per outside call
    return carrier


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _no_span(name: str) -> NoSpan:
    return NO_SPAN


def _slot_here(current: object) -> CurrentSpan | None:
    """The request's current-span slot, when the running task may swap spans into it."""
    return current if isinstance(current, CurrentSpan) and current.owned_here() else None


class CountingExporter(SpanExporter):
    """The exporter, counting the spans it delivered and those it could not (a collector down,
    slow or refusing): the SDK only logs a failed export, and an SRE watches /metrics.
    `exported` and `failed` are written from the batch processor's thread; `queued` (spans
    handed to its queue) from the event loop's, by QueueingProcessor. Queued and neither
    exported nor failed: waiting, or dropped at the SDK's full queue (2,048 spans)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.queued = 0
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            self.failed += len(spans)
            raise
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class QueueingProcessor(SpanProcessor):
    """The batch processor, counting the spans handed to it (light spans and the SDK's alike)."""

    def __init__(self, batch: BatchSpanProcessor, counts: CountingExporter) -> None:
        self.batch, self.counts = batch, counts

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.counts.queued += 1
        self.batch.on_end(span)

    def shutdown(self) -> None:
        self.batch.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


class StageInstruments:
    """What the pipeline runner needs: light stage spans and the stage latency histogram."""

    def __init__(self, tracing: Tracing | None = None, duration: Histogram | None = None) -> None:
        self.duration = duration
        self._tracing = tracing if tracing is not None and tracing.enabled else None

    def spans(self) -> Callable[[str], LightSpan | NoSpan]:
        """Spans for one pipeline run: children of the span current now (the request's) when
        that one is sampled; else spans that do nothing. Looked up once, not once per stage.

        Call it in the task that runs the stages (run_pipeline does, as it starts): in the
        request's own task, stage spans become current by taking the request's place
        (CurrentSpan); in other tasks and outside requests each attaches a context of its own.
        """
        current = get_current_span()
        parent = current.get_span_context()
        tracing = self._tracing
        if tracing is None or not parent.trace_flags.sampled or not parent.is_valid:
            return _no_span
        swap = _slot_here(current)
        # Positional: keywords to a class cost its __init__ a dict (~0.5 us a span).
        return lambda name: LightSpan(name, None, parent, SpanKind.INTERNAL, True, tracing, None, swap)


class Tracing:
    """The app's tracer, its ring buffer and (optionally) its OTLP exporter. Close on shutdown."""

    def __init__(
        self,
        *,
        resource: Resource,
        sampler: Sampler,
        buffer_limit: int = 200,
        exporter: SpanExporter | None = None,
        enabled: bool = True,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.enabled = enabled
        self.meter_provider = meter_provider  # for the client instrumentations' duration metrics
        self.propagator = TraceContextTextMapPropagator()
        self.buffer = TraceBuffer(buffer_limit)
        self.provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
        # The SDK's own spans (contrib instrumentations) reach the buffer through the provider;
        # light spans through end_span, which also hands them to _processors.
        self.provider.add_span_processor(self.buffer)
        self._processors: list[SpanProcessor] = []
        self.export = CountingExporter(exporter) if exporter is not None else None
        if self.export is not None:
            self.add_span_processor(QueueingProcessor(BatchSpanProcessor(self.export), self.export))
        # OTEL_SDK_DISABLED: spans cost nothing; trace ids still flow from traceparent headers.
        self.tracer: Tracer = self.provider.get_tracer("intent-gateway") if enabled else NoOpTracer()
        self.sampler = sampler
        self._root_decision = sampler.root_decision if isinstance(sampler, RequestRootSampler) else None
        self._ids = RandomIdGenerator()
        self.scope = InstrumentationScope("intent-gateway")  # with `resource`, what light spans report
        self.resource = resource

    @classmethod
    def from_options(
        cls,
        *,
        resource: Resource,
        sampler: str,
        sampler_arg: float | None,
        otlp_endpoint: str | None,
        otlp_traces_endpoint: str | None,
        otlp_headers: str | None,
        buffer_limit: int,
        disabled: bool,
        meter_provider: MeterProvider | None = None,
    ) -> Tracing:
        url = otlp_traces_url(otlp_endpoint, otlp_traces_endpoint)
        exporter: SpanExporter | None = None
        if url and not disabled:
            # Imported only when used: it brings requests and protobuf (~0.2 s at start-up).
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=url, headers=parse_headers(otlp_headers))
        return cls(
            resource=resource,
            sampler=make_sampler(sampler, sampler_arg),
            buffer_limit=buffer_limit,
            exporter=exporter,
            enabled=not disabled,
            meter_provider=meter_provider,
        )

    def instrument_redis(self, client: Any) -> None:
        """A CLIENT span per command of this one redis.asyncio client (no global patching).

        Light spans with the contrib instrumentation's names (span named after the command,
        db.system, sanitized db.statement, peer address): its SDK spans cost ~70 us each in
        situ, and a request with Redis limits and cache makes three commands.
        """
        if not self.enabled:
            return
        execute = client.execute_command
        peer: dict[str, AttributeValue] = {"db.system": "redis"}
        pool = getattr(client, "connection_pool", None)  # RedisCluster has none: many peers
        if pool is not None:
            kwargs = pool.connection_kwargs
            if "host" in kwargs:
                peer["net.peer.name"] = str(kwargs["host"])
                peer["net.peer.port"] = int(kwargs.get("port", 6379))
            peer["db.redis.database_index"] = int(kwargs.get("db", 0))

        async def execute_command(*args: Any, **options: Any) -> Any:
            span = self.client_span(str(args[0]), peer)
            if not span.recording:  # outside a sampled request: nothing to record
                return await execute(*args, **options)
            span.attributes["db.statement"] = " ".join([str(args[0]), *("?" * (len(args) - 1))])
            span.attributes["db.redis.args_length"] = len(args)
            missing: NoScriptError
            with span:
                try:
                    return await execute(*args, **options)
                except NoScriptError as exc:
                    # EVALSHA of a script this server has not cached yet (first use, a restart):
                    # redis-py loads it and runs it again. Expected, so not an error: as one it
                    # marked successful requests' traces as failed.
                    span.attributes["db.redis.noscript"] = True
                    missing = exc
            raise missing

        client.execute_command = execute_command

    def client_span(self, name: str, attributes: dict[str, AttributeValue]) -> LightSpan | NoSpan:
        """A CLIENT span under the current span when it is sampled (a call to an outside service
        made through a client no contrib instrumentation reaches, e.g. the openai SDK's)."""
        current = get_current_span()
        parent = current.get_span_context()
        if not self.enabled or not parent.is_valid or not parent.trace_flags.sampled:
            return NO_SPAN
        # In the request's own task (the limiter's admit and charge) it takes the request's
        # place like a stage span, and is filed with the request: no context of its own.
        swap = _slot_here(current)
        return LightSpan(name, None, parent, SpanKind.CLIENT, True, self, dict(attributes), swap)

    async def instrument_postgres(self, connection: Any) -> None:
        """asyncpg pool `init=` hook: a CLIENT span per query run inside a sampled request.

        asyncpg's own query logger (no global patching, unlike the contrib instrumentation):
        it is called soon after each query, in the caller's context, with the elapsed time.
        """
        if self.enabled:
            connection.add_query_logger(self._query_span)

    def _query_span(self, record: Any) -> None:
        parent = get_current_span().get_span_context()
        if not parent.is_valid or not parent.trace_flags.sampled:
            return  # background work (the log writer's batches) starts no traces
        end = time.time_ns()
        statement = " ".join(str(record.query).split())
        operation = statement.split(" ", 1)[0].upper() if statement else "QUERY"
        attributes: dict[str, AttributeValue] = {
            "db.system": "postgresql",
            "db.operation": operation,
            "db.statement": statement[:MAX_STATEMENT],
        }
        database = getattr(record.conn_params, "database", None)
        if database:
            attributes["db.name"] = database
        if isinstance(record.conn_addr, tuple) and len(record.conn_addr) >= 2:
            attributes["server.address"] = str(record.conn_addr[0])
            attributes["server.port"] = int(record.conn_addr[1])
        span = LightSpan(operation, None, parent, SpanKind.CLIENT, True, self, attributes)
        if record.exception is not None:
            span.fail(record.exception, type(record.exception).__qualname__)
        span.report(end - int(record.elapsed * 1e9), end)

    def client_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For `aiohttp.ClientSession(trace_configs=...)`: a CLIENT span per outgoing request
        (LLM, search), with traceparent injected so the upstream can continue the trace."""
        if not self.enabled:
            return []
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config

        return [create_trace_config(tracer_provider=self.provider, meter_provider=self.meter_provider)]

    def server_span(
        self,
        name: str,
        headers: Mapping[str, str],
        attributes: dict[str, AttributeValue],
        *,
        traced: bool = True,
    ) -> LightSpan:
        """The request's SERVER span, continuing the headers' traceparent; the sampler decides.

        Not traced (scrapes, probes) or tracing off: it still has ids, for X-Trace-Id and logs.
        """
        if "traceparent" in headers:  # continuing the caller's trace
            parent_context: Context | None = self.propagator.extract(headers)
            parent = get_current_span(parent_context).get_span_context()
        else:  # a new trace: nothing to parse (the propagator would find no parent either)
            parent_context, parent = _NO_PARENT, INVALID_SPAN_CONTEXT
        trace_id = parent.trace_id if parent.is_valid else self._ids.generate_trace_id()
        recording, flags, trace_state = False, parent.trace_flags, parent.trace_state
        if traced and self.enabled:
            decision = None if parent.is_valid else self._root_decision
            if decision is None:
                sampling = self.sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER,
                                                      attributes)  # fmt: skip
                decision = sampling.decision
                if sampling.trace_state is not None:
                    trace_state = sampling.trace_state
            recording = decision is not Decision.DROP
            flags = _SAMPLED if decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        # Positional (trace_id, span_id, is_remote, flags, state): keywords cost SpanContext's
        # tuple __new__ a dict, ~0.7 us a span.
        context = SpanContext(trace_id, self._ids.generate_span_id(), False, flags, trace_state)
        # Positional (name, context, parent, kind, recording, home, attributes), as for stage spans.
        return LightSpan(name, context, parent if parent.is_valid else None, SpanKind.SERVER, recording, self,
                         attributes)  # fmt: skip

    def new_span_id(self) -> int:
        return self._ids.generate_span_id()

    def add_span_processor(self, processor: SpanProcessor) -> None:
        self.provider.add_span_processor(processor)
        self._processors.append(processor)

    def end_span(self, span: LightSpan, children: Sequence[LightSpan] = ()) -> None:
        """File a finished light span (and the stage spans that ended under it, for a server
        span) in the ring buffer and hand them to the other processors."""
        self.buffer.keep(span.trace_number, span, *children)
        if self._processors:
            for finished in (span, *children):
                readable = finished.readable()  # the priciest part of a span: once, for all of them
                for processor in self._processors:
                    processor.on_end(readable)

    async def flush(self) -> None:
        # The exporter posts synchronously; off the loop, so a receiver on this loop can answer.
        await asyncio.to_thread(self.provider.force_flush)

    async def close(self, grace: float = CLOSE_SECONDS) -> None:
        """Hand the collector what is queued, then stop. A collector that hangs costs the spans
        still queued, not the shutdown: each queued batch waited out the exporter's 10 s, and
        a shutdown took 15-30 s past the drain (measured), to Kubernetes' kill at 30 s."""
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()

        def shut_down() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, stopped)

        # A daemon thread: the process may exit while it still waits on the collector (a
        # to_thread worker would be joined at exit, the very wait this bounds).
        threading.Thread(target=shut_down, name="otel-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(stopped, grace)
        except TimeoutError:
            log.warning("the trace collector took no spans within %gs of shutting down: the spans "
                        "still queued are dropped", grace)
