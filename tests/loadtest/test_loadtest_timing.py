"""`evalkit loadtest` against servers whose timing is known: what it reports is what the server was told to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loadtest.conftest import loadtest_cli
from tests.loadtest.timed_server import TimedServer

TTFT, ITL, TOKENS = 0.4, 0.04, 16
"""Long enough that a busy shared machine's scheduling delays (tens of ms) stay well inside the 10% tolerance."""
E2E = TTFT + (TOKENS - 1) * ITL


def within(measured: float, expected: float, share: float = 0.10) -> bool:
    return abs(measured - expected) <= share * expected


@pytest.mark.parametrize("protocol", ["openai_chat", "anthropic_messages"])
async def test_reported_ttft_itl_and_throughput_match_the_servers_timing(tmp_path: Path, protocol: str) -> None:
    async with TimedServer(ttft=TTFT, itl=ITL, tokens=TOKENS, cache_hit_share=0.25) as server:
        run = await loadtest_cli(
            "--endpoint", server.url, "--model", "m", "--protocol", protocol, "--loads", "1,3",
            "--max-requests", "9", "--prompt-tokens", "64", "--output-tokens", str(TOKENS), out=tmp_path / "out",
        )
    assert run.code == 0, run.stderr
    report = run.report
    assert [s["load"] for s in report["steps"]] == [1, 3]
    for step in report["steps"]:
        assert step["requests"] == step["completed"] == 9 and step["errors"] == {}
        assert within(step["ttft_ms"]["p50"], TTFT * 1000), step["ttft_ms"]
        assert within(step["itl_ms"]["p50"], ITL * 1000), step["itl_ms"]
        assert within(step["tpot_ms"]["mean"], ITL * 1000), step["tpot_ms"]
        assert within(step["e2e_ms"]["p50"], E2E * 1000), step["e2e_ms"]
        # closed loop: `load` streams at once, each TOKENS tokens per E2E seconds
        assert within(step["output_tokens_per_sec"], step["load"] * TOKENS / E2E), step["output_tokens_per_sec"]
        assert within(step["requests_per_sec"], step["load"] / E2E), step["requests_per_sec"]
        assert step["prefix_cache_hit_rate"] == pytest.approx(0.25, abs=0.01)
        assert step["per_replica"] == {server.url: {"requests": 9, "errors": 0, "share": 1.0}}
    assert len(server.arrivals) == 18
    assert all(a.body["max_tokens"] == TOKENS and a.body["model"] == "m" for a in server.arrivals)
    assert len({str(a.body["messages"]) for a in server.arrivals}) == 18, "every synthetic prompt starts uniquely"
    assert report["saturation"] == {"detected": False, "at_load": None, "reasons": []}
    assert (run.out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TTFT p50/p99 ms" in run.stderr and "loadtest.json" in run.stderr


async def test_a_fixed_rate_is_offered_and_poisson_arrivals_average_it(tmp_path: Path) -> None:
    async with TimedServer(ttft=0.02, itl=0.005, tokens=4) as server:
        fixed = await loadtest_cli("--endpoint", server.url, "--model", "m", "--arrival", "rate", "--loads", "20",
                                   "--max-requests", "20", out=tmp_path / "rate")
        gaps = [b.received - a.received for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
        server.arrivals.clear()
        poisson = await loadtest_cli("--endpoint", server.url, "--model", "m", "--arrival", "poisson", "--loads", "20",
                                     "--max-requests", "40", out=tmp_path / "poisson")
        arrivals = [a.received for a in server.arrivals]
    assert fixed.code == 0 and poisson.code == 0, fixed.stderr + poisson.stderr
    assert within(sorted(gaps)[len(gaps) // 2], 1 / 20, 0.2), gaps  # one every 50 ms
    assert within((arrivals[-1] - arrivals[0]) / (len(arrivals) - 1), 1 / 20, 0.5)  # exponential gaps, mean 50 ms
    poisson_gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    assert poisson_gaps[-1] > 3 * poisson_gaps[len(poisson_gaps) // 2], "Poisson gaps vary; a fixed rate's do not"
    for run in (fixed, poisson):
        assert run.report["steps"][0]["errors"] == {} and run.report["saturation"]["detected"] is False


async def test_a_server_that_queues_is_reported_as_saturated(tmp_path: Path) -> None:
    # Two requests generated at once, the rest queue: past load 2, throughput stays flat and TTFT is queueing.
    async with TimedServer(ttft=0.03, itl=0.01, tokens=6, slots=2) as server:
        run = await loadtest_cli("--endpoint", server.url, "--model", "m", "--loads", "1,2,4,8",
                                 "--max-requests", "16", out=tmp_path / "out")
    assert run.code == 0, run.stderr
    saturation = run.report["saturation"]
    assert saturation["detected"] is True and saturation["at_load"] == 4, saturation
    assert any("throughput stopped growing" in r for r in saturation["reasons"]), saturation
    assert any("queueing dominates TTFT" in r for r in saturation["reasons"]), saturation
    assert "over-saturation:" in run.stderr


async def test_several_endpoints_share_the_load_and_servers_without_metrics_give_no_cache_rate(tmp_path: Path) -> None:
    async with TimedServer("a", ttft=0.01, itl=0.002, tokens=3) as a, TimedServer("b", ttft=0.01, itl=0.002, tokens=3) as b:
        run = await loadtest_cli("--endpoint", a.url, "--endpoint", b.url, "--model", "m", "--loads", "4",
                                 "--max-requests", "20", out=tmp_path / "out")
    assert run.code == 0, run.stderr
    step = run.report["steps"][0]
    assert step["per_replica"] == {a.url: {"requests": 10, "errors": 0, "share": 0.5},
                                   b.url: {"requests": 10, "errors": 0, "share": 0.5}}
    assert len(a.arrivals) == len(b.arrivals) == 10


async def test_an_offered_rate_the_server_cannot_keep_up_with_is_reported(tmp_path: Path) -> None:
    # One request at a time, 60 ms each (16/s at most), offered 40/s: the queue grows through the step.
    async with TimedServer(ttft=0.03, itl=0.01, tokens=4, slots=1) as server:
        run = await loadtest_cli("--endpoint", server.url, "--model", "m", "--arrival", "rate", "--loads", "40",
                                 "--max-requests", "30", out=tmp_path / "out")
    assert run.code == 0, run.stderr
    step, saturation = run.report["steps"][0], run.report["saturation"]
    assert within(step["sent_per_sec"], 40, 0.2) and step["requests_per_sec"] < 20
    assert saturation["detected"] is True and saturation["at_load"] == 40
    assert "a queue builds, the server cannot keep up" in saturation["reasons"][0]
