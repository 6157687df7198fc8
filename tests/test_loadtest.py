"""The SSE load tester counts streams, first events and errors correctly."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import signal
import socket
import sys
import time
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import MakeClient

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"scripts_{name}"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


async def test_loadtest_completes_every_stream_against_the_gateway(client: Any) -> None:
    """A fixed request count finishes with every stream reaching `done` and no errors."""
    loadtest = load_script("loadtest")
    args = loadtest.parse_args(
        ["--url", str(client.make_url("/")), "-c", "4", "-n", "40", "--repeat-share", "0.5", "--no-progress"]
    )
    report = await loadtest.run(args)
    assert report["completed"] == 40 and report["errors"] == {}
    assert 0 < report["ttfe_ms"]["p50"] <= report["ttd_ms"]["p99"]
    assert "requests/s" in loadtest.render(report)


async def test_the_load_testers_own_stalls_are_reported(client: Any) -> None:
    """A stall of the generator's event loop shows as its loop lag, next to the latencies it inflates."""
    loadtest = load_script("loadtest")
    args = loadtest.parse_args(["--url", str(client.make_url("/")), "-c", "2", "-d", "0.6", "--no-progress"])

    async def stall() -> None:
        await asyncio.sleep(0.2)
        time.sleep(0.05)  # noqa: ASYNC251  # the point: the whole loop, load tester included, stops

    stalled = asyncio.create_task(stall())
    report = await loadtest.run(args)
    await stalled
    assert report["client_lag_ms"]["max"] >= 45
    assert "loop lag p99/max ms" in loadtest.render(report)


async def test_loadtest_counts_error_events_by_code(make_client: MakeClient) -> None:
    """Overloaded streams are reported as event_overloaded, not as successes."""
    from pipeline.classifiers.rules import RulesClassifier
    from tests.conftest import GatedClassifier

    gated = GatedClassifier(RulesClassifier())
    client = await make_client(classifier=gated, max_concurrent_classifications=1, classification_queue_timeout=0.05)
    loadtest = load_script("loadtest")
    args = loadtest.parse_args(["--url", str(client.make_url("/")), "-c", "3", "-n", "3", "--timeout", "1",
                                "--no-progress"])
    report = await loadtest.run(args)
    # One stream holds the only slot until the client's timeout; the other two are refused in-band.
    assert report["errors"].get("event_overloaded") == 2
    assert report["errors"].get("timeout") == 1
    gated.gate.set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_continued_walk_draws_no_earlier_miss_again() -> None:
    """The benchmark's paced run continues the saturated run's walk: its misses are new prompts."""
    loadtest = load_script("loadtest")
    first = loadtest.PromptMix(random.Random(1), 0.0, 10)
    earlier = {first.body() for _ in range(5000)}
    later = loadtest.PromptMix(random.Random(1), 0.0, 10, walk_start=first.drawn)
    assert len(earlier) == 5000
    assert not earlier & {later.body() for _ in range(5000)}


async def test_a_prompt_file_is_replayed_and_its_bad_bodies_counted(client: Any, tmp_path: Path) -> None:
    """--prompts sends the file's bodies as they are: good ones complete, a refused one is an http_422."""
    loadtest = load_script("loadtest")
    prompts = tmp_path / "traffic.jsonl"
    prompts.write_text(
        '{"prompt": "change my hair to blonde with bangs", "working_image_url": '
        '"https://demo.supabase.co/storage/v1/object/public/images/me.jpg"}\n'
        "\n"
        '{"prompt": "cinematic video of waves"}\n'
        '{"prompt": "   "}\n'  # empty after trimming: the gateway refuses it
    )
    args = loadtest.parse_args(
        ["--url", str(client.make_url("/")), "-c", "3", "-n", "40", "--prompts", str(prompts), "--no-progress"]
    )
    report = await loadtest.run(args)
    refused = report["errors"].get("http_422", 0)
    assert set(report["errors"]) == {"http_422"} and 3 <= refused <= 27  # one line in three, seeded
    assert report["completed"] == 40 - refused
    assert report["prompts"] == str(prompts) and report["repeat_share"] is None and report["walk_end"] is None


