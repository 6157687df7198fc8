#!/usr/bin/env python3
"""SSE-aware load tester for the gateway's streaming endpoint.

N concurrent clients, each on its own keep-alive connection, POST prompts to
/api/v1/enhanced/stream and parse the event stream as it arrives. Reported per run:
requests/s, time to first event (TTFE) and time to done (TTD) percentiles, and errors
by kind (HTTP status, `error` event code, disconnects, timeouts), as a table and as
one JSON object on the last line of stdout. With --rate, requests leave on a fixed schedule
and their latencies count from it (as wrk2's do): a server that stalls shows in the
percentiles of every request that waited, not only of the one it stalled.

    python scripts/loadtest.py --url http://127.0.0.1:8000 -c 64 -d 10 --repeat-share 0.9
    python scripts/loadtest.py --prompts my-traffic.jsonl   # replay your own request bodies

The client speaks HTTP/1.1 over raw asyncio streams (no HTTP library) so that one core
of load generator can keep up with a one-core server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import math
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# A realistic mix: the workflows users ask for, terse and wordy, with and without an image.
IMAGE = "https://demo.supabase.co/storage/v1/object/public/images/{}.jpg"
PROMPTS: list[tuple[str, str | None]] = [
    ("change my hair to blonde with bangs", "me"),
    ("put @sarah in this red dress", "me"),
    ("animate this sunset", "sunset"),
    ("a cat playing in the garden", None),
    ("cinematic video of waves with ocean sounds", None),
    ("make me look like zendaya at the met gala", "me"),
    ("upscale this old photo and fix the blur", "old"),
    ("remove the people in the background", "beach"),
    ("turn this into a van gogh painting", "street"),
    ("a watercolor of a fox in the snow", None),
    ("short clip of a drone flying over mountains", None),
    ("music video of a band playing on a rooftop at night", None),
    ("give me a pixie cut", "me"),
    ("try this leather jacket on me", "me"),
    ("make the sky more dramatic", "landscape"),
    ("sharpen it", "blurry"),
    ("make this photo move like the wind is blowing", "field"),
    ("a futuristic city skyline at dusk, ultra detailed", None),
    ("video of rain falling on a window", None),
    ("dye my hair pastel pink like billie eilish", "me"),
    ("make it look like a pencil sketch", "portrait"),
    ("replace the car with a bicycle", "street"),
    ("a golden retriever astronaut on the moon", None),
    ("restore colors and reduce noise", "old"),
    ("taylor swift eras tour outfit on me", "me"),
    ("a documentary style video of a busy market, narrated", None),
    ("let the waterfall flow", "waterfall"),
    ("anime style portrait of a samurai girl", None),
    ("brighten the exposure a bit", "dark"),
    ("add a rainbow over the lake", "lake"),
]
# Cache misses are natural variations (who writes "prompt #1234"?): opener x prompt x detail x
# purpose x closer gives 8 x 30 x 10 x 12 x 8 = 230,400 distinct prompts, walked in a shuffled
# order without repeats (19,200 without purposes ran out within one benchmark on a fast machine:
# a wrapped walk repeats prompts, which Redis still holds). A walk that wraps is reported.
OPENERS = ["", "please ", "can you ", "hey, ", "i want to see ", "quick one: ", "pls ", "could you do "]
DETAILS = ["", ", soft light", ", in high detail", ", warm colors", ", at golden hour", ", moody",
           ", for my portfolio", ", keep it natural", ", very realistic", ", bold and bright"]
PURPOSES = ["", " for my mom", " for a client", " for our wedding album", " for the team chat",
            " for a birthday card", " for my blog", " for a school project", " for the shop window",
            " for my profile", " for a poster", " for fun"]
CLOSERS = ["", " thanks", " :)", " asap", " for instagram", " please", "!", " - looks great so far"]

LAG_PROBE_SECONDS = 0.005
STALL_MS = 1000.0  # a request cut by the run's end after waiting this long (and 10x a stream) stalled
CONNECT_RETRY_SECONDS = 0.1  # a client whose connect failed waits this long before the next try
# A 429/503 that says no Retry-After: the client backs off from this, doubling to the cap, so
# a refusing server gets no flood of retries (thousands a second, a QA run saw).
REFUSED_BACKOFF_SECONDS = (0.1, 5.0)
# No new request this close to the run's end: the loop's timers (uvloop: 1 ms steps) fire up to
# a step early, and each request begun in that instant was cut at once and counted in flight.
END_SLACK = 0.002


@dataclass
class Stats:
    started: float = field(default_factory=time.perf_counter)
    requests: int = 0  # answered or failed, each once (a stream with an error event may still end in done)
    done: int = 0
    sent: int = 0  # requests written to a connection (rate_reached counts these)
    first_send: float = 0.0  # perf_counter() of the first and the last of them
    last_send: float = 0.0
    retry_after_waits: int = 0  # waits a 429/503 asked for (paced starts come due meanwhile)
    cut_at_end: int = 0  # in flight when the run ended: neither finished nor failed
    oldest_cut: float = 0.0  # ms the longest of those had been waiting
    unsent: int = 0  # paced: starts that came due while every connection still waited on an answer
    reopened: int = 0  # kept-alive connections found closed by the server before a send
    ttfe: list[float] = field(default_factory=list)  # ms
    ttd: list[float] = field(default_factory=list)  # ms
    ttd_from_send: list[float] = field(default_factory=list)  # ms, paced runs: without the wait to send
    errors: Counter[str] = field(default_factory=Counter)
    measuring: bool = True
    # How late the load tester's own event loop woke up (ms): when its p99 is near the TTFE p99,
    # the tail is the generator's, not the server's.
    lag: list[float] = field(default_factory=list)


def sse_field(block: bytes, name: bytes) -> bytes | None:
    """The value of one `name: value` line of an SSE event block, wherever it is (an `error`
    event may start with `retry:`), or None. The space after the colon is optional (SSE); the
    gateway's form is tried first, as this runs for every event."""
    for prefix in (name + b": ", name + b":"):
        if block.startswith(prefix):
            start = len(prefix)
        else:
            at = block.find(b"\n" + prefix)
            if at < 0:
                continue
            start = at + 1 + len(prefix)
        end = block.find(b"\n", start)
        return block[start:] if end < 0 else block[start:end]
    return None


