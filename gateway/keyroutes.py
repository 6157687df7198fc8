"""Admin API for keys in Postgres: create (the key is in the answer once), list, revoke."""

from __future__ import annotations

import msgspec
from aiohttp import web

from gateway.apikeys import USER_ID_PATTERN, KeyInfo, NewKey, PgKeyStore
from gateway.appkeys import AUTH
from gateway.errors import GatewayError, MalformedJSON, ValidationFailed
from gateway.responses import json_response


class CreateKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    user_id: str
    admin: bool = False


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
    try:
        body = msgspec.json.decode(await request.read(), type=CreateKey)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
    if not USER_ID_PATTERN.match(body.user_id):
        raise ValidationFailed("user_id must be 1-128 letters, digits or _.@:-", field="user_id")
    store = _store(request)
    await store.ensure_schema()
    new: NewKey = await store.create(body.user_id, admin=body.admin)
    return json_response(new, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """GET /api/v1/admin/keys: ids, owners and states, never keys or hashes."""
    return json_response(KeyList(keys=await _store(request).list()))


async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /api/v1/admin/keys/{key_id}: revoke; cached copies expire within a minute."""
    return json_response(Revoked(revoked=await _store(request).revoke(request.match_info["key_id"])))


def add_key_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/admin/keys", create_key)
    app.router.add_get("/api/v1/admin/keys", list_keys)
    app.router.add_delete("/api/v1/admin/keys/{key_id}", revoke_key)
