"""Circuit breaker state shared through Redis: all instances open and close together.

Each transition is one Lua script, so concurrent instances never lose an update. The
rules are those of pipeline/breaker.py `after_failure` / `after_success`; the tests run
the same scenarios against both stores.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.breaker import BreakerPolicy, BreakerRecord
from pipeline.redis_link import UNAVAILABLE, RedisLink

Args = list[str | float]

# A record nobody touched for a day is stale: let Redis drop it.
RECORD_TTL_SECONDS = 86_400

_LOAD_STATE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local reset_timeout = tonumber(ARGV[2])
local open = redis.call('HGET', key, 'open') == '1'
local failures = tonumber(redis.call('HGET', key, 'failures') or '0')
local successes = tonumber(redis.call('HGET', key, 'successes') or '0')
local opened_at = tonumber(redis.call('HGET', key, 'opened_at') or '0')
local state = 'closed'
if open then
  if now - opened_at >= reset_timeout then state = 'half_open' else state = 'open' end
end
"""

_SAVE = """
local function save(o, f, s, at)
  redis.call('HSET', key, 'open', o, 'failures', f, 'successes', s, 'opened_at', tostring(at))
  redis.call('EXPIRE', key, tonumber(ARGV[4]))
  return {o, f, s, tostring(at)}
end
local function current()
  return {open and 1 or 0, failures, successes, tostring(opened_at)}
end
"""

# KEYS[1] = record; ARGV[1] = now, ARGV[2] = reset_timeout, ARGV[3] = threshold, ARGV[4] = ttl
FAILURE = (
    _LOAD_STATE
    + _SAVE
    + """
local threshold = tonumber(ARGV[3])
if state == 'open' then return current() end
if state == 'half_open' then return save(1, failures, 0, now) end
failures = failures + 1
if failures >= threshold then return save(1, failures, 0, now) end
return save(0, failures, 0, 0)
"""
)

# KEYS[1] = record; ARGV[1] = now, ARGV[2] = reset_timeout, ARGV[3] = success_threshold, ARGV[4] = ttl
SUCCESS = (
    _LOAD_STATE
    + _SAVE
    + """
local needed = tonumber(ARGV[3])
if state == 'open' then return current() end
if state == 'half_open' then
  successes = successes + 1
  if successes < needed then return save(1, failures, successes, opened_at) end
end
return save(0, 0, 0, 0)
"""
)


class RedisUnavailable(Exception):
    """Redis is known to be down: the breaker uses its local state without waiting."""


class RedisBreakerStore:
    """Breaker records as Redis hashes under `<link prefix>breaker:<name>`."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._failure = link.client.register_script(FAILURE)
        self._success = link.client.register_script(SUCCESS)

    def key(self, name: str) -> str:
        return f"{self.link.prefix}breaker:{name}"

    async def load(self, name: str) -> BreakerRecord:
        raw: dict[Any, Any] = await self._call(lambda: self.link.client.hgetall(self.key(name)))
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return BreakerRecord(
            open=fields.get("open") == "1",
            failures=int(fields.get("failures", 0)),
            successes=int(fields.get("successes", 0)),
            opened_at=float(fields.get("opened_at", 0.0)),
        )

    async def failure(self, name: str, now: float, policy: BreakerPolicy) -> BreakerRecord:
        args: Args = [repr(now), policy.reset_timeout, policy.failure_threshold, RECORD_TTL_SECONDS]
        return _record(await self._call(lambda: self._failure(keys=[self.key(name)], args=args)))

    async def success(self, name: str, now: float, policy: BreakerPolicy) -> BreakerRecord:
        args: Args = [repr(now), policy.reset_timeout, policy.success_threshold, RECORD_TTL_SECONDS]
        return _record(await self._call(lambda: self._success(keys=[self.key(name)], args=args)))

    async def _call(self, start: Callable[[], Awaitable[Any]]) -> Any:
        if not self.link.available:
            raise RedisUnavailable("redis unavailable")
        try:
            return await start()
        except UNAVAILABLE as exc:
            self.link.failed(exc)
            raise


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(reply: list[Any]) -> BreakerRecord:
    is_open, failures, successes, opened_at = reply
    return BreakerRecord(
        open=int(is_open) == 1,
        failures=int(failures),
        successes=int(successes),
        opened_at=float(_text(opened_at)),
    )
