"""Per-trial Unix-socket routes: a socket speaks for one trial only, with the real SDKs over it, streaming
included; closing the trial or the gateway removes it; the directories are private on the host and
reachable for any container user; it all works when evalkit is not root."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import anthropic
import httpx
from aiohttp import __file__ as aiohttp_file
import httpx2  # what this anthropic SDK is built on
import openai
import pytest
from fake_upstream import Reply
from gateway_testing import MODEL, read_trajectory, vllm_config

from evalkit.errors import InfrastructureError
from evalkit.gateway.routes import MAX_SOCKET_PATH, SOCKET_NAME, RouteDirs

REPO = Path(__file__).resolve().parents[2]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def uds_client(access, **kwargs) -> httpx.AsyncClient:
    """An httpx client whose every request goes over the trial's socket (the host part of the URL is ignored)."""
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(access.socket_path)), base_url="http://gateway", **kwargs
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_socket_speaks_for_its_own_trial_only(upstream, serve, open_trial, trajectory, artifacts):
    upstream.default = Reply(text="over the socket", chunks=3)
    async with serve(vllm_config(upstream)) as gw:
        a, b = await open_trial(gw, "a"), await open_trial(gw, "b")
        assert a.socket_path != b.socket_path and a.socket_path.name == SOCKET_NAME
        async with uds_client(a) as http:
            ok = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(a.api_key))
            async with http.stream(
                "POST", "/v1/chat/completions", json=CHAT | {"stream": True}, headers=bearer(a.api_key)
            ) as streamed:
                events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
            other = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(b.api_key))
            admin = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(gw.admin_key))
            anonymous = await http.post("/v1/chat/completions", json=CHAT)
            bare = (await http.get("/health")).json()
            keyed = (await http.get("/health", headers=bearer(a.api_key))).json()
            other_health = (await http.get("/health", headers=bearer(b.api_key))).json()
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "over the socket"
    assert events[-1] == "data: [DONE]" and len(events) >= 4
    refusals = ((other, "not this route's key"), (admin, "not this route's key"), (anonymous, "missing key"))
    for refused, reason in refusals:
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == f"{reason}: use the key evalkit gave this trial"
    assert bare == other_health == {"status": "ok"}
    assert keyed == {"status": "ok", "model": MODEL, "deployments": [{"healthy": True, "cooldown_sec": 0.0}]}
    assert len(read_trajectory(trajectory("a"))) == 2 and read_trajectory(trajectory("b")) == []
    rejected = read_trajectory(artifacts / "litellm" / "job" / "rejected.jsonl")
    assert [(r["reason"], r["route"]) for r in rejected] == [
        ("not this route's key", "a"),
        ("not this route's key", "a"),
        ("missing key", "a"),
    ]
    assert all(a.api_key not in str(r) and b.api_key not in str(r) for r in rejected)


async def test_the_real_sdks_work_over_the_socket(upstream, serve, open_trial, trajectory):
    upstream.default = Reply(text="Hello through the route.", chunks=4)
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with (
            uds_client(access) as http_openai,
            httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(access.socket_path))) as http_anthropic,
            openai.AsyncOpenAI(
                base_url="http://gateway/v1", api_key=access.api_key, http_client=http_openai, max_retries=0
            ) as oa,
            anthropic.AsyncAnthropic(
                base_url="http://gateway", api_key=access.api_key, http_client=http_anthropic, max_retries=0
            ) as an,
        ):
            completion = await oa.chat.completions.create(**CHAT)
            stream = await oa.chat.completions.create(**CHAT, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            async with an.messages.stream(model=MODEL, max_tokens=50, messages=CHAT["messages"]) as events:
                final = await events.get_final_message()
            assert [m.id async for m in oa.models.list()] == [MODEL]
    assert completion.choices[0].message.content == text == final.content[0].text == "Hello through the route."
    lines = read_trajectory(trajectory("t1"))
    assert [(line["protocol"], line["stream"], line["route"]) for line in lines] == [
        ("openai_chat", False, "passthrough"),
        ("openai_chat", True, "passthrough"),
        ("anthropic_messages", True, "translated"),
    ]


async def test_route_directories_are_private_on_the_host_and_open_to_container_users(upstream, serve, open_trial):
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        path = access.socket_path
        modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in (path, path.parent, gw.routes_dir, gw.routes_dir.parent)}
        owners = {os.lstat(p).st_uid for p in modes}
        kind = stat.S_ISSOCK(os.lstat(path).st_mode)
    assert kind and len(str(path).encode()) <= MAX_SOCKET_PATH
    assert modes == {path: 0o666, path.parent: 0o755, gw.routes_dir: 0o700, gw.routes_dir.parent: 0o700}
    assert owners == {os.getuid()}
    assert str(access.container_socket_path) == "/run/evalkit/model/gateway.sock"


