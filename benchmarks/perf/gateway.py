"""What the model gateway costs, against a direct client and LiteLLM's Router, measured in one run on 127.0.0.1.

    .venv/bin/python benchmarks/perf/gateway.py [--duration 0.8] [--rounds 2] [--scale 1000] [--out result.json]

Processes: the fake upstream (tests/gateway/fake_upstream.py, a real OpenAI wire server), a job process that runs
`Gateway.serve` (which starts the gateway process(es) — the CPU measured as "gateway" is theirs, every thread),
and this load generator (uvloop). Variants, each sending agent-sized requests (a tiny one, ~100 KiB and ~780 KiB
conversations of tool calls and tool output) and reading streamed answers:
  direct            — an aiohttp client straight to the upstream, request bytes prepared once (the floor);
  direct_encoding   — the same, but encoding its request each call (what a real agent's client does);
  router            — `litellm.Router.acompletion` in this process (what most harnesses do);
  passthrough       — the gateway, OpenAI chat client to the OpenAI-compatible upstream;
  translated        — the gateway, Anthropic client (Claude-Code-shaped body) to the same upstream (in-house path).
CPU is the client process's for direct*, router; the gateway processes' for the others. Sections:
  requests  — per body size at one concurrency: requests/s, CPU ms per request, p50/p99 and p99 added to direct;
  streaming — CPU per streamed event: the slope between short and long streams, events paced 2 ms apart;
  scale     — `--scale` concurrent trials (one stream each at a time, ~100 KiB bodies, paced events): requests/s,
              p99 added latency, the gateway's CPU per request and peak memory (VmHWM);
  trajectory — bytes on disk for one trial of 100 calls growing to ~200k tokens, v1 (every request whole) against
              v2 (delta lines), and the writer's CPU per call.
Ratios are taken within each round, then the median (this machine's speed drifts). Every run is bounded in time
and requests; all traffic stays on 127.0.0.1. Prints one JSON document (and writes it to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gateway")]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp  # noqa: E402
import msgspec  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402

MODEL = "smollm2"
MAX_REQUESTS_PER_RUN = 50_000
MAX_WINDOW_SEC = 20.0
"""A run's window grows until `concurrency` requests have completed in it, up to this."""
PACED_CHUNK_DELAY_SEC = 0.002
SIZES = {"tiny": 0, "100k": 100 * 1024, "780k": 780 * 1024}

Send = Callable[[int], Awaitable[int]]
"""Sends one request as worker i; returns the number of body reads it took."""


# ------------------------------------------------------------------------------------------------ bodies


def openai_conversation(size: int) -> list[dict[str, Any]]:
    """An agent's conversation of about `size` bytes of JSON: a system prompt, then tool calls and their output."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent. " * 40}]
    n = 0
    while len(orjson.dumps(messages)) < size:
        n += 1
        call = {"id": f"call_{n}", "type": "function",
                "function": {"name": "bash", "arguments": orjson.dumps({"command": f"cat src/mod_{n}.py"}).decode()}}  # fmt: skip
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": f'def f_{n}(x):\n    return "{n}" * x\n' * 30})
    messages.append({"role": "user", "content": "Say hello."})
    return messages


def anthropic_conversation(size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same conversation as Claude Code sends it: system blocks with cache_control, tool_use/tool_result."""
    system = [{"type": "text", "text": "You are Claude Code. " * 40, "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the bug."}]
    n = 0
    while len(orjson.dumps(messages)) < size:
        n += 1
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"toolu_{n}", "name": "bash", "input": {"command": f"cat src/mod_{n}.py"}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{n}",
                         "content": f'def f_{n}(x):\n    return "{n}" * x\n' * 30}]})  # fmt: skip
    messages.append({"role": "user", "content": [{"type": "text", "text": "Say hello.", "cache_control": {"type": "ephemeral"}}]})
    return system, messages


