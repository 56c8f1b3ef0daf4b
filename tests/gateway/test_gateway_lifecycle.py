"""Keys, secrets, usage and cost, closing trials and gateways with calls in flight, config errors, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
import yaml
from fake_upstream import Fail, FakeUpstream, Hang, Reply
from gateway_testing import MODEL, admin_health, anthropic_client, openai_client, read_trajectory

from evalkit.errors import ConfigError
from evalkit.gateway import Gateway, LLMApiConfig
from evalkit.gateway.gateway import router_config

SECRET = "sk-upstream-secret-0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keyed_config(upstream, monkeypatch) -> LLMApiConfig:
    monkeypatch.setenv("FAKE_VLLM_KEY", SECRET)
    return LLMApiConfig(
        model=MODEL,
        deployments=[
            {
                "model": f"hosted_vllm/{MODEL}",
                "api_base": upstream.url,
                "api_key_env": "FAKE_VLLM_KEY",
                "usd_per_million_input": 1.0,
                "usd_per_million_output": 2.0,
            }
        ],
    )


async def test_upstream_key_is_used_upstream_and_written_nowhere(
    upstream, keyed_config, serve, open_trial, tmp_path, artifacts
):
    upstream.script = [Reply(), Fail(401), Reply()]
    async with serve(keyed_config) as gw:
        access = await open_trial(gw, "t1")
        assert SECRET not in access.model_dump_json()
        async with openai_client(access) as client:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        async with anthropic_client(access) as client:
            await client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert [r.headers["Authorization"] for r in upstream.received] == [f"Bearer {SECRET}"] * 3
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "litellm-trajectory.jsonl" for p in files)
    for path in files:
        text = path.read_text()
        assert SECRET not in text and access.api_key not in text and gw.admin_key not in text, path
    router = yaml.safe_load((artifacts / "litellm" / "job" / "router.yaml").read_text())
    params = router["model_list"][0]["litellm_params"]
    assert params["api_key"] == "os.environ/FAKE_VLLM_KEY" and params["api_base"] == upstream.url
    assert router["evalkit"]["url"] == gw.url


async def test_health_shows_no_map_without_the_admin_key(upstream, keyed_config, serve, open_trial):
    """No key: a bare status. A trial's key: health per deployment, but no names, addresses or counts (every
    agent holds one). Names and counts only with the gateway's admin key, which no trial is given."""
    async with serve(keyed_config) as gw, aiohttp.ClientSession() as session:
        access = await open_trial(gw, "t1")
        views = []
        for headers in ({}, {"Authorization": f"Bearer {access.api_key}"}, {"x-api-key": "ek-made-up"}):
            async with session.get(gw.url + "/health", headers=headers) as resp:
                views.append((resp.status, await resp.text()))
        admin = await admin_health(gw)
    bare, trial, unknown = views
    assert bare == unknown == (200, '{"status":"ok"}')
    assert trial == (200, '{"status":"ok","model":"smollm2","deployments":[{"healthy":true,"cooldown_sec":0.0}]}')
    assert str(upstream.port) not in bare[1] + trial[1] and gw.admin_key not in access.model_dump_json()
    assert admin["deployments"] == [
        {"healthy": True, "cooldown_sec": 0.0, "name": f"hosted_vllm/{MODEL}@{upstream.url}", "in_flight": 0,
         "pinned_trials": 0, "home_trials": 0}
    ]  # fmt: skip
    assert admin["open_trials"] == 1


