"""Per-trial agent set-up: Claude Code from the mounted runtime tree versus installed in each trial's
container the peers' way (`npm install -g @anthropic-ai/claude-code@<pin>` from the npm registry).

Both sides run the same trials in the same run: a fresh container per trial whose command times, by the
container's own clock, the span from its start to the agent executable answering `--version` — for the
mounted side that is only the executable starting from the read-only mount (`--network none`, nothing
installed); for the installed side it is the npm install plus the same `--version`. The installed side runs
in the image the runtime builds themselves fetch agents in (`runtimes/base/Dockerfile`: Debian's nodejs and
npm, the build's CA bundle), with host networking to reach the registry.
Container create+start is timed separately (it is the same for both). `ratio` = installed / mounted, by
medians.

The route's cost is measured too: HTTP requests to a server on a Unix socket, directly and through
`evalkit-forward` (a new connection each, as the forwarder forks one process per connection); the forwarder
runs in a host-network container so the client on the host can reach its port.

    .venv/bin/python benchmarks/perf/agent_setup.py [--trials 3] [--requests 200]

Needs the claude-code tree (`evalkit runtime build claude-code`; built here if missing) and the npm registry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiodocker
import httpx
from aiohttp import web

from evalkit.runtimes import FORWARDER, RUNTIME_MOUNT, build_base_image, build_runtime, read_ca_bundle, scaffold

MARK = "EVALKIT_SETUP_NS="


def timed(setup: str, version: list[str]) -> list[str]:
    """A container command that prints how long `setup` + `--version` took, by the container's clock."""
    return ["bash", "-c", f's=$(date +%s%N); {setup} >/dev/null 2>&1; {" ".join(version)} || exit 1; '
                          f'echo {MARK}$(( $(date +%s%N) - s ))']


async def trial(docker: aiodocker.Docker, *, image: str, cmd: list[str], network: str, binds: list[str]) -> dict:
    """One trial's container: create+start time, then the set-up time it reports."""
    started = time.perf_counter()
    container = await docker.containers.create(
        {"Image": image, "Cmd": cmd, "Labels": {"evalkit.job": "perf-agent-setup"},
         "HostConfig": {"Init": True, "NetworkMode": network, "Binds": binds}},
        name=f"perf-agent-setup-{uuid.uuid4().hex[:12]}",
    )
    try:
        await container.start()
        start_s = time.perf_counter() - started
        status = await asyncio.wait_for(container.wait(), 1800)
        out = "".join(await container.log(stdout=True, stderr=True))
        if status["StatusCode"] != 0 or MARK not in out:
            raise RuntimeError(f"trial failed (exit {status['StatusCode']}): {out[-2000:]}")
        setup_ns = int(out.split(MARK)[1].split()[0])
        return {"container_start_s": start_s, "setup_s": setup_ns / 1e9, "answer": out.split(MARK)[0].strip()}
    finally:
        await container.delete(force=True)


def summary(trials: list[dict]) -> dict:
    return {
        "setup_s": [round(t["setup_s"], 4) for t in trials],
        "mean_setup_s": round(statistics.mean(t["setup_s"] for t in trials), 4),
        "median_setup_s": round(statistics.median(t["setup_s"] for t in trials), 4),
        "mean_container_start_s": round(statistics.mean(t["container_start_s"] for t in trials), 4),
        "answer": trials[0]["answer"],
    }


