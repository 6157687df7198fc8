"""Admin API for keys in Postgres: create (the key is in the answer once), list, revoke."""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from gateway.apikeys import USER_ID_PATTERN, KeyInfo, NewKey, PgKeyStore
from gateway.appkeys import AUTH
from gateway.bodies import read_json_body
from gateway.errors import GatewayError, ValidationFailed
from gateway.responses import json_response
from gateway.wire import decode_json


class CreateKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    user_id: str
    admin: bool = False


_create_key_decoder = msgspec.json.Decoder(CreateKey)
_KEY_ID = re.compile(r"[0-9a-f]{12,64}")


class KeyList(msgspec.Struct, kw_only=True):
    keys: list[KeyInfo]


class Revoked(msgspec.Struct, kw_only=True):
    revoked: int


class KeysNotConfigured(GatewayError):
    status = 409
    code = "keys_not_configured"


def _store(request: web.Request) -> PgKeyStore:
    store = request.app[AUTH].store
    if store is None:
        raise KeysNotConfigured("key management needs DATABASE_URL (env keys are in GATEWAY_API_KEYS)")
    return store


async def create_key(request: web.Request) -> web.Response:
    """POST /api/v1/admin/keys {user_id, admin}: a new key, shown in this answer only."""
    body = decode_json(_create_key_decoder, await read_json_body(request))
    if not USER_ID_PATTERN.match(body.user_id):
        raise ValidationFailed("user_id must be 1-128 letters, digits or _.@:|-", field="user_id")
    store = _store(request)
    await store.ensure_schema()
    new: NewKey = await store.create(body.user_id, admin=body.admin)
    response = json_response(new, status=201)
    response.headers["Cache-Control"] = "no-store"  # the key is shown this once: no cache may keep it
    return response


async def list_keys(request: web.Request) -> web.Response:
    """GET /api/v1/admin/keys: ids, owners and states, never keys or hashes."""
    return json_response(KeyList(keys=await _store(request).list()))


async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /api/v1/admin/keys/{key_id}: revoke; cached copies expire within a minute."""
    key_id = request.match_info["key_id"]
    if not _KEY_ID.fullmatch(key_id):  # a typo would otherwise revoke nothing, quietly
        raise ValidationFailed("key_id is the key's id from its creation or the list: 12-64 hex digits",
                               field="key_id")
    return json_response(Revoked(revoked=await _store(request).revoke(key_id)))


def add_key_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/admin/keys", create_key)
    app.router.add_get("/api/v1/admin/keys", list_keys)
    app.router.add_delete("/api/v1/admin/keys/{key_id}", revoke_key)
