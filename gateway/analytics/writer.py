"""The background log writer: requests only enqueue; one task copies batches into Postgres.

Durability: a batch is written in one transaction, so a COPY that fails halfway leaves nothing.
It is copied straight into the log tables; if some of its rows are already there (a batch
written twice: commit acknowledged too late, spill replayed again), the unique request ids
refuse it and it is written again through a staging table with ON CONFLICT DO NOTHING, so it
is stored once. (Straight in costs Postgres ~25% less CPU per row than always staging.)
While Postgres is unreachable rows wait in memory up to `buffer_rows`; the rest go to a JSONL
spill file, replayed once Postgres answers again. On shutdown what is left is written or spilled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from gateway.analytics.pool import within
from gateway.analytics.rows import (
    INTENT_COLUMNS,
    MODEL_COLUMNS,
    LogEntry,
    LogPrompts,
    intent_record,
    log_entry,
    model_record,
    prompt_columns,
    unfinished_entry,
    unstarted_entry,
)
from pipeline.events import ProcessResult
from pipeline.types import Arm, PipelineRequest

log = logging.getLogger(__name__)

# Named after the columns they hold: a session that made its stage table before a migration
# added a column (a pooler shares sessions across versions in a rolling deploy) must not reuse
# the old shape, and a hand-kept version number was once forgotten.
_SHAPE = hashlib.sha256(" ".join(INTENT_COLUMNS + MODEL_COLUMNS).encode()).hexdigest()[:10]
_STAGE_INTENT = f"_gw_intent_log_stage_{_SHAPE}"
_STAGE_MODEL = f"_gw_model_log_stage_{_SHAPE}"
# Per connection and emptied at each commit, so a batch never sees another's rows.
_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE_INTENT} ON COMMIT DELETE ROWS AS
    SELECT {", ".join(INTENT_COLUMNS)} FROM intent_classification_logs WITH NO DATA;
CREATE TEMP TABLE IF NOT EXISTS {_STAGE_MODEL} ON COMMIT DELETE ROWS AS
    SELECT {", ".join(MODEL_COLUMNS)} FROM model_selection_logs WITH NO DATA;
"""
_INSERT_INTENT = (
    f"INSERT INTO intent_classification_logs ({', '.join(INTENT_COLUMNS)}) "
    f"SELECT {', '.join(INTENT_COLUMNS)} FROM {_STAGE_INTENT} ON CONFLICT DO NOTHING"
)
_INSERT_MODEL = (
    f"INSERT INTO model_selection_logs ({', '.join(MODEL_COLUMNS)}) "
    f"SELECT {', '.join(MODEL_COLUMNS)} FROM {_STAGE_MODEL} ON CONFLICT DO NOTHING"
)


def is_transient(exc: BaseException) -> bool:
    """False only for rows that will never be stored as they are: Postgres refused their data
    (SQLSTATE class 22 or 23), or the driver could not encode a value (a ValueError/TypeError).

    Anything else (unreachable, restarting, a connection dropped mid-COPY and left in a state
    asyncpg refuses to reuse, schema not migrated yet, credentials, a connection setting the
    driver refuses) may pass with time or a fixed setting, so
    the rows wait rather than being set aside.
    """
    if isinstance(exc, asyncpg.PostgresError):
        return not (exc.sqlstate or "").startswith(("22", "23"))
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):  # a ValueError, but the DSN's
        return True
    return not isinstance(exc, ValueError | TypeError)


class WriterStats(msgspec.Struct, kw_only=True):
    enqueued: int = 0
    written: int = 0  # rows stored, once each
    duplicates: int = 0  # rows already stored, skipped on a repeated write
    spilled: int = 0  # rows moved to the spill file
    replayed: int = 0  # spilled rows read back and written
    rejected: int = 0  # rows Postgres refused outright, kept in the .rejected file
    dropped: int = 0  # rows lost: the spill file could not be written
    failed_writes: int = 0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(LogEntry).decode


class LogWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        spill_path: Path,
        prompts: LogPrompts = "full",
        prompt_hash_key: bytes | None = None,
        batch_rows: int = 500,
        flush_seconds: float = 0.25,
        buffer_rows: int = 10_000,
        write_timeout: float = 5.0,
        max_backoff: float = 5.0,
        breaker_state: Callable[[], str] | None = None,
    ) -> None:
        self._pool = pool
        self._breaker_state = breaker_state  # None: no LLM configured, the column stays NULL
        self.spill_path = spill_path
        self.prompts = prompts
        self.prompt_hash_key = prompt_hash_key
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.buffer_rows = buffer_rows
        self.write_timeout = write_timeout
        self.max_backoff = max_backoff
        self.stats = WriterStats()
        self.connected: bool | None = None  # None until the first write
        self._pending: deque[LogEntry] = deque()
        self._inflight: list[LogEntry] = []  # the batch being written, kept until committed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._spill_waiting = True  # a previous run may have left a spill file

    # The request path: O(1), never waits.
    def record(self, preq: PipelineRequest, result: ProcessResult, *, route: str) -> None:
        breaker = self._breaker_state() if self._breaker_state is not None else None
        entry = log_entry(preq, result, prompts=self.prompts, route=route, hash_key=self.prompt_hash_key,
                          breaker_state=breaker)  # fmt: skip
        self.enqueue(entry)

    def record_unstarted(self, *, user_id: str, trace_id: str, route: str, reason: str) -> None:
        """A request that ended before its body was read: rate_limited or client_disconnected."""
        self.enqueue(unstarted_entry(user_id=user_id, trace_id=trace_id, route=route, reason=reason))

    def record_unfinished(self, preq: PipelineRequest, *, reason: str, route: str, elapsed_ms: float,
                          arm: Arm | None = None) -> None:
        """A request that ended before its result: overloaded, or its client went away."""
        self.enqueue(
            unfinished_entry(
                user_id=preq.user_id,
                trace_id=preq.trace_id,
                route=route,
                reason=reason,
                prompt=prompt_columns(preq.prompt, self.prompts, self.prompt_hash_key),
                processing_time_ms=round(elapsed_ms),
                arm=arm,
            )
        )

    def enqueue(self, entry: LogEntry) -> None:
        self._pending.append(entry)
        self.stats.enqueued += 1
        if len(self._pending) >= self.batch_rows or self.buffered > self.buffer_rows:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._pending) + len(self._inflight)

    def snapshot(self) -> dict[str, object]:
        return {
            **msgspec.structs.asdict(self.stats),
            "buffered": self.buffered,
            "spill_pending": self._spill_waiting,
            "connected": self.connected,
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="analytics-log-writer")

    async def close(self, grace: float = 5.0) -> None:
        """Stop the task, write what is buffered within `grace` seconds, spill the rest."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(grace):
                await self._drain()
        except TimeoutError:
            pass
        left = [*self._inflight, *self._pending]
        self._inflight.clear()
        self._pending.clear()
        if left:
            await self._spill(left)

    async def _run(self) -> None:
        failures = 0
        while True:
            delay = self._backoff(failures) if failures else self.flush_seconds
            await self._sleep(delay, wake_on_batch=not failures)
            try:
                ok = await self._drain() and await self._replay()
            except Exception:  # a bug here must not stop logging for good
                log.exception("log writer failed")
                ok = False
            failures = 0 if ok else failures + 1

    def _backoff(self, failures: int) -> float:
        return min(self.max_backoff, 0.2 * 2.0 ** (failures - 1)) * random.uniform(0.8, 1.2)

    async def _sleep(self, seconds: float, *, wake_on_batch: bool) -> None:
        """Wait `seconds`, spilling overflow as it comes; end early on a full batch if asked."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._wake.clear()
            if self._overflow() > 0:
                await self._spill_overflow()
                continue
            if wake_on_batch and len(self._pending) >= self.batch_rows:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    async def _drain(self) -> bool:
        """Write every buffered row; False when Postgres is unreachable (rows kept).

        Rows keep coming while it writes: past `buffer_rows` the newest go to the spill file here
        too, or a Postgres slower than the traffic (not down) grew the buffer without bound. (Within
        one batch's write the buffer may pass the bound by what arrives in it: write_timeout at most.)
        """
        while self._inflight or self._pending:
            if self._overflow() > 0:
                await self._spill_overflow()
            if not self._inflight:
                count = min(self.batch_rows, len(self._pending))
                self._inflight = [self._pending.popleft() for _ in range(count)]
            if not await self._write_batch(self._inflight):
                return False
            self._inflight = []
        return True

    async def _write_batch(self, batch: list[LogEntry]) -> bool:
        """True once the batch is stored (or set aside as rejected); False to retry later."""
        try:
            inserted = await self._write(batch)
        except Exception as exc:
            if not is_transient(exc) and len(batch) > 1:  # set aside only the rows at fault
                half = len(batch) // 2
                # A half written twice (the second failed for now, the batch is retried) is
                # stored once: _write skips rows already there.
                return await self._write_batch(batch[:half]) and await self._write_batch(batch[half:])
            if not is_transient(exc):
                log.error("postgres refused %d log rows: %r", len(batch), exc)
                self.stats.rejected += len(batch)
                await self._append(self._rejected_path(), batch)
                return True
            self.stats.failed_writes += 1
            if self.connected is not False:
                # A missing table is no unreachable server: the fix is a migration, not a network.
                missing = isinstance(exc, asyncpg.UndefinedTableError)
                what = "the log tables are missing (not migrated yet?)" if missing else "postgres unreachable"
                log.warning("%s, buffering log rows: %r", what, exc)
            self.connected = False
            return False
        if self.connected is False:
            log.info("postgres reachable again, %d rows buffered", self.buffered)
        self.connected = True
        self.stats.written += inserted
        self.stats.duplicates += len(batch) - inserted
        return True

    async def _write(self, batch: list[LogEntry]) -> int:
        """Store the batch once within write_timeout; return how many of its rows were new.

        Abandoned at the deadline (`within`): a timeout around the store itself held the writer
        ~35 s on a hung server, /health saying all was well and the overflow unspilled. A store
        that commits after all is no harm: the retry finds its rows there and adds the rest.
        """
        return await within(self.write_timeout, self._store(batch))

    async def _store(self, batch: list[LogEntry]) -> int:
        intents = [intent_record(e) for e in batch]
        models = [model_record(e) for e in batch if e.selected_model is not None]
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await _copy(conn, "intent_classification_logs", "model_selection_logs", intents, models)
                return len(batch)
            except asyncpg.UniqueViolationError:
                pass  # some rows are stored already: keep those, add the rest
            async with conn.transaction():
                await conn.execute(_STAGE)
                await _copy(conn, _STAGE_INTENT, _STAGE_MODEL, intents, models)
                status = await conn.execute(_INSERT_INTENT)
                await conn.execute(_INSERT_MODEL)
        return int(status.rsplit(" ", 1)[-1])

    # Spill file: JSONL, one LogEntry a line.
    def _overflow(self) -> int:
        return min(self.buffered - self.buffer_rows, len(self._pending))

    async def _spill_overflow(self) -> None:
        if (excess := self._overflow()) > 0:
            newest = [self._pending.pop() for _ in range(excess)]
            newest.reverse()
            await self._spill(newest)

    async def _spill(self, entries: list[LogEntry]) -> None:
        if await self._append(self.spill_path, entries):
            self.stats.spilled += len(entries)
            self._spill_waiting = True
        else:
            self.stats.dropped += len(entries)

    async def _append(self, path: Path, entries: list[LogEntry]) -> bool:
        data = b"".join(_encode(e) + b"\n" for e in entries)
        try:
            await asyncio.to_thread(_append_durably, path, data)
        except OSError:
            log.exception("cannot write %d log rows to %s: they are lost", len(entries), path)
            return False
        return True

    def _rejected_path(self) -> Path:
        return self.spill_path.with_name(self.spill_path.name + ".rejected")

    async def _replay(self) -> bool:
        """Write spilled rows back; False (files kept) when Postgres fails midway."""
        if not self._spill_waiting:
            return True
        if self.spill_path.exists():
            # New spills go to a fresh file while this one is read back.
            self.spill_path.rename(self.spill_path.with_name(f"{self.spill_path.name}.{time.time_ns()}.replay"))
        for path in sorted(self.spill_path.parent.glob(f"{self.spill_path.name}.*.replay")):
            entries = await asyncio.to_thread(_read_entries, path)
            for start in range(0, len(entries), self.batch_rows):
                # New rows wait meanwhile: past the bound they go to the (fresh) spill file.
                if self._overflow() > 0:
                    await self._spill_overflow()
                # Rows already written by an interrupted replay are skipped by their request id.
                if not await self._write_batch(entries[start : start + self.batch_rows]):
                    return False
            self.stats.replayed += len(entries)
            path.unlink()
            log.info("replayed %d spilled log rows from %s", len(entries), path.name)
        self._spill_waiting = self.spill_path.exists()
        return True


async def _copy(
    conn: asyncpg.Connection, intent_table: str, model_table: str, intents: list[Any], models: list[Any]
) -> None:
    await conn.copy_records_to_table(intent_table, records=intents, columns=INTENT_COLUMNS)
    if models:
        await conn.copy_records_to_table(model_table, records=models, columns=MODEL_COLUMNS)


def spill_path_problem(path: Path) -> str | None:
    """Why rows could not be spilled at `path` (None: they can), checked at start-up: found out
    only when Postgres is away, every spilled row was lost."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        return f"cannot write in {path.parent} ({exc.strerror or exc})"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return None


def _append_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Owner-only: the rows hold users' prompts (the umask's 0644 let every local account read
    # them). Not through a symlink planted at the path, and a file left 0644 by an earlier
    # version is made owner-only too (O_CREAT's mode applies only to a new file).
    with open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600), "ab") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_entries(path: Path) -> list[LogEntry]:
    entries = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            entries.append(_decode(line))
        except msgspec.DecodeError:  # a line torn by a crash mid-write
            log.warning("skipping unreadable line %d of %s", number, path.name)
    return entries