def test_a_prompt_file_must_hold_request_bodies(tmp_path: Path) -> None:
    loadtest = load_script("loadtest")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n["not", "an", "object"]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object"):
        loadtest.FileMix.read(str(bad))
    bad.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not JSON"):
        loadtest.FileMix.read(str(bad))
    with pytest.raises(SystemExit):  # argparse: a file replays its own repeats
        loadtest.parse_args(["--prompts", str(bad), "--repeat-share", "0.9"])


def test_a_wrapped_walk_counts_its_repeated_misses() -> None:
    """Past the last variation the walk starts over: those misses are counted, not passed off as
    new; counted from where this run began (a chain from a random start was over-reported)."""
    loadtest = load_script("loadtest")
    mix_start = 100_000
    mix = loadtest.PromptMix(random.Random(1), 0.0, 10, walk_start=mix_start)
    assert mix.total == 8 * 30 * 10 * 12 * 8
    first = [mix.body() for _ in range(2)]
    mix.drawn = mix_start + mix.total - 1  # as if every other variation had been drawn since
    last = mix.body()
    assert mix.repeated == 0 and last not in first
    again = [mix.body() for _ in range(2)]
    assert mix.repeated == 2 and again == first  # the walk's first two prompts, once more


async def test_a_server_that_is_not_there_is_counted_not_a_crash() -> None:
    """Connects that fail are errors of their own kind (no spinning on them), attempts rather than
    requests (nothing was sent); the report still comes."""
    loadtest = load_script("loadtest")
    args = loadtest.parse_args(["--url", f"http://127.0.0.1:{free_port()}", "-c", "2", "-n", "4", "--no-progress"])
    report = await loadtest.run(args)
    assert (report["requests"], report["completed"], report["errors"]) == (0, 0, {"connect_failed": 4})
    assert report["answered_per_s"] == 0.0


async def test_a_stream_with_an_error_event_that_still_ends_in_done_is_one_request(make_client: MakeClient) -> None:
    """A stage failure is reported in-band and the fallback still answers: 10 requests, 10 completed."""
    from tests.conftest import FailingClassifier

    client = await make_client(classifier=FailingClassifier())
    loadtest = load_script("loadtest")
    report = await loadtest.run(loadtest.parse_args(["--url", str(client.make_url("/")), "-c", "2", "-n", "10",
                                                     "--no-progress"]))  # fmt: skip
    assert (report["requests"], report["completed"]) == (10, 10)
    assert report["errors"] == {"event_stage_failed": 10}


async def test_a_request_count_is_measured_after_the_warm_up(make_client: MakeClient) -> None:
    # No limits: the warm-up alone sends more than the default 100 a minute per user.
    client = await make_client(rate_limit_requests_per_minute=0, rate_limit_requests_per_hour=0, cost_limit_per_hour=0)
    loadtest = load_script("loadtest")
    args = loadtest.parse_args(["--url", str(client.make_url("/")), "-c", "3", "-n", "20", "--warmup", "0.3",
                                "--no-progress"])  # fmt: skip
    report = await loadtest.run(args)
    assert (report["requests"], report["completed"]) == (20, 20)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # SIGTERM: timeout(1), docker stop, CI
async def test_ctrl_c_ends_the_run_with_a_report_of_what_was_measured(client: Any, signum: int) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--url", str(client.make_url("/")),
               "-c", "2", "-d", "30", "--no-progress"]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)  # fmt: skip
    await asyncio.sleep(2.0)  # start-up, then some requests
    process.send_signal(signum)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report["interrupted"] is True and report["completed"] > 0 and report["duration_s"] < 10
    assert "(interrupted)" in stdout.decode()


