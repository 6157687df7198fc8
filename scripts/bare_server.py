#!/usr/bin/env python3
"""The floor: bare aiohttp parsing the same JSON body and streaming five small SSE events.

Used by scripts/bench.py to compare the gateway against what aiohttp itself costs. It runs on
the same event loop as `python -m gateway serve` (uvloop when installed) so that the ratio
measures the gateway's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

EVENTS = ("context", "intent", "model", "prompt", "done")


async def stream(request: web.Request) -> web.StreamResponse:
    body = json.loads(await request.read())
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    for number, name in enumerate(EVENTS, 1):
        data = json.dumps({"stage": name, "prompt_chars": len(body["prompt"]), "elapsed_ms": 0.1})
        await response.write(f"id: {number}\nevent: {name}\ndata: {data}\n\n".encode())
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/api/v1/enhanced/stream", stream)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8099)
    port = parser.parse_args().port
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(port))


if __name__ == "__main__":
    main()
