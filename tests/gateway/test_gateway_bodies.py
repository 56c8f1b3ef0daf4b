"""Request bodies are hostile: only each protocol's documented fields go on, on both paths and from both SDKs.

A listener stands in for an attacker: requests that name it (as `base_url`, `api_base`, …) or carry a key, a
provider, headers, callbacks or a canned answer must never reach it, never return canned text, and get a 400
in the client's protocol naming the field. Other unknown fields are dropped and named in the trajectory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anthropic
import openai
import pytest
from fake_upstream import Reply
from gateway_testing import BASH_TOOL_ANTHROPIC, MODEL, anthropic_client, openai_client, read_trajectory

from evalkit.gateway import LLMApiConfig
from evalkit.gateway.bodies import DOCUMENTED, VLLM_EXTRAS, refused_field

CANNED = "canned answer, no upstream call"


@dataclass
class Attacker:
    """A TCP listener on 127.0.0.1 that counts every connection made to it (there must be none)."""

    url: str
    connections: int = 0


@pytest.fixture
async def attacker() -> AsyncIterator[Attacker]:
    found = Attacker("")

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        found.connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield found
    finally:
        server.close()
        await server.wait_closed()


def injections(attacker: Attacker) -> dict[str, object]:
    """Each field an agent might use to steer LiteLLM or the upstream, with a value that would hurt."""
    return {
        "base_url": attacker.url + "/v1",
        "api_base": attacker.url + "/v1",
        "api_key": "sk-agent-chosen",
        "api_version": "2024-01-01",
        "custom_llm_provider": "openai",
        "extra_headers": {"X-Injected": "1"},
        "headers": {"X-Injected": "1"},
        "mock_response": CANNED,
        "success_callback": ["langfuse"],
        "callbacks": ["custom"],
        "litellm_logging_obj": "x",
        "aws_secret_access_key": "x",
        "vertex_credentials": "x",
        "extra_body": {"base_url": attacker.url},
        "fallbacks": [{"model": "openai/gpt-4o", "api_base": attacker.url}],
        "mcp_servers": [{"type": "url", "url": attacker.url, "name": "x"}],
    }


FIELDS = list(injections(Attacker("http://x")))


@pytest.fixture
def keyed_vllm(upstream, monkeypatch) -> LLMApiConfig:
    """Mode B with a key: OpenAI clients pass through, Anthropic clients are translated (LiteLLM)."""
    monkeypatch.setenv("FAKE_VLLM_KEY", "sk-vllm-upstream-secret")
    return LLMApiConfig(
        model=MODEL,
        deployments=[{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url, "api_key_env": "FAKE_VLLM_KEY"}],
    )


async def refused_on_every_path(gw, access, field: str, value: object) -> list[str]:
    """Send `field` from both SDKs, streaming and not; every call must be a 400 naming it. Returns the texts."""
    texts = []
    async with openai_client(access) as client:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=stream, extra_body={field: value}
                )
            texts.append(str(caught.value))
    async with anthropic_client(access) as client:
        for stream in (False, True):
            with pytest.raises(anthropic.BadRequestError) as caught:
                await client.messages.create(
                    model=MODEL,
                    max_tokens=10,
                    messages=[{"role": "user", "content": "hi"}],
                    stream=stream,
                    extra_body={field: value},
                )
            assert caught.value.body["type"] == "error"  # Anthropic's error shape
            texts.append(str(caught.value))
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.count_tokens(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={field: value}
            )
        texts.append(str(caught.value))
    for text in texts:
        assert f"field `{field}` is not accepted" in text
        assert CANNED not in text
    return texts


@pytest.mark.parametrize("config_name", ["keyed_vllm", "anthropic_mode"])
async def test_fields_that_steer_the_call_are_refused_and_reach_nobody(
    config_name, request, upstream, attacker, serve, open_trial, trajectory
):
    config = request.getfixturevalue(config_name)
    async with serve(config) as gw:
        access = await open_trial(gw, "t1")
        for field, value in injections(attacker).items():
            await refused_on_every_path(gw, access, field, value)
        usage = await gw.close_trial(access.api_key)
    assert attacker.connections == 0
    assert upstream.received == [], "a refused request must not reach the upstream either"
    lines = read_trajectory(trajectory("t1"))
    assert len(lines) == usage.n_calls == usage.n_errors == 5 * len(FIELDS)
    assert {line["status"] for line in lines} == {400}
    assert all(CANNED not in str(line["response"]) for line in lines)


async def test_responses_api_refuses_the_same_fields(upstream, attacker, serve, open_trial, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-openai-secret")
    config = LLMApiConfig(
        model=MODEL,
        deployments=[{"model": "openai/gpt-fake", "api_base": upstream.url, "api_key_env": "FAKE_OPENAI_KEY"}],
    )
    async with serve(config) as gw, openai_client(await open_trial(gw, "t1")) as client:
        for field in ("base_url", "api_key", "mock_response", "extra_headers"):
            with pytest.raises(openai.BadRequestError, match=f"field `{field}` is not accepted"):
                await client.responses.create(model=MODEL, input="hi", extra_body={field: attacker.url})
        upstream.default = Reply(text="fine")
        response = await client.responses.create(model=MODEL, input="hi", extra_body={"unknown_knob": 1})
    assert response.output_text == "fine"
    assert attacker.connections == 0 and [r.body.get("unknown_knob") for r in upstream.received] == [None]


@pytest.mark.parametrize("config_name", ["keyed_vllm", "anthropic_mode"])
async def test_unknown_fields_are_dropped_and_named_in_the_trajectory(
    config_name, request, upstream, serve, open_trial, trajectory
):
    config = request.getfixturevalue(config_name)
    upstream.default = Reply(text="answered")
    async with serve(config) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            completion = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=20,
                extra_body={"unknown_knob": 1, "timeout": 0.001, "num_retries": 9},
            )
        async with anthropic_client(access) as client:
            message = await client.messages.create(
                model=MODEL,
                max_tokens=20,
                messages=[{"role": "user", "content": "hi"}],
                metadata={"user_id": "agent-7"},
                extra_body={"unknown_knob": 1},
            )
    assert completion.choices[0].message.content == message.content[0].text == "answered"
    for received in upstream.received:
        assert not {"unknown_knob", "timeout", "num_retries"} & set(received.body)
        assert received.body.get("max_tokens") == 20
    openai_line, anthropic_line = read_trajectory(trajectory("t1"))
    assert openai_line["dropped"] == ["unknown_knob", "timeout", "num_retries"]
    assert anthropic_line["request"]["metadata"] == {"user_id": "agent-7"}  # what the agent sent, as it sent it
    if anthropic_line["route"] == "passthrough":  # Anthropic's own field goes to Anthropic...
        assert anthropic_line["dropped"] == ["unknown_knob"]
        assert upstream.received[-1].body["metadata"] == {"user_id": "agent-7"}
    else:  # ...but never into LiteLLM, which reads `metadata` as its own settings
        assert anthropic_line["dropped"] == ["metadata", "unknown_knob"]


@pytest.mark.parametrize("config_name", ["anthropic_mode", "keyed_vllm"])
async def test_server_tools_never_reach_the_upstream(config_name, request, upstream, serve, open_trial, trajectory):
    """Tools the provider runs itself (web fetch and search, code execution) would reach the internet for a
    sandboxed agent: dropped from `tools` on both paths and named; the agent's own tools pass."""
    config = request.getfixturevalue(config_name)
    tools = [
        {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 5},
        BASH_TOOL_ANTHROPIC,
        {"type": "web_search_20250305", "name": "web_search"},
    ]
    async with serve(config) as gw, anthropic_client(await open_trial(gw, "t1")) as client:
        await client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}],
                                     tools=tools)  # fmt: skip
        async with openai_client(await open_trial(gw, "t2")) as openai_sdk:
            await openai_sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"web_search_options": {}}
            )
    sent_tools = upstream.received[0].body["tools"]
    assert [t.get("name") or t["function"]["name"] for t in sent_tools] == ["Bash"]
    [line] = read_trajectory(trajectory("t1"))
    assert line["dropped"][-2:] == ["tools[web_fetch_20250910]", "tools[web_search_20250305]"]
    assert line["request"]["tools"] == tools  # the record keeps what the agent sent
    assert "web_search_options" not in upstream.received[1].body
    assert read_trajectory(trajectory("t2"))[0]["dropped"] == ["web_search_options"]


