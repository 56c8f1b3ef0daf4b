"""1,000 concurrent replayed agent trials through the evalkit gateway, and the same through LiteLLM's own proxy.

    .venv/bin/python benchmarks/perf/loadtest.py [--trials 1000] [--light 50] [--duration 40] [--out result.json]

1. Records agent trials through a real evalkit gateway (host-side scripted agents, the real `openai` and
   `anthropic` SDKs, tools, growing tool outputs): 20 OpenAI-chat trials and 20 Anthropic-messages trials, 12 calls
   each, the request growing from ~8 KiB to past 100 KiB, think-times of 0.3–1.5 s between calls.
2. Replays them with `evalkit loadtest` (this process is the load generator, uvloop) at `--light` and at `--trials`
   concurrent trials, against one fake OpenAI/Anthropic upstream in its own process
   (tests/loadtest/timed_server.py: first token after 50 ms, then 64 tokens 10 ms apart), along three paths:
     direct  — straight to the upstream: the client's own cost and latency, the baseline;
     gateway — through an evalkit gateway that `evalkit loadtest` starts (`llm_api`; in processes of its own);
     litellm — through LiteLLM's proxy server (`litellm --config`, the pinned LiteLLM with its `proxy` extra, in a
               throwaway venv under ~/.cache/evalkit/, installed here on first use — never in the project's venv),
               warmed up with `--warmup` s of unmeasured calls (its first calls import most of LiteLLM), then one
               sweep per load so its process tree's CPU and memory are read around each step.
   OpenAI trials show pass-through; Anthropic trials against the OpenAI-only upstream show translation
   (gateway: Anthropic → OpenAI; LiteLLM: its /v1/messages adapter). Direct Anthropic trials use the upstream's
   native /v1/messages.
3. Prints one JSON document: achieved requests/s, CPU ms per request and per streamed event of the gateway /
   proxy process tree (and of the client), peak memory, latency percentiles and p99 added latency (vs direct
   at the same load), and the issue's targets checked. Ratios come from this one run.

Bounded: every step stops sending after `--duration` s (and `--max-requests`); a run takes about
6 × (2 × duration + drain) + 2 × warm-up + start-ups: ~10–15 minutes at the defaults (plus a few minutes for
the first LiteLLM proxy install). All traffic stays on 127.0.0.1; every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import orjson  # noqa: E402
import uvloop  # noqa: E402

from evalkit.gateway.trajectory import read_trajectory  # noqa: E402
from evalkit.gateway import Gateway, LLMApiConfig  # noqa: E402
from evalkit.loadtest.config import load_loadtest_config  # noqa: E402
from evalkit.loadtest.procstat import tree_usage  # noqa: E402
from evalkit.loadtest.runner import run_loadtest  # noqa: E402

MODEL = "bench-model"
UPSTREAM_TIMING = (0.05, 0.01, 64)
"""Fake upstream: first token after 50 ms, then one every 10 ms, 64 tokens."""
RECORDED_TRIALS, CALLS_PER_TRIAL = 20, 12
SYSTEM_BYTES, TOOL_OUTPUT_BYTES = 8 * 1024, 10 * 1024
THINK_SEC = (0.3, 1.5)
CACHE = Path.home() / ".cache" / "evalkit"
PROXY_START_TIMEOUT_SEC = 180
WARMUP_TRIALS = 2
RECORD_TIMEOUT = 120.0
"""The recording's clients wait long (and retry): on a shared machine under heavy load a connect can take seconds."""
PROXY_KEY_ENV = "EVALKIT_BENCH_LITELLM_KEY"
"""LiteLLM's proxy refuses to start without a master key; a random one, handed to the load test by variable."""