def test_a_prompt_file_that_cannot_be_read_is_a_usage_error_not_a_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit code 2 and the file's fault, as for other arguments (it was 1: "no stream finished")."""
    loadtest = load_script("loadtest")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat"}\nnot json\n')
    for name, said in (("missing.jsonl", "missing.jsonl: cannot read it"), ("bad.jsonl", "bad.jsonl:2: not JSON")):
        with pytest.raises(SystemExit) as exited:
            loadtest.parse_args(["--prompts", str(tmp_path / name)])
        assert exited.value.code == 2 and said in capsys.readouterr().err


def test_a_prompt_file_an_editor_saved_with_a_bom_is_read(tmp_path: Path) -> None:
    loadtest = load_script("loadtest")
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"prompt": "a cat"}\n'.encode())
    assert loadtest.parse_args(["--prompts", str(tmp_path / "bom.jsonl")]).bodies == [b'{"prompt": "a cat"}']


def test_a_run_starts_its_walk_anywhere_unless_told_where() -> None:
    """The same seed walked the same unique prompts: a rerun's "misses" were the last run's
    prompts, hits on any cache that kept them (~59% in a QA run against a warmed gateway)."""
    loadtest = load_script("loadtest")
    first, second = (loadtest.PromptMix(random.Random(1), 0.0, 10) for _ in range(2))
    assert first.drawn != second.drawn and first.body() != second.body()  # 1 in 230,400 to fail
    told = loadtest.PromptMix(random.Random(1), 0.0, 10, walk_start=7)
    assert (told.drawn, told.repeated) == (7, 0)


class RawServer:
    """A server answering every request on a keep-alive connection with `answer` (raw bytes):
    what a misbehaving gateway or proxy might send."""

    def __init__(
        self, answer: bytes, *, stall: bool = False, close: bool = False, first_delay: float = 0.0,
        idle_close: float | None = None, drop_second: bool = False, delay: float = 0.0,
    ) -> None:  # fmt: skip
        """`stall`: never answer again after the first; `close`: close the connection after
        each answer (whatever its headers say); `first_delay`: seconds before the first answer;
        `idle_close`: close a connection idle this long (a keep-alive timeout); `drop_second`:
        read a connection's second request and close without answering (a crash); `delay`:
        seconds before every answer (a long stream)."""
        self.answer, self.stall, self.close, self.first_delay = answer, stall, close, first_delay
        self.idle_close, self.drop_second, self.delay = idle_close, drop_second, delay
        self.requests = 0
        self.connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task, writer in list(self.connections.items()):  # 3.11's close() leaves them open
            task.cancel()
            writer.close()
        await asyncio.gather(*self.connections, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            on_this_connection = 0
            while True:
                try:
                    async with asyncio.timeout(self.idle_close):
                        await reader.readuntil(b"\r\n\r\n")
                except TimeoutError:
                    writer.close()
                    return
                length = 30  # the load tester's bodies are longer: read what it sends
                await reader.read(length)
                self.requests += 1
                on_this_connection += 1
                if self.drop_second and on_this_connection == 2:
                    writer.close()
                    return
                await asyncio.sleep(self.delay + (self.first_delay if self.requests == 1 else 0.0))
                writer.write(self.answer)
                await writer.drain()
                if self.stall:
                    await asyncio.sleep(3600)
                if self.close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _chunked(*events: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + (b"" if not events else b"0\r\n\r\n")


@pytest.mark.parametrize(("answer", "kind"), [
    (_chunked(b"event: error\ndata: [1]\n\n"), "event_unknown"),  # data that is not the error object
    (_chunked(b"event: error\ndata: {not json\n\n"), "event_unknown"),
    (b"HTTPgarbage\r\n\r\n", "malformed_response"),  # no status code
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "malformed_response"),  # a header past 64 KiB
    (b"HTTP/1.1 204 No Content\r\n\r\n", "http_204"),  # no body: was read until close, then dropped
    (_chunked(b"retry: 10\n\n"), "no_done_event"),  # a block without data is no event
])  # fmt: skip
async def test_a_malformed_answer_is_counted_by_kind_not_a_crash(answer: bytes, kind: str) -> None:
    loadtest = load_script("loadtest")
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "3", "--no-progress"]))
    assert report["requests"] == 3 and report["completed"] == 0 and kind in report["errors"]
    assert report["ttfe_ms"]["p50"] is None or kind.startswith("event_")