async def test_upstream_address_reaches_no_agent_and_url_credentials_no_file(serve, open_trial, tmp_path):
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # a dead upstream: its connection errors quote its address
    config = LLMApiConfig(
        model=MODEL,
        deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": f"http://evalkit:pw-0123@127.0.0.1:{port}/v1"}],
        max_retries=0,
    )
    async with serve(config) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            with pytest.raises(openai.APIStatusError) as from_openai:
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        async with anthropic_client(access) as client:
            with pytest.raises(anthropic.APIStatusError) as from_anthropic:
                await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        usage = await gw.close_trial(access.api_key)
    told = [str(from_openai.value), str(from_anthropic.value)]
    files = [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    assert usage.n_errors == 2 and any("upstream unavailable: ClientConnectorError" in text for text in files)
    for text in told:  # the host's files may name the deployment (its label); an agent learns nothing of it
        assert "pw-0123" not in text and str(port) not in text and "127.0.0.1" not in text, text
    for text in files:
        assert "pw-0123" not in text, text


async def test_usage_and_cost_are_summed_per_trial(upstream, keyed_config, serve, open_trial, trajectory):
    async with serve(keyed_config) as gw:
        a, b = await open_trial(gw, "a"), await open_trial(gw, "b")
        async with openai_client(a) as client:
            for _ in range(3):
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello there"}])
        async with openai_client(b) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            [_ async for _ in stream]
        usage_a, usage_b = await gw.close_trial(a.api_key), await gw.close_trial(b.api_key)
    lines = read_trajectory(trajectory("a"))
    assert usage_a.n_calls == 3 and usage_a.input_tokens == sum(line["usage"]["input_tokens"] for line in lines)
    assert usage_a.output_tokens == sum(line["usage"]["output_tokens"] for line in lines)
    assert usage_a.cost_usd == pytest.approx(usage_a.input_tokens * 1e-6 + usage_a.output_tokens * 2e-6)
    assert usage_b.n_calls == 1 and usage_b.output_tokens > 0 and usage_b.cost_usd > 0


async def test_closing_a_trial_cancels_its_calls_in_flight(upstream, serve, open_trial, trajectory):
    upstream.default = Hang()
    config = LLMApiConfig(model=MODEL, deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url}])
    async with serve(config) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            call = asyncio.create_task(
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            )
            while not upstream.received:
                await asyncio.sleep(0.01)
            usage = await asyncio.wait_for(gw.close_trial(access.api_key), 5)
            with pytest.raises(openai.APIConnectionError):
                await call
    assert (usage.n_calls, usage.n_errors) == (1, 1)
    [line] = read_trajectory(trajectory("t1"))
    assert line["error"] == "trial closed" and line["status"] is None


async def test_leaving_the_gateway_closes_trials_and_leaves_no_tasks(upstream, serve, open_trial, trajectory):
    upstream.default = Hang()
    config = LLMApiConfig(model=MODEL, deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url}])
    before = asyncio.all_tasks()
    client = None
    async with serve(config) as gw:
        client = openai_client(await open_trial(gw, "t1"))
        call = asyncio.create_task(
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        )
        while not upstream.received:
            await asyncio.sleep(0.01)
    with pytest.raises(openai.APIConnectionError):
        await call
    await client.close()
    [line] = read_trajectory(trajectory("t1"))
    assert line["error"] == "gateway stopped"
    await asyncio.sleep(0.05)
    left = {t for t in asyncio.all_tasks() - before if "litellm" not in repr(t.get_coro())} - {asyncio.current_task()}
    assert left == set()


async def test_leaving_on_cancellation_still_closes_everything(upstream, artifacts, tmp_path):
    config = LLMApiConfig(model=MODEL, deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url}])
    opened = asyncio.Event()
    path = tmp_path / "t1" / "agent" / "litellm-trajectory.jsonl"
    url = ""

    async def job() -> None:
        nonlocal url
        async with Gateway.serve(config, job_name="job", artifacts_dir=artifacts) as gw:
            url = gw.url
            access = await gw.open_trial("t1", path)
            async with openai_client(access) as client:
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            opened.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(job())
    await opened.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(read_trajectory(path)) == 1
    with pytest.raises(openai.APIConnectionError):  # the port is closed
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            await client.models.list()


async def test_missing_key_variable_is_a_config_error(upstream, artifacts, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = LLMApiConfig(model=MODEL, deployments=[{"model": "openai/gpt-4o", "api_key_env": "NOT_SET_ANYWHERE"}])
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        async with Gateway.serve(config, job_name="job", artifacts_dir=artifacts):
            pass


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ({"model": "hosted_vllm/m", "api_base": "http://h/v1", "api_key_env": "sk-pasted-key"}, "api_key_env"),
        (
            {"model": "hosted_vllm/m", "api_base": "http://h/v1", "litellm_params": {"aws_secret_access_key": "x"}},
            "looks like a secret",
        ),
        ({"model": "smollm2"}, "model"),
        ({"model": "hosted_vllm/m", "api_base": "http://h/v1", "typo": 1}, "typo"),
        ({"model": "hosted_vllm/m"}, "api_base is required"),
    ],
)
def test_config_rejects_secrets_and_unknown_keys(deployment, message):
    with pytest.raises(ValueError, match=message):
        LLMApiConfig(model="m", deployments=[deployment])


