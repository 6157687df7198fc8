"""The benchmark judges each of the load-testing issue's targets from its own numbers."""

from __future__ import annotations

from typing import Any

from tests.test_loadtest import load_script


def run(name: str, requests_per_s: float, *, ttfe_p99: float = 1.0, done_p99: float = 2.0) -> dict[str, Any]:
    paced = {"ttfe_ms": {"p99": ttfe_p99}, "ttd_ms": {"p99": done_p99}}
    return {"scenario": name, "requests_per_s": requests_per_s, "paced_rate": 1000, "paced": paced}


def test_each_target_is_met_or_missed_by_its_own_number() -> None:
    bench = load_script("bench")
    lines = bench.verdicts([
        run("floor", 4000),
        run("hit", 2000, ttfe_p99=12.0, done_p99=20.0),  # exactly 0.5x; TTFE over 10 ms
        run("hit-untraced", 2100),  # tracing costs 1 - 2000/2100 = 4.8%
        run("miss", 1000),  # 0.25x
        run("full-hit", 1300),  # 0.325x
        run("full-hit-untraced", 1500),  # tracing costs 13%
    ])
    verdict = {line.split("  ")[0].removeprefix("target "): line.split()[-1] for line in lines}
    assert verdict == {
        "hit >= 0.5x floor": "met",
        "miss >= 0.35x floor": "MISSED",
        "hit TTFE p99 <= 10 ms": "MISSED",
        "hit done p99 <= 50 ms": "met",
        "full-hit >= 0.3x floor": "met",
        "tracing costs < 10% (hit vs untraced)": "met",
        "tracing costs < 10% (full-hit vs untraced)": "MISSED",
    }


def test_rounds_report_the_median_run_with_every_rounds_throughput() -> None:
    bench = load_script("bench")
    runs = [run("hit", 3000, ttfe_p99=9.0), run("hit", 2000, ttfe_p99=7.0), run("hit", 2500, ttfe_p99=8.0)]
    median = bench.median_run(runs)
    assert median["requests_per_s"] == 2500 and median["paced"]["ttfe_ms"]["p99"] == 8.0
    assert median["rounds_requests_per_s"] == [3000, 2000, 2500]
    assert bench.median_run(runs[:2])["requests_per_s"] == 2000  # even count: the lower middle
