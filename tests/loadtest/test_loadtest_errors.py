"""Bad input and failures: exact messages, distinct exit codes, nothing sent where it should not go, nothing left
behind (no output written for a refused test, no gateway process after one)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import REPO
from tests.loadtest.conftest import cli_env, gateway_processes, loadtest_cli
from tests.loadtest.timed_server import TimedServer


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loadtest.yaml"
    path.write_text(text)
    return path


CONFIG_ERRORS = [
    (
        "model: m\nendpoints: [http://127.0.0.1:9/v1]\nsynthetic:\n  prompt_tokns: 3\nloadz: [1]\n",
        "invalid config:\n"
        "  {path}:4: synthetic.prompt_tokns: unknown key; did you mean 'prompt_tokens' or 'output_tokens'?\n"
        "  {path}:5: loadz: unknown key; did you mean 'loads'?",
    ),
    (
        "model: m\nendpoints: [ftp://x/v1]\nsynthetic: {}\n",
        "invalid config:\n  {path}:2: endpoints: Value error, endpoints[0]: 'ftp://x/v1' is not an http(s) URL with a host",
    ),
    (
        "model: m\nendpoints: ['http://user:pw@127.0.0.1:8000/v1']\nsynthetic: {}\n",
        "invalid config:\n  {path}:2: endpoints: Value error, endpoints[0]: put no credentials in the URL; "
        "name the key's variable in api_key_env",
    ),
    (
        "model: m\nendpoints: [http://127.0.0.1:9/v1]\n",
        "invalid config:\n  {path}: <root>: Value error, give either `synthetic` or `replay`",
    ),
    (
        "model: m\nsynthetic: {}\n",
        "invalid config:\n  {path}: <root>: Value error, give either `endpoints` (sent to directly) or `llm_api` "
        "(through an evalkit gateway)",
    ),
    (
        "model: m\nendpoints: [http://127.0.0.1:9/v1]\nreplay: {jobs: [x]}\narrival: rate\n",
        "invalid config:\n  {path}: <root>: Value error, a replay runs whole trials: arrival must be `concurrency` "
        "(trials in flight)",
    ),
    (
        "model: m\nsynthetic: {}\nllm_api:\n  model: m\n  deployments: [{model: anthropic/claude}]\n",
        "invalid config:\n  {path}: <root>: Value error, llm_api.deployments[0].api_base: required (only given "
        "addresses are used)",
    ),
    (
        "model: m\nendpoints: [http://127.0.0.1:9/v1]\nsynthetic: {}\nloads: [0]\n",
        "invalid config:\n  {path}:4: loads: Value error, every load must be > 0",
    ),
    ("model: [unclosed\n", "{path}:2:1: malformed YAML: expected ',' or ']', but got '<stream end>'"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
async def test_config_mistakes_name_the_field_and_the_file_and_write_nothing(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _yaml(tmp_path, text)
    run = await loadtest_cli(str(path), out=tmp_path / "out")
    assert run.code == 2
    assert run.stderr.strip() == "evalkit: error: " + message.format(path=path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "m"], "invalid config:\n  command line: <root>: Value error, give either `endpoints` (sent to "
                           "directly) or `llm_api` (through an evalkit gateway)"),
        (["--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--loads", "1,x"],
         "--loads: expected numbers separated by commas, got '1,x'"),
        (["--endpoint", "http://127.0.0.1:9/v1", "--via-gateway"],
         "--via-gateway: give --model (the name the gateway serves and the endpoints know)"),
        (["--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--replay", "/nonexistent-job"],
         "replay.jobs[0]: /nonexistent-job does not exist (or is a symlink)"),
        (["--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "EVALKIT_LOADTEST_UNSET"],
         "api_key_env: environment variable EVALKIT_LOADTEST_UNSET is not set"),
        (["--endpoint", "http://127.0.0.1:9/v1", "--model", "m"],
         "cannot connect to http://127.0.0.1:9/v1: Connection refused"),
    ],
)
async def test_flag_mistakes_and_unreachable_addresses_stop_before_any_output(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run = await loadtest_cli(*args, out=tmp_path / "out")
    assert run.stderr.strip() == "evalkit: error: " + message
    assert run.code == (3 if message.startswith("cannot connect") else 2)
    assert not (tmp_path / "out").exists()


async def test_a_replay_of_a_job_without_model_calls_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "t__0" / "agent").mkdir(parents=True)
    (job / "t__0" / "agent" / "litellm-trajectory.jsonl").write_text('{"torn": ')
    os.symlink("/etc/hostname", job / "t__0" / "agent" / "other.jsonl")
    async with TimedServer() as server:
        run = await loadtest_cli("--replay", str(job), "--endpoint", server.url, "--model", "m", out=tmp_path / "out")
    assert run.code == 2
    assert run.stderr.strip() == f"evalkit: error: replay.jobs: no recorded model calls to replay in {job}"
    assert server.arrivals == []


async def test_redirects_are_not_followed_and_count_as_errors(tmp_path: Path) -> None:
    async with TimedServer("elsewhere") as elsewhere:

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(elsewhere.url + "/chat/completions")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", moved)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
            run = await loadtest_cli("--endpoint", url, "--model", "m", "--max-requests", "3", out=tmp_path / "out")
        finally:
            await runner.cleanup()
    assert run.code == 1, run.stderr
    step = run.report["steps"][0]
    assert step["errors"] == {"redirect": 3} and step["completed"] == 0 and step["error_rate"] == 1.0
    assert elsewhere.arrivals == [], "the redirect's target got nothing"


async def test_http_errors_and_broken_streams_are_counted_by_kind(tmp_path: Path) -> None:
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        await request.read()
        if calls["n"] % 3 == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n')
        if calls["n"] % 3 == 2:
            request.transport.close()  # cut mid-stream
            return response
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", flaky)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        run = await loadtest_cli("--endpoint", url, "--model", "m", "--max-requests", "6", out=tmp_path / "out")
    finally:
        await runner.cleanup()
    assert run.code == 1
    step = run.report["steps"][0]
    assert step["errors"] == {"http_429": 2, "stream": 2} and step["completed"] == 2
    assert step["error_rate"] == pytest.approx(4 / 6)


async def test_ctrl_c_stops_the_gateway_and_writes_the_finished_steps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with TimedServer(ttft=30, itl=0.01, tokens=2) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evalkit", "loadtest", "--endpoint", server.url, "--via-gateway", "--model", "m",
            "--max-requests", "2", "--out", str(out), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(out),
        )
        try:
            async with asyncio.timeout(120):
                while not server.arrivals:  # the request went through the gateway and is being answered
                    await asyncio.sleep(0.05)
            assert len(gateway_processes(out)) == 1
            process.send_signal(signal.SIGINT)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 130
    assert stderr.decode().strip().endswith(f"evalkit: interrupted; finished steps are in {out / 'loadtest.json'}")
    report = (out / "loadtest.json").read_text()
    assert '"interrupted": true' in report and '"steps": []' in report
    assert gateway_processes(out) == []
    assert not list(out.glob(".loadtest.json.*")), "no half-written report"


async def test_a_gateway_that_cannot_start_is_a_config_error_and_leaves_no_process(tmp_path: Path) -> None:
    async with TimedServer() as server:
        path = _yaml(tmp_path, "model: m\nsynthetic: {}\nllm_api:\n  model: m\n  deployments:\n"
                               f"    - {{model: hosted_vllm/m, api_base: '{server.url}', api_key_env: EVALKIT_LT_UNSET}}\n")
        run = await loadtest_cli(str(path), out=tmp_path / "out")
    assert server.arrivals == []
    assert run.code == 2, run.stderr
    assert run.stderr.strip() == ("evalkit: error: llm_api.deployments[0].api_key_env: environment variable "
                                  "EVALKIT_LT_UNSET is not set")
    assert gateway_processes(tmp_path / "out") == []
    assert not (tmp_path / "out" / "loadtest.json").exists()


async def test_a_replay_sends_only_known_endpoints_on_the_given_address_and_reports_what_it_skipped(
    tmp_path: Path,
) -> None:
    def line(seq: int, endpoint: str, **fields: object) -> str:
        call = {"v": 1, "trial_id": "t", "seq": seq, "endpoint": endpoint, "protocol": "openai_chat", "stream": True,
                "status": 200, "timing": {"start": 100.0 + seq, "first_byte": 100.1 + seq, "end": 100.2 + seq}}
        return json.dumps({**call, **fields}) + "\n"

    messages = [{"role": "user", "content": "hello"}]
    trajectory = tmp_path / "job" / "t__0" / "agent" / "litellm-trajectory.jsonl"
    trajectory.parent.mkdir(parents=True)
    trajectory.write_text(
        line(0, "/v1/chat/completions", request={"model": "recorded", "messages": messages, "stream": True})
        + line(1, "http://127.0.0.1:9/v1/chat/completions", request={"model": "x", "messages": messages})
        + line(2, "/v1/responses", request={"model": "x", "input": "hi"})
        + line(3, "/v1/chat/completions", request_raw="not json")
        + '{"torn": '
    )
    async with TimedServer(ttft=0.01, itl=0.001, tokens=2) as server:
        run = await loadtest_cli("--replay", str(tmp_path / "job"), "--endpoint", server.url, "--model", "m",
                                 "--max-requests", "1", out=tmp_path / "out")
    assert run.code == 0, run.stderr
    assert run.report["replay"] == {
        "trials": 1, "calls": 1,
        "skipped": {"endpoint http://127.0.0.1:9/v1/chat/completions": 1, "endpoint /v1/responses": 1,
                    "request not recorded as JSON": 1},
        "problems": ["t__0/agent/litellm-trajectory.jsonl: line 5 is not a JSON object (torn: no newline)"],
    }
    assert [(a.path, a.body["model"], a.body["messages"]) for a in server.arrivals] == [
        ("/v1/chat/completions", "m", messages)
    ]
    assert server.arrivals[0].body["stream_options"] == {"include_usage": True}