def test_router_config_strips_credentials_from_urls():
    config = LLMApiConfig(
        model="m", deployments=[{"model": "hosted_vllm/m", "api_base": "http://user:pw@10.0.0.1:8000/v1"}]
    )
    router = router_config(config, "job", "http://127.0.0.1:1")
    assert router["model_list"][0]["litellm_params"]["api_base"] == "http://10.0.0.1:8000/v1"
    assert "pw" not in yaml.safe_dump(router)


def test_config_rejects_indistinguishable_deployments():
    with pytest.raises(ValueError, match="distinct `name`s"):
        LLMApiConfig(model="m", deployments=[{"model": "hosted_vllm/m", "api_base": "http://a/v1"}] * 2)


async def test_cli_serves_an_adhoc_key_until_sigint(tmp_path):
    """`evalkit gateway config.yaml --key K` in its own process: a call with K is logged; SIGINT stops it."""
    async with FakeUpstream("cli") as up:
        up.default = Reply(text="from the cli")
        config = {
            "job_name": "cli-job",
            "dataset": {"path": "tasks"},
            "llm_api": {"model": MODEL, "deployments": [{"model": f"hosted_vllm/{MODEL}", "api_base": up.url}]},
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        script = "import sys; from evalkit.cli import main; sys.exit(main(sys.argv[1:]))"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            "gateway",
            str(tmp_path / "config.yaml"),
            "--key",
            "ek-fixed",
            cwd=REPO,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            url = first.split(": ", 1)[1].split()[0]
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="ek-fixed", max_retries=0) as client:
                answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            proc.send_signal(signal.SIGINT)
            out = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert answer.choices[0].message.content == "from the cli"
    assert "stopped: 1 calls, 0 errors" in out
    [trajectory] = (tmp_path / "artifacts" / "litellm" / "cli-job").glob("adhoc-*/litellm-trajectory.jsonl")
    assert f"calls are logged to {trajectory}" in first + out
    [line] = read_trajectory(trajectory)
    assert line["trial_id"] == "adhoc" and line["status"] == 200
    socket_line = next(line for line in (first + out).splitlines() if "Unix socket" in line)
    assert not Path(socket_line.split(": ", 1)[1]).parent.exists(), "the route directory outlived the gateway"


README_MODE_A = """
llm_api:
  model: claude-sonnet
  deployments:
    - model: anthropic/claude-sonnet-4-5
      api_key_env: ANTHROPIC_API_KEY
"""

README_MODE_B = """
llm_api:
  model: smollm2
  deployments:
    - model: hosted_vllm/smollm2
      api_base: http://127.0.0.1:8000/v1
      max_in_flight: 64
    - model: hosted_vllm/smollm2
      api_base: http://127.0.0.1:8001/v1
  timeout_sec: 600
  max_retries: 3
  cooldown_sec: 30
"""


def test_readme_examples_are_valid_and_route_as_documented():
    mode_a = LLMApiConfig.model_validate(yaml.safe_load(README_MODE_A)["llm_api"])
    assert mode_a.deployments[0].native == {"anthropic_messages", "anthropic_count_tokens"}
    assert mode_a.deployments[0].api_root == "https://api.anthropic.com"
    mode_b = LLMApiConfig.model_validate(yaml.safe_load(README_MODE_B)["llm_api"])
    assert [d.api_root for d in mode_b.deployments] == ["http://127.0.0.1:8000", "http://127.0.0.1:8001"]
    assert mode_b.deployments[0].native == {"openai_chat"} and mode_b.deployments[0].upstream_model == "smollm2"
    assert LLMApiConfig(
        model="m", deployments=[{"model": "gemini/g", "litellm_params": {"drop_params": True, "max_tokens": 5}}]
    )
