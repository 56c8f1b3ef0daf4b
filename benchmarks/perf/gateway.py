"""What the model gateway costs, against the floor, measured in one run on 127.0.0.1.

    .venv/bin/python benchmarks/perf/gateway.py [--duration 1.0] [--rounds 3] [--out result.json]

Three processes share the machine: the fake upstream (tests/gateway/fake_upstream.py, a real OpenAI wire
server), the gateway (as a job runs it: its own process, uvloop) and this load generator (uvloop). At each
concurrency it measures requests/s, latency and CPU per request of
  (a) direct      — an aiohttp client straight to the upstream: the floor;
  (b) router      — `litellm.Router.acompletion` in this process (what most harnesses do);
  (c) passthrough — the gateway, OpenAI chat client to an OpenAI-compatible upstream;
  (c') passthrough_socket — the same over each trial's own Unix socket (the route containers use);
  (d) translated  — the gateway, Anthropic client to the same OpenAI-only upstream (through LiteLLM);
then CPU per streamed chunk: the slope between short and long streams, with events sent back to back
("burst") and paced 2 ms apart so that each event is its own network read and write ("paced").

CPU is the client process's for (a) and (b), the gateway process's for (c) and (d) (all threads, ns
resolution). Runs are interleaved in rounds and summarised by their median, as this machine's speed drifts;
"added" latency is the difference to (a) at the same concurrency. Every run is bounded in time and in
requests, and all traffic stays on 127.0.0.1. Prints one JSON document (and writes it to --out).
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
import orjson  # noqa: E402
import uvloop  # noqa: E402

MODEL = "smollm2"
MAX_REQUESTS_PER_RUN = 50_000
MAX_WINDOW_SEC = 20.0
"""A run's window grows until `concurrency` requests have completed in it (slow variants at 256), up to this."""
PACED_CHUNK_DELAY_SEC = 0.002

Send = Callable[[int], Awaitable[int]]
"""Sends one request as worker i; returns the number of body reads it took."""


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


def run_gateway(upstream_url: str, n_trials: int, workdir: str) -> None:
    from evalkit.gateway import Gateway, LLMApiConfig

    async def main() -> None:
        config = LLMApiConfig(
            model=MODEL, deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream_url}], max_retries=0
        )
        root = Path(workdir)
        async with Gateway.serve(config, job_name="perf", artifacts_dir=root / "artifacts") as gateway:
            trials = [
                await gateway.open_trial(f"t{i}", root / f"t{i}" / "agent" / "litellm-trajectory.jsonl")
                for i in range(n_trials)
            ]
            keys, sockets = [t.api_key for t in trials], [str(t.socket_path) for t in trials]
            print(json.dumps({"url": gateway.url, "keys": keys, "sockets": sockets}), flush=True)
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

    def cpu_sec(self) -> float:
        """CPU time of all the process's threads, from the scheduler's nanosecond counters."""
        tasks = Path(f"/proc/{self.proc.pid}/task")
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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
                continue
            t1 = time.perf_counter()
            if window_open <= loop.time() <= window_close:
                latencies.append(t1 - t0)
                reads += n_reads

    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(0.25)  # warm-up: connections, caches
    cpu0, window_open = cpu(), loop.time()
    await asyncio.sleep(duration)
    while len(latencies) < concurrency and loop.time() - window_open < MAX_WINDOW_SEC:
        await asyncio.sleep(0.1)
    cpu1, window_close = cpu(), loop.time()
    await asyncio.wait_for(asyncio.gather(*workers), 120)
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "seconds": window_close - window_open,
        "cpu_sec": cpu1 - cpu0,
        "latencies": latencies,
        "reads": reads,
        **({"first_error": first_error} if first_error else {}),
    }