def litellm_pin() -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.lower().startswith("litellm=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit("requirements.lock pins no litellm")


def litellm_proxy_python() -> Path:
    """The throwaway venv with `litellm[proxy]==<pin>`; created (minutes) on first use, a stamp marks it done."""
    pin = litellm_pin()
    venv = CACHE / f"litellm-proxy-{pin}"
    python, stamp = venv / "bin" / "python", venv / ".evalkit-installed"
    if stamp.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    print(f"installing litellm[proxy]=={pin} into {venv} (first use only)…", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={pin}"], check=True)
    stamp.write_text(pin + "\n")
    return python


# ------------------------------------------------------------------------------------------------ recording

TOOLS_OPENAI = [{"type": "function", "function": {
    "name": "bash", "description": "Run a shell command in the task's container.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
TOOLS_ANTHROPIC = [{"name": "bash", "description": "Run a shell command in the task's container.",
                    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                                     "required": ["command"]}}]


def _text(rng: random.Random, size: int) -> str:
    words = ["build", "test", "error", "file", "line", "return", "value", "import", "module", "config", "the", "a"]
    out, n = [], 0
    while n < size:
        word = rng.choice(words)
        out.append(word)
        n += len(word) + 1
    return " ".join(out)[:size]


async def _openai_trial(access: Any, rng: random.Random) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=access.base_url, api_key=access.api_key, max_retries=2, timeout=RECORD_TIMEOUT)
    messages: list[dict[str, Any]] = [{"role": "system", "content": _text(rng, SYSTEM_BYTES)},
                                      {"role": "user", "content": "Fix the failing test in /app."}]
    try:
        for turn in range(CALLS_PER_TRIAL):
            stream = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS_OPENAI,
                                                          stream=True, max_tokens=1024)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            call_id = f"call_{turn}"
            messages.append({"role": "assistant", "content": text, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "bash", "arguments": '{"command":"make test"}'}}]})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": _text(rng, TOOL_OUTPUT_BYTES)})
            await asyncio.sleep(rng.uniform(*THINK_SEC))
    finally:
        await client.close()


async def _anthropic_trial(access: Any, rng: random.Random) -> None:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=access.anthropic_base_url, api_key=access.api_key, max_retries=2,
                                      timeout=RECORD_TIMEOUT)
    system = [{"type": "text", "text": _text(rng, SYSTEM_BYTES), "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test in /app."}]
    try:
        for turn in range(CALLS_PER_TRIAL):
            async with client.messages.stream(model=MODEL, system=system, messages=messages, tools=TOOLS_ANTHROPIC,
                                              max_tokens=1024) as stream:
                text = "".join([t async for t in stream.text_stream])
            tool_id = f"toolu_{turn}"
            messages.append({"role": "assistant", "content": [
                {"type": "text", "text": text},
                {"type": "tool_use", "id": tool_id, "name": "bash", "input": {"command": "make test"}}]})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool_id, "content": _text(rng, TOOL_OUTPUT_BYTES)}]})
            await asyncio.sleep(rng.uniform(*THINK_SEC))
    finally:
        await client.close()


async def record(root: Path, upstream_url: str) -> dict[str, Path]:
    """Two job directories of trajectories written by a real gateway: `openai` and `anthropic`."""
    config = LLMApiConfig(model=MODEL, deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream_url}])
    jobs = {"openai": root / "recorded-openai", "anthropic": root / "recorded-anthropic"}
    async with Gateway.serve(config, job_name="bench-record", artifacts_dir=root / "artifacts") as gateway:
        trials = []
        for protocol, job in jobs.items():
            for i in range(RECORDED_TRIALS):
                access = await gateway.open_trial(f"{protocol}-{i}", job / f"t{i}__0" / "agent" / "litellm-trajectory.jsonl")
                run = _openai_trial if protocol == "openai" else _anthropic_trial
                trials.append((access, run(access, random.Random(f"{protocol}{i}"))))
        async with asyncio.TaskGroup() as group:
            for _, coroutine in trials:
                group.create_task(coroutine)
        for access, _ in trials:
            await gateway.close_trial(access.api_key)
    return jobs


# ----------------------------------------------------------------------------------------------- processes


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=out, start_new_session=True, cwd=REPO,
                                env={**os.environ, **(env or {})})


def stop(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def start_litellm_proxy(python: Path, upstream_url: str, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = work / "litellm-proxy.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": f"hosted_vllm/{MODEL}", "api_base": upstream_url}}],
        "litellm_settings": {"drop_params": True, "set_verbose": False},
    }))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = start([str(python), "-m", "litellm.proxy.proxy_cli", "--config", str(config), "--host", "127.0.0.1",
                     "--port", str(port), "--num_workers", "1"], work / "litellm-proxy.log",
                    env={"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DISABLE_ADMIN_UI": "True",
                         "LITELLM_MASTER_KEY": os.environ[PROXY_KEY_ENV]})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + PROXY_START_TIMEOUT_SEC
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join((work / "litellm-proxy.log").read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"litellm proxy exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/health/liveliness", timeout=2) as response:
                if response.status == 200:
                    return process, url + "/v1"
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise SystemExit(f"litellm proxy did not answer within {PROXY_START_TIMEOUT_SEC} s")


# ---------------------------------------------------------------------------------------------------- runs


