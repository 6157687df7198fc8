"""Running the gateway: logging, the event loop, the listening socket, worker processes."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.app import create_app
from gateway.appkeys import METRICS, STATS
from gateway.config import Settings
from gateway.errors import (
    CONTENT_CODINGS,
    GatewayError,
    MalformedRequest,
    UnreadableBody,
    UnsupportedContentEncoding,
    error_response,
    http_error_response,
)
from observability.logging import configure_logging

log = logging.getLogger(__name__)

# On SIGTERM, after the pipeline requests' SHUTDOWN_GRACE_SECONDS (app.end_requests): seconds any
# other handler still running gets before aiohttp cancels it, and again to wind down once cancelled.
SHUTDOWN_TIMEOUT = 2.0
# How aiohttp serves the app. handler_cancellation: a client that disconnects cancels its
# handler and so its pipeline. max_line_size: GET /stream (EventSource cannot POST) carries
# the prompt in the URL, and 2,000 characters of non-ASCII text percent-encode to up to
# 24,000 bytes; aiohttp's default request line (8,190 bytes) refused such prompts.
# keepalive_timeout: an idle connection, or one whose request headers never finish, closes after
# 75 s (aiohttp's default is an hour, so a client could hold a socket per request it never sent);
# above the 60 s idle timeout of common load balancers, so they close first and never race it.
# lingering_time: after an answer given before the body was all read (408, 413), the rest of it
# is read and dropped for this long so the client sees the answer, then the connection closes
# (aiohttp's 10 s let a stalled client keep the socket that much longer).
SERVER_OPTIONS: dict[str, object] = {
    "handler_cancellation": True, "max_line_size": 64 * 1024, "keepalive_timeout": 75.0,
    "lingering_time": 2.0,
}


# A refused request line's query string to the end of the line, whatever it holds: a JWT may be
# there under any spelling aiohttp would decode to access_token (access%5Ftoken, ...), after an
# unencoded space or quote (often why the line was refused); and a quoted header's bearer token
# (after spaces or tabs, which aiohttp quotes as \t).
_SECRETS = (re.compile(r"\?[^\n]*"), re.compile(r"(?i)(bearer)(?:[ \t]|\\t)+\S+"))


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer in JSON what never reaches the app.

    aiohttp's HTTP parser refuses a garbled request line, a malformed or oversized header or a
    bad Content-Length before any middleware runs, and answered those in plain text: the one
    place a client got an error body not shaped like every other one.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's start-up, as AppRunner does
        refused = _JsonErrorServer(server.request_handler, request_factory=server.request_factory,
                                   handler_cancellation=server.handler_cancellation, loop=server._loop,
                                   **server._kwargs)  # fmt: skip
        refused.count_refusal = functools.partial(_count_refusal, self.app)
        return refused


UNPARSED = "unparsed"


def _count_refusal(app: web.Application, status: int) -> None:
    # What never reaches the app's middlewares still counts, under route "unparsed": a flood
    # of garbage is seen on the dashboards, not only in the logs.
    app[STATS].record_request(UNPARSED, status)
    app[METRICS].http_duration.record(0.0, "_OTHER", UNPARSED, status)


class _JsonErrorServer(web.Server):
    count_refusal: Callable[[int], None] = staticmethod(lambda status: None)

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorHandler(RequestHandler):
    _manager: _JsonErrorServer

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            # A body that does not decode as its Content-Encoding says (or chunks that break
            # off): its request got a 400 (unreadable_body), and aiohttp, reading the rest of it
            # off the connection after the response, meets the same error again. The client's
            # mistake: one line.
            log.info("dropped the rest of an unreadable request body: %s", kw["exc_info"])
            return
        super().log_exception(*args, **kw)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            # Raised before the app's middlewares run, where aiohttp answers in plain text: an
            # Expect header other than 100-continue (417).
            trace_id = _refusal_id()
            log.info("refused an expectation from %s: %s", request.remote, resp.reason,
                     extra={"trace_id": trace_id, "status": resp.status})  # fmt: skip
            resp = http_error_response(request, resp)
            resp.headers["X-Trace-Id"] = trace_id
            self._manager.count_refusal(resp.status)
        return await super().finish_response(request, resp, start_time)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        error: GatewayError
        trace_id = _refusal_id()
        extra = {"trace_id": trace_id, "status": status}
        if isinstance(exc, LineTooLong):
            # aiohttp's words quote the line as a Python bytearray: say what the limit is instead.
            message = f"a request line or header is longer than {exc.args[1]} bytes"
        elif message is not None:  # aiohttp quotes the request line, an EventSource's JWT included
            query, bearer = _SECRETS
            message = bearer.sub(r"\1 [redacted]", query.sub("?[redacted]", message))
        if isinstance(exc, ContentEncodingError) and _names_a_coding_we_read(message):
            # gzip or deflate that broke off, when the whole body came with the headers: the
            # client's body is at fault, not its choice of coding (which we read).
            log.info("refused an unreadable body from %s: %s", request.remote, message, extra=extra)
            error = UnreadableBody(f"request body does not decode as its Content-Encoding says ({message})")
        elif isinstance(exc, ContentEncodingError):
            # br or zstd, refused as the headers were read (aiohttp lacks the optional package):
            # the client can send it again uncompressed or gzipped, so say which, not "install".
            log.info("refused a body in an unsupported coding from %s: %s", request.remote, message,
                     extra=extra)  # fmt: skip
            error = UnsupportedContentEncoding()  # the request was not parsed: no header to quote
        elif 400 <= status < 500:
            # The client's mistake, not ours: one line, not aiohttp's ERROR with a traceback.
            log.info("refused a malformed request from %s: %s", request.remote, message, extra=extra)
            error = MalformedRequest(message or "the request could not be parsed")
            error.status = status  # as aiohttp decided it (400)
        else:
            super().handle_error(request, status, exc, message)  # logs; refuses a half-sent response
            error = GatewayError("internal error")
            error.status = status  # as aiohttp decided it (500; 504 for a handler timeout)
        response = error_response(error)
        response.headers["X-Trace-Id"] = trace_id
        self._manager.count_refusal(response.status)
        response.force_close()  # the parser may be anywhere in the byte stream: start afresh
        return response


def _names_a_coding_we_read(message: str | None) -> bool:
    # Only the message tells aiohttp's two ContentEncodingErrors apart: "Can not decode
    # content-encoding: brotli (br). Please install `Brotli`" for a coding it lacks, and
    # "deflate" / "... content-encoding: gzip" for a body in one it reads.
    return message is not None and any(coding in message for coding in CONTENT_CODINGS)


def _refusal_id() -> str:
    """An X-Trace-Id for a request refused before the app saw it, so the client has one to quote
    like every other answer's. No trace holds it (no span was started); the refusal's log line does."""
    return secrets.token_hex(16)  # a W3C trace id's shape: 32 hex digits


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, workers: int = 1) -> int:
    """Serve until SIGINT/SIGTERM; with workers > 1, N processes share the port (SO_REUSEPORT)."""
    configure_logging(settings.log_level)
    host = host or settings.host
    port = settings.port if port is None else port
    # The app checks where it is bound (no keys + not loopback = refuse to start).
    settings = msgspec.structs.replace(settings, host=host, port=port)
    # Before loading anything: a port in use is one line and exit 1, not a traceback a second later.
    if port != 0 and (refused := _bind_refused(host, port)) is not None:
        in_use, why = refused
        log.critical("%s:%d is in use (%s): another gateway or program holds it" if in_use
                     else "cannot listen on %s:%d (%s)", host, port, why)  # fmt: skip
        return 1
    if workers <= 1:
        return _run_worker(settings, host, port, reuse_port=False)
    return _supervise(settings, host, port, workers)


# A worker that exits while the gateway is not stopping is replaced, unless workers keep dying:
# more than this many exits per worker within RESTART_WINDOW seconds stop the whole gateway
# (exit 1), so a crash loop (a bad setting, a port taken) reaches the orchestrator.
MAX_RESTARTS_PER_WORKER = 5
RESTART_WINDOW = 60.0


def _supervise(settings: Settings, host: str, port: int, workers: int) -> int:
    if port == 0:  # each worker would get a free port of its own: N gateways, not one
        log.critical("--workers needs a fixed port (PORT=0 picks a different free port per worker)")
        return 1
    # spawn, not fork: each worker builds its own loop, clients and app from scratch.
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    def start() -> None:
        process = context.Process(target=_run_worker, args=(settings, host, port),
                                  kwargs={"reuse_port": True})
        process.start()
        processes.append(process)
        if stopping and process.pid is not None:  # the signal came while it started: `forward` missed it
            os.kill(process.pid, signal.SIGTERM)

    # Handlers first: a signal between two starts must reach the workers already started.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        start()
    log.info("started workers", extra={"workers": workers, "pids": [p.pid for p in processes]})
    if settings.redis_url is None:
        log.warning("%d workers without REDIS_URL: each keeps its own rate and cost limits, cache, "
                    "circuit breaker, metrics and traces (a user gets up to %d times the limits)",
                    workers, workers)
    exits: deque[float] = deque(maxlen=MAX_RESTARTS_PER_WORKER * workers + 1)
    failed = False  # a crash loop, or a worker that did not stop cleanly when asked
    while processes:  # the workers not yet seen to exit
        multiprocessing.connection.wait([p.sentinel for p in processes])
        # Not "those that were running before the wait": a sentinel can fire before its
        # process is reapable, and a death first seen on the next pass must still count.
        for dead in [p for p in processes if p.exitcode is not None]:
            processes.remove(dead)
            if stopping:
                # Asked to stop: it should have, cleanly. One still importing when the signal came
                # (before its handlers were installed) died of that signal: stopped as asked too.
                failed = failed or dead.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT)
                continue
            exits.append(time.monotonic())
            if len(exits) == exits.maxlen and exits[-1] - exits[0] < RESTART_WINDOW:
                log.critical("workers keep exiting (%d in %.0f s): stopping the gateway",
                             len(exits), exits[-1] - exits[0])
                failed = True
                forward(signal.SIGTERM, None)
                continue
            start()
            log.error("worker exited unexpectedly: started another",
                      extra={"exited_pid": dead.pid, "exitcode": dead.exitcode, "new_pid": processes[-1].pid})
    return 1 if failed else 0


def _bind_refused(host: str, port: int) -> tuple[bool, str] | None:
    """Whether host:port cannot be ours (None: it can): in use, or why not (an address not on
    this machine, a name that does not resolve, a privileged port). SO_REUSEPORT lets the
    workers share the port, and so it let a second `serve --workers` of the same user join it
    too: two gateways with different settings, each taking half the connections, both saying
    they listen. A bind without SO_REUSEPORT fails wherever anything listens there."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return False, str(exc)
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As aiohttp binds: a connection in TIME_WAIT holds nothing.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc.errno == errno.EADDRINUSE, exc.strerror or str(exc)
    return None


