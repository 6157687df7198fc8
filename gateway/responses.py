"""JSON responses: one msgspec encoder behind every handler's JSON body."""

from __future__ import annotations

import msgspec
from aiohttp import web

encode_json = msgspec.json.Encoder().encode


def json_response(payload: object, *, status: int = 200) -> web.Response:
    return web.Response(body=encode_json(payload), status=status, content_type="application/json")
