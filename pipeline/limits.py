"""Per-user limits: requests per minute, requests per hour, estimated cost per hour.

Windows slide (a request counts for exactly 60 s / 3600 s after it was admitted), so a burst
across a clock-minute boundary gets no second allowance. With Redis every decision is made by a
Lua script on the user's keys, on Redis's own clock: exact across any number of instances (the
decisions an instance asks for while a script call is in flight share the next call; see
pipeline/limits_redis.py). Without Redis, `MemoryRateLimiter` applies the same rules per
instance.

Cost is known only after model selection, so the cost limit is a budget checked at admission
and charged afterwards: a request is admitted while the user's charges of the last hour are
below COST_LIMIT_PER_HOUR, and its estimated cost is charged once the model stage has priced
it. The ledger itself is exact (atomic, idempotent charges in integer micro-dollars); what the
check cannot see is the cost of requests admitted but not yet priced, so the budget can be
overshot by at most the requests in flight when it is crossed.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

LimitKind = Literal["minute", "hour", "cost"]
FailMode = Literal["open", "closed"]
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MICRO = 1_000_000  # costs are kept in integer micro-dollars: sums stay exact


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    requests_per_minute: int  # 0 disables a limit
    requests_per_hour: int
    cost_per_hour: float  # US dollars


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One admission. `kind` is the limit that refused, or the tightest one when admitted."""

    allowed: bool
    token: str  # identifies the admitted request when its cost is charged
    kind: LimitKind | None = None  # None: no limit applies (all disabled, or failed open)
    limit: float = 0.0
    remaining: float = 0.0
    reset_seconds: float = 0.0  # until `remaining` grows (the oldest entry leaves the window)


class Admission(msgspec.Struct, kw_only=True):
    """An admitted request whose estimated cost is charged once, after model selection."""

    user_id: str
    token: str
    charged: bool = False


class Usage(msgspec.Struct, kw_only=True):
    """GET /api/v1/enhanced/usage: the caller's sliding-window counts and limits."""

    user_id: str
    requests_last_minute: int | None  # None: Redis is unreachable, counts unknown
    requests_last_hour: int | None
    cost_last_hour: float | None
    limits: Limits
    backend: Literal["redis", "memory", "unavailable"]


class LimitsUnavailable(PipelineError):
    """Redis is unreachable and RATE_LIMIT_FAIL_MODE=closed: refuse rather than not count."""

    code = "rate_limit_unavailable"


class RateLimiter(Protocol):
    counters: LimiterStats

    async def admit(self, user_id: str) -> Decision: ...

    async def charge(self, user_id: str, token: str, cost: float) -> None: ...

    async def usage(self, user_id: str) -> Usage: ...

    def stats(self) -> dict[str, object]: ...


class TokenSource:
    """Admission tokens unique across instances: a random prefix per limiter and a counter.

    They are members of shared Redis sets, so they must never collide between processes;
    a 64-bit random prefix does that without a getrandom syscall per request.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = itertools.count().__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():x}"


def micros(dollars: float) -> int:
    return max(0, round(dollars * MICRO))


class Counts(msgspec.Struct, frozen=True):
    """One user's windows at one instant: what both limiters decide from."""

    minute: int
    hour: int
    spent: int  # micro-dollars
    minute_reset_ms: int  # until the oldest entry of each window leaves it (0: empty)
    hour_reset_ms: int
    cost_reset_ms: int


def decide(limits: Limits, counts: Counts, token: str) -> Decision:
    """Refuse on the first exhausted limit; else admit and report the tightest one.

    `counts` are from before this request; the request itself is one more of each count.
    """
    candidates: list[tuple[LimitKind, float, float, int]] = []  # kind, limit, used, reset ms
    if limits.requests_per_minute > 0:
        candidates.append(("minute", limits.requests_per_minute, counts.minute, counts.minute_reset_ms))
    if limits.requests_per_hour > 0:
        candidates.append(("hour", limits.requests_per_hour, counts.hour, counts.hour_reset_ms))
    if limits.cost_per_hour > 0:
        # In micro-dollars, exactly as the Lua script compares them.
        candidates.append(("cost", micros(limits.cost_per_hour), counts.spent, counts.cost_reset_ms))
    # The window with the smallest share left after admission (min() with a key cost more).
    tightest: tuple[LimitKind, float, float, int] | None = None
    least_left = 2.0
    for kind, limit, used, reset_ms in candidates:
        if used >= limit:
            return _decision(False, token, kind, limit, 0, max(reset_ms, 1))
        # After admission the request counts once more in the request windows (cost: not yet).
        after = used + 1 if kind != "cost" else used
        if (left := (limit - after) / limit) < least_left:
            tightest, least_left = (kind, limit, after, reset_ms), left
    if tightest is None:
        return Decision(allowed=True, token=token)
    kind, limit, used, reset_ms = tightest
    window_ms = MINUTE_MS if kind == "minute" else HOUR_MS
    return _decision(True, token, kind, limit, max(limit - used, 0), reset_ms or window_ms)