async def settle(*cpus: Callable[[], float]) -> None:
    """Wait (up to 5 s) until these processes are idle: LiteLLM finishes its logging in background tasks,
    which must not be billed to the next run."""
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
    return {
        "requests": sum(run["requests"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "rps": round(statistics.median(run["requests"] / run["seconds"] for run in runs), 1),
        "p50_ms": round(1000 * latencies[n // 2], 3),
        "p99_ms": round(1000 * latencies[min(n - 1, int(n * 0.99))], 3),
        "cpu_ms_per_req": round(statistics.median(1000 * run["cpu_sec"] / run["requests"] for run in runs), 4),
        **({"first_error": first_errors[0]} if first_errors else {}),
    }


def senders(
    session: aiohttp.ClientSession,
    socket_sessions: list[aiohttp.ClientSession],
    router: Any,
    upstream_url: str,
    gateway: dict[str, Any],
    tokens: int,
    stream: bool,
    paced: bool = False,
) -> dict[str, Send]:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": tokens,
        "stream": stream,
    }
    if paced:
        request["temperature"] = 0.5
    body = orjson.dumps(request)  # the same bytes are a valid OpenAI chat and Anthropic messages request
    keys = gateway["keys"]

    async def http(url: str, headers: dict[str, str], via: aiohttp.ClientSession = session) -> int:
        async with via.post(url, data=body, headers=headers) as resp:
            n = 0
            async for _ in resp.content.iter_any():
                n += 1
            if resp.status != 200:
                raise RuntimeError(resp.status)
            return n

    async def direct(i: int) -> int:
        return await http(upstream_url + "/chat/completions", {"Content-Type": "application/json"})

    async def via_router(i: int) -> int:
        kwargs = {k: v for k, v in request.items() if k != "model"}
        result = await router.acompletion(model=MODEL, **kwargs)
        if not stream:
            return 1
        n = 0
        async for _ in result:
            n += 1
        return n

    async def passthrough(i: int) -> int:
        return await http(
            gateway["url"] + "/v1/chat/completions",
            {"Content-Type": "application/json", "Authorization": f"Bearer {keys[i]}"},
        )

    async def passthrough_socket(i: int) -> int:
        return await http(
            "http://gateway/v1/chat/completions",
            {"Content-Type": "application/json", "Authorization": f"Bearer {keys[i]}"},
            socket_sessions[i],
        )

    async def translated(i: int) -> int:
        return await http(
            gateway["url"] + "/v1/messages",
            {"Content-Type": "application/json", "x-api-key": keys[i], "anthropic-version": "2023-06-01"},
        )

    # In this order, so that each round measures the floor and the gateway back to back.
    variants = {"direct": direct, "passthrough": passthrough, "passthrough_socket": passthrough_socket}
    return variants | {"router": via_router, "translated": translated}


async def measure(args: argparse.Namespace, upstream: Child, gateway: Child) -> dict[str, Any]:
    import litellm

    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {"model_name": MODEL, "litellm_params": {"model": f"hosted_vllm/{MODEL}", "api_base": upstream.info["url"]}}
        ]
    )
    cpu_of = {
        "direct": time.process_time,
        "router": time.process_time,
        "passthrough": gateway.cpu_sec,
        "passthrough_socket": gateway.cpu_sec,
        "translated": gateway.cpu_sec,
    }
    result: dict[str, Any] = {"requests": {}, "streaming": {}}
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        socket_sessions = [
            await stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.UnixConnector(path, limit=0)))
            for path in gateway.info["sockets"]
        ]
        variants = senders(session, socket_sessions, router, upstream.info["url"], gateway.info, 16, stream=False)
        for i, send in enumerate(variants.values()):  # first calls pay one-time costs (LiteLLM's lazy imports)
            for _ in range(3):
                await send(i)
        for concurrency in args.concurrency:
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, send in variants.items():
                    await settle(time.process_time, gateway.cpu_sec)
                    rounds[name].append(await load(send, concurrency, args.duration, cpu_of[name]))
            runs = {name: summary(rs) for name, rs in rounds.items()}
            for run in runs.values():
                run["cpu_of"] = "client" if run is runs["direct"] or run is runs["router"] else "gateway"
                run["added_p50_ms"] = round(run["p50_ms"] - runs["direct"]["p50_ms"], 3)
                run["added_p99_ms"] = round(run["p99_ms"] - runs["direct"]["p99_ms"], 3)
            # Ratios taken within each round (runs seconds apart), then the median: the machine's speed drifts.
            cpu = {name: [r["cpu_sec"] / r["requests"] for r in rs] for name, rs in rounds.items()}
            rps = {name: [r["requests"] / r["seconds"] for r in rs] for name, rs in rounds.items()}
            by_round = [p / d for p, d in zip(cpu["passthrough"], cpu["direct"], strict=True)]
            runs["passthrough"]["cpu_over_floor"] = round(statistics.median(by_round), 2)
            runs["passthrough"]["cpu_over_floor_by_round"] = [round(x, 2) for x in by_round]
            ratios = [p / r for p, r in zip(rps["passthrough"], rps["router"], strict=True)]
            runs["passthrough"]["rps_over_router"] = round(statistics.median(ratios), 1)
            over_tcp = {
                "cpu_over_tcp": [s / p for s, p in zip(cpu["passthrough_socket"], cpu["passthrough"], strict=True)],
                "rps_over_tcp": [s / p for s, p in zip(rps["passthrough_socket"], rps["passthrough"], strict=True)],
            }
            runs["passthrough_socket"].update({k: round(statistics.median(v), 2) for k, v in over_tcp.items()})
            result["requests"][f"c{concurrency}"] = runs
        short, long = args.stream_chunks
        for mode in ("burst", "paced"):
            per_length = {
                n: senders(
                    session, socket_sessions, router, upstream.info["url"], gateway.info, n, stream=True,
                    paced=mode == "paced",
                )
                for n in (short, long)
            }  # fmt: skip
            result["streaming"][mode] = {}
            for name in per_length[short]:
                if name == "passthrough_socket":  # the socket is measured per request above
                    continue
                runs = {}
                for n in (short, long):
                    await settle(time.process_time, gateway.cpu_sec)
                    runs[n] = await load(per_length[n][name], args.stream_concurrency, args.duration, cpu_of[name])
                per_req = {n: runs[n]["cpu_sec"] / runs[n]["requests"] for n in (short, long)}
                result["streaming"][mode][name] = {
                    "cpu_ms_per_chunk": round(1000 * (per_req[long] - per_req[short]) / (long - short), 5),
                    "client_reads_per_chunk": round(runs[long]["reads"] / runs[long]["requests"] / long, 3),
                    "streams": runs[short]["requests"] + runs[long]["requests"],
                    "errors": runs[short]["errors"] + runs[long]["errors"],
                }
    return result