async def test_vllm_sampling_extras_reach_vllm_only_when_harmless(upstream, keyed_vllm, serve, open_trial, trajectory):
    extras = {
        "top_k": 20,
        "repetition_penalty": 1.1,
        "min_p": 0.05,
        "chat_template_kwargs": {"enable_thinking": False},
        "priority": -100,  # would jump the queue of every other trial
        "chat_template": "{{ 'template code' }}",
        "kv_transfer_params": {"remote_host": "127.0.0.1"},
        "vllm_xargs": {"x": 1},
    }
    async with serve(keyed_vllm) as gw, openai_client(await open_trial(gw, "t1")) as client:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body=extras
        )
        with pytest.raises(openai.BadRequestError, match=r"field `chat_template_kwargs\.chat_template`"):
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"chat_template_kwargs": {"chat_template": "{{ evil }}"}},
            )
    [received] = upstream.received
    assert {k: received.body.get(k) for k in extras} == {
        "top_k": 20,
        "repetition_penalty": 1.1,
        "min_p": 0.05,
        "chat_template_kwargs": {"enable_thinking": False},
        "priority": None,
        "chat_template": None,
        "kv_transfer_params": None,
        "vllm_xargs": None,
    }
    line = read_trajectory(trajectory("t1"))[0]
    assert line["dropped"] == ["priority", "chat_template", "kv_transfer_params", "vllm_xargs"]


async def test_vllm_extras_are_dropped_for_other_providers(upstream, anthropic_mode, serve, open_trial, trajectory):
    async with serve(anthropic_mode) as gw, openai_client(await open_trial(gw, "t1")) as client:
        await client.chat.completions.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}], extra_body={"min_p": 0.1}
        )
    assert "min_p" not in upstream.received[0].body
    assert read_trajectory(trajectory("t1"))[0]["dropped"] == ["min_p"]


def test_documented_fields_are_never_refused():
    for protocol, fields in DOCUMENTED.items():
        assert refused_field(protocol, dict.fromkeys(fields | VLLM_EXTRAS, 1)) is None, protocol


async def test_stream_must_be_a_boolean(upstream, serve, open_trial, trajectory, keyed_vllm):
    async with serve(keyed_vllm) as gw, openai_client(await open_trial(gw, "t1")) as client:
        with pytest.raises(openai.BadRequestError, match="`stream` must be true or false"):
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"stream": "true"}
            )
    assert upstream.received == []
