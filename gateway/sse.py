"""Server-Sent Events over aiohttp: one `StreamResponse` that writes events and heartbeats."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

log = logging.getLogger(__name__)


class EventStream(web.StreamResponse):
    """A text/event-stream response; every event is flushed to the socket as it is sent.

    A comment heartbeat goes out every `heartbeat_seconds` so load balancers do not cut
    slow streams at their idle timeout. Sending on a closed connection raises
    ConnectionResetError, which ends the handler (and with it the pipeline).
    """

    HEARTBEAT = b": keep-alive\n\n"

    def __init__(self, *, heartbeat_seconds: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
                **(headers or {}),
            },
        )
        self._heartbeat_seconds = heartbeat_seconds
        self._last_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # aiohttp calls prepare() again on the response a handler returns: arm the heartbeat
        # only the first time, or a finished stream keeps a timer (and itself) alive.
        first = not self.prepared
        writer = await super().prepare(request)
        if first:
            self._schedule_heartbeat()
        return writer

    async def send(self, event: str, data: bytes) -> None:
        self._last_id += 1
        await self.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (self._last_id, event.encode(), data))

    def stop(self) -> None:
        """Stop heartbeats; call when the stream is finished or abandoned."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._beat is not None and not self._beat.done():
            self._beat.cancel()

    def _schedule_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._heartbeat_seconds, self._on_heartbeat)

    def _on_heartbeat(self) -> None:
        self._beat = asyncio.ensure_future(self._send_heartbeat())
        self._schedule_heartbeat()

    async def _send_heartbeat(self) -> None:
        try:
            await self.write(self.HEARTBEAT)
        except (ConnectionError, RuntimeError):
            # The client is gone; the next event's send reports it to the handler.
            self.stop()
