"""Reading a JSON request body: its type and coding checked before any byte is read, its size
capped, and a deadline for it to arrive (a client that stalls mid-body holds no handler)."""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from gateway.appkeys import BODIES_ARRIVING, SETTINGS, SHUTTING_DOWN
from gateway.errors import RequestTimeout, ShuttingDown
from gateway.wire import MAX_BODY_BYTES, require_json


async def read_json_body(request: web.Request) -> bytes:
    """The body's bytes; 415 for a type or coding the gateway cannot read, 413 over 64 KiB, 408
    when it has not all arrived within REQUEST_BODY_TIMEOUT (a body this small takes a slow
    phone link well under a second: a client that stalls or trickles it holds no handler)."""
    require_json(request.content_type, request.headers.get(hdrs.CONTENT_ENCODING))
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    if request.content.is_eof():
        # All of it has arrived (a small body mostly comes with the headers): nothing to wait
        # for, so no deadline (setting one costs ~4 us, 2% of a cache hit).
        return await request.read()
    timeout = request.app[SETTINGS].request_body_timeout
    # Once the gateway is stopping, aiohttp reads no more bytes from any connection: the rest of
    # this body never arrives, so end_requests cancels the wait and the client hears why (it got
    # no answer at all: a 503 in the access log, a connection cut on the wire).
    if request.app[SHUTTING_DOWN].is_set():  # got here after end_requests looked (auth waited)
        raise ShuttingDown()
    arriving, handler = request.app[BODIES_ARRIVING], asyncio.current_task()
    assert handler is not None
    arriving[handler] = False
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
    except asyncio.CancelledError:
        if not arriving.get(handler):
            raise  # the client left
        handler.uncancel()
        raise ShuttingDown() from None
    finally:
        arriving.pop(handler, None)