class PromptMix:
    """Request bodies: a repeated hot prompt (cache hit) or a fresh variation (cache miss)."""

    def __init__(self, rng: random.Random, repeat_share: float, hot: int, *, walk_start: int | None = None) -> None:
        self.rng, self.repeat_share, self.hot = rng, repeat_share, min(hot, len(PROMPTS))
        self.sizes = (len(OPENERS), len(PROMPTS), len(DETAILS), len(PURPOSES), len(CLOSERS))
        self.total = math.prod(self.sizes)
        # An affine walk k -> (a*k + b) mod total visits every variation once, in scrambled order.
        self.step = next(a for a in range(self.total // 3, self.total) if math.gcd(a, self.total) == 1)
        self.offset = rng.randrange(self.total)
        # A later run continues where an earlier one stopped; by default a run starts anywhere
        # (not from the seed: the same seed walked the same prompts, and a rerun's "misses" were
        # the last run's prompts, hits on a cache that kept them).
        self.drawn = self.start = (walk_start if walk_start is not None
                                   else random.SystemRandom().randrange(self.total))

    @property
    def repeated(self) -> int:
        """Misses this run drew after its walk wrapped: prompts it had sent once (maybe still
        cached). A chain of runs (--walk-start) adds up its own: its walk_end past walk_size."""
        return max(0, self.drawn - self.start - self.total)

    def body(self) -> bytes:
        if self.rng.random() < self.repeat_share:
            prompt, image = PROMPTS[self.rng.randrange(self.hot)]
        else:
            index = (self.step * self.drawn + self.offset) % self.total
            self.drawn += 1
            index, opener = divmod(index, self.sizes[0])
            index, base = divmod(index, self.sizes[1])
            index, detail = divmod(index, self.sizes[2])
            closer, purpose = divmod(index, self.sizes[3])
            prompt, image = PROMPTS[base]
            prompt = f"{OPENERS[opener]}{prompt}{DETAILS[detail]}{PURPOSES[purpose]}{CLOSERS[closer]}"
        return make_body(prompt, image)


class FileMix:
    """Request bodies from a JSONL file (one JSON object with a "prompt" per line), drawn at
    random: the file's own repeats set the cache-hit share, as they do in the traffic it came from."""

    def __init__(self, rng: random.Random, bodies: list[bytes]) -> None:
        self.rng, self.bodies = rng, bodies

    @staticmethod
    def read(path: str) -> list[bytes]:
        """The file's request bodies; ValueError says what is wrong with it, and where."""
        try:
            text = Path(path).read_text(encoding="utf-8-sig")  # a BOM an editor left is no JSON
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read it: {exc}") from None
        bodies = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
                raise ValueError(f'{path}:{number}: expected an object with a "prompt" string')
            bodies.append(json.dumps(body).encode())
        if not bodies:
            raise ValueError(f"{path}: no request bodies")
        return bodies

    def body(self) -> bytes:
        return self.rng.choice(self.bodies)


def make_body(prompt: str, image: str | None) -> bytes:
    body: dict[str, object] = {"prompt": prompt}
    if image:
        body["working_image_url"] = IMAGE.format(image)
    return json.dumps(body).encode()


class StreamClient:
    """One keep-alive connection issuing requests one after another."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str], timeout: float) -> None:
        self.host, self.port, self.path, self.timeout = host, port, path, timeout
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 literal
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\n{extra}"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.first: float | None = None  # this request's first event (ms), kept if it times out
        self.done: float | None = None  # and its `done` (ms): a response that then never ends still has it
        self.retry_after = 0.0  # seconds the last answer (429, 503) asked the client to wait
        self.refusals = 0  # 429/503 answers in a row, for the backoff when one says no Retry-After
        self.completed = 0  # streams that reached `done`, warm-up included: the progress line's

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(
        self, body: bytes, stats: Stats, *, run_left: float = float("inf"), scheduled: float | None = None
    ) -> bool:
        """One request; `run_left`: seconds until the run ends. A request the run's end (or Ctrl-C)
        cuts short neither finished nor failed: it is counted as cut at the end, and True is
        returned. `scheduled`: when a paced run meant to send it; its latencies count from then,
        so a request that waited behind a slow one reports that wait (the coordinated omission
        wrk2 corrects)."""
        measured = stats.measuring  # a request begun in the warm-up is not measured, wherever it ends
        self._begin()
        cut_by_run_end = run_left < self.timeout
        sent: float | None = None
        try:
            async with asyncio.timeout(min(self.timeout, max(run_left, 0.0))):
                if self.reader is not None and self.reader.at_eof():
                    # The server closed this kept-alive connection while it was idle (its
                    # keep-alive timeout, a restart): a new one, as clients do. Only before
                    # sending: a request sent and then dropped is a disconnect, never re-sent.
                    await self.close()
                    stats.reopened += measured
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                sent = time.perf_counter()  # latencies from the send (opening a connection is not in them)
                start = sent if scheduled is None else min(scheduled, sent)
                self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                if measured:
                    stats.sent += 1
                    stats.first_send = stats.first_send or sent
                    stats.last_send = sent
                outcome = await self._read_response(self.reader, start)
        except asyncio.CancelledError:  # Ctrl-C: in flight, like a request the run's end cuts
            await self.close()
            if measured and sent is not None:
                self._cut(stats, sent)
            raise
        except TimeoutError:
            await self.close()
            if self.done is not None:  # `done` came, but the response never ended: a result, and a fault
                outcome = (["open_after_done"], self.first, self.done)
            elif cut_by_run_end:
                if measured and sent is not None:  # a connection still opening sent nothing
                    self._cut(stats, sent)
                return True
            else:
                outcome = (["timeout"], self.first, None)  # its first event, if any, was measured
        except OSError:  # ConnectionError included (TimeoutError, one too, is caught above)
            if self.writer is not None:  # the connection was up: it broke mid-request
                outcome = (["disconnect"], self.first, None)
                await self.close()
            else:  # the server is not there (stopped, restarting): no spinning on refusals
                outcome = (["connect_failed"], None, None)
                await asyncio.sleep(CONNECT_RETRY_SECONDS)
        except asyncio.IncompleteReadError:  # the server closed the connection mid-response
            outcome = (["disconnect"], self.first, None)
            await self.close()
        except (ValueError, IndexError, asyncio.LimitOverrunError):  # not HTTP/SSE as we read it
            outcome = (["malformed_response"], self.first, None)
            await self.close()
        errors, first, done = outcome
        self.completed += done is not None
        if not measured:
            return False
        # A connect that failed sent nothing: an error (an attempt), not a request answered or
        # failed (every 0.1 s retry of a dead server read as load: 40 "requests" a second at -c 4).
        stats.requests += errors != ["connect_failed"]
        stats.errors.update(errors)
        if first is not None:
            stats.ttfe.append(first)
        if done is not None:
            stats.ttd.append(done)
            stats.done += 1
            if scheduled is not None and sent is not None:
                stats.ttd_from_send.append(done - (sent - start) * 1000)
        return False

    def _begin(self) -> None:
        """What one request's answer fills in, cleared before it is sent."""
        self.first = self.done = None
        self.retry_after = 0.0

    @staticmethod
    def _cut(stats: Stats, sent: float) -> None:
        stats.cut_at_end += 1
        stats.oldest_cut = max(stats.oldest_cut, (time.perf_counter() - sent) * 1000)

    async def _read_response(
        self, reader: asyncio.StreamReader, start: float
    ) -> tuple[list[str], float | None, float | None]:
        """(error kinds, ms to first event, ms to the done event) of one response."""
        while True:
            version, status_text = (await reader.readuntil(b"\r\n")).split(b" ", 2)[:2]
            status = int(status_text)
            if not 100 <= status < 200:
                break
            while await reader.readuntil(b"\r\n") != b"\r\n":  # an interim answer (103): skipped
                pass
        length: int | None = None
        chunked, event_stream = False, False
        close = version == b"HTTP/1.0"  # 1.0 closes unless it says keep-alive
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"content-type":
                event_stream = value.startswith(b"text/event-stream")
            elif name == b"connection":
                close = b"close" in value or (close and b"keep-alive" not in value)
            elif name == b"retry-after" and status in (429, 503):
                self.retry_after = _seconds_until(value.decode("latin-1"))
        if status in (429, 503):
            self.refusals += 1
            if not self.retry_after:
                low, cap = REFUSED_BACKOFF_SECONDS
                self.retry_after = min(cap, low * 2 ** min(self.refusals - 1, 16))  # 2**1024 overflowed
        else:
            self.refusals = 0
        if status in (204, 304):  # never a body, whatever the headers say (RFC 9112 6.3)
            chunked, length = False, 0
        elif not chunked and length is None:
            close = True  # the body ends where the connection does
        body = _chunks(reader, chunked, length)
        errors: list[str] = [] if status == 200 else [f"http_{status}"]
        if not event_stream or errors:  # a refusal's body (JSON, or events) is no stream's timing
            async for _ in body:
                pass
            if close:
                await self.close()
            return errors or ["not_event_stream"], None, None
        first: float | None = None
        done: float | None = None

        def arrived(blocks: list[bytes]) -> None:
            nonlocal first, done
            for block in blocks:
                now = (time.perf_counter() - start) * 1000
                if first is None:
                    first = self.first = now
                event = sse_field(block, b"event")
                if event == b"done":
                    done = self.done = now
                elif event == b"error":
                    # stage_failed still ends in `done` (a fallback); overloaded ends the stream.
                    errors.append(f"event_{_error_code(sse_field(block, b'data'))}")

        pending = carried = b""
        async for piece in body:
            pending += carried + piece
            carried = b""
            if b"\r" in pending:  # CRLF or CR line endings (SSE allows both): read as LF
                if pending.endswith(b"\r"):  # maybe half of a CRLF: the next piece says
                    pending, carried = pending[:-1], b"\r"
                pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            blocks, pending = _blocks(pending)
            arrived(blocks)
        if carried:  # the body's last byte was a CR: a line ending after all
            arrived(_blocks(pending + b"\n")[0])
        if close:
            await self.close()
        if done is None and not errors:
            errors.append("no_done_event")
        return errors, first, done


def _blocks(text: bytes) -> tuple[list[bytes], bytes]:
    """The complete SSE event blocks in `text` (LF line endings), and what is left after them.
    A block without data is no event (SSE): a heartbeat alone, say; comment lines are dropped."""
    blocks: list[bytes] = []
    while (cut := text.find(b"\n\n")) >= 0:
        block, text = text[:cut], text[cut + 2 :]
        if block.startswith(b":"):  # comment lines (heartbeats) are ignored, not their block
            block = b"\n".join(line for line in block.split(b"\n") if not line.startswith(b":"))
        if sse_field(block, b"data") is not None:
            blocks.append(block)
    return blocks, text


async def _chunks(reader: asyncio.StreamReader, chunked: bool, length: int | None) -> AsyncIterator[bytes]:
    """A response body as it arrives, in any HTTP/1.1 framing: chunked (trailers skipped),
    Content-Length, or until the server closes (a proxy speaking HTTP/1.0, say)."""
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            yield (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, then the end
            pass
        return
    left = length if length is not None else -1
    while left:
        piece = await reader.read(65536 if left < 0 else min(left, 65536))
        if not piece:
            if left > 0:
                raise asyncio.IncompleteReadError(b"", left)
            return
        left = left - len(piece) if left > 0 else left
        yield piece


def _seconds_until(value: str) -> float:
    """A Retry-After value, delta-seconds (a fraction too, though RFC 9110 says whole) or an
    HTTP date, in seconds from now (0: unreadable)."""
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return seconds if 0 <= seconds < math.inf else 0.0
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def _error_code(data: bytes | None) -> str:
    """An error event's `code`; "unknown" for data that is not the gateway's error object."""
    try:
        payload = json.loads(data or b"{}")
    except ValueError:
        return "unknown"
    code = payload.get("code") if isinstance(payload, dict) else None
    return code if isinstance(code, str) else "unknown"


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p95/p99 (None: nothing measured, rather than a 0 that reads as fast)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


class Pacer:
    """--rate's schedule: start i is due at `begin + i / rate`; a free client takes the next
    one. Counted, not queued: at a rate no server reaches, a queue of due starts grew by the
    rate every second (a million a second at --rate 1e6)."""

    def __init__(self, rate: float, begin: float, end: float) -> None:
        self.step, self.begin, self.end = 1 / rate, begin, end
        self.taken = 0

    async def next_start(self) -> float | None:
        """When the next start is due, once it is (None past the run's end)."""
        at = self.begin + self.taken * self.step
        if at >= self.end:
            return None
        self.taken += 1
        if (wait := at - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        return at

    def due_untaken(self, *, since: float, until: float) -> int:
        """Starts due in [since, until] that no client took."""
        if until < self.begin:
            return 0
        last = min(math.floor((until - self.begin) / self.step), math.ceil((self.end - self.begin) / self.step) - 1)
        first = max(self.taken, math.ceil((since - self.begin) / self.step))
        return max(0, last - first + 1)


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    stats = Stats(measuring=args.warmup <= 0)
    rng = random.Random(args.seed)
    mix: PromptMix | FileMix = (
        FileMix(rng, args.bodies) if args.prompts
        else PromptMix(rng, args.repeat_share, args.hot, walk_start=args.walk_start)
    )
    deadline = time.perf_counter() + args.warmup + (args.duration if args.duration is not None else 1e9)
    budget = [args.requests or 0]

    # With --rate, requests come due on one schedule, --rate a second, and whichever of the -c
    # connections is free sends the next one due (an open model, as k6's constant-arrival-rate
    # executor): a slow answer holds up no other request. One waits only while every connection
    # is busy, and its latencies count from when it was due (wrk2's correction), so that wait
    # shows. (Each connection keeping a schedule of its own charged one slow stream's time to
    # the next few requests of its connection, as if the server had kept them waiting.)
    pacer = Pacer(args.rate, time.perf_counter(), deadline) if args.rate else None

    streams = [StreamClient(host, port, args.path, {**headers, "X-User-Id": f"load-{index}"}, args.timeout)
               for index in range(args.concurrency)]  # fmt: skip

    async def client_loop(index: int) -> None:
        client = streams[index]
        try:
            while time.perf_counter() < deadline:
                scheduled = None
                if pacer is not None and (scheduled := await pacer.next_start()) is None:
                    return  # the schedule's last start is taken
                # -n counts measured requests, not the warm-up's: checked once the start is due,
                # as the warm-up may end while a client waits for it.
                if args.requests and stats.measuring:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                if deadline - time.perf_counter() < END_SLACK:
                    return
                cut = await client.request(mix.body(), stats, run_left=deadline - time.perf_counter(),
                                           scheduled=scheduled)  # fmt: skip
                if cut:
                    return  # the run's end cut it: no more starts in its last instant
                if client.retry_after:  # 429/503 asked to wait: do, as a client would
                    stats.retry_after_waits += stats.measuring
                    await asyncio.sleep(min(client.retry_after, max(0.0, deadline - time.perf_counter())))
        finally:
            await client.close()

    async def progress() -> None:
        """Each second: the rate over that second (an average since the start hides a stall),
        warm-up included."""
        began = last_at = time.perf_counter()
        last_done = 0
        while True:
            await asyncio.sleep(1)
            now, done = time.perf_counter(), sum(client.completed for client in streams)
            rate = (done - last_done) / max(now - last_at, 1e-9)
            last_done, last_at = done, now
            phase = "measuring" if stats.measuring else "warming up"
            sys.stderr.write(
                f"\r{now - began:6.1f}s {phase}  done={done:<8} {rate:8.0f} req/s  "
                f"errors={sum(stats.errors.values())}   "
            )
            sys.stderr.flush()

    async def probe_lag() -> None:
        while True:
            asked = time.perf_counter() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            stats.lag.append((time.perf_counter() - asked) * 1000)

    async def end_warmup() -> None:
        await asyncio.sleep(args.warmup)
        stats.__init__()  # type: ignore[misc]  # measurement starts now

    reporter = asyncio.create_task(progress()) if args.progress else None
    warm = asyncio.create_task(end_warmup()) if args.warmup > 0 else None
    prober = asyncio.create_task(probe_lag())
    clients = asyncio.gather(*(client_loop(i) for i in range(args.concurrency)))
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def interrupt() -> None:  # Ctrl-C, or SIGTERM (timeout, docker stop, a CI job cancelled):
        interrupted.set()  # stop the clients and report what was measured
        clients.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt)
    try:
        await clients
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise  # our caller's cancellation, not Ctrl-C
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    elapsed = time.perf_counter() - stats.started
    sending = None if args.requests else min(time.perf_counter(), deadline) - stats.started  # -d's window
    for task in (reporter, warm, prober):
        if task:
            task.cancel()
    if pacer is not None and stats.measuring and not args.requests:  # -n: no end due
        # Starts that came due while every connection waited on an answer.
        stats.unsent = pacer.due_untaken(since=stats.started, until=min(time.perf_counter(), deadline))
    if args.progress:
        sys.stderr.write("\n")
    return {
        "url": args.url,
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 3),
        "interrupted": interrupted.is_set(),  # Ctrl-C: the figures are for what ran until then
        "requests": stats.requests,
        "completed": stats.done,  # streams that reached `done`
        "sent": stats.sent,
        "cut_at_end": stats.cut_at_end,  # in flight as the run ended: in no percentile
        "oldest_cut_ms": round(stats.oldest_cut, 3),  # how long the longest of them had waited
        "unsent": stats.unsent if args.rate else None,  # paced starts due while every connection waited
        "reopened": stats.reopened,  # idle connections the server had closed, reopened before a send
        "requests_per_s": round(stats.done / elapsed, 1) if elapsed else 0.0,  # completed ones
        "answered_per_s": round(stats.requests / elapsed, 1) if elapsed else 0.0,  # errors too
        "ttfe_ms": percentiles(stats.ttfe),
        "ttd_ms": percentiles(stats.ttd),
        # Paced runs count latencies from each request's scheduled start (above); this is `done`
        # from when it was actually sent, the figure a client that waits for itself reports.
        "ttd_from_send_ms": percentiles(stats.ttd_from_send) if args.rate else None,
        "errors": dict(stats.errors),
        "client_lag_ms": {**percentiles(stats.lag), "max": round(max(stats.lag, default=0.0), 3)},
        # Paced runs: what was reached (the load generator or the server may fall behind).
        # Over the sends' own span: the wait for the last answers is no sending.
        "rate_reached": _rate(stats, sending) if args.rate else None,
        "retry_after_waits": stats.retry_after_waits,
        "repeat_share": None if args.prompts else args.repeat_share,
        "prompts": args.prompts,
        "target_rate": args.rate,
        # --walk-start for a next run whose misses must be new too (a replayed file has no walk)
        "walk_start": mix.start if isinstance(mix, PromptMix) else None,
        "walk_end": mix.drawn if isinstance(mix, PromptMix) else None,
        "walk_size": mix.total if isinstance(mix, PromptMix) else None,  # unique prompts before a wrap
        "repeated_misses": mix.repeated if isinstance(mix, PromptMix) else None,
    }


def _rate(stats: Stats, window: float | None) -> float | None:
    """Requests sent a second: over the `window` of seconds a timed run (-d) was to send in; from
    the first send to the last for -n (None: fewer than two). A timed run measured the latter way
    read the asked-for rate off a run whose sending had stopped early."""
    if window is not None:
        return round(stats.sent / window, 1) if stats.sent and window > 0 else None
    span = stats.last_send - stats.first_send
    return round((stats.sent - 1) / span, 1) if stats.sent > 1 and span > 0 else None


def _ms(values: dict[str, float | None]) -> str:
    return " / ".join("n/a" if values[q] is None else str(values[q]) for q in ("p50", "p95", "p99"))


def render(report: dict[str, object]) -> str:
    ttfe, ttd, lag = report["ttfe_ms"], report["ttd_ms"], report["client_lag_ms"]
    assert isinstance(ttfe, dict) and isinstance(ttd, dict) and isinstance(lag, dict)
    rows = [
        ("requests/s", f"{report['requests_per_s']} completed ({report['answered_per_s']} answered or failed)"),
        ("completed", f"{report['completed']} of {report['requests']} ({report['sent']} sent) in "
                      f"{report['duration_s']} s" + (" (interrupted)" if report["interrupted"] else "")),
        ("first event p50/p95/p99 ms", _ms(ttfe)),
        ("done p50/p95/p99 ms", _ms(ttd)),
    ]
    if isinstance(sent := report.get("ttd_from_send_ms"), dict):
        rows[-2:-2] = [("latencies count from", "each request's scheduled start (--rate)")]
        rows.append(("done from sending p50/p95/p99 ms", _ms(sent)))
    rows += [
        ("errors", json.dumps(report["errors"]) if report["errors"] else "none"),
        ("load tester's loop lag p99/max ms", f"{lag['p99']} / {lag['max']}"),
    ]
    # Every client has a request in flight as a run ends; one in flight far longer than a stream
    # takes, or paced starts never sent, is a stall the percentiles cannot show.
    oldest, typical = report.get("oldest_cut_ms"), ttd["p50"]
    stalled = isinstance(oldest, float) and oldest > max(STALL_MS, 10 * (typical or 0.0))
    if stalled or (report.get("unsent") and not report.get("retry_after_waits")):
        rows.append(("WARNING: not answered in the run",
                     f"{report['cut_at_end']} in flight at the end (the oldest for {oldest} ms)"
                     + (f", {report['unsent']} paced starts due but never sent (every connection was busy)"
                        if report.get("unsent") else "")
                     + ": a stalled server? They are in no percentile; a lower --timeout fails them"))
    if report.get("retry_after_waits"):
        rows.append(("Retry-After waits", f"{report['retry_after_waits']}, as the server asked"
                     + (f"; {report['unsent']} paced starts came due meanwhile, never sent"
                        if report.get("unsent") else "")))
    target, reached = report.get("target_rate"), report.get("rate_reached")
    if isinstance(target, float) and isinstance(reached, float) and reached < 0.9 * target:
        why = ("clients waited as Retry-After asked" if report.get("retry_after_waits")
               else "the server (or this load tester) did not keep up")
        rows.append(("WARNING: behind the --rate", f"{reached} req/s sent of {target:g} asked for: {why}"))
    if report.get("repeated_misses"):
        rows.append(("WARNING: the walk wrapped", f"{report['repeated_misses']} 'misses' repeated earlier prompts"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--path", default="/api/v1/enhanced/stream")
    parser.add_argument("-c", "--concurrency", type=int, default=64, help="concurrent streams")
    parser.add_argument("-d", "--duration", type=float, help="seconds to run (default 10 unless -n)")
    parser.add_argument("-n", "--requests", type=int, help="stop after this many requests")
    parser.add_argument("--rate", type=float, help="target requests/s in all (default: as fast as possible); "
                        "latencies then count from each request's scheduled start")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of load before measuring")
    parser.add_argument("--repeat-share", type=float, help="share of repeated prompts (cache hits; default 0.5)")
    parser.add_argument("--hot", type=int, help="how many distinct prompts repeat (default 10)")
    parser.add_argument("--prompts", metavar="FILE",
                        help="JSONL request bodies to draw from at random instead of the built-in mix")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--api-key", help="Bearer key when the gateway requires one")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--walk-start", type=int,
                        help="where the walk through unique prompts starts (a previous run's walk_end, to "
                             "go on from it); default: a random point, so a rerun's misses are not the "
                             "last run's prompts, cached by then")
    parser.add_argument("--json", action="store_true", help="only the JSON report")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    try:
        url.port  # noqa: B018  # urlsplit checks the port only when asked
    except ValueError:
        parser.error(f"--url has no valid port: {args.url}")
    if url.scheme != "http" or not url.hostname or url.path.strip("/") or url.query or url.username:
        parser.error("--url takes http://host[:port] (plain HTTP; no path, query or credentials: --path "
                     "names the endpoint, --api-key the credential)")
    for name, value, least in (("-c/--concurrency", args.concurrency, 1), ("-n/--requests", args.requests, 1),
                               ("--hot", args.hot, 1)):  # fmt: skip
        if value is not None and value < least:
            parser.error(f"{name} must be {least} or more")
    for name, value in (("-d/--duration", args.duration), ("--rate", args.rate), ("--timeout", args.timeout)):
        if value is not None and not 0 < value < math.inf:  # inf: a run that never ends, or spins
            parser.error(f"{name} must be a number more than 0")
    if not 0 <= args.warmup < math.inf:
        parser.error("--warmup must be 0 or more")
    if url.port == 0:
        parser.error("--url: port 0 is no server's port")
    if not args.path.startswith("/"):
        parser.error(f"--path is the endpoint's path, starting with /: {args.path!r}")
    if args.hot is not None and args.hot > len(PROMPTS):
        parser.error(f"--hot: the built-in mix has {len(PROMPTS)} prompts to repeat (--prompts FILE for more)")
    if args.repeat_share is not None and not 0 <= args.repeat_share <= 1:
        parser.error("--repeat-share is a share: 0 to 1")
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    if args.prompts and (args.repeat_share is not None or args.hot is not None or args.walk_start is not None):
        parser.error("--prompts replays a file: its own repeats set the cache hits, so "
                     "--repeat-share, --hot and --walk-start do not apply")
    args.bodies = None
    if args.prompts:  # read now: a bad file is a usage error (exit 2), not a failed run
        try:
            args.bodies = FileMix.read(args.prompts)
        except ValueError as exc:
            parser.error(f"--prompts {exc}")
    args.repeat_share = 0.5 if args.repeat_share is None else args.repeat_share
    args.hot = 10 if args.hot is None else args.hot
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        report = runner.run(run(args))
    with contextlib.suppress(BrokenPipeError):  # piped into head: the reader has what it wanted
        if not args.json:
            sys.stdout.write(render(report))
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
    # Usable as a gate: a run in which no stream finished failed, stopped early or not (a run
    # stopped in its warm-up measured nothing: it said 0 and looked fine).
    return 0 if report["completed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
