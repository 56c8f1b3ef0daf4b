"""Sticky routing over replicas, failover, retries with backoff and Retry-After, timeouts, in-flight caps."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from fake_upstream import Disconnect, Fail, FakeUpstream, Hang, Reply
from gateway_testing import MODEL, admin_health, openai_client, read_trajectory, vllm_config

from evalkit.gateway import Gateway, LLMApiConfig
from evalkit.gateway.routing import Deployment, DeploymentPool

FAST_RETRIES = {"retry_backoff_sec": 0.01, "cooldown_sec": 30.0}


async def ask(client: openai.AsyncOpenAI, text: str, **kwargs) -> str:
    completion = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kwargs
    )
    return completion.choices[0].message.content


def replicas_of(upstreams: list[FakeUpstream]) -> dict[str, set[str]]:
    """Which trials each replica saw, from the trial id each test puts first in its message."""
    return {u.name: {r.body["messages"][0]["content"].split()[0] for r in u.received} for u in upstreams}


async def test_trials_stick_to_one_replica_split_evenly_and_move_when_one_dies(serve, open_trial, trajectory):
    async with FakeUpstream("r0") as r0, FakeUpstream("r1") as r1:
        async with serve(vllm_config(r0, r1, **FAST_RETRIES)) as gw:
            clients = {f"t{n}": openai_client(await open_trial(gw, f"t{n}")) for n in range(6)}

            async def agent(trial_id: str, calls: int, offset: int = 0) -> None:
                for i in range(calls):
                    await ask(clients[trial_id], f"{trial_id} step {offset + i}")

            await asyncio.gather(*(agent(t, 3) for t in clients))
            seen = replicas_of([r0, r1])
            assert seen["r0"].isdisjoint(seen["r1"]), "a trial's calls were split over replicas"
            assert len(seen["r0"]) == len(seen["r1"]) == 3
            before = {t: ("r0" if t in seen["r0"] else "r1") for t in clients}

            await r0.stop()  # kill a replica: its trials must move, and their calls still succeed
            await asyncio.gather(*(agent(t, 2, offset=3) for t in clients))
            health = {d["name"]: d for d in (await admin_health(gw))["deployments"]}
            for client in clients.values():
                await client.close()
    assert not health["r0"]["healthy"] and health["r1"]["healthy"]
    assert (health["r0"]["pinned_trials"], health["r1"]["pinned_trials"]) == (0, 6)
    for trial_id, replica in before.items():
        lines = read_trajectory(trajectory(trial_id))
        assert [line["status"] for line in lines] == [200] * 5
        assert {line["deployment"] for line in lines[:3]} == {replica}
        assert {line["deployment"] for line in lines[3:]} == {"r1"}
        if replica == "r0":  # one failed attempt on the dead replica at most, then r1 without a wait
            assert [a["deployment"] for a in lines[3]["attempts"]] in (["r0", "r1"], ["r1"])
            assert [a["deployment"] for a in lines[4]["attempts"]] == ["r1"]


async def test_429_is_retried_after_retry_after(upstream, serve, open_trial, trajectory):
    upstream.script = [Fail(429, retry_after=0.4), Reply(text="second time lucky")]
    async with serve(vllm_config(upstream, **FAST_RETRIES)) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            started = time.monotonic()
            assert await ask(client, "t1 hi") == "second time lucky"
            elapsed = time.monotonic() - started
    assert elapsed >= 0.4, "Retry-After was not honoured"
    [line] = read_trajectory(trajectory("t1"))
    assert [a["status"] for a in line["attempts"]] == [429, 200] and line["status"] == 200


async def test_5xx_disconnects_and_hangs_are_retried(upstream, serve, open_trial, trajectory):
    upstream.script = [Fail(500), Disconnect(), Hang(), Reply(text="finally")]
    async with serve(vllm_config(upstream, timeout_sec=0.5, max_retries=3, **FAST_RETRIES)) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            assert await ask(client, "t1 hi") == "finally"
    [line] = read_trajectory(trajectory("t1"))
    attempts = line["attempts"]
    assert [a["status"] for a in attempts] == [500, None, None, 200]
    assert "ServerDisconnected" in attempts[1]["error"] and attempts[2]["error"] == "upstream timed out"
    assert line["status"] == 200 and line["error"] is None


async def test_retries_exhausted_return_the_upstream_error(upstream, serve, open_trial, trajectory):
    upstream.script = [Fail(503), Fail(503)]
    async with serve(vllm_config(upstream, max_retries=1, **FAST_RETRIES)) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            with pytest.raises(openai.InternalServerError) as raised:
                await ask(client, "t1 hi")
        usage = await gw.close_trial(access.api_key)
    assert raised.value.status_code == 503 and "injected 503" in str(raised.value)
    [line] = read_trajectory(trajectory("t1"))
    assert line["status"] == 503 and line["error"] == "injected 503" and len(line["attempts"]) == 2
    assert (usage.n_calls, usage.n_errors) == (1, 1)


async def test_unreachable_upstream_is_502_and_timeout_is_504(serve, open_trial, trajectory):
    async with FakeUpstream("gone") as gone:
        pass  # stopped: its port now refuses connections
    async with serve(vllm_config(gone, max_retries=1, **FAST_RETRIES)) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            with pytest.raises(openai.APIStatusError) as raised:
                await ask(client, "t1 hi")
    assert raised.value.status_code == 502
    async with FakeUpstream("slow") as slow:
        slow.default = Hang()
        async with serve(vllm_config(slow, timeout_sec=0.2, max_retries=0)) as gw:
            async with openai_client(await open_trial(gw, "t2")) as client:
                with pytest.raises(openai.APIStatusError) as raised:
                    await ask(client, "t2 hi")
    assert raised.value.status_code == 504
    assert read_trajectory(trajectory("t2"))[0]["error"] == "upstream timed out"


async def test_a_stream_that_stalls_ends_after_the_idle_timeout_and_a_slow_one_runs_on(
    upstream, serve, open_trial, trajectory
):
    """The idle limit is between reads, not over the whole generation: a stream slower in total than every
    limit (2 s of events 0.1 s apart; first byte within 0.5 s, idle 0.4 s) is delivered whole, and one that
    stops sending is ended with an error event once it has been silent for the idle limit."""
    upstream.script = [
        Reply(text="slow " * 20, chunks=20, chunk_delay=0.1),
        Reply(text="stuck " * 20, chunks=20, stall_after=3),
    ]
    async with serve(vllm_config(upstream, timeout_sec=0.5, idle_timeout_sec=0.4, max_retries=0)) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            slow = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "t1 slow"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in slow if c.choices])
            stuck = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "t1 stuck"}], stream=True
            )
            with pytest.raises(openai.APIError, match="timed out mid-stream"):
                async for _ in stuck:
                    pass
    assert text == "slow " * 20
    slow_line, stuck_line = read_trajectory(trajectory("t1"))
    assert slow_line["status"] == 200 and slow_line["error"] is None
    assert stuck_line["status"] == 200 and stuck_line["error"] == "upstream timed out mid-stream"
    assert stuck_line["response"]["error"]["message"] == "upstream timed out mid-stream"


async def test_max_in_flight_caps_calls_per_deployment(upstream, serve, open_trial):
    upstream.default = Reply(text="ok", delay=0.1)
    config = LLMApiConfig(
        model=MODEL, deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url, "max_in_flight": 2}]
    )
    async with serve(config) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            answers = await asyncio.gather(*(ask(client, f"t1 {i}") for i in range(6)))
    assert answers == ["ok"] * 6
    assert upstream.max_in_progress == 2


def test_pool_places_least_loaded_and_falls_back_to_the_soonest_recovering():
    config = LLMApiConfig(
        model="m",
        deployments=[{"model": f"hosted_vllm/m{i}", "api_base": "http://h/v1"} for i in range(3)],
        cooldown_sec=10,
    )
    deployments = [Deployment(i, d, None, None) for i, d in enumerate(config.deployments)]
    pool = DeploymentPool(deployments, config)
    assert [pool.pick(f"t{n}").index for n in range(6)] == [0, 1, 2, 0, 1, 2]
    assert pool.pick("t0").index == 0  # sticky
    pool.unpin("t1")
    assert pool.pick("new").index == 1  # the gap left by a finished trial is filled first
    now = time.monotonic()
    deployments[0].cooldown_until, deployments[1].cooldown_until, deployments[2].cooldown_until = (
        now + 5,
        now + 1,
        now + 9,
    )
    assert pool.pick("t0").index == 1, "nothing healthy: the deployment that recovers first"


async def test_several_gateways_in_one_loop_do_not_share_keys_or_state(upstream, artifacts, open_trial):
    config = vllm_config(upstream)
    async with (
        Gateway.serve(config, job_name="a", artifacts_dir=artifacts) as a,
        Gateway.serve(config, job_name="b", artifacts_dir=artifacts) as b,
    ):
        assert a.url != b.url
        access_a = await open_trial(a, "ta")
        async with openai.AsyncOpenAI(base_url=b.url + "/v1", api_key=access_a.api_key, max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                await ask(wrong, "ta hi")
        async with openai_client(access_a) as right:
            assert await ask(right, "ta hi")
    assert (artifacts / "litellm" / "a" / "router.yaml").exists() and (
        artifacts / "litellm" / "b" / "router.yaml"
    ).exists()
