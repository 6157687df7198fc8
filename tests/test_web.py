"""The web frontend's routes: the page, its static files, cache and security headers."""

from __future__ import annotations

from typing import Any

from gateway.web import STATIC_DIR, load_assets


async def test_index_is_served_with_a_content_security_policy(client: Any) -> None:
    """GET / answers the page with a CSP that forbids inline scripts and framing."""
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert '<script type="module" src="/static/app.js">' in await resp.text()
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_module_scripts_have_a_javascript_content_type(client: Any) -> None:
    """Browsers refuse ES modules served with another MIME type."""
    for name in ("app.js", "api.js", "generate.js", "compare.js", "dashboard.js", "charts.js"):
        resp = await client.get(f"/static/{name}")
        assert resp.status == 200, name
        assert resp.content_type == "text/javascript", name
    css = await client.get("/static/app.css")
    assert css.content_type == "text/css"


async def test_unchanged_files_revalidate_to_304(client: Any) -> None:
    """no-cache plus an ETag: a browser's revalidation costs a 304, not the body."""
    first = await client.get("/static/app.css")
    assert first.headers["Cache-Control"] == "no-cache"
    again = await client.get("/static/app.css", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304
    assert await again.read() == b""
    changed = await client.get("/static/app.css", headers={"If-None-Match": '"other"'})
    assert changed.status == 200


async def test_only_shipped_files_are_served(client: Any) -> None:
    """Unknown names and paths outside static/ are 404 JSON, never a file from disk."""
    for path in ("/static/nope.js", "/static/..%2Fweb.py", "/static/%2e%2e/app.py", "/static/"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert resp.content_type == "application/json", path


def test_every_static_file_is_loaded() -> None:
    """The page's files all ship with the package and load at start-up."""
    names = set(load_assets())
    assert {"index.html", "app.js", "app.css"} <= names
    assert names == {p.name for p in STATIC_DIR.iterdir() if p.suffix in (".html", ".js", ".css")}


async def test_page_loads_and_dashboard_polls_start_no_traces(client: Any) -> None:
    """The UI's files and its metrics polling stay out of the /debug/traces buffer."""
    for path in ("/", "/static/app.js", "/api/v1/enhanced/metrics"):
        assert (await client.get(path)).status == 200
    await client.post("/api/v1/enhanced/process", json={"prompt": "a cat in the garden"})
    traces = await (await client.get("/debug/traces")).json()
    assert [t["root"] for t in traces] == ["POST /api/v1/enhanced/process"]
