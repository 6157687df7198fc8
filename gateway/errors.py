"""The gateway's error tree, mapped to HTTP responses in one place (`error_middleware`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import hdrs, web

from pipeline.errors import Overloaded, PipelineError
from pipeline.limits import Decision, LimitsUnavailable

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    error: str  # machine-readable code
    detail: str  # human-readable explanation
    field: str | None = None


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    closes_connection = False  # the connection cannot carry another request after this answer

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def headers(self) -> dict[str, str]:
        return {}


class MalformedJSON(GatewayError):
    status = 400
    code = "malformed_json"


class MalformedQuery(GatewayError):
    """A query string whose percent-escapes do not decode to UTF-8."""

    status = 400
    code = "malformed_query"


class MalformedRequest(GatewayError):
    """What aiohttp's HTTP parser refused: a garbled request line, a bad or oversized header."""

    status = 400
    code = "malformed_request"


class UnreadableBody(GatewayError):
    """The body does not decode as its Content-Encoding says (gzip that is not gzip)."""

    status = 400
    code = "unreadable_body"


class RequestTimeout(GatewayError):
    """The body did not arrive in time: 408, and the connection closes (RFC 9110 15.5.9), as
    the rest of that body may still come."""

    status = 408
    code = "request_timeout"
    closes_connection = True


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


# The request codings aiohttp decodes with what the gateway installs (br and zstd need optional
# packages; x-gzip, compress and lists of codings it passes through undecoded).
CONTENT_CODINGS = ("gzip", "deflate")


class UnsupportedContentEncoding(GatewayError):
    """A request body in a coding the gateway cannot read: a 415 that names the ones it can
    (RFC 9110 15.5.16), rather than a body read as JSON that is not."""

    status = 415
    code = "unsupported_content_encoding"

    def __init__(self, coding: str = "") -> None:
        named = f" {coding[:40]!r}" if coding else ""
        super().__init__(f"Content-Encoding{named} is not one this gateway reads: "
                         f"send the body as is or in one of {', '.join(CONTENT_CODINGS)}")

    def headers(self) -> dict[str, str]:
        return {"Accept-Encoding": ", ".join(CONTENT_CODINGS)}


class ValidationFailed(GatewayError):
    status = 422
    code = "validation_error"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"

    def __init__(self, detail: str, *, invalid: bool = False, expired: bool = False) -> None:
        super().__init__(detail)
        self.invalid = invalid or expired
        self.expired = expired  # a frontend refreshes an expired token; a broken one it replaces

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="intent-gateway"'
        if self.expired:  # RFC 6750 3's own example
            challenge += ', error="invalid_token", error_description="The access token expired"'
        elif self.invalid:
            challenge += ', error="invalid_token"'
        return {"WWW-Authenticate": challenge}


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    """A route that exists asked for something that does not (aiohttp's 404 is for routes)."""

    status = 404
    code = "not_found"


class ServiceOverloaded(GatewayError):
    status = 503
    code = "overloaded"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


# RateLimit-Policy's window (seconds) and what the quota counts, per limit (IETF draft's syntax).
_POLICIES = {"minute": ";w=60", "hour": ";w=3600", "cost": ';w=3600;comment="US cents of estimated cost"'}


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """RateLimit-* (IETF draft) for the limit that decided; the cost limit counts US cents, and
    RateLimit-Policy says which limit it is (a "5000" read as requests, without it)."""
    if decision.kind is None:
        return {}
    scale = 100 if decision.kind == "cost" else 1
    limit = str(math.floor(decision.limit * scale))
    return {
        "RateLimit-Limit": limit,
        "RateLimit-Remaining": str(math.floor(decision.remaining * scale)),
        "RateLimit-Reset": str(max(1, math.ceil(decision.reset_seconds))),
        "RateLimit-Policy": limit + _POLICIES[decision.kind],
    }


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"

    def __init__(self, decision: Decision) -> None:
        per = {"minute": "requests per minute", "hour": "requests per hour", "cost": "US$ of cost per hour"}
        super().__init__(f"limit of {decision.limit:g} {per[decision.kind or 'minute']} reached")
        self.decision = decision

    def headers(self) -> dict[str, str]:
        headers = rate_limit_headers(self.decision)
        headers["Retry-After"] = headers.get("RateLimit-Reset", "1")
        return headers


class RateLimitUnavailable(ServiceOverloaded):
    code = "rate_limit_unavailable"


class AnalyticsNotConfigured(GatewayError):
    """No DATABASE_URL: the analytics endpoints have nothing to read."""

    status = 503
    code = "analytics_not_configured"


class ShuttingDown(GatewayError):
    """The gateway stopped (SIGTERM) before this answer was ready: send the request again."""

    status = 503
    code = "shutting_down"
    closes_connection = True  # this process serves no more requests
    DETAIL = "the gateway is restarting: send the request again"

    def __init__(self) -> None:
        super().__init__(self.DETAIL)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class DatabaseUnavailable(GatewayError):
    status = 503
    code = "database_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}  # an outage is seconds to minutes; a client should not spin


def as_gateway_error(exc: PipelineError) -> GatewayError:
    """Pipeline errors that end a request, in HTTP terms."""
    if isinstance(exc, Overloaded):
        return ServiceOverloaded(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, LimitsUnavailable):
        return RateLimitUnavailable(str(exc), retry_after=1.0)
    return GatewayError(str(exc))


_encoder = msgspec.json.Encoder()


def error_response(error: GatewayError) -> web.Response:
    body = ErrorBody(error=error.code, detail=error.detail, field=error.field)
    response = web.Response(
        status=error.status,
        body=_encoder.encode(body),
        content_type="application/json",
        headers=error.headers(),
    )
    if error.closes_connection:
        response.force_close()
    return response


def http_error_response(request: web.BaseRequest, exc: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx (404, 405, an unmet Expect's 417) in the gateway's JSON shape."""
    body = ErrorBody(
        error=exc.reason.lower().replace(" ", "_"),
        detail=f"{request.method} {request.path}: {exc.reason}",
    )
    keep = {name: exc.headers[name] for name in ("Allow", "Retry-After") if name in exc.headers}
    return web.Response(
        status=exc.status, body=_encoder.encode(body), content_type="application/json", headers=keep
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc)
    except PipelineError as exc:
        return error_response(as_gateway_error(exc))
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("request body is larger than 64 KiB"))
    except web.RequestPayloadError as exc:
        # aiohttp's own words ("400, message: Can not decode content-encoding: gzip") say less
        # to a client than which coding failed.
        coding = request.headers.get(hdrs.CONTENT_ENCODING)
        detail = (f"request body does not decode as its Content-Encoding says ({coding})" if coding
                  else "request body could not be read: it ended early or its chunks are malformed")
        log.info("unreadable request body: %s", exc.__cause__ or exc)
        return error_response(UnreadableBody(detail))
    except web.HTTPException as exc:  # aiohttp's own 404/405/...: same JSON shape
        if exc.status < 400:
            raise
        return http_error_response(request, exc)
    except Exception:
        # A bug, not a user error: log it with its trace and answer with a generic body.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(GatewayError("internal error"))
