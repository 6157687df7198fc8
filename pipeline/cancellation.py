"""Cancellations that a library swallowed, raised again.

On Python 3.11, `asyncio.wait_for` returns the awaited call's result instead of raising
CancelledError when that call finishes in the same loop turn as the cancel (CPython
gh-86296; 3.12 rebuilt wait_for on asyncio.timeout). redis-py wraps every command's send in
it (socket_timeout) and aiocache every lookup: in a loop of GETs, 264 of 300 cancellations
were lost. A request whose client had hung up then went on to classify, holding a
classification slot until the LLM's deadline. The task still counts the cancel request
(`Task.cancelling()`), so code after such a call can raise it again.
"""

from __future__ import annotations

import asyncio
from typing import Any


def raise_if_cancelled(task: asyncio.Task[Any] | None = None) -> None:
    """Raise CancelledError if `task` (by default the running one) was asked to cancel and
    something swallowed it. A caller that checks often passes its task: on 3.11 finding the
    running one makes a getpid() system call."""
    if task is None:
        task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