async def test_the_run_ends_at_its_duration_even_against_a_server_that_stalls() -> None:
    """A stream that stalls after its first event: the run stops at -d (it ran to --timeout, 30 s),
    and the request cut short by the end is neither completed nor an error."""
    loadtest = load_script("loadtest")
    started = time.perf_counter()
    async with RawServer(_chunked(b"event: context\ndata: {}\n\n")[:-5], stall=True) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "2", "-d", "1.5", "--no-progress"]))
    assert time.perf_counter() - started < 5
    assert (report["requests"], report["completed"], report["errors"]) == (0, 0, {})
    assert report["ttfe_ms"] == {"p50": None, "p95": None, "p99": None}  # nothing measured: not "0 ms"
    # ... but not unseen: the report says two requests hung to the end (it said nothing at all).
    assert report["cut_at_end"] == 2 and report["oldest_cut_ms"] >= 1400
    assert "WARNING: not answered in the run" in loadtest.render(report)


async def test_a_paced_run_sends_each_due_request_on_whichever_connection_is_free() -> None:
    """One answer stalls 0.6 s in a run of 20 requests a second on 4 connections: the requests
    due meanwhile go on the other three. Each connection keeping a schedule of its own made
    the stalled one's next requests wait for it too, as if the server had kept them waiting."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(DONE), first_delay=0.6) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "4", "-d", "1.2", "--rate", "20",
                                                         "--no-progress"]))
    assert report["completed"] >= 20 and report["ttd_ms"]["p95"] < 300 and report["unsent"] == 0


async def test_paced_starts_a_stalled_client_never_sent_are_counted() -> None:
    """One request per 0.1 s, and the first answer never ends: the starts due behind it were in no
    percentile and no count (the corrected latencies cannot include what was never sent)."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(b"event: context\ndata: {}\n\n")[:-5], stall=True) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-d", "1", "--rate", "10",
                                                         "--no-progress"]))
    assert report["sent"] == 1 and report["unsent"] >= 8
    # The rate is over the run's sending window: from the first send to the last, it read 10.
    assert report["rate_reached"] <= 2 and "behind the --rate" in loadtest.render(report)


async def test_the_rate_reached_counts_what_was_sent_not_what_was_answered_in_the_run() -> None:
    """Streams of 0.4 s paced at 8/s: all sent on time, but those still open at the end were not
    answered, and the report said the run fell behind its rate."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(DONE), delay=0.4) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "4", "-d", "1", "--rate", "8",
                                                         "--no-progress"]))
    assert report["rate_reached"] >= 7 and "behind the --rate" not in loadtest.render(report)


async def test_a_paced_run_of_n_requests_that_kept_up_reports_no_stall() -> None:
    """-n 4 at 10/s with answers of 0.5 s: the scheduler kept adding starts until the last answer
    came, and those were reported as never sent, the rate as half the one asked for."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(DONE), delay=0.5) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "4", "-n", "4", "--rate", "10",
                                                         "--no-progress"]))
    assert (report["completed"], report["unsent"]) == (4, 0) and 8 <= report["rate_reached"] <= 12
    assert "WARNING" not in loadtest.render(report)


async def test_retry_after_waits_under_a_rate_are_not_reported_as_a_stall() -> None:
    loadtest = load_script("loadtest")
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "2", "-d", "1.5", "--rate", "10",
                                                         "--no-progress"]))
    table = loadtest.render(report)
    assert report["retry_after_waits"] >= 2 and "Retry-After waits" in table
    assert "WARNING: not answered" not in table


