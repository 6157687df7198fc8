"""Bounded concurrency for classifications, with a queue timeout and visible occupancy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pipeline.errors import Overloaded


class ClassificationSlots:
    """An asyncio.Semaphore that counts who holds it and who waits, for metrics and tests."""

    def __init__(self, limit: int, queue_timeout: float) -> None:
        self.limit = limit
        self.queue_timeout = queue_timeout
        self._semaphore = asyncio.Semaphore(limit)
        self.in_use = 0
        self.waiting = 0

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold one slot for the body; raise Overloaded if none frees up in time.

        The slot is released however the body ends: success, error, timeout or cancellation.
        """
        if self._semaphore.locked():
            self.waiting += 1
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await self._semaphore.acquire()
            except TimeoutError:
                raise Overloaded(retry_after=max(1.0, self.queue_timeout)) from None
            finally:
                self.waiting -= 1
        else:
            await self._semaphore.acquire()
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._semaphore.release()