TOOLS_OPENAI = [{"type": "function", "function": {"name": "bash", "description": "Run a command",
                 "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}]  # fmt: skip
TOOLS_ANTHROPIC = [{"name": "bash", "description": "Run a command",
                    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]  # fmt: skip


def requests_of(size: int, events: int, paced: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(OpenAI chat request, Anthropic Messages request) of about `size` bytes, answered in `events` events."""
    openai = {"model": MODEL, "messages": openai_conversation(size) if size else [{"role": "user", "content": "Say hello."}],
              "tools": TOOLS_OPENAI, "max_tokens": events, "stream": True}  # fmt: skip
    system, messages = anthropic_conversation(size) if size else ("", [{"role": "user", "content": "Say hello."}])
    anthropic = {"model": MODEL, "max_tokens": events, "messages": messages, "tools": TOOLS_ANTHROPIC, "stream": True}
    if system:
        anthropic["system"] = system
    if paced:
        openai["temperature"] = anthropic["temperature"] = 0.5
    return openai, anthropic


# ------------------------------------------------------------------------------------ helper processes


def run_upstream() -> None:
    from fake_upstream import FakeUpstream, Reply

    async def main() -> None:
        upstream = FakeUpstream("perf")
        upstream.record = False
        # `max_tokens` sets the answer's length in events; `temperature` > 0 asks for paced events.
        upstream.default = lambda body: Reply(
            text="x" * int(body.get("max_tokens") or 16),
            chunks=int(body.get("max_tokens") or 16),
            chunk_delay=PACED_CHUNK_DELAY_SEC if body.get("temperature") else 0.0,
        )
        await upstream.start()
        print(json.dumps({"url": upstream.url}), flush=True)
        await wait_for_signal()
        await upstream.stop()

    uvloop.run(main())


def run_gateway(upstream_url: str, n_trials: int, workdir: str, processes: int) -> None:
    from evalkit.gateway import Gateway, LLMApiConfig

    async def main() -> None:
        config = LLMApiConfig(
            model=MODEL,
            deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream_url}],
            max_retries=0,
            processes=processes,
            connect_timeout_sec=60,  # a thousand connections at once to a one-process fake on a busy 2-core machine
        )
        root = Path(workdir)
        async with Gateway.serve(config, job_name="perf", artifacts_dir=root / "artifacts") as gateway:
            trials = [
                await gateway.open_trial(f"t{i}", root / f"t{i}" / "agent" / "litellm-trajectory.jsonl")
                for i in range(n_trials)
            ]
            urls = [t.anthropic_base_url for t in trials]
            print(json.dumps({"urls": urls, "keys": [t.api_key for t in trials], "pids": gateway.pids}), flush=True)
            await wait_for_signal()

    uvloop.run(main())


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()


class Child:
    """A helper process of this script that prints one JSON line when ready, and is stopped by SIGTERM."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, cwd=REPO)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"helper {args[0]} exited with {self.proc.wait()}")
        self.info = json.loads(line)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cpu_sec(pids: list[int]) -> float:
    """CPU time of all the processes' threads, from the scheduler's nanosecond counters."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def peak_rss_mib(pids: list[int]) -> float:
    """The largest resident set any of the processes reached (VmHWM)."""
    peaks = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return round(max(peaks), 1)


# ------------------------------------------------------------------------------------------------ load


async def load(send: Send, concurrency: int, duration: float, cpu: Callable[[], float]) -> dict[str, Any]:
    """`concurrency` workers send back to back; requests that end inside the measured window count."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    reads = errors = started = 0
    first_error = None
    window_open = window_close = float("inf")

    async def worker(i: int) -> None:
        nonlocal reads, errors, started, first_error
        while loop.time() < window_close and started < MAX_REQUESTS_PER_RUN:
            started += 1
            t0 = time.perf_counter()
            try:
                n_reads = await send(i)
            except Exception as exc:
                errors += 1
                first_error = first_error or repr(exc)[:300]
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            if window_open <= loop.time() <= window_close:
                latencies.append(t1 - t0)
                reads += n_reads

    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(0.25 + concurrency / 2000)  # warm-up: connections, caches
    cpu0, window_open = cpu(), loop.time()
    await asyncio.sleep(duration)
    while len(latencies) < concurrency and loop.time() - window_open < MAX_WINDOW_SEC:
        await asyncio.sleep(0.1)
    cpu1, window_close = cpu(), loop.time()
    await asyncio.wait_for(asyncio.gather(*workers), 300)
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": window_close - window_open,
        "cpu_sec": cpu1 - cpu0,
        "latencies": latencies,
        "reads": reads,
        **({"first_error": first_error} if first_error else {}),
    }


async def settle(*cpus: Callable[[], float]) -> None:
    """Wait (up to 5 s) until these processes are idle (LiteLLM logs in background tasks)."""
    for _ in range(50):
        before = [cpu() for cpu in cpus]
        await asyncio.sleep(0.1)
        if all(cpu() - b < 0.005 for cpu, b in zip(cpus, before, strict=True)):
            return


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the rounds for rates and CPU; percentiles over all the rounds' requests."""
    latencies = sorted(x for run in runs for x in run["latencies"])
    n = len(latencies)
    first_errors = [run["first_error"] for run in runs if "first_error" in run]
    if not n:
        return {"requests": 0, "errors": sum(run["errors"] for run in runs), "first_error": first_errors[:1]}
    return {
        "requests": n,
        "errors": sum(run["errors"] for run in runs),
        "rps": round(statistics.median(run["requests"] / run["seconds"] for run in runs), 1),
        "p50_ms": round(1000 * latencies[n // 2], 2),
        "p99_ms": round(1000 * latencies[min(n - 1, int(n * 0.99))], 2),
        "cpu_ms_per_req": round(statistics.median(1000 * run["cpu_sec"] / max(1, run["requests"]) for run in runs), 4),
        **({"first_error": first_errors[0]} if first_errors else {}),
    }


class Senders:
    """The variants' send functions for one request shape."""

    def __init__(self, session: aiohttp.ClientSession, router: Any, upstream_url: str, gateway: dict[str, Any]) -> None:
        self.session, self.router, self.upstream_url, self.gateway = session, router, upstream_url, gateway

    def variants(self, size: int, events: int, paced: bool, names: list[str]) -> dict[str, Send]:
        openai_request, anthropic_request = requests_of(size, events, paced)
        openai_body, anthropic_body = orjson.dumps(openai_request), orjson.dumps(anthropic_request)
        keys, urls = self.gateway["keys"], self.gateway["urls"]
        post = self.session.post

        async def http(url: str, body: bytes, headers: dict[str, str]) -> int:
            async with post(url, data=body, headers=headers) as resp:
                n = 0
                async for _ in resp.content.iter_any():
                    n += 1
                if resp.status != 200:
                    raise RuntimeError(resp.status)
                return n

        json_headers = {"Content-Type": "application/json"}

        async def direct(i: int) -> int:
            return await http(self.upstream_url + "/chat/completions", openai_body, json_headers)

        async def direct_encoding(i: int) -> int:
            return await http(self.upstream_url + "/chat/completions", orjson.dumps(openai_request), json_headers)

        async def router(i: int) -> int:
            kwargs = {k: v for k, v in openai_request.items() if k != "model"}
            n = 0
            async for _ in await self.router.acompletion(model=MODEL, **kwargs):
                n += 1
            return n

        async def passthrough(i: int) -> int:
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {keys[i % len(keys)]}"}
            return await http(urls[i % len(urls)] + "/v1/chat/completions", openai_body, headers)

        async def translated(i: int) -> int:
            headers = {"Content-Type": "application/json", "x-api-key": keys[i % len(keys)], "anthropic-version": "2023-06-01"}
            return await http(urls[i % len(urls)] + "/v1/messages", anthropic_body, headers)

        every = {"direct": direct, "direct_encoding": direct_encoding, "router": router,
                 "passthrough": passthrough, "translated": translated}  # fmt: skip
        return {name: every[name] for name in names}


async def measure(args: argparse.Namespace, upstream: Child, gateway: Child) -> dict[str, Any]:
    import litellm

    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[{"model_name": MODEL, "litellm_params": {"model": f"hosted_vllm/{MODEL}", "api_base": upstream.info["url"]}}]
    )
    pids = gateway.info["pids"]
    gateway_cpu = lambda: cpu_sec(pids)  # noqa: E731
    cpu_of = {"direct": time.process_time, "direct_encoding": time.process_time, "router": time.process_time,
              "passthrough": gateway_cpu, "translated": gateway_cpu}  # fmt: skip
    result: dict[str, Any] = {"requests": {}, "streaming": {}, "scale": {}}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        senders = Senders(session, router, upstream.info["url"], gateway.info)
        all_names = ["direct", "direct_encoding", "passthrough", "translated", "router"]
        for send in senders.variants(0, 4, False, all_names).values():  # first calls pay one-time costs
            for i in range(3):
                await send(i)

        async def rounds_of(variants: dict[str, Send], concurrency: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
            for _ in range(rounds):
                for name, send in variants.items():
                    await settle(time.process_time, gateway_cpu)
                    out[name].append(await load(send, concurrency, args.duration, cpu_of[name]))
            return out

        def ratio(rounds: dict[str, list[dict[str, Any]]], a: str, b: str, what: str = "cpu") -> float | None:
            """Median over rounds of a/b; None when a round of either had no request (nothing to divide)."""
            pairs = list(zip(rounds[a], rounds[b], strict=True))
            if any(not x["requests"] or not y["requests"] for x, y in pairs):
                return None
            value = (lambda r: r["cpu_sec"] / r["requests"]) if what == "cpu" else (lambda r: r["requests"] / r["seconds"])
            return round(statistics.median(value(x) / value(y) for x, y in pairs), 2)

        for label, size in SIZES.items():
            names = all_names if size <= 100 * 1024 else [n for n in all_names if n != "router"]
            rounds = await rounds_of(senders.variants(size, 16, False, names), args.concurrency, args.rounds)
            runs = {name: summary(rs) for name, rs in rounds.items()}
            for run in runs.values():
                run["added_p99_ms"] = round(run.get("p99_ms", 0) - runs["direct"].get("p99_ms", 0), 2)
            runs["passthrough"]["cpu_over_direct"] = ratio(rounds, "passthrough", "direct")
            runs["passthrough"]["cpu_over_direct_encoding"] = ratio(rounds, "passthrough", "direct_encoding")
            runs["translated"]["cpu_over_passthrough"] = ratio(rounds, "translated", "passthrough")
            if "router" in rounds:
                runs["passthrough"]["rps_over_router"] = ratio(rounds, "passthrough", "router", "rps")
            result["requests"][label] = {"body_bytes": len(orjson.dumps(requests_of(size, 16, False)[0])), **runs}

        short, long = args.stream_events
        for name in ("direct", "passthrough", "translated"):
            per = {}
            for n in (short, long):
                [send] = senders.variants(0, n, True, [name]).values()
                await settle(time.process_time, gateway_cpu)
                per[n] = await load(send, args.concurrency, args.duration, cpu_of[name])
            per_req = {n: per[n]["cpu_sec"] / max(1, per[n]["requests"]) for n in (short, long)}
            result["streaming"][name] = {
                "cpu_ms_per_event": round(1000 * (per_req[long] - per_req[short]) / (long - short), 5),
                "streams": per[short]["requests"] + per[long]["requests"],
                "errors": per[short]["errors"] + per[long]["errors"],
            }

        scale_names = ["direct", "passthrough", "translated", "router"]
        rounds = await rounds_of(senders.variants(SIZES["100k"], 32, True, scale_names), args.scale, 1)
        runs = {name: summary(rs) for name, rs in rounds.items()}
        for run in runs.values():
            run["added_p99_ms"] = round(run.get("p99_ms", 0) - runs["direct"].get("p99_ms", 0), 2)
        runs["passthrough"]["rps_over_router"] = ratio(rounds, "passthrough", "router", "rps")
        result["scale"] = {"concurrency": args.scale, "events_per_stream": 32, "body_bytes": result["requests"]["100k"]["body_bytes"],
                           **runs, "gateway_peak_rss_mib": peak_rss_mib(pids)}  # fmt: skip
    return result


def trajectory_sizes() -> dict[str, Any]:
    """One trial of 100 calls growing to ~780 KiB (~200k tokens): v1 lines (each request whole) against v2."""
    from evalkit.gateway.trajectory import RequestHistory

    decode = msgspec.json.Decoder(dict[str, msgspec.Raw])
    final = openai_conversation(780 * 1024)
    history, v1, v2, encode_sec = RequestHistory(), 0, 0, 0.0
    for call in range(100):
        k = max(2, len(final) * (call + 1) // 100)
        raw = orjson.dumps({"model": MODEL, "messages": final[:k], "tools": TOOLS_OPENAI, "stream": True})
        v1 += len(raw)
        started = time.process_time()
        request, delta = history.encode(call, decode.decode(raw))
        v2 += len(orjson.dumps({"request": request, "request_delta": delta}))
        encode_sec += time.process_time() - started
    return {"calls": 100, "last_request_bytes": len(raw), "v1_bytes": v1, "v2_bytes": v2,
            "v1_over_v2": round(v1 / v2, 1), "writer_cpu_ms_per_call": round(1000 * encode_sec / 100, 3)}  # fmt: skip


def targets(result: dict[str, Any]) -> dict[str, Any]:
    big = {label: result["requests"][label]["passthrough"] for label in ("100k", "780k")}
    over_encoding = {label: run["cpu_over_direct_encoding"] for label, run in big.items()}
    per_event = result["streaming"]["translated"]["cpu_ms_per_event"]
    return {
        "passthrough_cpu_per_request_over_direct_client": {
            "value": over_encoding, "target": "<= 2", "met": all(v is not None and v <= 2 for v in over_encoding.values()),
            "note": "direct client that encodes its request per call; against one that sends prepared bytes: "
            + json.dumps({label: run["cpu_over_direct"] for label, run in big.items()}),
        },
        "translated_cpu_ms_per_streamed_event": {"value": per_event, "target": "<= 0.05", "met": per_event <= 0.05},
        "gateway_peak_rss_mib_at_scale": {"value": result["scale"]["gateway_peak_rss_mib"]},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=0.8, help="measured seconds per run (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per body size")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrency of the requests and streaming sections")
    parser.add_argument("--stream-events", type=int, nargs=2, default=[10, 410], metavar=("SHORT", "LONG"))
    parser.add_argument("--scale", type=int, default=1000, help="concurrent trials in the scale section")
    parser.add_argument("--processes", type=int, default=1, help="gateway processes (llm_api.processes)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="evalkit-gateway-perf-")
    upstream = gateway = None
    try:
        upstream = Child("_upstream")
        gateway = Child("_gateway", upstream.info["url"], str(args.scale), workdir, str(args.processes))
        result = uvloop.run(measure(args, upstream, gateway))
    finally:
        for child in (gateway, upstream):
            if child is not None:
                child.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result["trajectory"] = trajectory_sizes()
    for section in (result["requests"].values(), [result["scale"]]):
        for runs in section:
            for run in runs.values():
                if isinstance(run, dict):
                    run.pop("latencies", None)
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loop": "uvloop",
            "litellm": importlib.metadata.version("litellm"),
            "gateway_processes": args.processes,
            # Other work on the machine skews everything: a 1-minute load far above 3 (our processes) says so.
            "loadavg_1m": {"before": load_before, "after": os.getloadavg()[0]},
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"paced_event_delay_sec": PACED_CHUNK_DELAY_SEC},
        **result,
        "targets": targets(result),
        "wall_sec": round(time.monotonic() - started, 1),
    }
    text = json.dumps(document, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_upstream"]:
        run_upstream()
    elif sys.argv[1:2] == ["_gateway"]:
        run_gateway(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        main()