async def test_a_503_asks_by_http_date_and_is_waited_for() -> None:
    import email.utils

    loadtest = load_script("loadtest")
    when = email.utils.formatdate(time.time() + 3, usegmt=True).encode()
    answer = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: " + when + b"\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "2", "-d", "1", "--no-progress"]))
    assert report["errors"] == {"http_503": 2}  # one each, then waiting (it was thousands)


def test_an_ipv6_url_is_sent_a_bracketed_host() -> None:
    loadtest = load_script("loadtest")
    client = loadtest.StreamClient("::1", 8000, "/api/v1/enhanced/stream", {}, 1.0)
    assert b"\r\nHost: [::1]:8000\r\n" in client.head


@pytest.mark.parametrize("events", [
    [b"event:context\ndata:{}\n\n", b"event:done\ndata:{}\n\n"],  # no space after the colon
    [b"event: context\r\ndata: {}\r\n\r\n", b"event: done\r", b"\ndata: {}\r\n\r\n"],  # CRLF, split
    [b"event: context\rdata: {}\r\r", b"event: done\r", b"data: {}\r\r"],  # CR alone, split after one
    [b": hb\nevent: context\ndata: {}\n\n", b": beat\n: beat\nevent: done\ndata: {}\n\n"],  # comment lines first
])  # fmt: skip
async def test_valid_sse_in_other_spellings_is_read_as_the_gateways(events: list[bytes]) -> None:
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(*events)) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "2", "--no-progress"]))
    assert (report["completed"], report["errors"]) == (2, {})


