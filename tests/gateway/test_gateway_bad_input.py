"""Bad input gets the right status (or a clean teardown), is recorded, and never corrupts the trajectory."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import openai
import orjson
import pytest
from fake_upstream import Disconnect, Reply
from gateway_testing import (
    MODEL,
    admin_health,
    anthropic_client,
    openai_client,
    read_trajectory,
    vllm_config,
)


async def post(url: str, key: str | None, data: bytes | object, **kwargs) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=data, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json()


async def test_malformed_json_missing_and_unknown_model(upstream, serve, open_trial, trajectory):
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        url = access.base_url + "/chat/completions"
        status, body = await post(url, access.api_key, b'{"model": "smollm2", "messages": [')
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        pretty = orjson.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "a\nb"}]}, option=orjson.OPT_INDENT_2
        )
        status, body = await post(url, access.api_key, pretty)  # newlines between tokens must not split the line
        assert status == 200
        status, body = await post(url, access.api_key, b"[1, 2]")
        assert status == 400
        status, body = await post(url, access.api_key, orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}))
        assert status == 400 and body["error"]["message"] == "missing `model`"
        async with openai_client(access) as client:
            with pytest.raises(openai.NotFoundError, match="not served here"):
                await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        async with anthropic_client(access) as client:
            with pytest.raises(anthropic.NotFoundError, match="not served here"):
                await client.messages.create(
                    model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                )
            with pytest.raises(anthropic.BadRequestError, match="messages: at least one message is required"):
                await client.post("/v1/messages", cast_to=object, body={"model": MODEL, "messages": []})
    assert len(upstream.received) == 1
    lines = read_trajectory(trajectory("t1"))
    assert [line["status"] for line in lines] == [400, 200, 400, 400, 404, 404, 400]
    assert lines[0]["request"] is None and lines[0]["request_raw"] == '{"model": "smollm2", "messages": ['
    assert lines[1]["request"] == orjson.loads(pretty)
    assert all(line["error"] for line in lines if line["status"] != 200)


async def test_unknown_and_finished_keys_get_401_and_are_logged_for_the_job(
    upstream, serve, open_trial, trajectory, artifacts
):
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with openai.AsyncOpenAI(base_url=access.base_url, api_key="ek-made-up", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError, match="unknown key"):
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        status, _ = await post(access.base_url + "/chat/completions", None, b"{}")
        assert status == 401
        async with anthropic_client(access) as client:
            await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
            usage = await gw.close_trial(access.api_key)
            with pytest.raises(anthropic.AuthenticationError, match="finished trial"):
                await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert await gw.close_trial(access.api_key) == usage  # closing twice is harmless
    assert usage.n_calls == 1 and usage.n_errors == 0
    assert len(read_trajectory(trajectory("t1"))) == 1
    rejected = read_trajectory(artifacts / "litellm" / "job" / "rejected.jsonl")
    assert [r["reason"] for r in rejected] == ["unknown key", "missing key", "finished trial's key"]
    assert all(r["status"] == 401 for r in rejected)


async def test_oversized_body_is_413_declared_or_streamed(upstream, serve, open_trial, trajectory):
    async with serve(vllm_config(upstream, max_body_bytes=4096)) as gw:
        access = await open_trial(gw, "t1")
        big = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 10_000}]})
        status, body = await post(access.base_url + "/chat/completions", access.api_key, big)
        assert status == 413 and "exceeds the limit" in body["error"]["message"]

        async def chunked():
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        status, _ = await post(access.base_url + "/chat/completions", access.api_key, chunked())
        assert status == 413
        async with openai_client(access) as client:  # the gateway is fine afterwards
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "small"}])
    lines = read_trajectory(trajectory("t1"))
    assert [line["status"] for line in lines] == [413, 413, 200]
    assert upstream.received[0].body["messages"][0]["content"] == "small"


async def test_client_disconnecting_mid_stream_aborts_upstream_and_is_recorded(upstream, serve, open_trial, trajectory):
    upstream.default = Reply(text="word " * 100, chunks=100, chunk_delay=0.02)
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        request = {"model": MODEL, "messages": [{"role": "user", "content": "long"}], "stream": True}
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                access.base_url + "/chat/completions",
                json=request,
                headers={"Authorization": f"Bearer {access.api_key}"},
            )
            assert resp.status == 200
            received = b""
            while b"word" not in received:
                received += await resp.content.readany()
            resp.close()  # hang up mid-stream
        for _ in range(100):
            if trajectory("t1").exists() and trajectory("t1").read_bytes():
                break
            await asyncio.sleep(0.02)
        for _ in range(100):
            if upstream.aborted:
                break
            await asyncio.sleep(0.02)
        assert upstream.aborted == 1, "the upstream request should be cancelled, freeing the model server"
        async with openai_client(access) as client:
            upstream.default = Reply(text="still here")
            answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}])
        assert answer.choices[0].message.content == "still here"
        assert [d["in_flight"] for d in (await admin_health(gw))["deployments"]] == [0]
    lines = read_trajectory(trajectory("t1"))
    assert [(line["status"], line["error"]) for line in lines] == [(200, "client disconnected"), (200, None)]
    assert lines[0]["response"]["choices"][0]["message"]["content"].startswith("word")


async def test_upstream_disconnecting_mid_stream_gives_the_client_an_error(upstream, serve, open_trial, trajectory):
    upstream.script = [Disconnect(after_chunks=3), Disconnect(after_chunks=3)]
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            with pytest.raises(openai.APIError, match="upstream broke off the stream"):
                async for _ in stream:
                    pass
        async with anthropic_client(access) as client:
            with pytest.raises(anthropic.APIStatusError):
                async with client.messages.stream(
                    model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
                ) as stream:
                    async for _ in stream:
                        pass
        usage = await gw.close_trial(access.api_key)
    lines = read_trajectory(trajectory("t1"))
    assert [line["route"] for line in lines] == ["passthrough", "translated"]
    assert [line["status"] for line in lines] == [200, 200]
    assert lines[0]["error"].startswith("upstream broke off the stream: ClientPayloadError")
    assert "Response payload is not completed" in lines[1]["error"]  # LiteLLM's own error event, recorded
    assert usage.n_errors == 2



@pytest.mark.parametrize("close", ["client hangs up", "trial closes"])
async def test_a_delivered_stream_is_no_error_whatever_ends_the_exchange(
    upstream, serve, open_trial, trajectory, close
):
    """SDKs drop the connection as soon as they read `[DONE]` / `message_stop`, and a trial may close then; the
    upstream ends its body a moment later. The call was delivered whole: no error, usage counted."""
    upstream.default = Reply(text="all of it", chunks=3, end_delay=5)
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        for path, body, end in (
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, b"[DONE]"),
            ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}, b"message_stop"),
        ):
            async with aiohttp.ClientSession() as session:
                resp = await session.post(
                    gw.url + path,
                    json={"model": MODEL, "stream": True, **body},
                    headers={"Authorization": f"Bearer {access.api_key}"},
                )
                received = b""
                while end not in received:
                    received += await resp.content.readany()
                if close == "client hangs up":
                    resp.close()
                    for _ in range(250):  # the gateway notices and cancels its upstream request
                        if upstream.aborted:
                            break
                        await asyncio.sleep(0.02)
                    upstream.aborted = 0
                else:
                    usage = await asyncio.wait_for(gw.close_trial(access.api_key), 5)
                    break
        usage = await gw.close_trial(access.api_key)
    lines = read_trajectory(trajectory("t1"))
    assert [(line["status"], line["error"]) for line in lines] == [(200, None)] * len(lines)
    assert usage.n_errors == 0 and all(line["usage"]["output_tokens"] > 0 for line in lines)