def targets(result: dict[str, Any]) -> dict[str, Any]:
    rps_ratio = result["requests"]["c64"]["passthrough"]["rps_over_router"]
    cpu_ratios = {c: r["passthrough"]["cpu_over_floor"] for c, r in result["requests"].items()}
    per_chunk = {mode: runs["passthrough"]["cpu_ms_per_chunk"] for mode, runs in result["streaming"].items()}
    return {
        "passthrough_rps_over_router_at_c64": {"value": rps_ratio, "target": ">= 10", "met": rps_ratio >= 10},
        "gateway_cpu_per_req_over_floor": {"value": cpu_ratios, "target": "<= 3", "met": max(cpu_ratios.values()) <= 3},
        "passthrough_cpu_ms_per_chunk": {
            "value": per_chunk,
            "target": "<= 0.02",
            "met": {m: v <= 0.02 for m, v in per_chunk.items()},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=0.8, help="measured seconds per run (after a 0.25 s warm-up)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--stream-chunks", type=int, nargs=2, default=[10, 410], metavar=("SHORT", "LONG"))
    parser.add_argument("--stream-concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if 64 not in args.concurrency:
        parser.error("the targets are stated at concurrency 64: include it")
    started, load_before = time.monotonic(), os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="evalkit-gateway-perf-")
    upstream = gateway = None
    try:
        upstream = Child("_upstream")
        gateway = Child("_gateway", upstream.info["url"], str(max(*args.concurrency, args.stream_concurrency)), workdir)
        result = uvloop.run(measure(args, upstream, gateway))
    finally:
        for child in (gateway, upstream):
            if child is not None:
                child.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loop": "uvloop",
            "litellm": importlib.metadata.version("litellm"),
            # Other work on the machine skews everything: a 1-minute load far above 3 (our three processes) says so.
            "loadavg_1m": {"before": load_before, "after": os.getloadavg()[0]},
        },
        "settings": {
            "duration_sec": args.duration,
            "rounds": args.rounds,
            "stream_concurrency": args.stream_concurrency,
            "stream_chunks": args.stream_chunks,
            "paced_chunk_delay_sec": PACED_CHUNK_DELAY_SEC,
        },
        **result,
        "targets": targets(result),
        "wall_sec": round(time.monotonic() - started, 1),
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_upstream"]:
        run_upstream()
    elif sys.argv[1:2] == ["_gateway"]:
        run_gateway(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
