"""HTTP: the analytics endpoints (from the views) and the user's @tag references."""

from __future__ import annotations

from datetime import datetime

import msgspec
from aiohttp import web

from gateway.analytics.views import MAX_DAYS, MAX_HOURS, Analytics, CostBucket, IntentBucket
from gateway.appkeys import ANALYTICS, IMAGE_URL_POLICY, REFERENCES, SETTINGS, USER_ID
from gateway.bodies import read_json_body
from gateway.errors import AnalyticsNotConfigured, ValidationFailed
from gateway.responses import json_response
from gateway.wire import check_image_url, decode_json, query_count
from pipeline.references import is_tag, normal_tag


class IntentReport(msgspec.Struct, kw_only=True):
    hours: int
    refreshed_at: datetime | None  # the views lag the logs by up to ANALYTICS_REFRESH_SECONDS
    buckets: list[IntentBucket]


class CostReport(msgspec.Struct, kw_only=True):
    days: int
    refreshed_at: datetime | None
    buckets: list[CostBucket]


def _analytics(request: web.Request) -> Analytics:
    analytics = request.app.get(ANALYTICS)
    if analytics is None:
        raise AnalyticsNotConfigured("analytics is not configured: set DATABASE_URL")
    return analytics


async def intent_analytics(request: web.Request) -> web.Response:
    """GET /api/v1/enhanced/analytics/intents?hours=N: per workflow and hour."""
    hours = query_count(request.query, "hours", default=24, high=MAX_HOURS)  # the request's own error first
    analytics = _analytics(request)
    buckets = await analytics.intents(hours)
    return json_response(IntentReport(hours=hours, refreshed_at=analytics.refreshed_at, buckets=buckets))


async def cost_analytics(request: web.Request) -> web.Response:
    """GET /api/v1/enhanced/analytics/costs?days=N: per user and day."""
    days = query_count(request.query, "days", default=7, high=MAX_DAYS)
    analytics = _analytics(request)
    buckets = await analytics.costs(days)
    return json_response(CostReport(days=days, refreshed_at=analytics.refreshed_at, buckets=buckets))


class ReferenceBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tag: str
    image_url: str


class UserReference(msgspec.Struct, kw_only=True):
    tag: str
    image_url: str


class ReferenceList(msgspec.Struct, kw_only=True):
    references: list[UserReference]


class DeletedReference(msgspec.Struct, kw_only=True):
    tag: str
    deleted: bool  # false: there was no such tag (deleting twice is not an error)


_reference_decoder = msgspec.json.Decoder(ReferenceBody)


async def _read_reference(request: web.Request) -> UserReference:
    """Only tags a prompt can mention, and image URLs the gateway would accept in a request."""
    body = decode_json(_reference_decoder, await read_json_body(request))
    tag = _checked_tag(body.tag)
    url = body.image_url.strip()
    check_image_url(url, field="image_url", policy=request.app[IMAGE_URL_POLICY])
    return UserReference(tag=tag, image_url=url)


async def save_reference(request: web.Request) -> web.Response:
    """POST /api/v1/references {tag, image_url}: save (or replace) one of the caller's @tags."""
    ref = await _read_reference(request)
    if not await request.app[REFERENCES].save(request[USER_ID], ref.tag, ref.image_url):
        most = request.app[SETTINGS].max_tags_per_user
        raise ValidationFailed(f"no room for another @tag (a user keeps at most {most}): save "
                               "over one you have instead", field="tag")
    return json_response(ref, status=201)


def _checked_tag(text: str) -> str:
    """The tag as saved ("@Sarah" is "sarah"), or a 422 for one no prompt could mention."""
    tag = normal_tag(text.strip().removeprefix("@"))
    if not is_tag(tag):  # what can be saved is what a prompt can mention
        raise ValidationFailed("tag must be 1-64 letters (any script), digits or _.-, starting with a letter "
                               "or digit and not ending in '.'", field="tag")
    return tag


async def delete_reference(request: web.Request) -> web.Response:
    """DELETE /api/v1/references/{tag}: forget one of the caller's @tags."""
    tag = _checked_tag(request.match_info["tag"])
    deleted = await request.app[REFERENCES].delete(request[USER_ID], tag)
    return json_response(DeletedReference(tag=tag, deleted=deleted))


async def list_references(request: web.Request) -> web.Response:
    """GET /api/v1/references: the caller's @tags."""
    saved = await request.app[REFERENCES].list(request[USER_ID])
    references = [UserReference(tag=t, image_url=u) for t, u in sorted(saved.items())]
    return json_response(ReferenceList(references=references))
