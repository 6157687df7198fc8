"""GET /openapi.json: an OpenAPI 3.0 document of every route, schemas from the msgspec Structs.

Operations listed in OPERATIONS get their request and response types; any other route on the
router (added later by another module) is still listed from its handler's docstring, so the
document never silently misses an endpoint (tests check that against the router).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from gateway.analytics.handlers import (
    CostReport,
    DeletedReference,
    IntentReport,
    ReferenceBody,
    ReferenceList,
    UserReference,
)
from gateway.analytics.views import MAX_DAYS, MAX_HOURS
from gateway.apikeys import NewKey
from gateway.appkeys import OPENAPI_DOCUMENT
from gateway.auth import scope_for
from gateway.errors import ErrorBody
from gateway.keyroutes import CreateKey, KeyList, Revoked
from gateway.responses import encode_json
from gateway.routes import Comparison
from gateway.wire import FormatText, ProcessBody, QualityText, StyleText
from pipeline.events import (
    ContextEvent,
    ErrorEvent,
    IntentEvent,
    ModelEvent,
    ProcessResult,
    PromptEvent,
    ReferencesEvent,
    StageEvent,
)
from pipeline.limits import Usage

_REF = "#/components/schemas/{name}"
STAMPED = ("elapsed_ms", "trace_id")  # what every event's data carries

ERROR_STATUSES = {
    "400": "Malformed JSON or query string (`malformed_json`, `malformed_query`), or a body that does"
           " not decode as its Content-Encoding says (`unreadable_body`)",
    "401": "No or invalid credentials (WWW-Authenticate: Bearer)",
    "403": "Refused: a browser request from another site (Sec-Fetch-Site, Origin), a Host that is not"
           " loopback while the gateway is open (no keys), or credentials without the admin scope",
    "404": "Not found",
    "405": "Method not allowed",
    "408": "The body did not all arrive within REQUEST_BODY_TIMEOUT (the connection closes)",
    "413": "Body larger than 64 KiB",
    "415": "Content-Type is not application/json, or Content-Encoding is not gzip or deflate",
    "417": "An Expect header other than 100-continue",
    "422": "A field is invalid; `field` names it",
    "429": "A per-user rate or cost limit (Retry-After)",
    "503": "Overloaded: no classification slot in time (Retry-After)",
}
_BODY_ERRORS = ("400", "408", "413", "415", "417", "422")


class Operation(msgspec.Struct, kw_only=True):
    request: Any = None  # a Struct type for an application/json body
    response: Any = None  # a Struct type, or None for a free-form JSON object
    content_type: str = "application/json"
    status: str = "200"
    query: dict[str, Any] = {}  # name -> (schema, required)
    errors: tuple[str, ...] = ()
    bodiless: dict[str, str] = {}  # status -> description, for answers without a body


# One SSE event as schemathesis and EventSource see it: data is the stage's JSON, as text.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string"},
                   "retry": {"type": "integer", "description": "ms before an EventSource reconnects"}},
    "description": "data, by event: context ContextEvent, intent IntentEvent, model ModelEvent, prompt "
                   "PromptEvent, references ReferencesEvent, error ErrorEvent, done ProcessResult "
                   "(schemas under components)",
}
# Listed under components so a frontend can generate types for the events' data.
STREAM_EVENTS = (ContextEvent, IntentEvent, ModelEvent, PromptEvent, ReferencesEvent, ErrorEvent)

_STREAM_QUERY: dict[str, Any] = {
    "prompt": (str, True),
    "working_image_url": (str, False),
    "uploaded_image_url": (list[str], False),  # repeated: the POST body's uploaded_image_urls
    "quality": (QualityText, False),
    "style": (StyleText, False),  # read as the POST body's are (gateway/wire.py)
    "format": (FormatText, False),
    "use_ai_classification": (bool, False),
    "access_token": (str, False),  # EventSource sends no headers: the app's JWT (gateway/auth.py)
}

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/api/v1/enhanced/process"): Operation(
        request=ProcessBody, response=ProcessResult, errors=_BODY_ERRORS
    ),
    ("POST", "/api/v1/enhanced/stream"): Operation(
        request=ProcessBody, response=SSE_EVENT, content_type="text/event-stream", errors=_BODY_ERRORS
    ),
    ("GET", "/api/v1/enhanced/stream"): Operation(
        query=_STREAM_QUERY, response=SSE_EVENT, content_type="text/event-stream", errors=("400", "422"),
        bodiless={"204": "Last-Event-ID: done: the stream already finished (stops EventSource reconnecting)"},
    ),
    ("POST", "/api/v1/enhanced/compare"): Operation(
        request=ProcessBody, response=Comparison, errors=_BODY_ERRORS
    ),
    ("GET", "/api/v1/enhanced/usage"): Operation(response=Usage),
    ("GET", "/metrics"): Operation(response=str, content_type="text/plain"),
    ("GET", "/api/v1/admin/keys"): Operation(response=KeyList, errors=("409",)),
    ("POST", "/api/v1/admin/keys"): Operation(
        request=CreateKey, response=NewKey, status="201", errors=("400", "409", "422")
    ),
    ("DELETE", "/api/v1/admin/keys/{key_id}"): Operation(response=Revoked, errors=("409", "422")),
    ("POST", "/api/v1/references"): Operation(
        request=ReferenceBody, response=UserReference, status="201", errors=_BODY_ERRORS
    ),
    ("GET", "/api/v1/references"): Operation(response=ReferenceList),
    ("DELETE", "/api/v1/references/{tag}"): Operation(response=DeletedReference, errors=("422", "503")),
    ("GET", "/api/v1/enhanced/analytics/intents"): Operation(
        query={"hours": (Annotated[int, msgspec.Meta(ge=1, le=MAX_HOURS)], False)},
        response=IntentReport,
        errors=("422",),
    ),
    ("GET", "/api/v1/enhanced/analytics/costs"): Operation(
        query={"days": (Annotated[int, msgspec.Meta(ge=1, le=MAX_DAYS)], False)},
        response=CostReport,
        errors=("422",),
    ),
    ("GET", "/openapi.json"): Operation(),
    ("GET", "/api/v1/enhanced/metrics"): Operation(),
    ("GET", "/api/v1/enhanced/health"): Operation(),
    ("GET", "/health"): Operation(bodiless={
        "503": "unavailable: a dependency's state refuses requests (API keys unreadable, limits failing "
               "closed); the same JSON, naming it"}),
}


def build_document(app: web.Application) -> dict[str, Any]:
    types: list[Any] = [ErrorBody, *STREAM_EVENTS]
    for op in OPERATIONS.values():
        types += [t for t in (op.request, op.response) if _is_struct(t)]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    for kind in types:
        if _is_struct(kind) and issubclass(kind, StageEvent):
            # Defaults only to the runner, which stamps every event it sends: required to a client.
            schema = components[kind.__name__]
            schema["required"] = sorted({*schema.get("required", ()), *STAMPED})
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None:
            continue
        path = resource.canonical
        paths.setdefault(path, {})[route.method.lower()] = _operation(route.method, path, route.handler)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Intent gateway", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": _openapi30(components),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key or HS256 JWT"}
            },
        },
        "security": [{"bearer": []}],
    }


def _operation(method: str, path: str, handler: Any) -> dict[str, Any]:
    known = (method, path) in OPERATIONS
    op = OPERATIONS.get((method, path), Operation())
    doc = (handler.__doc__ or f"{method} {path}").strip().splitlines()[0]
    scope = scope_for(path)
    result: dict[str, Any] = {"summary": doc, "operationId": f"{method.lower()}{_op_id(path)}"}
    if scope == "public":
        result["security"] = []
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _path_params(path)
    ]
    for name, (kind, required) in op.query.items():
        parameters.append({"name": name, "in": "query", "required": required, "schema": _schema_of(kind)})
    if parameters:
        result["parameters"] = parameters
    if op.request is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=op.request.__name__)}}},
        }
    body_schema = _schema_of(op.response) if op.response is not None else {"type": "object"}
    # A route this module does not know (added by another module) is listed without a body schema.
    success: dict[str, Any] = {"description": "Success"}
    if known:
        success["content"] = {op.content_type: {"schema": body_schema}}
    responses: dict[str, Any] = {op.status: success}
    responses.update({status: {"description": text} for status, text in op.bodiless.items()})
    # 403 anywhere: the cross-site and open-mode Host checks come before routing by scope.
    statuses = [*op.errors, "403", "405", *(["404"] if _path_params(path) else [])]
    if scope != "public":
        statuses += ["401", "429", "503"]
    elif path != "/health":
        statuses += ["503"]
    if not known:
        # A route added elsewhere without an entry here: listed, any status allowed, still no 5xx.
        responses["default"] = {"description": "Any status; errors are ErrorBody JSON"}
    for status in sorted(set(statuses)):
        responses[status] = {
            "description": ERROR_STATUSES.get(status, "Conflict: not configured"),
            "content": {"application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}},
        }
    result["responses"] = responses
    return result


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _schema_of(kind: Any) -> dict[str, Any]:
    if isinstance(kind, dict):
        return kind
    if _is_struct(kind):
        return {"$ref": _REF.format(name=kind.__name__)}
    schema: dict[str, Any] = _openapi30(msgspec.json.schema(kind))
    return schema


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _op_id(path: str) -> str:
    words = [w.strip("{}") for w in path.replace("-", "_").replace(".", "_").split("/") if w]
    return "".join(w[:1].upper() + w[1:] for w in words) or "Root"


def _openapi30(schema: Any) -> Any:
    """msgspec emits JSON Schema 2020-12; OpenAPI 3.0 spells null and tuples differently."""
    if isinstance(schema, list):
        return [_openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _openapi30(value) for key, value in schema.items() if key != "$defs"}
    for union in ("anyOf", "oneOf"):
        options = out.get(union)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out[union]
            if len(rest) == 1:
                inner = rest[0]
                out.update(inner if "$ref" not in inner else {"allOf": [inner]})
            else:
                out[union] = rest
            out["nullable"] = True
    if "prefixItems" in out:
        out.pop("prefixItems")
    if out.get("type") == "null":
        return {"nullable": True, "enum": [None]}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: this document (public)."""
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


async def _build_once(app: web.Application) -> None:
    app[OPENAPI_DOCUMENT] = encode_json(build_document(app))


def add_openapi_route(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    # Built once, at start-up, when the routes are final. Built per request it took ~5 ms of the
    # event loop: a flood of this public path delayed Redis replies past their timeout, and the
    # rate and cost limits failed open for everyone.
    app.on_startup.append(_build_once)
