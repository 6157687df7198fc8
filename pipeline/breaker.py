"""A generic circuit breaker: stop calling a dependency that keeps failing, then probe it.

closed --N failures--> open --T seconds--> half-open --M successes--> closed
                                      half-open --one failure--> open

The state lives in a `BreakerStore`: in memory per instance, or in Redis so that every
instance stops calling a dead upstream together (pipeline/breaker_redis.py). Times are
wall-clock seconds because instances share them; a store that fails is logged and the
breaker carries on with its own memory, so a Redis outage never blocks the LLM path.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import msgspec

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    failure_threshold: int = 5  # consecutive failures that open the circuit
    reset_timeout: float = 60.0  # seconds open before a probe is let through
    success_threshold: int = 2  # probe successes in half-open that close it again


class BreakerRecord(msgspec.Struct, kw_only=True):
    """What a store keeps per breaker name. Half-open is derived: open and timed out."""

    open: bool = False
    failures: int = 0  # consecutive, while closed
    successes: int = 0  # probe successes, while half-open
    opened_at: float = 0.0

    def state(self, now: float, policy: BreakerPolicy) -> BreakerState:
        if not self.open:
            return BreakerState.CLOSED
        if now - self.opened_at >= policy.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def retry_in(self, now: float, policy: BreakerPolicy) -> float:
        return max(0.0, self.opened_at + policy.reset_timeout - now)


def after_failure(record: BreakerRecord, now: float, policy: BreakerPolicy) -> BreakerRecord:
    """The transition on a failure (the Redis store runs the same rules in Lua)."""
    state = record.state(now, policy)
    if state is BreakerState.OPEN:
        return record  # a straggler that started before the circuit opened
    if state is BreakerState.HALF_OPEN:
        return BreakerRecord(open=True, failures=record.failures, opened_at=now)
    failures = record.failures + 1
    if failures >= policy.failure_threshold:
        return BreakerRecord(open=True, failures=failures, opened_at=now)
    return BreakerRecord(failures=failures)


def after_success(record: BreakerRecord, now: float, policy: BreakerPolicy) -> BreakerRecord:
    state = record.state(now, policy)
    if state is BreakerState.OPEN:
        return record
    if state is BreakerState.HALF_OPEN:
        successes = record.successes + 1
        if successes >= policy.success_threshold:
            return BreakerRecord()
        return BreakerRecord(
            open=True, failures=record.failures, successes=successes, opened_at=record.opened_at
        )
    return BreakerRecord()  # failures count only while consecutive


class BreakerStore(Protocol):
    """Where breaker records live; `failure`/`success` apply a transition atomically."""

    async def load(self, name: str) -> BreakerRecord: ...

    async def failure(self, name: str, now: float, policy: BreakerPolicy) -> BreakerRecord: ...

    async def success(self, name: str, now: float, policy: BreakerPolicy) -> BreakerRecord: ...


class MemoryBreakerStore:
    """Per-instance state: the embedded default."""

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}

    async def load(self, name: str) -> BreakerRecord:
        return self._records.get(name, BreakerRecord())

    async def failure(self, name: str, now: float, policy: BreakerPolicy) -> BreakerRecord:
        record = self._records[name] = after_failure(await self.load(name), now, policy)
        return record

    async def success(self, name: str, now: float, policy: BreakerPolicy) -> BreakerRecord:
        record = self._records[name] = after_success(await self.load(name), now, policy)
        return record


class CircuitOpen(Exception):
    """The breaker refused the call: no request was made."""

    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit {name!r} is open; next probe in {retry_in:.1f}s")
        self.name = name
        self.retry_in = retry_in


def upstream_key(name: str, *upstream: str) -> str:
    """A shared breaker's key: its name and which upstream it guards (a digest: no URL in Redis).
    One key for all, one gateway's dead upstream opened the circuit of another's healthy one."""
    return f"{name}:{hashlib.sha256(' '.join(upstream).encode()).hexdigest()[:12]}"


class CircuitBreaker:
    """One named breaker. Use `guard()` around each call, or `allow`/`record_*` by hand."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        store: BreakerStore | None = None,
        clock: Callable[[], float] = time.time,
        key: str | None = None,
    ) -> None:
        self.name = name
        # What the shared store files it under (default: the name): the dependency itself, so
        # deployments that share a Redis but call different upstreams keep separate circuits.
        self.key = key or name
        self.policy = policy or BreakerPolicy()
        self._store: BreakerStore = store or MemoryBreakerStore()
        self._local = MemoryBreakerStore()  # used while the shared store is failing
        self._clock = clock
        self._probing = False  # one half-open probe at a time per instance
        self._store_ok = True
        self.last_state = BreakerState.CLOSED
        self._last_record = BreakerRecord()  # as this instance last read or wrote it
        self.opened = 0  # times this instance saw the circuit open
        self.rejected = 0  # calls refused while open

    async def state(self) -> BreakerState:
        now = self._clock()
        return self._observe((await self._run("load")).state(now, self.policy))

    async def allow(self) -> bool:
        """May a call go out now? In half-open, only one probe per instance at a time."""
        now = self._clock()
        record = await self._run("load")
        state = self._observe(record.state(now, self.policy))
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        self.rejected += 1
        return False

    async def retry_in(self) -> float:
        return (await self._run("load")).retry_in(self._clock(), self.policy)

    async def record_success(self) -> None:
        self._probing = False
        before = self.last_state
        record = await self._run("success")
        state = self._observe(record.state(self._clock(), self.policy))
        if state is BreakerState.CLOSED and before is not BreakerState.CLOSED:
            # The opening was a warning: the recovery is said too, or the log reads as an outage
            # that never ended.
            log.info("circuit %s closed: calls go out again", self.name)

    async def record_failure(self) -> None:
        self._probing = False
        record = await self._run("failure")
        state = self._observe(record.state(self._clock(), self.policy))
        if state is BreakerState.OPEN:
            log.warning("circuit %s open after %d failures", self.name, record.failures)

    def release(self) -> None:
        """A call ended with neither verdict (cancelled): let the next probe through."""
        self._probing = False

    @asynccontextmanager
    async def guard(self, *, neutral: tuple[type[Exception], ...] = ()) -> AsyncIterator[None]:
        """Raise CircuitOpen instead of calling; record the body's success or failure.

        A cancelled body records nothing (the caller decides what a deadline means) but
        frees the half-open probe slot; so does one that raises a `neutral` exception (an
        answer that says nothing of the upstream's health either way).
        """
        if not await self.allow():
            raise CircuitOpen(self.name, await self.retry_in())
        try:
            yield
        except neutral:
            raise
        except Exception:
            await self.record_failure()
            raise
        finally:
            self.release()
        await self.record_success()

    @property
    def seen_state(self) -> BreakerState:
        """The state as this instance last saw it, moved on by the clock: an open circuit whose
        reset timeout has passed reads half-open, as the next call would find it, though no call
        came since. Free (no store round trip): for metrics, snapshots and log rows."""
        return self._last_record.state(self._clock(), self.policy)

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.seen_state.value,
            "opened": self.opened,
            "rejected": self.rejected,
            "failure_threshold": self.policy.failure_threshold,
            "reset_timeout": self.policy.reset_timeout,
        }

    def _observe(self, state: BreakerState) -> BreakerState:
        if state is BreakerState.OPEN and self.last_state is not BreakerState.OPEN:
            self.opened += 1
        self.last_state = state
        return state

    async def _run(self, op: str) -> BreakerRecord:
        now = self._clock()
        try:
            record = await _apply(self._store, op, self.key, now, self.policy)
        except Exception as exc:  # a shared store that is down must not take the caller down
            if self._store_ok:  # once per outage, not once per call
                log.warning("breaker %s: store failed (%r); using local state", self.name, exc)
            self._store_ok = False
            record = await _apply(self._local, op, self.key, now, self.policy)
        else:
            if not self._store_ok:
                log.warning("breaker %s: store is back; using shared state", self.name)
                self._store_ok = True
        self._last_record = record
        return record


async def _apply(
    store: BreakerStore, op: str, name: str, now: float, policy: BreakerPolicy
) -> BreakerRecord:
    if op == "load":
        return await store.load(name)
    if op == "success":
        return await store.success(name, now, policy)
    return await store.failure(name, now, policy)