def _decision(
    allowed: bool, token: str, kind: LimitKind, limit: float, remaining: float, reset_ms: int
) -> Decision:
    scale = MICRO if kind == "cost" else 1
    return Decision(
        allowed=allowed, token=token, kind=kind, limit=limit / scale, remaining=remaining / scale,
        reset_seconds=reset_ms / 1000.0,
    )  # fmt: skip


class LimiterStats:
    def __init__(self) -> None:
        self.admitted = 0
        self.refused: Counter[str] = Counter()  # by limit kind
        self.failed_open = 0  # admitted without counting: Redis unreachable
        self.failed_closed = 0
        self.charged_micros = 0

    def record(self, decision: Decision) -> Decision:
        if decision.allowed:
            self.admitted += 1
        else:
            self.refused[decision.kind or "unknown"] += 1
        return decision

    def snapshot(self, backend: str) -> dict[str, object]:
        return {
            "backend": backend,
            "admitted": self.admitted,
            "refused": sum(self.refused.values()),
            "refused_by_kind": dict(self.refused),
            "failed_open": self.failed_open,
            "failed_closed": self.failed_closed,
            "charged_cost": self.charged_micros / MICRO,
        }


def usage_of(user_id: str, limits: Limits, counts: Counts, backend: Literal["redis", "memory"]) -> Usage:
    return Usage(
        user_id=user_id, requests_last_minute=counts.minute, requests_last_hour=counts.hour,
        cost_last_hour=counts.spent / MICRO, limits=limits, backend=backend,
    )  # fmt: skip


def _reset_ms(oldest: float | None, window: float, now: float) -> int:
    """Milliseconds until a window's oldest entry (seconds) leaves it; 0 for an empty window."""
    return 0 if oldest is None else max(math.ceil((oldest + window - now) * 1000), 1)


class _UserLog:
    __slots__ = ("costs", "hour", "minute", "spent")

    def __init__(self) -> None:
        self.minute: deque[float] = deque()  # admission times, seconds
        self.hour: deque[float] = deque()
        self.costs: deque[tuple[float, int]] = deque()  # (charge time, micro-dollars)
        self.spent = 0

    def trim(self, now: float) -> None:
        while self.minute and self.minute[0] <= now - 60:
            self.minute.popleft()
        while self.hour and self.hour[0] <= now - 3600:
            self.hour.popleft()
        while self.costs and self.costs[0][0] <= now - 3600:
            self.spent -= self.costs.popleft()[1]

    def counts(self, now: float) -> Counts:
        return Counts(
            len(self.minute), len(self.hour), self.spent,
            _reset_ms(self.minute[0] if self.minute else None, 60, now),
            _reset_ms(self.hour[0] if self.hour else None, 3600, now),
            _reset_ms(self.costs[0][0] if self.costs else None, 3600, now),
        )  # fmt: skip

    def empty(self) -> bool:
        return not (self.minute or self.hour or self.costs)


class MemoryRateLimiter:
    """The same rules in process, per instance: for a gateway without Redis.

    Check and record happen with no await in between, so they are atomic on the event loop.
    """

    SWEEP_EVERY = 1024  # admissions between sweeps of users whose windows are all empty

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.counters = LimiterStats()
        self._users: dict[str, _UserLog] = {}
        self._since_sweep = 0
        self._new_token = TokenSource()

    def _log(self, user_id: str, now: float) -> _UserLog:
        entry = self._users.get(user_id)
        if entry is None:
            entry = self._users[user_id] = _UserLog()
        entry.trim(now)
        return entry

    async def admit(self, user_id: str) -> Decision:
        now = self.clock()
        entry = self._log(user_id, now)
        decision = decide(self.limits, entry.counts(now), self._new_token())
        if decision.allowed:
            entry.minute.append(now)
            entry.hour.append(now)
        self._sweep(now)
        return self.counters.record(decision)

    async def charge(self, user_id: str, token: str, cost: float) -> None:
        amount = micros(cost)
        if amount == 0 or self.limits.cost_per_hour <= 0:
            return
        now = self.clock()
        entry = self._log(user_id, now)
        entry.costs.append((now, amount))
        entry.spent += amount
        self.counters.charged_micros += amount

    async def usage(self, user_id: str) -> Usage:
        now = self.clock()
        return usage_of(user_id, self.limits, self._log(user_id, now).counts(now), "memory")

    def _sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep < self.SWEEP_EVERY:
            return
        self._since_sweep = 0
        for user_id, entry in list(self._users.items()):
            entry.trim(now)
            if entry.empty():
                del self._users[user_id]

    def stats(self) -> dict[str, object]:
        return {**self.counters.snapshot("memory"), "users": len(self._users)}
