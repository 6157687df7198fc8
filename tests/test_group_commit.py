"""Group commit: concurrent calls share round trips, and each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.group_commit import GroupCommit


class Server:
    """Doubles each number after a round trip; answers a negative one with an error of its own."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.down = False

    async def send(self, ops: list[int]) -> list[int | BaseException]:
        self.batches.append(ops)
        await asyncio.sleep(0.01)
        if self.down:
            raise ConnectionError("server unreachable")
        return [ValueError("negative") if op < 0 else 2 * op for op in ops]


async def test_a_lone_call_goes_out_at_once() -> None:
    server = Server()
    run = GroupCommit(server.send)
    assert await run(21) == 42
    assert server.batches == [[21]]


async def test_calls_made_during_a_round_trip_share_the_next_one() -> None:
    server = Server()
    run = GroupCommit(server.send)
    first = asyncio.create_task(run(1))
    await asyncio.sleep(0.001)  # the first batch is on its way
    replies = await asyncio.gather(first, *(run(n) for n in range(2, 30)))
    assert replies == [2 * n for n in range(1, 30)]
    assert server.batches == [[1], list(range(2, 30))]
    assert (run.batches, run.ops) == (2, 29)


async def test_an_error_reaches_only_its_caller() -> None:
    run = GroupCommit(Server().send)
    results = await asyncio.gather(run(12), run(-1), run(14), return_exceptions=True)
    assert results[0] == 24 and results[2] == 28
    assert isinstance(results[1], ValueError)


async def test_a_failed_round_trip_fails_each_of_its_calls() -> None:
    server = Server()
    server.down = True
    run = GroupCommit(server.send)
    results = await asyncio.gather(run(1), run(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    server.down = False
    assert await run(3) == 6  # and the next call goes out again


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    server = Server()
    run = GroupCommit(server.send)
    leaving = asyncio.create_task(run(1))
    staying = asyncio.create_task(run(2))
    await asyncio.sleep(0.001)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == 4
    assert await run(5) == 10


async def test_a_call_cancelled_while_it_waits_for_the_next_batch_is_never_sent() -> None:
    server = Server()
    run = GroupCommit(server.send)
    first = asyncio.create_task(run(1))
    await asyncio.sleep(0.001)  # the first batch is on its way; the next two wait for it
    leaving = asyncio.create_task(run(2))
    staying = asyncio.create_task(run(3))
    await asyncio.sleep(0)
    leaving.cancel()
    assert (await first, await staying) == (2, 6)
    assert server.batches == [[1], [3]]
    assert run.ops == 2


async def test_a_long_queue_goes_out_in_bounded_batches_in_order() -> None:
    server = Server()
    run = GroupCommit(server.send, max_batch=10)
    first = asyncio.create_task(run(0))
    await asyncio.sleep(0.001)
    replies = await asyncio.gather(first, *(run(n) for n in range(1, 26)))
    assert replies == [2 * n for n in range(26)]
    assert server.batches == [[0], list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]


async def test_a_cancelled_round_trip_cancels_its_callers_and_the_next_call_starts_afresh() -> None:
    """At shutdown the loop cancels the batcher's task: nobody waits forever, nothing is resent."""
    server = Server()
    run = GroupCommit(server.send)
    in_flight = asyncio.create_task(run(1))
    await asyncio.sleep(0.001)
    queued = asyncio.create_task(run(2))
    await asyncio.sleep(0)
    assert run._task is not None
    run._task.cancel()
    for caller in (in_flight, queued):
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert await run(3) == 6
    assert server.batches == [[1], [3]]


def test_a_batch_holds_at_least_one_call() -> None:
    with pytest.raises(ValueError):
        GroupCommit(Server().send, max_batch=0)
