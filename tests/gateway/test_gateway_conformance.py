"""What the real SDKs see matches what the upstream meant: usage withholding across reads, retry and
rate-limit headers, Anthropic-shaped 400s for malformed bodies, the same 502 for both protocols, and attempt
records that survive cancellation."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import openai
import pytest
from fake_upstream import Fail, Hang, Reply
from gateway_testing import (
    MODEL,
    admin_health,
    anthropic_client,
    anthropic_config,
    openai_client,
    read_trajectory,
    vllm_config,
)

from evalkit.gateway import LLMApiConfig

RATE_HEADERS = {
    "x-request-id": "req_upstream_1",
    "request-id": "req_upstream_2",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "7s",
    "anthropic-ratelimit-requests-remaining": "0",
    "retry-after-ms": "7000",
    "x-should-retry": "true",
    "openai-organization": "org-upstream-secret",
    "x-upstream-internal": "do-not-forward",
}
FORWARDED = {k: v for k, v in RATE_HEADERS.items() if k not in ("openai-organization", "x-upstream-internal")}


@pytest.mark.parametrize("wire", ["whole", "split", "split+crlf", "crlf"])
async def test_withheld_usage_never_reaches_a_client_that_did_not_ask(upstream, serve, open_trial, trajectory, wire):
    upstream.default = Reply(
        text="Hello there, agent.", chunks=4, split_events="split" in wire, crlf="crlf" in wire
    )
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            chunks = [chunk async for chunk in stream]
            asked = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            asked_chunks = [chunk async for chunk in asked]
        usage = await gw.close_trial(access.api_key)
    assert all(chunk.choices for chunk in chunks), "a usage-only event reached an agent that did not ask for it"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there, agent."
    assert asked_chunks[-1].choices == [] and asked_chunks[-1].usage.total_tokens > 0
    first, second = read_trajectory(trajectory("t1"))
    assert first["usage"]["output_tokens"] > 0 and first["response"]["choices"][0]["message"]["content"] == (
        "Hello there, agent."
    )
    assert second["response"]["usage"]["total_tokens"] == asked_chunks[-1].usage.total_tokens
    assert usage.output_tokens == first["usage"]["output_tokens"] + second["usage"]["output_tokens"]


async def test_retry_and_rate_limit_headers_reach_openai_clients(upstream, serve, open_trial):
    upstream.script = [Fail(429, retry_after=7, headers=RATE_HEADERS), Reply(headers=RATE_HEADERS)]
    upstream.script.append(Reply(headers=RATE_HEADERS))
    async with serve(vllm_config(upstream, max_retries=0)) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            ok = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            streamed = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            [_ async for _ in streamed.parse()]
    failed = caught.value.response.headers
    assert failed["retry-after"] == "7" and {k: failed.get(k) for k in FORWARDED} == FORWARDED
    assert caught.value.request_id == "req_upstream_1"
    for response in (ok, streamed):
        assert {k: response.headers.get(k) for k in FORWARDED} == FORWARDED
    for headers in (failed, ok.headers, streamed.headers):
        assert "openai-organization" not in headers and "x-upstream-internal" not in headers


async def test_rate_limit_headers_reach_anthropic_clients_on_both_paths(upstream, serve, open_trial, monkeypatch):
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "sk-ant")
    native = anthropic_config(upstream, max_retries=0, cooldown_sec=0)
    translated = vllm_config(upstream, max_retries=0, cooldown_sec=0)
    for config in (native, translated):
        upstream.script = [Fail(429, retry_after=7, headers=RATE_HEADERS)]
        async with serve(config, job_name=f"job-{len(upstream.received)}") as gw:
            async with anthropic_client(await open_trial(gw, f"t{len(upstream.received)}")) as client:
                with pytest.raises(anthropic.RateLimitError) as caught:
                    await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
            [deployment] = (await admin_health(gw))["deployments"]
        headers = caught.value.response.headers
        assert headers["retry-after"] == "7" and headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert headers["retry-after-ms"] == "7000" and "openai-organization" not in headers
        # The gateway itself honoured the upstream's wait: the deployment rests that long (cooldown_sec is 0).
        assert deployment["cooldown_sec"] > 5 and not deployment["healthy"]


async def test_dropped_upstream_is_502_with_retry_after_for_both_protocols(serve, open_trial, trajectory):
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now: connections are refused
    config = LLMApiConfig(
        model=MODEL,
        deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": f"http://127.0.0.1:{port}/v1"}],
        max_retries=1,
        retry_backoff_sec=0,
    )
    async with serve(config) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            with pytest.raises(openai.APIStatusError) as from_openai:
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        async with anthropic_client(access) as client:
            with pytest.raises(anthropic.APIStatusError) as from_anthropic:
                await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    for caught in (from_openai.value, from_anthropic.value):
        assert caught.status_code == 502 and int(caught.response.headers["retry-after"]) >= 1
        assert "upstream unavailable" in caught.message and str(port) not in caught.message  # no map to the upstream
    assert from_anthropic.value.body["type"] == "error"
    lines = read_trajectory(trajectory("t1"))
    assert [(line["route"], line["status"]) for line in lines] == [(None, 502), (None, 502)]
    assert [len(line["attempts"]) for line in lines] == [2, 2]


async def test_gateway_timeout_is_504_with_retry_after(upstream, serve, open_trial):
    upstream.default = Hang()
    async with serve(vllm_config(upstream, timeout_sec=0.3, max_retries=0, cooldown_sec=0)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            with pytest.raises(anthropic.APIStatusError) as caught:
                await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 504 and caught.value.response.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [], "max_tokens": 5}, "messages: at least one message is required"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field required"),
        ({"max_tokens": 5}, "messages: Field required"),
        ({"messages": "hi", "max_tokens": 5}, "messages: Input should be a valid list"),
        ({"messages": [{"foo": 1}], "max_tokens": 5}, "messages.0.role: Input should be 'user' or 'assistant' or 'system'"),
        (  # a mid-conversation `system` message (Claude Code sends one) is translated; other roles are not Anthropic's
            {"messages": [{"role": "tool", "content": "x"}], "max_tokens": 5},
            "messages.0.role: Input should be 'user' or 'assistant' or 'system'",
        ),
        ({"messages": [{"role": "user"}], "max_tokens": 5}, "messages.0.content: Field required"),
        (
            {"messages": [{"role": "user", "content": [1]}], "max_tokens": 5},
            "messages.0.content: each content block needs a `type`",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"},
            "max_tokens: Input should be a positive integer",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "system": 3},
            "system: Input should be a valid string or a list of text blocks",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "tools": {}},
            "tools: Input should be a list of tool definitions",
        ),
    ],
)
async def test_malformed_anthropic_bodies_get_a_400_in_anthropics_shape(
    upstream, serve, open_trial, trajectory, body, message
):
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await client.post("/v1/messages", cast_to=object, body={"model": MODEL, **body})
    assert caught.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert upstream.received == []
    [line] = read_trajectory(trajectory("t1"))
    assert line["status"] == 400 and line["route"] == "translated"


async def test_malformed_openai_body_on_the_translated_path_is_a_400(upstream, anthropic_mode, serve, open_trial):
    async with serve(anthropic_mode) as gw, openai_client(await open_trial(gw, "t1")) as client:
        with pytest.raises(openai.BadRequestError, match="messages: at least one message is required"):
            await client.chat.completions.create(model=MODEL, messages=[])
        with pytest.raises(openai.BadRequestError, match=r"messages\.0\.role: Input should be 'system' or 'developer'"):
            await client.chat.completions.create(model=MODEL, messages=[{"content": "no role"}])
    assert upstream.received == []


async def test_a_cancelled_non_streaming_call_keeps_its_attempt(upstream, serve, open_trial, trajectory):
    upstream.default = Hang()
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access, timeout=httpx.Timeout(5, read=0.3)) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        for _ in range(250):  # the gateway notices the hang-up and aborts its upstream request
            if upstream.aborted:
                break
            await asyncio.sleep(0.02)
        usage = await gw.close_trial(access.api_key)
    [line] = read_trajectory(trajectory("t1"))
    assert line["error"] == "client disconnected" and line["status"] is None
    assert [(a["deployment"], a["status"], a["error"]) for a in line["attempts"]] == [("up0", None, "cancelled")]
    assert usage.n_calls == usage.n_errors == 1
