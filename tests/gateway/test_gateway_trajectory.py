"""The trajectory file is out of anyone else's reach: no writing through planted paths, no silently lost
lines, write errors marked on the trial (never a 500 for the agent), and the writing done off the loop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
from fake_upstream import FakeUpstream, Reply
from gateway_testing import MODEL, admin_health, openai_client, read_trajectory, vllm_config

from evalkit.errors import InfrastructureError
from evalkit.gateway.logfile import LineWriter, open_log

REPO = Path(__file__).resolve().parents[2]


async def ask(access, text: str = "hi") -> str:
    async with openai_client(access) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    return completion.choices[0].message.content


async def test_a_symlinked_agent_directory_is_refused(upstream, serve, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "try").mkdir()
    (tmp_path / "try" / "agent").symlink_to(victim)
    path = tmp_path / "try" / "agent" / "litellm-trajectory.jsonl"
    async with serve(vllm_config(upstream)) as gw:
        with pytest.raises(InfrastructureError) as caught:
            await gw.open_trial("t1", path)
        assert str(caught.value) == f"refusing to write {path}: {path.parent}: it is a symlink or not a directory"
        assert (await admin_health(gw))["open_trials"] == 0
        assert list(gw.routes_dir.iterdir()) == [], "a refused trial left its route behind"
    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("plant", ["symlink", "file", "fifo"])
async def test_anything_already_at_the_trajectory_path_is_refused(upstream, serve, tmp_path, plant):
    victim = tmp_path / "host-file"
    victim.write_text("important\n")
    path = tmp_path / "try" / "agent" / "litellm-trajectory.jsonl"
    path.parent.mkdir(parents=True)
    if plant == "symlink":
        path.symlink_to(victim)
    elif plant == "file":
        path.write_text("x\n")
    else:
        os.mkfifo(path)
    async with serve(vllm_config(upstream)) as gw:
        with pytest.raises(InfrastructureError) as caught:
            await asyncio.wait_for(gw.open_trial("t1", path), 10)  # a FIFO must not hang the open
        assert str(caught.value) == f"refusing to write {path}: a file or symlink is already there"
        assert list(gw.routes_dir.iterdir()) == []
    assert victim.read_text() == "important\n"


async def test_a_deleted_trajectory_is_recreated_with_every_line(upstream, serve, open_trial, trajectory, caplog):
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        await ask(access, "first")
        trajectory("t1").unlink()
        for n in range(3):
            await ask(access, f"after {n}")
        usage = await gw.close_trial(access.api_key)
    lines = read_trajectory(trajectory("t1"))
    assert [line["request"]["messages"][0]["content"] for line in lines] == ["first", "after 0", "after 1", "after 2"]
    assert usage.n_calls == 4
    recreated = f"{trajectory('t1')} was deleted during the trial; it was recreated with every line"
    assert usage.trajectory_error == recreated
    assert [r.getMessage() for r in caplog.records if r.name == "evalkit.gateway"] == [
        f"trajectory: {usage.trajectory_error}"
    ]


async def test_a_replaced_trajectory_is_reported(upstream, serve, open_trial, trajectory, tmp_path):
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        await ask(access, "first")
        for _ in range(250):  # the line is written by the writer thread, soon after the answer
            if trajectory("t1").stat().st_size:
                break
            await asyncio.sleep(0.02)
        impostor = tmp_path / "impostor"
        impostor.write_text("{}\n")
        impostor.rename(trajectory("t1"))
        await ask(access, "second")
        await ask(access, "third")
        usage = await gw.close_trial(access.api_key)
    assert trajectory("t1").read_text() == "{}\n"
    assert usage.n_calls == 3 and usage.trajectory_error == (
        f"{trajectory('t1')} was replaced by another file during the trial; later lines are lost"
        " (2 line(s) not written)"
    )


CHILD = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from evalkit.gateway import Gateway, LLMApiConfig

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
upstream, root = sys.argv[1], Path(sys.argv[2])

async def main():
    config = LLMApiConfig(model="smollm2", deployments=[{"model": "hosted_vllm/smollm2", "api_base": upstream}])
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # no file may grow past 8 KiB (the gateway inherits it)
    async with Gateway.serve(config, job_name="fsize", artifacts_dir=root / "artifacts") as gw:
        access = await gw.open_trial("t1", root / "t1" / "agent" / "litellm-trajectory.jsonl")
        print(json.dumps({"base_url": access.base_url, "key": access.api_key}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        usage = await gw.close_trial(access.api_key)
        print(usage.model_dump_json(), flush=True)

asyncio.run(main())
"""


async def test_a_write_error_is_marked_on_the_trial_and_never_reaches_the_agent(tmp_path):
    """A real EFBIG from the kernel (RLIMIT_FSIZE, inherited by the gateway process)."""
    async with FakeUpstream("fsize") as upstream:
        upstream.default = Reply(text="fine")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            upstream.url,
            str(tmp_path),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
            access = type("Access", (), {"base_url": info["base_url"], "api_key": info["key"]})
            answers = [await ask(access, "small"), await ask(access, "x" * 20_000), await ask(access, "small again")]
            proc.stdin.write(b"close\n")
            await proc.stdin.drain()
            usage = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
            stderr = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    path = tmp_path / "t1" / "agent" / "litellm-trajectory.jsonl"
    assert answers == ["fine"] * 3, "a failed write must never turn into an error for the agent"
    assert (usage["n_calls"], usage["n_errors"]) == (3, 0) and usage["input_tokens"] > 5000  # counted before I/O
    assert usage["trajectory_error"] == f"cannot write {path}: File too large (2 line(s) not written)"
    assert stderr.count("trajectory: cannot write") == 1, stderr
    [line] = read_trajectory(path)  # whole lines only: the partly written one was cut off
    assert line["request"]["messages"][0]["content"] == "small"


async def test_a_stalled_writer_never_stalls_the_loop_and_loses_no_line(tmp_path):
    release = threading.Event()

    class Stall:
        """Serialised in the writer thread, where it blocks as a write to a stalled disk would."""

        def __str__(self) -> str:
            release.wait(30)
            return "stalled"

    path = tmp_path / "agent" / "lines.jsonl"
    log = await asyncio.to_thread(open_log, path)
    writer = LineWriter(bound=2)
    try:
        writer.submit(log, {"n": 0, "stall": Stall()})
        writer.submit(log, {"n": 1})
        room = asyncio.create_task(writer.wait_for_room())
        await asyncio.sleep(0.1)  # the loop runs on while the writer thread is stuck...
        assert not room.done(), "...and new calls wait for room once the queue is at its bound"
        writer.submit(log, {"n": 2})  # a call already in flight still gets its line
        release.set()
        await asyncio.wait_for(room, 10)
        await writer.close(log)
    finally:
        release.set()
        await writer.stop()
    assert [orjson.loads(line) for line in path.read_bytes().splitlines()] == [
        {"n": 0, "stall": "stalled"},
        {"n": 1},
        {"n": 2},
    ]
    assert log.error is None
