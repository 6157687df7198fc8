"""The benchmark judges each of the load-testing issue's targets from its own numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_loadtest import load_script


def run(name: str, requests_per_s: float, *, ttfe_p99: float | None = 1.0,
        done_p99: float | None = 2.0) -> dict[str, Any]:
    paced = {"ttfe_ms": {"p99": ttfe_p99}, "ttd_ms": {"p99": done_p99}, "requests_per_s": 1000.0}
    return {"scenario": name, "requests_per_s": requests_per_s, "paced_rate": 1000, "paced": paced}


def test_each_target_is_met_or_missed_by_its_own_number() -> None:
    bench = load_script("bench")
    lines = bench.verdicts([
        run("floor", 4000),
        run("hit", 2000, ttfe_p99=12.0, done_p99=20.0),  # exactly 0.5x; TTFE over 10 ms
        run("hit-untraced", 2100),  # tracing costs 1 - 2000/2100 = 4.8%
        run("miss", 1000),  # 0.25x
        run("mixed", 1500, ttfe_p99=8.0, done_p99=60.0),  # first events in time; done too late
        run("full-hit", 1300),  # 0.325x
        run("full-hit-untraced", 1500),  # tracing costs 13%
    ])
    verdict = {line.split("  ")[0].removeprefix("target "): line.split()[-1] for line in lines}
    assert verdict == {
        "hit >= 0.5x floor": "met",
        "miss >= 0.35x floor": "MISSED",
        "hit TTFE p99 <= 10 ms": "MISSED",
        "hit done p99 <= 50 ms": "met",
        "mixed TTFE p99 <= 10 ms": "met",
        "mixed done p99 <= 50 ms": "MISSED",
        "full-hit >= 0.3x floor": "met",
        "tracing costs < 10% (hit vs untraced)": "met",
        "tracing costs < 10% (full-hit vs untraced)": "MISSED",
    }


def test_a_paced_run_that_measured_nothing_misses_its_latency_targets() -> None:
    """No stream answered (the server down): no p99 at all, which must not read as 0 ms, met.
    A floor that served nothing gives no ratios rather than a division by zero."""
    bench = load_script("bench")
    lines = bench.verdicts([run("floor", 0), run("hit", 0, ttfe_p99=None, done_p99=None)])
    assert [line.split() for line in lines] == [
        ["target", "hit", "TTFE", "p99", "<=", "10", "ms", "no", "data", "MISSED"],
        ["target", "hit", "done", "p99", "<=", "50", "ms", "no", "data", "MISSED"],
    ]


def test_slices_add_up_to_one_throughput_with_the_median_slices_latency() -> None:
    bench = load_script("bench")

    def part(completed: int, seconds: float, p99: float, walk_end: int, **errors: int) -> dict[str, Any]:
        return {"completed": completed, "requests": completed + sum(errors.values()), "duration_s": seconds,
                "requests_per_s": completed / seconds, "errors": errors, "ttd_ms": {"p99": p99},
                "walk_end": walk_end, "embedded_runs": {"static": completed, "minilm": walk_end},
                "sent": completed + sum(errors.values()) + 64, "cut_at_end": 64, "oldest_cut_ms": p99 * 2,
                "reopened": 1, "interrupted": False, "retry_after_waits": 2, "unsent": None}

    combined = bench.combine([
        part(3000, 2.0, 9.0, 10), part(2000, 2.0, 7.0, 20, http_503=2), part(2500, 2.0, 8.0, 30, timeout=1),
    ])
    assert combined["embedded_runs"] == {"static": 7500, "minilm": 60}
    assert combined["requests_per_s"] == 1250.0  # 7,500 done in 6 s, not the mean of the rates
    assert combined["completed"] == 7500 and combined["requests"] == 7503
    assert combined["errors"] == {"http_503": 2, "timeout": 1}
    assert combined["ttd_ms"]["p99"] == 8.0  # the median slice's
    assert combined["slices_requests_per_s"] == [1500.0, 1000.0, 1250.0]
    assert combined["walk_end"] == 30  # the next run's misses continue from the last slice
    # Counts add up over the slices (they were the median slice's); the oldest is the oldest.
    assert (combined["sent"], combined["cut_at_end"], combined["oldest_cut_ms"]) == (7695, 192, 18.0)
    assert (combined["reopened"], combined["answered_per_s"], combined["interrupted"]) == (3, 1250.5, False)
    assert (combined["retry_after_waits"], combined["unsent"]) == (6, None)  # unpaced: no schedule


def test_the_table_says_how_many_escalations_the_fast_tier_answered_under_load() -> None:
    """Misses that skip MiniLM under load are faster and less accurate: the run must say so."""
    bench = load_script("bench")
    busy = run("miss", 1000)
    busy["saturated"] = {**busy["paced"], "requests_per_s": 1000, "ttd_ms": {"p50": 3.0, "p99": 40.0},
                         "errors": {}, "embedded_runs": {"static": 870, "minilm": 30, "static_busy": 90}}
    busy["paced"] = {**busy["paced"], "ttfe_ms": {"p50": 1.0, "p99": 5.0}, "ttd_ms": {"p50": 2.0, "p99": 30.0},
                     "errors": {}, "embedded_runs": {"static": 880, "minilm": 120}}
    floor = run("floor", 4000)
    floor["saturated"] = {**busy["saturated"], "embedded_runs": {}}
    floor["paced"] = {**busy["paced"], "embedded_runs": {}}
    floor["description"] = busy["description"] = "-"
    table = bench.render([floor, busy], 1000)
    assert "miss              saturated 90 of 120 (75%), paced 0 of 120 (0%)" in table
    assert "floor             saturated" not in table
    del busy["paced"]["embedded_runs"]  # the server's counters did not come
    assert "miss              saturated 90 of 120 (75%), paced not read" in bench.render([floor, busy], 1000)
    busy["paced"]["embedded_runs"] = {"static": 700}
    assert "paced none wanted MiniLM" in bench.render([floor, busy], 1000)


def test_the_run_names_its_machine_and_commit() -> None:
    """Ratios move with the machine (2-3x between stops here): every run says what it ran on."""
    bench = load_script("bench")
    machine = bench.machine_facts()
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert machine["python"].count(".") == 2 and machine["cpu_model"]
    assert machine["commit"] is None or len(machine["commit"]) >= 7
    line = bench.describe(machine)
    assert f"{machine['cpus']} cpus" in line and f"Python {machine['python']}" in line
    assert "busy before the run" not in line
    assert "12% busy before the run" in bench.describe({**machine, "busy_before_start": 0.12})


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux /proc/stat")
def test_the_run_sees_another_process_keeping_a_core_busy() -> None:
    """A spinning process before the run shows as at least most of one core of all of them."""
    bench = load_script("bench")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.1)
        busy = bench.busy_share(0.3)
    finally:
        spinner.kill()
        spinner.wait()
    cpus = os.cpu_count() or 1
    assert busy is not None and 0.8 / cpus <= busy <= 1.0


def test_instruction_counts_are_read_from_the_dump_and_compared_with_the_floor(tmp_path: Path) -> None:
    bench = load_script("bench")
    dump = tmp_path / "hit.out.1"
    dump.write_text("version: 1\ncreator: callgrind-3.19.0\npart: 1\nevents: Ir\nsummary: 0\ntotals: 1733087380\n")
    assert bench.callgrind_total(dump) == 1733087380
    (tmp_path / "empty.out.1").write_text("events: Ir\n")
    with pytest.raises(ValueError, match="no totals"):
        bench.callgrind_total(tmp_path / "empty.out.1")

    def counted(name: str, per_request: int) -> dict[str, Any]:
        return {"scenario": name, "description": name, "instructions_per_request": per_request}

    text = bench.render_instructions([counted("floor", 400_000), counted("hit", 800_000),
                                      counted("hit-untraced", 640_000)])
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:5]}
    assert rows == {"floor": ["400,000", "1.00"], "hit": ["800,000", "0.50"], "hit-untraced": ["640,000", "0.62"]}
    assert "tracing adds +25.0% instructions (hit vs hit-untraced)" in text
