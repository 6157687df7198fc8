"""Classification slots are released however the work ends."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import Overloaded
from pipeline.slots import ClassificationSlots


async def test_slot_released_after_success() -> None:
    slots = ClassificationSlots(1, 0.05)
    async with slots.hold():
        assert slots.in_use == 1
    assert slots.in_use == 0


async def test_slot_released_after_failure() -> None:
    slots = ClassificationSlots(1, 0.05)
    with pytest.raises(RuntimeError):
        async with slots.hold():
            raise RuntimeError("boom")
    assert slots.in_use == 0
    async with slots.hold():  # and can be taken again
        pass


async def test_waiter_times_out_with_overloaded_and_leaves_no_trace() -> None:
    slots = ClassificationSlots(1, 0.05)
    async with slots.hold():
        with pytest.raises(Overloaded) as info:
            async with slots.hold():
                pass
        assert info.value.retry_after >= 1
        assert slots.waiting == 0
    assert slots.in_use == 0


async def test_cancelled_holder_and_waiter_release_everything() -> None:
    slots = ClassificationSlots(1, 5)
    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with slots.hold():
            entered.set()
            await asyncio.sleep(60)

    async def wait_for_slot() -> None:
        async with slots.hold():
            pass

    holder = asyncio.create_task(hold_forever())
    await entered.wait()
    waiter = asyncio.create_task(wait_for_slot())
    await asyncio.sleep(0.01)
    assert slots.waiting == 1
    waiter.cancel()
    holder.cancel()
    await asyncio.gather(holder, waiter, return_exceptions=True)
    assert (slots.in_use, slots.waiting) == (0, 0)
    async with asyncio.timeout(1):
        async with slots.hold():
            pass
