"""Routing that recovers (issue #10.5), with two or three fake replicas: a poison request cools nothing, trials go
back to their home replica when it recovers, slot waits are bounded and spill, pooled connections are recycled
before the upstream's keep-alive ends, and a connection the upstream closed is resent once without blame."""

from __future__ import annotations

import asyncio

import openai
import pytest
from fake_upstream import Disconnect, Fail, FakeUpstream, Reply
from gateway_testing import MODEL, admin_health, openai_client, read_trajectory, vllm_config

from evalkit.gateway import LLMApiConfig


async def ask(client: openai.AsyncOpenAI, text: str) -> str:
    completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    return completion.choices[0].message.content


def trials_on(upstream: FakeUpstream, since: int = 0) -> set[str]:
    """The trials whose calls reached a replica (each test puts the trial id first in its message)."""
    return {r.body["messages"][0]["content"].split()[0] for r in upstream.received[since:]}


def health_by_name(health: dict) -> dict[str, dict]:
    return {d["name"]: d for d in health["deployments"]}


def poisoned(body: dict) -> Fail | Reply:
    return Fail(500) if "poison" in body["messages"][0]["content"] else Reply()


async def test_a_poison_request_cools_no_replica(serve, open_trial, trajectory):
    """A request every replica answers with a 500 (its content, not the replicas) is retried and fails, and
    leaves every replica healthy with its trials where they were."""
    async with FakeUpstream("r0") as r0, FakeUpstream("r1") as r1, FakeUpstream("r2") as r2:
        for replica in (r0, r1, r2):
            replica.default = poisoned
        config = vllm_config(r0, r1, r2, max_retries=2, retry_backoff_sec=0.01, cooldown_sec=30)
        async with serve(config) as gw:
            clients = {f"t{n}": openai_client(await open_trial(gw, f"t{n}")) for n in range(6)}
            await asyncio.gather(*(ask(c, f"{t} first") for t, c in clients.items()))
            placed = {r.name: trials_on(r) for r in (r0, r1, r2)}
            with pytest.raises(openai.InternalServerError):
                await ask(clients["t0"], "t0 poison")
            health = health_by_name(await admin_health(gw))
            seen = {r.name: len(r.received) for r in (r0, r1, r2)}
            await asyncio.gather(*(ask(c, f"{t} after") for t, c in clients.items()))
            for client in clients.values():
                await client.close()
    assert [len(trials) for trials in placed.values()] == [2, 2, 2]
    assert all(d["healthy"] and d["pinned_trials"] == 2 for d in health.values()), health
    assert {r.name: trials_on(r, seen[r.name]) for r in (r0, r1, r2)} == placed, "a trial moved"
    [poison] = [c for c in read_trajectory(trajectory("t0")) if "poison" in c["request"]["messages"][0]["content"]]
    assert [a["status"] for a in poison["attempts"]] == [500, 500, 500] and poison["status"] == 500


async def test_a_503_cools_its_replica_and_the_trials_go_home_when_it_recovers(serve, open_trial):
    """A replica that says it is unavailable (503), or refuses connections, cools down; its trials are served
    by the others meanwhile (spread, and each sticking to one) and go back home once it is healthy again, so
    the split is what it was (not piled onto whichever replica was up)."""
    async with FakeUpstream("r0") as r0, FakeUpstream("r1") as r1, FakeUpstream("r2") as r2:
        config = vllm_config(r0, r1, r2, max_retries=3, retry_backoff_sec=0.01, cooldown_sec=0.6)
        async with serve(config) as gw:
            clients = {f"t{n}": openai_client(await open_trial(gw, f"t{n}")) for n in range(6)}
            await asyncio.gather(*(ask(c, f"{t} first") for t, c in clients.items()))
            home = {r.name: trials_on(r) for r in (r0, r1, r2)}
            [moved_trial, _] = sorted(home["r0"])
            r0.script = [Fail(503)]
            await ask(clients[moved_trial], f"{moved_trial} sees a 503")
            port = r0.port
            await r0.stop()  # now it refuses connections too
            before = {r.name: len(r.received) for r in (r1, r2)}
            for round_ in range(2):
                await asyncio.gather(*(ask(c, f"{t} away {round_}") for t, c in clients.items()))
            during = {r.name: trials_on(r, before[r.name]) for r in (r1, r2)}
            cooling = health_by_name(await admin_health(gw))
            async with FakeUpstream("r0", port=port) as back:
                await asyncio.sleep(0.7)  # its cooldown ends
                await asyncio.gather(*(ask(c, f"{t} back") for t, c in clients.items()))
                returned = trials_on(back)
                recovered = health_by_name(await admin_health(gw))
            for client in clients.values():
                await client.close()
    names = {d["name"]: d for d in recovered.values()}
    assert not cooling["r0"]["healthy"] and cooling["r0"]["home_trials"] == 2 and cooling["r0"]["pinned_trials"] == 0
    assert during["r1"] | during["r2"] == {f"t{n}" for n in range(6)} and during["r1"].isdisjoint(during["r2"])
    assert cooling["r1"]["pinned_trials"] == cooling["r2"]["pinned_trials"] == 3, "the moved trials were not spread"
    assert returned == home["r0"], "the trials did not go home"
    assert [names[n]["pinned_trials"] for n in ("r0", "r1", "r2")] == [2, 2, 2]