async def test_a_paced_run_ends_at_its_duration() -> None:
    """A client's next paced start may fall after the end: it used to wait for it (and send one
    more), so -d 1 --rate 2 ran ~1.5 s and reported the rate as missed."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(b"event: done\ndata: {}\n\n")) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "2", "-d", "1", "--rate", "2",
                                                         "--no-progress"]))
    assert report["duration_s"] < 1.2 and report["completed"] == 2


async def test_a_429_without_retry_after_is_backed_off_not_hammered() -> None:
    """No Retry-After (or a fraction): thousands of requests a second, before; now a doubling wait."""
    loadtest = load_script("loadtest")
    answer = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-d", "1.2", "--no-progress"]))
    assert report["errors"] == {"http_429": report["requests"]} and 2 <= report["requests"] <= 5  # 0.1, 0.2, 0.4...


def test_a_retry_after_in_fractions_of_a_second_is_read() -> None:
    """RFC 9110 says whole seconds; some servers send "0.5": it read as 0, no wait at all."""
    loadtest = load_script("loadtest")
    assert (loadtest._seconds_until("0.5"), loadtest._seconds_until("2"), loadtest._seconds_until("soon")) == (0.5, 2, 0)


async def test_a_429_with_retry_after_is_waited_for_not_hammered() -> None:
    loadtest = load_script("loadtest")
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "2", "-d", "1.5", "--no-progress"]))
    assert report["errors"] == {"http_429": report["requests"]} and report["requests"] <= 4  # 2 each, not thousands


@pytest.mark.parametrize("argv", [["-d", "0"], ["-n", "0"], ["-c", "0"], ["--hot", "0"], ["--rate", "-5"],
                                  ["--url", "https://127.0.0.1:8000"], ["--url", "127.0.0.1:8000"],
                                  ["--url", "http://127.0.0.1:8000/prefix"], ["--url", "http://127.0.0.1:99999"],
                                  ["--url", "http://127.0.0.1:abc"], ["--url", "http://u:p@127.0.0.1:8000"],
                                  ["--repeat-share", "1.5"], ["--rate", "inf"], ["-d", "inf"],
                                  ["--warmup", "inf"], ["--timeout", "nan"], ["--url", "http://127.0.0.1:0"],
                                  ["--path", "api/v1/enhanced/stream"], ["--hot", "999"]])  # fmt: skip
def test_arguments_that_would_run_forever_or_elsewhere_are_refused(argv: list[str]) -> None:
    loadtest = load_script("loadtest")
    with pytest.raises(SystemExit) as refused:
        loadtest.parse_args(argv)
    assert refused.value.code == 2


def test_percentiles_are_nearest_rank_and_absent_when_nothing_was_measured() -> None:
    loadtest = load_script("loadtest")
    assert loadtest.percentiles([float(v) for v in range(1, 101)]) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert loadtest.percentiles([1.0, 2.0])["p50"] == 1.0
    assert loadtest.percentiles([]) == {"p50": None, "p95": None, "p99": None}


def test_a_run_in_which_no_stream_finished_exits_non_zero() -> None:
    """Usable as a CI gate: every request failing (here: nothing listening) is exit code 1."""
    loadtest = load_script("loadtest")
    assert loadtest.main(["--url", f"http://127.0.0.1:{free_port()}", "-c", "1", "-n", "2", "--no-progress",
                          "--json"]) == 1


DONE = b"event: done\ndata: {}\n\n"


@pytest.mark.parametrize("answer", [
    _chunked(DONE)[:-2] + b"X-Checksum: 1\r\n\r\n",  # chunked, with a trailer field
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(DONE), DONE),
])  # fmt: skip
async def test_a_stream_in_any_http_11_framing_is_read_and_the_connection_kept(answer: bytes) -> None:
    """A proxy may buffer the stream into one Content-Length body, or add trailers: still one
    completed stream each, and the next request on the same connection reads its own answer."""
    loadtest = load_script("loadtest")
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "3", "--no-progress"]))
    assert (report["completed"], report["errors"]) == (3, {})


async def test_a_stream_that_ends_where_the_connection_does_is_read() -> None:
    """HTTP/1.0 (or no length and no chunking): the body runs until the server closes."""
    loadtest = load_script("loadtest")
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + DONE
    async with RawServer(answer, close=True) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "3", "--no-progress"]))
    assert (report["completed"], report["errors"]) == (3, {})


async def test_a_kept_alive_connection_the_server_closed_while_idle_is_reopened_not_a_disconnect() -> None:
    """A server closing connections idle for 0.1 s (its keep-alive timeout), a client pacing one
    request every 0.25 s: each finds its connection closed and opens a new one, as clients do."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(DONE), idle_close=0.1) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-d", "1.1", "--rate", "4",
                                                         "--no-progress"]))
    assert report["completed"] >= 4 and report["errors"] == {}
    assert report["reopened"] >= 3


async def test_a_request_the_server_took_and_dropped_is_a_disconnect_never_sent_again() -> None:
    """A server that reads a connection's second request and closes without answering: that is a
    failure to report, and re-sending it would double the server's work (it did: 1,058 received
    for 527 counted, and no error)."""
    loadtest = load_script("loadtest")
    server = RawServer(_chunked(DONE), drop_second=True)
    async with server as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "6", "--no-progress"]))
    assert report["errors"] == {"disconnect": 3} and report["completed"] == 3
    assert server.requests == report["sent"] == 6


async def test_a_server_that_closes_mid_answer_is_a_disconnect() -> None:
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(b"event: context\ndata: {}\n\n", DONE)[:-30], close=True) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "2", "--no-progress"]))
    assert report["errors"] == {"disconnect": 2} and report["ttfe_ms"]["p50"] is not None


async def test_a_200_that_is_not_an_event_stream_is_an_error() -> None:
    loadtest = load_script("loadtest")
    answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "2", "--no-progress"]))
    assert report["errors"] == {"not_event_stream": 2}