async def replay(job: Path, out: Path, loads: list[int], args: argparse.Namespace, *,
                 endpoint: str, via_gateway: bool, measure_pid: int | None, key_env: str | None = None,
                 duration: float | None = None) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "model": MODEL, "replay": {"jobs": [str(job)]}, "loads": loads, "duration_sec": duration or args.duration,
        "max_requests": args.max_requests, "prefix_cache_metrics": False, "output_dir": str(out),
        "request_timeout_sec": 300, "api_key_env": key_env,
    }
    if via_gateway:
        overrides["llm_api"] = {"model": MODEL, "max_retries": 0,
                                "deployments": [{"model": f"hosted_vllm/{MODEL}", "api_base": endpoint}]}
    else:
        overrides["endpoints"] = [endpoint]
    config = load_loadtest_config(None, overrides)
    before = tree_usage(measure_pid) if measure_pid else None
    report = await run_loadtest(config)
    result: dict[str, Any] = {"steps": [s.model_dump(mode="json") for s in report.steps],
                              "saturation": report.saturation.model_dump(mode="json")}
    if before is not None:  # a proxy this script started: charged for the sweep it served
        after = tree_usage(measure_pid)
        requests = sum(s.requests for s in report.steps)
        events = sum(s.events for s in report.steps)
        result["proxy_cpu_ms_per_request"] = (after.cpu_sec - before.cpu_sec) * 1000 / max(1, requests)
        result["proxy_cpu_ms_per_event"] = (after.cpu_sec - before.cpu_sec) * 1000 / max(1, events)
        result["proxy_peak_rss_mib"] = after.peak_rss_mib
    return result


