"""GET /debug/traces: the recent traces held in memory, for reading a trace with no collector.

Operator-only endpoints: every route here starts with /debug/ so one guard can cover them.
"""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import TRACING
from gateway.errors import NotFound
from gateway.responses import json_response
from gateway.web import SECURITY_HEADERS
from gateway.wire import query_count
from observability.traces import render_waterfall

# The web UI's headers, with a policy of its own: the waterfall escapes every span name and
# attribute, and should that ever fail, no script runs. Its styles are inline (one
# self-contained page), so they are the one thing allowed.
WATERFALL_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
}


async def list_traces(request: web.Request) -> web.Response:
    """GET /debug/traces[?limit=N]: summaries of the recent traces, newest first."""
    limit = query_count(request.query, "limit", default=None, high=1_000_000)  # more than any buffer holds
    traces = request.app[TRACING].buffer.recent(limit)
    return json_response(traces)


async def show_trace(request: web.Request) -> web.Response:
    """GET /debug/traces/{trace_id}: its spans as JSON, or a waterfall page for a browser."""
    trace = request.app[TRACING].buffer.get(request.match_info["trace_id"])
    if trace is None:
        raise NotFound("no such trace in the buffer (evicted, unsampled or unknown)", field="trace_id")
    if request.query.get("format") == "html" or _prefers_html(request):
        return web.Response(text=render_waterfall(trace), content_type="text/html", headers=WATERFALL_HEADERS)
    return json_response(trace)


def _prefers_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and request.query.get("format") != "json"


def add_debug_routes(app: web.Application) -> None:
    app.router.add_get("/debug/traces", list_traces)
    app.router.add_get(r"/debug/traces/{trace_id:[0-9a-fA-F]{32}}", show_trace)  # as a header may spell it