async def test_a_slot_wait_spills_to_an_idle_replica_and_is_bounded(serve, open_trial, trajectory):
    """With every slot of the trial's replica taken, a call waits `spill_after_sec`, then goes to a replica with
    a free slot; with none free anywhere it gets a 503 with Retry-After after `slot_wait_sec`."""
    async with FakeUpstream("r0") as r0, FakeUpstream("r1") as r1:
        for replica in (r0, r1):
            replica.default = Reply(text="ok", delay=0.5)
        deployments = [
            {"model": f"hosted_vllm/{MODEL}", "api_base": r.url, "name": r.name, "max_in_flight": 1} for r in (r0, r1)
        ]
        config = LLMApiConfig(model=MODEL, deployments=deployments, spill_after_sec=0.1, slot_wait_sec=0.3)
        async with serve(config) as gw:
            async with openai_client(await open_trial(gw, "t1")) as client:
                first, spilled = await asyncio.gather(ask(client, "t1 a"), ask(client, "t1 b"))
                results = await asyncio.gather(*(ask(client, f"t1 {n}") for n in range(3)), return_exceptions=True)
    assert (first, spilled) == ("ok", "ok")
    assert (r0.max_in_progress, r1.max_in_progress) == (1, 1), "a cap was exceeded"
    assert len(r1.received) >= 1, "nothing spilled to the idle replica"
    busy = [r for r in results if isinstance(r, Exception)]
    assert len(busy) == 1 and isinstance(busy[0], openai.APIStatusError) and busy[0].status_code == 503
    assert busy[0].response.headers["retry-after"] == "1" and "in-flight cap" in str(busy[0])
    lines = read_trajectory(trajectory("t1"))
    assert sorted(line["status"] for line in lines) == [200, 200, 200, 200, 503]
    [spill_line] = [line for line in lines[:2] if line["deployment"] == "r1"]
    assert [a["deployment"] for a in spill_line["attempts"]] == ["r1"]


async def test_caps_hold_across_gateway_processes(upstream, serve, open_trial):
    """Two gateway processes share a replica's `max_in_flight: 2` (one slot each): the replica never sees more
    than `max_in_flight + processes - 1` calls at once (the stated tolerance; here exactly 2)."""
    upstream.default = Reply(text="ok", delay=0.2)
    deployments = [{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url, "max_in_flight": 2}]
    config = LLMApiConfig(model=MODEL, deployments=deployments, processes=2)
    async with serve(config) as gw:
        assert len(gw.pids) == 2
        a, b = await open_trial(gw, "ta"), await open_trial(gw, "tb")
        assert a.base_url != b.base_url, "the two trials should be served by different processes"
        async with openai_client(a) as ca, openai_client(b) as cb:
            answers = await asyncio.gather(*(ask(c, f"{c} {n}") for c in (ca, cb) for n in range(4)))
    assert answers == ["ok"] * 8 and upstream.max_in_progress == 2


async def test_pooled_connections_are_recycled_before_the_upstreams_keep_alive_ends(serve, open_trial):
    """The upstream closes idle connections after 1 s (uvicorn: 5 s); the gateway drops its idle ones after
    0.2 s, so a call 0.5 s later goes out on a fresh connection, never on one the upstream is closing."""
    async with FakeUpstream("r0", keepalive_timeout=1.0) as r0:
        async with serve(vllm_config(r0, upstream_keepalive_sec=0.2)) as gw:
            async with openai_client(await open_trial(gw, "t1")) as client:
                await ask(client, "t1 a")
                await ask(client, "t1 b")  # at once: the pooled connection is reused
                await asyncio.sleep(0.5)
                await ask(client, "t1 c")
    a, b, c = r0.peers
    assert a == b and c != b


async def test_a_connection_closed_under_a_request_is_resent_once_without_blame(serve, open_trial, trajectory):
    """A server that closes the connection as the request goes out (a keep-alive that just ran out) gets the
    request again at once, even with `max_retries: 0`, and is not cooled down; a second one counts."""
    async with FakeUpstream("r0") as r0, FakeUpstream("r1") as r1:
        r0.script = [Disconnect(), Reply(text="resent")]
        config = vllm_config(r0, r1, max_retries=0, cooldown_sec=30)
        async with serve(config) as gw:
            async with openai_client(await open_trial(gw, "t0")) as client:
                assert await ask(client, "t0 a") == "resent"
                health = health_by_name(await admin_health(gw))
                r0.script = [Disconnect(), Disconnect()]
                with pytest.raises(openai.APIStatusError) as raised:
                    await ask(client, "t0 b")
                after = health_by_name(await admin_health(gw))
    assert health["r0"]["healthy"] and health["r0"]["cooldown_sec"] == 0
    assert raised.value.status_code == 502 and not after["r0"]["healthy"]
    first, second = read_trajectory(trajectory("t0"))
    assert [(a["deployment"], a["status"]) for a in first["attempts"]] == [("r0", None), ("r0", 200)]
    assert "ServerDisconnected" in first["attempts"][0]["error"] and len(second["attempts"]) == 2
