"""The gateway's processes: none left after the job, after a cancellation, or after the job's process is killed;
a gateway process that dies gives its trials a typed infrastructure error and is replaced for new trials."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from fake_upstream import Hang, Reply
from gateway_testing import MODEL, openai_client, read_trajectory, vllm_config

from evalkit.errors import GatewayLostError, TrialError
from evalkit.gateway import Gateway
from evalkit.gateway.routes import base_dir

REPO = Path(__file__).resolve().parents[2]


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def gone(pid: int) -> bool:
    """Whether `pid` ends within 30 s (polled: it stops on its own)."""
    for _ in range(300):
        if not running(pid):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_no_gateway_process_outlives_the_job_or_a_cancellation(upstream, artifacts, tmp_path):
    config = vllm_config(upstream, processes=2)
    async with Gateway.serve(config, job_name="done", artifacts_dir=artifacts) as gw:
        pids = gw.pids
        access = await gw.open_trial("t1", tmp_path / "t1" / "agent" / "litellm-trajectory.jsonl")
        async with openai_client(access) as client:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert len(pids) == 2 and not any(running(p) for p in pids)

    upstream.default = Hang()
    opened: asyncio.Future = asyncio.get_running_loop().create_future()
    cancelled_pids: list[int] = []

    async def job() -> None:
        async with Gateway.serve(config, job_name="cancelled", artifacts_dir=artifacts) as gw:
            cancelled_pids.extend(gw.pids)
            opened.set_result(await gw.open_trial("t2", tmp_path / "t2" / "agent" / "litellm-trajectory.jsonl"))
            await asyncio.sleep(3600)

    task = asyncio.create_task(job())
    async with openai_client(await opened) as client:  # the agent: not part of the cancelled job
        call = asyncio.create_task(
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        )
        while len(upstream.received) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(openai.APIConnectionError):
            await call
    assert cancelled_pids and not any(running(p) for p in cancelled_pids)
    [line] = read_trajectory(tmp_path / "t2" / "agent" / "litellm-trajectory.jsonl")
    assert line["error"] == "gateway stopped"


async def test_a_dead_gateway_process_fails_its_trials_with_an_infrastructure_error(upstream, serve, tmp_path, caplog):
    upstream.default = Reply(text="fine")
    async with serve(vllm_config(upstream)) as gw:
        [pid] = gw.pids
        access = await gw.open_trial("t1", tmp_path / "t1" / "agent" / "litellm-trajectory.jsonl")
        async with openai_client(access) as client:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            path = tmp_path / "t1" / "agent" / "litellm-trajectory.jsonl"
            while not path.stat().st_size:  # its line is written by the writer thread, right after the answer
                await asyncio.sleep(0.01)
            os.kill(pid, signal.SIGKILL)  # a crash of the gateway process (we started it)
            assert await gone(pid)
            with pytest.raises(openai.APIConnectionError):  # the agent finds nobody there
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        for _ in range(2):  # the same answer every time it is asked
            with pytest.raises(GatewayLostError) as lost:
                await gw.close_trial(access.api_key)
        replacement = await gw.open_trial("t2", tmp_path / "t2" / "agent" / "litellm-trajectory.jsonl")
        [new_pid] = gw.pids
        async with openai_client(replacement) as client:
            answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        usage = await gw.close_trial(replacement.api_key)
    assert isinstance(lost.value, TrialError) and lost.value.kind == "infrastructure"
    assert str(lost.value) == (
        f"the gateway process (pid {pid}) died: killed by SIGKILL, while this trial ran: its calls since are"
        " missing from its trajectory and usage"
    )
    assert new_pid != pid and not running(new_pid)
    assert answer.choices[0].message.content == "fine" and usage.n_calls == 1
    assert len(read_trajectory(tmp_path / "t1" / "agent" / "litellm-trajectory.jsonl")) == 1  # written before
    assert any(f"pid {pid}) died" in r.getMessage() for r in caplog.records if r.name == "evalkit.gateway")


JOB = """
import asyncio, json, sys
from pathlib import Path
from evalkit.gateway import Gateway, LLMApiConfig

async def main():
    config = LLMApiConfig(model="smollm2", deployments=[{"model": "hosted_vllm/smollm2", "api_base": sys.argv[1]}])
    root = Path(sys.argv[2])
    async with Gateway.serve(config, job_name="killed", artifacts_dir=root / "artifacts") as gw:
        access = await gw.open_trial("t1", root / "t1" / "agent" / "litellm-trajectory.jsonl")
        print(json.dumps({"pids": gw.pids, "routes": str(gw.routes_dir), "socket": str(access.socket_path)}), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_gateway_processes_stop_when_the_jobs_process_is_killed(upstream, serve, tmp_path):
    """SIGKILL of the job's process: its gateway process sees its control channel close and stops; the route
    directory left behind is removed when the next gateway starts."""
    job = await asyncio.create_subprocess_exec(
        sys.executable, "-c", JOB, upstream.url, str(tmp_path), cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        info = json.loads(await asyncio.wait_for(job.stdout.readline(), 120))
    finally:
        job.kill()  # by its pid: the job's process, which we started
        await job.wait()
    [pid] = info["pids"]
    assert await gone(pid), "the gateway process outlived its job"
    routes = Path(info["routes"])
    assert routes.parent == base_dir() and routes.exists() and not Path(info["socket"]).exists()
    async with serve(vllm_config(upstream)):
        assert not routes.exists(), "a dead job's route directory was not swept"