def _run_worker(settings: Settings, host: str, port: int, *, reuse_port: bool) -> int:
    configure_logging(settings.log_level)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve_forever(settings, host, port, reuse_port=reuse_port))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # uvloop serves the same load with noticeably less CPU; plain asyncio where it is missing.
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# Young-generation collections every 7,000 net allocations instead of 700: measured with gc
# callbacks on a saturated server, collections took ~4% of its CPU at 700 and ~0.2% here.
GC_YOUNG_THRESHOLD = 7_000


def _settle_gc() -> None:
    """Once started: what start-up made (modules, the model, the app) is never collected again.

    gc.freeze() keeps those objects out of every later collection, so a full collection scans
    only what requests made (~30 ms -> ~3 ms each, measured); collections of the young
    generation are rarer, as each one costs about the same whatever it finds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _stop_starting(signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT before the gateway listens: stop at once. Start-up may be minutes of work
    that never yields to the loop (training a missing artifact) or a wait on a hung database;
    a loop signal handler would run only after it, past an orchestrator's kill timeout."""
    log.warning("stopping during start-up (%s): nothing was served yet", signal.Signals(signum).name)
    raise SystemExit(0)


async def _serve_forever(settings: Settings, host: str, port: int, *, reuse_port: bool) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_starting)
    runner = GatewayRunner(create_app(settings), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           **SERVER_OPTIONS)  # type: ignore[arg-type]
    try:
        # In the try: stopped (or failed) half-way, what had started is closed in order.
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
        await site.start()
        # Listening: from now on a signal drains (the app's shutdown: grace, then answers).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _stopping, signum, stop)
        _settle_gc()
        # The port bound, which PORT=0 leaves to the system: the log line is how one finds it.
        bound = next((address[1] for address in runner.addresses if isinstance(address, tuple)), port)
        log.info(
            "gateway listening",
            extra={"host": host, "port": bound, "pid": os.getpid(), "classifier": settings.intent_classifier},
        )
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("gateway stopped")


def _stopping(signum: int, stop: asyncio.Event) -> None:
    log.info("stopping (%s): no new connections; requests in flight get the grace",
             signal.Signals(signum).name)
    stop.set()
