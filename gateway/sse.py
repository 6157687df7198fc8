"""Server-Sent Events over aiohttp: one `StreamResponse` that writes events and heartbeats."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

log = logging.getLogger(__name__)


class EventStream(web.StreamResponse):
    """A text/event-stream response; every event reaches the socket before the handler waits.

    Events sent in one turn of the event loop leave in one write, at the end of that turn:
    before the handler awaits anything slow (an LLM, Redis), so nothing sits in a buffer
    while the client waits, but a pipeline that runs through without waiting costs one
    syscall instead of one per event (its headers and last events ride along).

    A comment heartbeat goes out every `heartbeat_seconds` so load balancers do not cut
    slow streams at their idle timeout. Sending on a closed connection raises
    ConnectionResetError, which ends the handler (and with it the pipeline).
    """

    HEARTBEAT = b": keep-alive\n\n"
    # The id of a stream's last event (the others count 1, 2, ...). An EventSource reconnects
    # whenever a stream ends unless its page closes it, and sends the last id it saw: with this
    # one, the handler can tell "finished, stop" (204) from "cut off, send it again".
    LAST_EVENT_ID = "done"
    # Headers leave with the first frames rather than in a write of their own (aiohttp's knob,
    # off for StreamResponse): the context event follows prepare() in the same loop turn, so
    # the client waits no longer, and a pipeline that runs through is one write in all.
    _send_headers_immediately = False

    def __init__(self, *, heartbeat_seconds: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                # no-store: a GET stream's URL may carry a JWT (RFC 6750 2.3: keep it private).
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
                # How often a waiting stream hears from us: a client that hears nothing for a
                # few of these knows the connection stalled (the web page gives up after three).
                "X-Heartbeat-Seconds": f"{heartbeat_seconds:g}",
                **(headers or {}),
            },
        )
        self._heartbeat_seconds = heartbeat_seconds
        self._last_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []  # frames sent in this loop turn, not yet written
        self._flush_scheduled = False
        self._flushing: asyncio.Task[None] | None = None
        self._flush_started = False
        self._failed: BaseException | None = None
        self._stopped = False
        self.shutting_down = False  # set by the app's shutdown before it cancels the handler
        # The code of an `error` event that ended the stream (overloaded, shutting_down): the
        # status line said 200 before that, so the request's span and log line say it instead.
        self.ended_with: str | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # aiohttp calls prepare() again on the response a handler returns: arm the heartbeat
        # only the first time, or a finished stream keeps a timer (and itself) alive.
        first = not self.prepared
        writer = await super().prepare(request)
        if first:
            self._schedule_flush()  # which arms the heartbeat, unless the stream ends first
        return writer

    async def send(self, event: str, data: bytes, *, last: bool = False, retry_ms: int | None = None) -> None:
        """Queue one event; `retry_ms` sets how long an EventSource waits before it reconnects."""
        if self._failed is not None:
            raise ConnectionResetError("client went away") from self._failed
        self._last_id += 1
        event_id = self.LAST_EVENT_ID.encode() if last else b"%d" % self._last_id
        retry = b"retry: %d\n" % retry_ms if retry_ms is not None else b""
        self._pending.append(b"%sid: %s\nevent: %s\ndata: %s\n\n" % (retry, event_id, event.encode(), data))
        self._schedule_flush()

    async def write_eof(self, data: bytes = b"") -> None:
        """End the stream; frames still pending go out with the terminating chunk."""
        if self._flushing is not None:
            if self._flush_started:
                await self._flushing
            else:
                # Due but not begun: the handler woke first (a cache miss's fast tier is
                # answered by a batch task scheduled before the flush). Its frames leave with
                # this write instead: one syscall, and no extra wake-up of the handler.
                self._flushing.cancel()
                self._flushing = None
        if self._failed is not None:
            raise ConnectionResetError("client went away") from self._failed
        pending, self._pending = self._pending, []
        await super().write_eof(b"".join(pending) + data)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        # The handler has yielded to the loop: write what it sent, unless it already ended.
        # A stream still open now may be slow, so it gets its heartbeat (one that ran
        # through in a single turn never paid for a timer).
        self._flush_scheduled = False
        if self._stopped:
            return
        if self._timer is None:
            self._schedule_heartbeat()
        if self._pending and self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        self._flush_started = True
        try:
            while self._pending:
                pending, self._pending = self._pending, []
                await self.write(b"".join(pending))
        except (ConnectionError, RuntimeError) as exc:
            self._failed = exc  # the handler's next send or write_eof reports it
        finally:
            self._flushing = None
            self._flush_started = False

    def stop(self) -> None:
        """Stop heartbeats; call when the stream is finished or abandoned."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._beat is not None and not self._beat.done():
            self._beat.cancel()
        if self._flushing is not None and not self._flushing.done():
            self._flushing.cancel()

    def _schedule_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._heartbeat_seconds, self._on_heartbeat)

    def _on_heartbeat(self) -> None:
        self._beat = asyncio.ensure_future(self._send_heartbeat())
        self._schedule_heartbeat()

    async def _send_heartbeat(self) -> None:
        try:
            await self.write(self.HEARTBEAT)
        except (ConnectionError, RuntimeError) as exc:
            # The client is gone; the next event's send reports it to the handler.
            self._failed = exc
            self.stop()
