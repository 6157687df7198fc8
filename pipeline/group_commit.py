"""Group commit: calls that arrive while one batch is being served go in the next.

Nothing waits for a batch to fill: an idle batcher sends a lone call on the next loop turn, and
under load each round trip carries whatever queued during the previous one. Each call keeps its
own reply or exception, so callers see what a direct call would have given them. Used for the
rate limiter's Lua scripts (one Redis round trip per batch) and the embedded classifier's
MiniLM (one forward pass per batch on its thread).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Op = TypeVar("Op")
Reply = TypeVar("Reply")


class GroupCommit(Generic[Op, Reply]):
    def __init__(
        self, send: Callable[[list[Op]], Awaitable[Sequence[Reply | BaseException]]], *, max_batch: int = 100
    ) -> None:
        """`send` delivers one batch and returns one reply (or exception) per op, in order.

        `max_batch` bounds one call's work on the server (a Lua script blocks Redis while it
        runs); what is beyond it waits for the next round trip, in order.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._send = send
        self._max_batch = max_batch
        self._queue: list[tuple[Op, asyncio.Future[Reply]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    async def __call__(self, op: Op) -> Reply:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._queue.append((op, future))
        if self._task is None or self._task.done():
            # An empty context: the batch is no one request's work, so it opens no span in
            # whichever request happened to start it.
            self._task = loop.create_task(self._drain(), context=contextvars.Context())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Op, asyncio.Future[Reply]]] = []
        try:
            while self._queue:
                # A caller cancelled while it waited (client gone) has nothing left to send:
                # for the limiter, a request that never got its answer is not counted.
                waiting = [item for item in self._queue if not item[1].done()]
                batch, self._queue = waiting[: self._max_batch], waiting[self._max_batch :]
                if not batch:
                    break
                self.batches += 1
                self.ops += len(batch)
                try:
                    replies = await self._send([op for op, _ in batch])
                except Exception as exc:  # the whole batch failed the same way
                    replies = [exc] * len(batch)
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(reply, BaseException):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._task = None
            left, self._queue = batch + self._queue, []
            for _, future in left:  # only if this task itself was cancelled
                future.cancel()