async def route_latency(docker: aiodocker.Docker, tree: Path, n: int) -> dict:
    """p50/p90 of one request on a fresh connection: straight to the Unix socket vs through the forwarder."""
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v1/models", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    directory = Path(tempfile.mkdtemp(prefix="evalkit-fw-", dir="/tmp"))
    socket_path = directory / "model.sock"
    await web.UnixSite(runner, str(socket_path)).start()
    port = free_port()
    container = await docker.containers.create(
        {"Image": "debian:bookworm-slim", "Cmd": [FORWARDER, str(port), "/run/evalkit/model/model.sock"],
         "Labels": {"evalkit.job": "perf-agent-setup"},
         "HostConfig": {"Init": True, "NetworkMode": "host",
                        "Binds": [f"{tree}:{RUNTIME_MOUNT}:ro", f"{directory}:/run/evalkit/model:ro"]}},
        name=f"perf-agent-setup-fw-{uuid.uuid4().hex[:12]}",
    )
    try:
        await container.start()
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection for every request
        clients = {
            "direct": httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path), limits=fresh),
                                        base_url="http://model"),
            "forwarded": httpx.AsyncClient(limits=fresh, base_url=f"http://127.0.0.1:{port}"),
        }
        for _ in range(50):  # until the forwarder listens
            try:
                await clients["forwarded"].get("/v1/models")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        times: dict[str, list[float]] = {"direct": [], "forwarded": []}
        for _ in range(n):
            for name, client in clients.items():
                t0 = time.perf_counter()
                (await client.get("/v1/models")).raise_for_status()
                times[name].append(time.perf_counter() - t0)
        for client in clients.values():
            await client.aclose()
        p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
        p90 = {k: statistics.quantiles(v, n=10)[-1] * 1000 for k, v in times.items()}
        return {
            "requests": n,
            "direct_p50_ms": round(p50["direct"], 3), "forwarded_p50_ms": round(p50["forwarded"], 3),
            "added_p50_ms": round(p50["forwarded"] - p50["direct"], 3),
            "direct_p90_ms": round(p90["direct"], 3), "forwarded_p90_ms": round(p90["forwarded"], 3),
        }
    finally:
        await container.delete(force=True)
        await runner.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def free_port() -> int:
    """A free loopback port (bound then released, so the forwarder can take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(n_trials: int, n_requests: int) -> dict:
    claude = scaffold("claude-code")
    ca_bundle = read_ca_bundle(None)
    quiet = lambda line: print(line, file=sys.stderr)  # noqa: E731 - progress to stderr, JSON alone on stdout
    async with aiodocker.Docker() as docker:
        await build_runtime(docker, claude, ca_bundle=ca_bundle, report=quiet)
        node_image = await build_base_image(docker, ca_bundle=ca_bundle, report=quiet)
        version = [f"{RUNTIME_MOUNT}/{claude.executable}", *claude.version_args]
        mount = [f"{claude.runtime_host_path}:{RUNTIME_MOUNT}:ro"]
        # The first trial of a job reads the 400 MB executable from disk; every later one finds it in the page
        # cache. That first, cold trial is reported on its own.
        cold = await trial(docker, image="debian:bookworm-slim", cmd=timed("true", version), network="none", binds=mount)
        mounted, installed = [], []
        for _ in range(n_trials):  # alternate, so drift in machine load hits both sides alike
            mounted.append(await trial(docker, image="debian:bookworm-slim", cmd=timed("true", version),
                                       network="none", binds=mount))
            installed.append(await trial(
                docker, image=node_image, network="host", binds=[],
                cmd=timed(f"npm install -g --no-fund --no-audit @anthropic-ai/claude-code@{claude.version}",
                          ["claude", *claude.version_args]),
            ))
        route = await route_latency(docker, claude.runtime_host_path, n_requests)
    m, i = summary(mounted), summary(installed)
    return {
        "benchmark": "agent_setup",
        "scaffold": f"claude-code {claude.version}",
        "trials": n_trials,
        "mounted": {**m, "cold_first_trial_setup_s": round(cold["setup_s"], 4)},
        "installed_per_trial": i,
        "ratio": round(i["median_setup_s"] / m["median_setup_s"], 1),
        "mounted_setup_under_0_1_s": m["median_setup_s"] < 0.1,
        "forwarder": route,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="trials per side (each installed one downloads ~100 MB)")
    parser.add_argument("--requests", type=int, default=200, help="requests per route for the forwarder figure")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.trials, args.requests)), indent=2))
