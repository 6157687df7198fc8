"""The web frontend: index.html at `/` and its ES modules and stylesheet under `/static/`.

The files ship inside the package and are read once at start-up (a few tens of KiB), so a
request never touches the disk and the set of servable names is fixed: nothing outside
`gateway/static/` can be asked for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
from aiohttp import web

STATIC_DIR = Path(__file__).with_name("static")

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts need a JavaScript MIME type
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# The pages face the internet: only our own scripts, styles and API; no framing, no inline code.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # File names carry no version, so browsers revalidate each time; the ETag makes that a 304.
    "Cache-Control": "no-cache",
}


class Asset(msgspec.Struct, frozen=True):
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file by name, with a content hash as its ETag."""
    assets = {}
    for path in sorted(directory.iterdir()):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            body = path.read_bytes()
            assets[path.name] = Asset(body, content_type, hashlib.sha256(body).hexdigest()[:32])
    return assets


def asset_response(request: web.Request, asset: Asset) -> web.Response:
    if any(etag.value == asset.etag for etag in request.if_none_match or ()):
        response = web.Response(status=304, headers=SECURITY_HEADERS)
    else:
        response = web.Response(body=asset.body, headers=SECURITY_HEADERS)
        response.headers["Content-Type"] = asset.content_type
    response.etag = asset.etag
    return response


def add_web_routes(app: web.Application) -> None:
    """Register `/` and `/static/{name}` over the files loaded once, here."""
    assets = load_assets()

    async def index(request: web.Request) -> web.Response:
        """GET /: the single page (Generate, Compare, Dashboard)."""
        return asset_response(request, assets["index.html"])

    async def static(request: web.Request) -> web.Response:
        """GET /static/{name}: a script, stylesheet or image of the page."""
        asset = assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        return asset_response(request, asset)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