async def test_closing_a_trial_or_the_gateway_removes_its_route(upstream, serve, open_trial):
    upstream.default = Reply(text="x")
    async with serve(vllm_config(upstream)) as gw:
        a, b = await open_trial(gw, "a"), await open_trial(gw, "b")
        async with uds_client(a) as kept_alive:
            assert (await kept_alive.post("/v1/chat/completions", json=CHAT, headers=bearer(a.api_key))).is_success
            await gw.close_trial(a.api_key)
            assert not a.socket_path.exists() and list(a.socket_path.parent.iterdir()) == []
            with pytest.raises(httpx.TransportError):  # the open keep-alive connection was closed with the trial
                await kept_alive.post("/v1/chat/completions", json=CHAT, headers=bearer(a.api_key))
        async with uds_client(a) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.post("/v1/chat/completions", json=CHAT, headers=bearer(a.api_key))
        await gw.release_route(a)  # once no container mounts it
        routes = gw.routes_dir
        assert [p.name for p in routes.iterdir()] == [b.socket_path.parent.name]
    assert not routes.exists(), "the gateway's route directory outlived it"
    assert not b.socket_path.exists()


def test_a_route_base_someone_else_controls_is_refused(tmp_path):
    squatted = tmp_path / "squatted"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 65534, 65534) if os.getuid() == 0 else squatted.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    cases = [link] + ([squatted] if os.getuid() == 0 else [])
    for base in cases:
        with pytest.raises(InfrastructureError) as caught:
            RouteDirs.create(base)
        assert str(caught.value) == (
            f"refusing {base} for the model routes: it is not a directory owned by uid {os.getuid()}"
        )
    loose = Path(tempfile.mkdtemp(prefix="ek-"))  # short: socket paths must fit in 107 bytes
    try:
        loose.chmod(0o755)
        dirs = RouteDirs.create(loose)
        assert stat.S_IMODE(loose.stat().st_mode) == 0o700 and dirs.root.parent == loose
        assert dirs.root.name.startswith(f"{os.getpid()}-")  # the owner's pid, for the sweep of stale ones
        dirs.remove()
        assert list(loose.iterdir()) == []
    finally:
        shutil.rmtree(loose, ignore_errors=True)


def test_a_base_too_long_for_socket_paths_is_refused(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.parent.mkdir()
    with pytest.raises(InfrastructureError, match=r"would exceed 107 bytes: set XDG_RUNTIME_DIR to a short path"):
        RouteDirs.create(deep)
    assert list(deep.iterdir()) == []


NON_ROOT = """
import asyncio, json, os, sys
from pathlib import Path
from evalkit.gateway import Gateway, LLMApiConfig
from evalkit.gateway.translate import load_litellm

load_litellm()  # imported as root: this interpreter's standard library may sit where nobody can read it
if os.getuid() == 0:  # from here on an ordinary user, as evalkit usually runs
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.environ.pop("XDG_RUNTIME_DIR", None)

async def main():
    config = LLMApiConfig(model="smollm2", deployments=[{"model": "hosted_vllm/smollm2", "api_base": sys.argv[1]}])
    root = Path(sys.argv[2])
    async with Gateway.serve(config, job_name="nonroot", artifacts_dir=root / "artifacts") as gw:
        access = await gw.open_trial("t1", root / "t1" / "agent" / "litellm-trajectory.jsonl")
        print(json.dumps({"socket": str(access.socket_path), "key": access.api_key, "uid": os.getuid()}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        print((await gw.close_trial(access.api_key)).model_dump_json(), flush=True)

asyncio.run(main())
"""


def python_anyone_can_run() -> str:
    """This interpreter, or the system's of the same version when this one sits where an ordinary user cannot
    reach it (a pyenv under /root): the gateway process is a fresh interpreter started as that user."""
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        path = Path(candidate).resolve()
        if path.exists() and all(os.stat(d).st_mode & 0o001 for d in path.parents) and os.stat(path).st_mode & 0o005:
            return candidate
    raise AssertionError("no Python interpreter an ordinary user can run")


async def test_routes_work_when_evalkit_is_not_root(upstream):
    upstream.default = Reply(text="as nobody")
    root = Path(tempfile.mkdtemp(prefix="evalkit-gateway-nonroot-"))
    site_packages = str(Path(aiohttp_file).parent.parent)
    try:
        if os.getuid() == 0:
            os.chown(root, 65534, 65534)
        proc = await asyncio.create_subprocess_exec(
            python_anyone_can_run(), "-c", NON_ROOT, upstream.url, str(root), cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), site_packages])},
        )  # fmt: skip
        try:
            info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
            socket_path = Path(info["socket"])
            owner = os.lstat(socket_path).st_uid
            access = type("Access", (), {"socket_path": socket_path})
            async with uds_client(access) as http:
                answer = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(info["key"]))
            proc.stdin.write(b"\n")
            await proc.stdin.drain()
            usage = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert info["uid"] != 0 and owner == info["uid"]
    assert str(socket_path).startswith(f"/tmp/evalkit-{info['uid']}/")
    assert answer.json()["choices"][0]["message"]["content"] == "as nobody" and usage["n_calls"] == 1
    assert not socket_path.parent.parent.exists()