def summary(path: str, run: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for step in run["steps"]:
        server = step["gateway"] or {}
        rows.append({
            "path": path, "trials": step["load"], "requests": step["requests"], "completed": step["completed"],
            "errors": step["errors"], "requests_per_sec": round(step["requests_per_sec"], 1),
            "output_tokens_per_sec": round(step["output_tokens_per_sec"]),
            "e2e_ms_p50": step["e2e_ms"] and round(step["e2e_ms"]["p50"], 1),
            "e2e_ms_p99": step["e2e_ms"] and round(step["e2e_ms"]["p99"], 1),
            "ttft_ms_p50": step["ttft_ms"] and round(step["ttft_ms"]["p50"], 1),
            "ttft_ms_p99": step["ttft_ms"] and round(step["ttft_ms"]["p99"], 1),
            "client_cpu_ms_per_request": round(step["client"]["cpu_ms_per_request"] or 0, 3),
            "server_cpu_ms_per_request": server.get("cpu_ms_per_request") and round(server["cpu_ms_per_request"], 3),
            "server_cpu_ms_per_event": server.get("cpu_ms_per_event") and round(server["cpu_ms_per_event"], 4),
            "server_peak_rss_mib": server.get("peak_rss_mib") and round(server["peak_rss_mib"], 1),
            "trials_on_several_replicas": step["trials_on_several_replicas"],
        })
    if "proxy_cpu_ms_per_request" in run:  # LiteLLM: its sweep is one step
        for row in rows:
            row["server_cpu_ms_per_request"] = round(run["proxy_cpu_ms_per_request"], 3)
            row["server_cpu_ms_per_event"] = round(run["proxy_cpu_ms_per_event"], 4)
            row["server_peak_rss_mib"] = round(run["proxy_peak_rss_mib"], 1)
    return rows


async def main(args: argparse.Namespace) -> dict[str, Any]:
    proxy_python = litellm_proxy_python()
    os.environ[PROXY_KEY_ENV] = "sk-" + secrets.token_hex(24)
    work = Path(tempfile.mkdtemp(prefix="evalkit-bench-loadtest-"))
    upstream = start([sys.executable, str(REPO / "tests" / "loadtest" / "timed_server.py"),
                      *map(str, UPSTREAM_TIMING)], work / "upstream.log")
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        assert upstream.stdout is not None
        upstream_url = upstream.stdout.readline().decode().strip()
        jobs = await record(work, upstream_url)
        largest_request = max(
            len(orjson.dumps(call.get("request")))
            for job in jobs.values() for path in job.glob("*/agent/litellm-trajectory.jsonl")
            for call in read_trajectory(path)
        )
        loads = [args.light, args.trials]
        for protocol, job in jobs.items():
            rows += summary(f"direct/{protocol}", await replay(
                job, work / f"direct-{protocol}", loads, args, endpoint=upstream_url, via_gateway=False,
                measure_pid=None))
            rows += summary(f"gateway/{protocol}", await replay(
                job, work / f"gateway-{protocol}", loads, args, endpoint=upstream_url, via_gateway=True,
                measure_pid=None))
            shutil.rmtree(work / f"gateway-{protocol}" / "gateway" / "trials", ignore_errors=True)
            proxy, proxy_url = start_litellm_proxy(proxy_python, upstream_url, work)
            try:
                # Its first calls import most of LiteLLM (seconds each): warm it up, unmeasured, before the steps.
                await replay(job, work / f"litellm-{protocol}-warmup", [WARMUP_TRIALS], args, endpoint=proxy_url,
                             via_gateway=False, measure_pid=None, key_env=PROXY_KEY_ENV, duration=args.warmup)
                for load in loads:  # one sweep per load: the proxy's CPU and memory are read around each
                    rows += summary(f"litellm/{protocol}", await replay(
                        job, work / f"litellm-{protocol}-{load}", [load], args, endpoint=proxy_url,
                        via_gateway=False, measure_pid=proxy.pid, key_env=PROXY_KEY_ENV))
            finally:
                stop(proxy)
    finally:
        stop(upstream)
        shutil.rmtree(work, ignore_errors=True)

    def row(path: str, trials: int) -> dict[str, Any]:
        return next(r for r in rows if r["path"] == path and r["trials"] == trials)

    checks: dict[str, Any] = {}
    for protocol, kind in (("openai", "passthrough"), ("anthropic", "translated")):
        gw, lt, direct = (row(f"{p}/{protocol}", args.trials) for p in ("gateway", "litellm", "direct"))
        light_gw, light_direct = row(f"gateway/{protocol}", args.light), row(f"direct/{protocol}", args.light)
        checks[kind] = {
            "gateway_vs_litellm_requests_per_sec": round(gw["requests_per_sec"] / max(lt["requests_per_sec"], 1e-9), 2),
            "gateway_cpu_ms_per_request_vs_direct_client": round(
                gw["server_cpu_ms_per_request"] / max(direct["client_cpu_ms_per_request"], 1e-9), 2),
            "gateway_cpu_ms_per_event": gw["server_cpu_ms_per_event"],
            "p99_added_latency_ms": {
                f"at {args.light} trials": round(light_gw["e2e_ms_p99"] - light_direct["e2e_ms_p99"], 1),
                f"at {args.trials} trials": round(gw["e2e_ms_p99"] - direct["e2e_ms_p99"], 1),
            },
            "gateway_peak_rss_mib": {f"at {args.light} trials": light_gw["server_peak_rss_mib"],
                                     f"at {args.trials} trials": gw["server_peak_rss_mib"]},
        }
    checks["targets"] = {
        "gateway >= 5x litellm proxy requests/s at 1000 trials (passthrough)":
            checks["passthrough"]["gateway_vs_litellm_requests_per_sec"] >= 5,
        "gateway >= 5x litellm proxy requests/s at 1000 trials (translated)":
            checks["translated"]["gateway_vs_litellm_requests_per_sec"] >= 5,
        "passthrough CPU/request <= 2x direct client's": checks["passthrough"]["gateway_cpu_ms_per_request_vs_direct_client"] <= 2,
        "translated streaming <= 0.05 ms CPU/event (total CPU / events: an upper bound)":
            (checks["translated"]["gateway_cpu_ms_per_event"] or 1) <= 0.05,
    }
    return {
        "benchmark": "loadtest",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_at_end": os.getloadavg()},
        "setup": {"recorded_trials_per_protocol": RECORDED_TRIALS, "calls_per_trial": CALLS_PER_TRIAL,
                  "largest_recorded_request_kib": round(largest_request / 1024, 1),
                  "upstream": {"ttft_sec": UPSTREAM_TIMING[0], "itl_sec": UPSTREAM_TIMING[1], "tokens": UPSTREAM_TIMING[2]},
                  "loads": [args.light, args.trials], "duration_sec_per_step": args.duration,
                  "litellm": litellm_pin()},
        "runs": rows,
        "checks": checks,
        "wall_sec": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000, help="concurrent replayed trials (the heavy step)")
    parser.add_argument("--light", type=int, default=50, help="concurrent trials of the light step")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds each step sends")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of unmeasured calls to a fresh proxy")
    parser.add_argument("--max-requests", type=int, default=40_000, help="requests per step at most")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    arguments = parser.parse_args()
    result = uvloop.run(main(arguments))
    text = json.dumps(result, indent=2)
    print(text)
    if arguments.out:
        arguments.out.write_text(text + "\n")
