"""Local model servers: the real llama.cpp server with SmolLM2, and vLLM's lifecycle against a fake `vllm` on PATH.

The llama.cpp tests use the model-server environment that `scripts/setup.sh` prepares (the default of
`ServeConfig.python`), so they also check that set-up produced a working server and model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from evalkit import serving
from evalkit.config import config_from_dict
from evalkit.errors import ConfigError, InfrastructureError
from evalkit.gateway import Gateway, LLMApiConfig
from evalkit.gateway.trajectory import read_trajectory
from evalkit.serving import ServeConfig, managed_llm_api, serve_local_model, server_command
from tests.conftest import REPO, popen_cli

FAKE_VLLM = Path(__file__).with_name("fake_vllm.py")
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z" and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`vllm` on PATH is the fake; yields the checkpoint directory to serve."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(f"#!{sys.executable}\n" + FAKE_VLLM.read_text())
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    yield checkpoint


async def start_error(cfg: ServeConfig, log_dir: Path, error: type[Exception], base_dir: Path | None = None) -> str:
    """The message of the error that starting `cfg` raises (failing the test if it starts)."""
    with pytest.raises(error) as caught:
        async with serve_local_model(cfg, log_dir=log_dir, base_dir=base_dir):
            raise AssertionError("unreachable")
    return str(caught.value)


def worker_pids(log: Path) -> list[int]:
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("worker ")]


# --- llama.cpp, for real ------------------------------------------------------------------------------------


async def test_llama_cpp_serves_smollm2_chat_and_stream(tmp_path: Path) -> None:
    name = unique_name("smollm2")
    async with serve_local_model(ServeConfig(served_model_name=name), log_dir=tmp_path / "logs") as endpoints:
        [endpoint] = endpoints
        assert endpoint.base_url.startswith("http://127.0.0.1:") and endpoint.base_url.endswith("/v1")
        client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="unused", max_retries=0)
        models = await client.models.list()
        assert [m.id for m in models.data] == [name]
        messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
        reply = await client.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0)
        text = reply.choices[0].message.content
        assert text and any(c.isalpha() for c in text), reply
        assert reply.usage.completion_tokens > 0
        stream = await client.chat.completions.create(
            model=name, messages=messages, max_tokens=24, temperature=0, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert len([p for p in pieces if p]) > 1, pieces  # arrived token by token
        assert any(c.isalpha() for c in "".join(pieces))
        await client.close()
        pid = endpoint.pid
        assert alive(pid)
    assert not alive(pid)
    assert not pids_with(name)
    assert "llama" in endpoint.log_path.read_text().lower()  # the server's own output went to the log


async def test_llama_cpp_returns_a_tool_call_with_chatml_function_calling(tmp_path: Path) -> None:
    name = unique_name("smollm2")
    cfg = ServeConfig(served_model_name=name, chat_format="chatml-function-calling")
    async with serve_local_model(cfg, log_dir=tmp_path) as [endpoint]:
        client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=64,
            temperature=0,
        )
        await client.close()
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    assert not pids_with(name)


async def test_concurrent_streams_on_one_replica_queue_instead_of_cutting_each_other(tmp_path: Path) -> None:
    name = unique_name("smollm2")
    async with serve_local_model(ServeConfig(served_model_name=name), log_dir=tmp_path) as [endpoint]:
        client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="unused", max_retries=0)

        async def stream() -> list:
            messages = [{"role": "user", "content": "Count from 1 to 50, separated by commas."}]
            chunks = await client.chat.completions.create(model=name, messages=messages, max_tokens=40, stream=True)
            return [c async for c in chunks if c.choices]

        streams = await asyncio.gather(stream(), stream(), stream())
        await client.close()
    for chunks in streams:  # an interrupted stream ends with [DONE] but without a finish_reason
        assert chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks[-1]


async def test_two_llama_cpp_replicas_get_their_own_ports(tmp_path: Path) -> None:
    name = unique_name("smollm2")
    async with serve_local_model(ServeConfig(served_model_name=name, replicas=2), log_dir=tmp_path) as endpoints:
        assert len({e.base_url for e in endpoints}) == 2
        assert len({e.pid for e in endpoints}) == 2
        assert [e.log_path.name for e in endpoints] == ["llama_cpp-0.log", "llama_cpp-1.log"]
        for endpoint in endpoints:
            client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="unused", max_retries=0)
            reply = await client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
            )
            assert reply.choices[0].message.content
            await client.close()
        assert len(pids_with(name)) == 2
    assert not pids_with(name)


async def test_job_llm_api_with_serve_reaches_the_model_through_the_gateway(tmp_path: Path) -> None:
    llm_api = LLMApiConfig.model_validate({"model": unique_name("smollm2"), "serve": {"replicas": 2}})
    async with managed_llm_api(llm_api, log_dir=tmp_path / "logs") as served:
        assert served.serve is None
        assert [d.model for d in served.deployments] == [f"hosted_vllm/{llm_api.model}"] * 2
        assert all(d.api_base and d.api_base.startswith("http://127.0.0.1:") for d in served.deployments)
        assert {k: v for k, v in served.model_dump().items() if k not in ("serve", "deployments")} == {
            k: v for k, v in llm_api.model_dump().items() if k not in ("serve", "deployments")
        }
        async with Gateway.serve(served, job_name=unique_name("model"), artifacts_dir=tmp_path) as gateway:
            trajectory = tmp_path / "trial" / "agent" / "litellm-trajectory.jsonl"
            access = await gateway.open_trial("t1", trajectory)
            client = openai.AsyncOpenAI(base_url=access.base_url, api_key=access.api_key, max_retries=0)
            messages = [{"role": "user", "content": "Write one short sentence about the sea."}]
            reply = await client.chat.completions.create(model=access.model, messages=messages, max_tokens=24)
            stream = await client.chat.completions.create(
                model=access.model, messages=messages, max_tokens=24, stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            # The SDK drops the connection as soon as it reads [DONE]: a stream delivered whole is no error
            # whatever ends the exchange after it (the hang-up, or the trial's close right after).
            await client.close()
            usage = await gateway.close_trial(access.api_key)
    assert reply.choices[0].message.content and streamed
    lines = list(read_trajectory(trajectory))
    assert [(line["stream"], line["status"]) for line in lines] == [(False, 200), (True, 200)]
    assert lines[0]["error"] is None and lines[1]["error"] is None
    assert usage.n_calls == 2 and usage.output_tokens > 0
    assert not pids_with(llm_api.model)


async def test_cancelling_during_start_up_leaves_no_server(tmp_path: Path) -> None:
    name = unique_name("smollm2")
    log_dir = tmp_path / "logs"

    async def serve() -> None:
        async with serve_local_model(ServeConfig(served_model_name=name, replicas=2), log_dir=log_dir):
            raise AssertionError("must be cancelled before the servers are healthy")

    task = asyncio.create_task(serve())
    for _ in range(600):  # until both servers are spawned (their logs exist), before they answer
        if len(pids_with(name)) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(pids_with(name)) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pids_with(name)


async def test_missing_model_file_is_a_config_error_and_starts_nothing(tmp_path: Path) -> None:
    message = await start_error(ServeConfig(model="models/nope.gguf"), tmp_path / "logs", ConfigError, tmp_path)
    assert message == f"serve.model: no such file: {tmp_path / 'models/nope.gguf'}"
    assert not (tmp_path / "logs").exists()


async def test_a_server_that_dies_at_start_up_is_an_infrastructure_error_with_its_log(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a GGUF file\n" * 100)
    name = unique_name("broken")
    message = await start_error(ServeConfig(model=str(bad), served_model_name=name), tmp_path / "logs", InfrastructureError)
    assert message.startswith("model server 0 (pid ")
    assert "during start-up; last lines of " + str(tmp_path / "logs" / "llama_cpp-0.log") in message
    assert "gguf" in message.lower()  # the loader's complaint, from the log tail
    assert not pids_with(name)


async def test_missing_server_environment_names_the_set_up_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python = tmp_path / "cache" / "evalkit" / "model-server" / f"py{sys.version_info[0]}.{sys.version_info[1]}" / "bin" / "python"
    assert await start_error(ServeConfig(), tmp_path / "logs", InfrastructureError) == (
        f"no llama.cpp server environment at {python}: run scripts/setup.sh "
        "(or set serve.python to a Python with llama-cpp-python[server])"
    )
    message = await start_error(ServeConfig(python=Path("nope/python")), tmp_path / "logs", ConfigError, tmp_path)
    assert message == f"serve.python: no such file: {tmp_path / 'nope/python'}"
    assert not (tmp_path / "logs").exists()


def test_llama_cpp_command_and_a_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "sk-secret")  # the server would read it as its own setting
    monkeypatch.setenv("N_CTX", "128")
    cfg = ServeConfig(threads=2, chat_format="chatml-function-calling", extra_args=["--n_batch", "256"])
    argv, env = server_command(cfg, python=Path("/py/bin/python"), model="/m.gguf", name="smollm2", port=8123, replica=0)
    assert argv == [
        "/py/bin/python", "-m", "llama_cpp.server", "--model", "/m.gguf", "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", "8123", "--n_ctx", "8192", "--n_threads", "2", "--n_threads_batch", "2",
        "--interrupt_requests", "False", "--chat_format", "chatml-function-calling", "--n_batch", "256",
    ]
    assert "API_KEY" not in env and "N_CTX" not in env
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "2"
    argv, _ = server_command(ServeConfig(context_size=4096), python=Path("p"), model="m", name="n", port=1, replica=0)
    assert "--chat_format" not in argv and argv[argv.index("--n_ctx") + 1] == "4096"


# --- vLLM: the command, and the lifecycle against a fake GPU server ---------------------------------------


def test_vllm_command_gives_each_replica_its_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", "/data/hf")
    cfg = ServeConfig(engine="vllm", model="/ckpt/step-1000", gpus_per_replica=2, context_size=32768,
                      extra_args=["--enable-prefix-caching"])
    argv, env = server_command(cfg, python=None, model="/ckpt/step-1000", name="policy", port=8001, replica=1)
    assert argv == [
        "vllm", "serve", "/ckpt/step-1000", "--served-model-name", "policy", "--host", "127.0.0.1",
        "--port", "8001", "--tensor-parallel-size", "2", "--max-model-len", "32768", "--enable-prefix-caching",
    ]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["HF_HOME"] == "/data/hf"  # a GPU node's environment reaches vLLM


async def test_vllm_lifecycle_against_a_fake_gpu_server(tmp_path: Path, fake_vllm: Path) -> None:
    name = unique_name("policy")
    cfg = ServeConfig(engine="vllm", model=str(fake_vllm), served_model_name=name, replicas=2)
    async with serve_local_model(cfg, log_dir=tmp_path / "logs") as endpoints:
        assert len({e.base_url for e in endpoints}) == 2
        for i, endpoint in enumerate(endpoints):
            log = endpoint.log_path.read_text()
            assert f"CUDA_VISIBLE_DEVICES {i}" in log
            client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="unused", max_retries=0)
            reply = await client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == f"fake vllm on port {endpoint.base_url.split(':')[2][:-3]}"
            await client.close()
        workers = [pid for e in endpoints for pid in worker_pids(e.log_path)]
        leaders = [e.pid for e in endpoints]
        assert len(workers) == 2 and all(alive(p) for p in workers + leaders)
    assert not any(alive(p) for p in workers + leaders)


async def test_cancellation_at_any_point_of_start_up_leaves_nothing(tmp_path: Path, fake_vllm: Path) -> None:
    for delay in (0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4):
        name = unique_name("cancel")
        cfg = ServeConfig(engine="vllm", model=str(fake_vllm), served_model_name=name, replicas=3)

        async def serve(cfg: ServeConfig = cfg) -> None:
            async with serve_local_model(cfg, log_dir=tmp_path / name):
                await asyncio.Event().wait()

        task = asyncio.create_task(serve())
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not pids_with(name), delay


async def test_a_server_that_ignores_sigterm_is_killed(
    tmp_path: Path, fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_IGNORE_TERM", "1")
    monkeypatch.setattr(serving, "STOP_GRACE_SEC", 0.5)
    cfg = ServeConfig(engine="vllm", model=str(fake_vllm), served_model_name=unique_name("stubborn"))
    async with serve_local_model(cfg, log_dir=tmp_path) as [endpoint]:
        pids = [endpoint.pid, *worker_pids(endpoint.log_path)]
        assert len(pids) == 2
    assert not any(alive(p) for p in pids)


@pytest.mark.parametrize(
    ("env", "timeout", "fragments"),
    [
        ({"FAKE_VLLM_EXIT": "7"}, 600, (" exited with code 7 during start-up; last lines of ",
                                        "  RuntimeError: CUDA error: no CUDA-capable device is detected")),
        ({"FAKE_VLLM_SILENT": "1"}, 1, (" did not answer GET /v1/models within 1 s; last lines of ",
                                        "  CUDA_VISIBLE_DEVICES 0")),
    ],
)
async def test_vllm_that_fails_at_start_up_is_stopped_with_its_workers(
    tmp_path: Path, fake_vllm: Path, monkeypatch: pytest.MonkeyPatch, env: dict, timeout: float, fragments: tuple
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = unique_name("failing")
    cfg = ServeConfig(engine="vllm", model=str(fake_vllm), served_model_name=name, startup_timeout_sec=timeout)
    message = await start_error(cfg, tmp_path, InfrastructureError)
    assert message.startswith("model server 0 (pid ")
    assert all(f in message for f in fragments), message
    workers = worker_pids(tmp_path / "vllm-0.log")
    assert len(workers) == 1 and not alive(workers[0])
    assert not pids_with(name)


async def test_a_port_taken_by_another_server_is_not_mistaken_for_ours(tmp_path: Path, fake_vllm: Path) -> None:
    other = ServeConfig(engine="vllm", model=str(fake_vllm), served_model_name=unique_name("other"))
    async with serve_local_model(other, log_dir=tmp_path / "other") as [taken]:
        port = int(taken.base_url.split(":")[2][: -len("/v1")])
        name = unique_name("ours")
        ours = ServeConfig(engine="vllm", model=str(fake_vllm), served_model_name=name, port=port)
        message = await start_error(ours, tmp_path / "ours", InfrastructureError)
        assert " exited with code 1 during start-up; " in message and "Address already in use" in message
        assert not pids_with(name)


async def test_vllm_missing_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    # A hub id is passed on unchecked (vLLM downloads it), so the start itself fails here.
    message = await start_error(ServeConfig(engine="vllm", model="org/model"), tmp_path / "logs", InfrastructureError)
    assert message == "cannot start model server 0: vllm: No such file or directory"


async def test_vllm_checkpoint_path_must_exist(tmp_path: Path) -> None:
    message = await start_error(ServeConfig(engine="vllm", model="./ckpt"), tmp_path, ConfigError, tmp_path)
    assert message == f"serve.model: no such path: {tmp_path / 'ckpt'}"


# --- config and command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("llm_api", "message"),
    [
        ({"model": "m"}, "give either `deployments` (servers already running) or `serve` (evalkit starts them)"),
        (
            {"model": "m", "serve": {}, "deployments": [{"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1"}]},
            "give either `deployments` (servers already running) or `serve` (evalkit starts them)",
        ),
        ({"model": "m", "serve": {"engine": "vllm"}}, "model is required for engine vllm"),
        ({"model": "m", "serve": {"port": 65535, "replicas": 2}}, "port 65535 + 2 replicas runs past port 65535"),
        ({"model": "m", "serve": {"engine": "sglang"}}, "llm_api.serve.engine"),
        ({"model": "m", "serve": {"gpus": 2}}, "llm_api.serve.gpus"),
    ],
)
def test_serve_block_errors_name_the_field_and_file(llm_api: dict, message: str, tmp_path: Path) -> None:
    data = {"job_name": "j", "dataset": {"path": str(tmp_path)}, "llm_api": llm_api}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, base_dir=tmp_path, source="config.yaml")
    assert "config.yaml" in str(caught.value) and message in str(caught.value)


def test_evalkit_serve_prints_urls_and_stops_on_ctrl_c(tmp_path: Path, fake_vllm: Path) -> None:
    name = unique_name("cli")
    proc = popen_cli("serve", "--engine", "vllm", "--model", str(fake_vllm), "--name", name, "--replicas", "2",
                     "--log-dir", str(tmp_path / "logs"))
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert lines[0] == f"starting 2 vllm server(s); logs in {tmp_path / 'logs'}/\n"
    assert all(line.startswith("  http://127.0.0.1:") and f"model {name}" in line for line in lines[1:3])
    assert lines[3] == "ready; Ctrl-C stops the servers\n"
    assert (proc.returncode, out, err) == (0, "stopped\n", "")
    assert not pids_with(name)


def test_evalkit_serve_interrupted_during_start_up(tmp_path: Path, fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_SILENT", "1")
    name = unique_name("cli")
    proc = popen_cli("serve", "--engine", "vllm", "--model", str(fake_vllm), "--name", name, "--log-dir", str(tmp_path))
    try:
        assert proc.stdout.readline().startswith("starting 1 vllm server(s)")
        for _ in range(500):  # until the server runs (and stays silent)
            if pids_with(name):
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "interrupted during start-up; servers stopped\n", "")
    assert not pids_with(name)


def test_serve_script_reports_a_missing_model(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "serve_local_model.sh"), "--model", str(tmp_path / "x.gguf")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.endswith(f"evalkit: error: serve.model: no such file: {tmp_path / 'x.gguf'}\n")
    assert not (tmp_path / "artifacts").exists()


def test_evalkit_gateway_starts_the_model_servers_of_a_serve_block(tmp_path: Path, fake_vllm: Path) -> None:
    """`evalkit gateway` with a Mode B `llm_api` starts its servers as `evalkit run` does, answers through them,
    and stops them (and itself) on Ctrl-C."""
    name = unique_name("gw-cli")
    config = {"job_name": name, "dataset": {"path": "tasks"},
              "llm_api": {"model": name, "serve": {"engine": "vllm", "model": str(fake_vllm), "replicas": 2}}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    proc = popen_cli("gateway", str(tmp_path / "config.yaml"), "--key", "ek-fixed", cwd=tmp_path)
    try:
        first = proc.stdout.readline()
        url = first.split(": ", 1)[1].split()[0]
        client = openai.OpenAI(base_url=url + "/v1", api_key="ek-fixed", max_retries=0)
        ports = set()
        for _ in range(4):
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
            ports.add(reply.choices[0].message.content)
        client.close()
        assert len(pids_with(name)) >= 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert first.startswith(f"evalkit gateway for job {name}: http://127.0.0.1:") and f"(model {name})" in first
    assert all(p.startswith("fake vllm on port ") for p in ports)
    assert (proc.returncode, err) == (0, "")
    assert "stopped: 4 calls, 0 errors" in out
    logs = tmp_path / "artifacts" / "litellm" / name / "model-server"
    assert len(list(logs.iterdir())) == 2
    assert not pids_with(name)