async def test_a_paced_run_counts_the_wait_behind_a_stall_in_every_request_that_waited() -> None:
    """Coordinated omission: one answer stalls 0.6 s in a run paced at one request per 50 ms. The
    twelve requests due during the stall all waited; counted from when they were sent, eleven
    of them look fast. Counted from their schedule, the slow share shows in p95."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(DONE), first_delay=0.6) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-d", "1.2", "--rate", "20",
                                                         "--no-progress"]))
    assert report["completed"] >= 20
    assert report["ttd_ms"]["p95"] >= 300 and report["ttd_from_send_ms"]["p95"] < 300
    assert "scheduled start" in loadtest.render(report)


async def test_a_rate_no_server_reaches_holds_no_queue_of_due_starts() -> None:
    """--rate 1e6 for a second against one connection: the starts it could not send are counted
    (unsent), not queued one by one (the queue grew a million entries a second, and --rate inf
    filled the machine's memory without ever yielding)."""
    loadtest = load_script("loadtest")
    tracemalloc.start()
    try:
        async with RawServer(_chunked(DONE)) as url:
            report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-d", "1", "--rate", "1e6",
                                                             "--no-progress"]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # bytes: a queue of a million floats alone was ~50 MB
    assert report["completed"] > 0 and report["unsent"] > 500_000
    assert report["unsent"] + report["sent"] + report["cut_at_end"] <= 1_000_000


async def test_n_requests_with_a_rate_and_a_warm_up_measures_n() -> None:
    """-n 50 --warmup 1 --rate 1000 on 32 connections measured 82: clients that had checked the
    budget during the warm-up sent afterwards, counted, without it."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(DONE)) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "32", "-n", "50", "--warmup", "0.5",
                                                         "--rate", "1000", "--no-progress"]))
    assert report["requests"] == 50 and report["completed"] == 50


async def test_no_more_requests_are_cut_at_the_end_than_there_are_connections() -> None:
    """The loop's timers fire up to a millisecond early: each client began request after request
    in the run's last instant, each cut at once (5-13 "in flight" with -c 4)."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(b"event: context\ndata: {}\n\n")[:-5], stall=True) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "4", "-d", "1", "--no-progress"]))
    assert report["cut_at_end"] == 4


async def test_a_stream_that_sends_done_but_never_ends_keeps_its_result_and_says_so() -> None:
    """`done` arrived, then the response stayed open: the result used to be lost to a timeout."""
    loadtest = load_script("loadtest")
    async with RawServer(_chunked(DONE)[:-5], stall=True) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "2", "-d", "2", "--timeout", "0.5",
                                                         "--no-progress"]))
    # Each connection closed after its timeout, a new one opened: about four each in the 2 s.
    assert report["completed"] == report["requests"] == report["errors"]["open_after_done"] >= 4
    assert report["ttd_ms"]["p50"] is not None


async def test_a_refusal_with_an_event_stream_body_is_one_error_and_no_timing() -> None:
    """A 503 whose body is events (a gateway overloaded before its stream began) counted twice
    (http_503 and event_overloaded), and its event's time went into the first-event percentiles."""
    loadtest = load_script("loadtest")
    body = b'event: error\ndata: {"code": "overloaded"}\n\n'
    answer = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n"
              b"\r\n%s" % (len(body), body))
    async with RawServer(answer) as url:
        report = await loadtest.run(loadtest.parse_args(["--url", url, "-c", "1", "-n", "3", "--no-progress"]))
    assert report["errors"] == {"http_503": 3} and report["ttfe_ms"]["p50"] is None


async def test_ctrl_c_counts_the_requests_it_cut_short() -> None:
    """Streams in flight when Ctrl-C came were in no count: sent, never answered, not cut."""
    async with RawServer(_chunked(b"event: context\ndata: {}\n\n")[:-5], stall=True) as url:
        command = [sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--url", url, "-c", "2", "-d", "30",
                   "--no-progress"]  # fmt: skip
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)  # fmt: skip
        await asyncio.sleep(1.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report["interrupted"] is True and report["sent"] == report["cut_at_end"] == 2, stderr.decode()
