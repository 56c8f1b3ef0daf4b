"""Real OpenAI and Anthropic SDKs, through the gateway, to a fake upstream on a real socket.

Each call must come back as the SDK expects and appear exactly once in its trial's trajectory, with the body
the client received (a stream reassembled into the object a non-streamed call returns).
"""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest
from fake_upstream import Reply
from gateway_testing import (
    BASH_TOOL_ANTHROPIC,
    BASH_TOOL_OPENAI,
    MODEL,
    anthropic_client,
    openai_client,
    read_trajectory,
    vllm_config,
)

from evalkit.gateway import LLMApiConfig

TOOL_CALL = {"name": "Bash", "arguments": {"command": "ls -la"}}


async def test_openai_chat_non_streaming_with_tool_call(upstream, serve, open_trial, trajectory):
    upstream.default = Reply(text="", tool_calls=[TOOL_CALL])
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "list files"}], tools=[BASH_TOOL_OPENAI]
            )
            completion = raw.parse()
    call = completion.choices[0].message.tool_calls[0]
    assert (call.function.name, orjson.loads(call.function.arguments)) == ("Bash", {"command": "ls -la"})
    assert completion.choices[0].finish_reason == "tool_calls"
    sent = upstream.received[-1]
    assert sent.body["model"] == MODEL and sent.body["tools"] == [BASH_TOOL_OPENAI]
    assert "Authorization" not in sent.headers  # keyless vLLM: the trial key is never forwarded
    [line] = read_trajectory(trajectory("t1"))
    assert line["trial_id"] == "t1" and line["route"] == "passthrough" and line["status"] == 200
    assert line["deployment"] == "up0" and line["error"] is None
    assert line["request"]["messages"] == [{"role": "user", "content": "list files"}]
    assert line["response"] == orjson.loads(raw.http_response.content)
    assert line["usage"] == {
        "input_tokens": completion.usage.prompt_tokens,
        "output_tokens": completion.usage.completion_tokens,
        "cache_read_tokens": 0,
    }
    timing = line["timing"]
    assert timing["start"] <= timing["first_byte"] <= timing["end"]


async def test_openai_chat_streaming_reassembled_and_usage_withheld(upstream, serve, open_trial, trajectory):
    upstream.default = Reply(text="The files are listed below.", tool_calls=[TOOL_CALL], chunks=5)
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "list"}], tools=[BASH_TOOL_OPENAI], stream=True
            )
            chunks = [chunk async for chunk in stream]
        usage = await gw.close_trial(access.api_key)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "The files are listed below."
    assert all(c.choices for c in chunks), "the usage event the gateway asked for must not reach the agent"
    assert upstream.received[-1].body["stream_options"] == {"include_usage": True}
    [line] = read_trajectory(trajectory("t1"))
    assert line["stream"] is True and line["status"] == 200
    message = line["response"]["choices"][0]["message"]
    assert message["content"] == text
    assert message["tool_calls"][0]["function"] == {"name": "Bash", "arguments": '{"command":"ls -la"}'}
    assert line["response"]["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in line["response"]
    assert line["usage"]["output_tokens"] > 0 and usage.output_tokens == line["usage"]["output_tokens"]
    assert line["timing"]["first_byte"] is not None


async def test_anthropic_client_translated_to_openai_upstream(upstream, serve, open_trial, trajectory):
    upstream.script = [Reply(text="Let me look.", tool_calls=[TOOL_CALL])]
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            raw = await client.messages.with_raw_response.create(
                model=MODEL,
                max_tokens=100,
                system="You are terse.",
                tools=[BASH_TOOL_ANTHROPIC],
                messages=[{"role": "user", "content": "list files"}],
            )
            message = await raw.parse()
            beta = await client.beta.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    assert beta.content[0].text  # Claude Code's `/v1/messages?beta=true`
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me look."
    assert (message.content[1].name, message.content[1].input) == ("Bash", {"command": "ls -la"})
    assert message.stop_reason == "tool_use"
    sent = upstream.received[0]
    assert sent.path == "/v1/chat/completions" and sent.body["model"] == MODEL
    assert sent.body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent.body["tools"][0]["function"]["name"] == "Bash"
    line, beta_line = read_trajectory(trajectory("t1"))
    assert line["route"] == "translated" and line["protocol"] == "anthropic_messages"
    assert line["response"] == orjson.loads(raw.http_response.content)
    assert beta_line["status"] == 200 and beta_line["endpoint"] == "/v1/messages"
    assert line["usage"]["input_tokens"] == message.usage.input_tokens > 0


async def test_anthropic_client_translated_streaming(upstream, serve, open_trial, trajectory):
    upstream.script = [Reply(text="Running it now.", tool_calls=[TOOL_CALL], chunks=4)]
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            async with client.messages.stream(
                model=MODEL, max_tokens=100, tools=[BASH_TOOL_ANTHROPIC], messages=[{"role": "user", "content": "go"}]
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
    assert text == "Running it now."
    assert final.content[1].input == {"command": "ls -la"} and final.stop_reason == "tool_use"
    assert upstream.received[-1].body["stream"] is True
    [line] = read_trajectory(trajectory("t1"))
    assert line["route"] == "translated" and line["stream"] is True
    assert line["response"]["content"] == [
        {"type": "text", "text": "Running it now."},
        {"type": "tool_use", "id": final.content[1].id, "name": "Bash", "input": {"command": "ls -la"}},
    ]
    assert line["response"]["stop_reason"] == "tool_use"
    assert line["usage"]["output_tokens"] == final.usage.output_tokens > 0


async def test_anthropic_passthrough_to_anthropic_upstream(
    upstream, anthropic_mode, serve, open_trial, trajectory
):
    upstream.default = Reply(text="Native answer.", tool_calls=[TOOL_CALL], chunks=3)
    async with serve(anthropic_mode) as gw:
        access = await open_trial(gw, "t1")
        async with anthropic_client(access) as client:
            message = await client.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            async with client.messages.stream(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                final = await stream.get_final_message()
    assert message.content[0].text == "Native answer." and final.content[1].input == {"command": "ls -la"}
    for sent in upstream.received:
        assert sent.path == "/v1/messages" and sent.body["model"] == "claude-test"
        assert sent.headers["x-api-key"] == "sk-ant-upstream-secret"
        assert access.api_key not in str(sent.headers)
    lines = read_trajectory(trajectory("t1"))
    assert [line["route"] for line in lines] == ["passthrough", "passthrough"]
    assert lines[1]["response"]["content"][1]["input"] == {"command": "ls -la"}
    assert lines[1]["usage"] == {
        "input_tokens": final.usage.input_tokens,
        "output_tokens": final.usage.output_tokens,
        "cache_read_tokens": 0,
    }


async def test_openai_client_translated_to_anthropic_upstream(
    upstream, anthropic_mode, serve, open_trial, trajectory
):
    upstream.default = Reply(text="Via LiteLLM.", tool_calls=[TOOL_CALL], chunks=2)
    async with serve(anthropic_mode) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            completion = await client.chat.completions.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            stream = await client.chat.completions.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            chunks = [chunk async for chunk in stream]
    assert completion.choices[0].message.content == "Via LiteLLM."
    assert orjson.loads(completion.choices[0].message.tool_calls[0].function.arguments) == {"command": "ls -la"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Via LiteLLM."
    assert all(c.choices for c in chunks)
    assert [s.path for s in upstream.received] == ["/v1/messages", "/v1/messages"]
    lines = read_trajectory(trajectory("t1"))
    assert [line["route"] for line in lines] == ["translated", "translated"]
    assert lines[1]["response"]["choices"][0]["message"]["content"] == "Via LiteLLM."
    assert all(line["usage"]["output_tokens"] > 0 for line in lines)


async def test_responses_api_passthrough_when_upstream_has_it(upstream, serve, open_trial, trajectory, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-openai-secret")
    config = LLMApiConfig(
        model=MODEL,
        deployments=[{"model": "openai/gpt-fake", "api_base": upstream.url, "api_key_env": "FAKE_OPENAI_KEY"}],
    )
    upstream.default = Reply(text="Responses work.", chunks=3)
    async with serve(config) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            response = await client.responses.create(model=MODEL, input="hello")
            stream = await client.responses.create(model=MODEL, input="hello", stream=True)
            events = [event async for event in stream]
    assert response.output_text == "Responses work."
    assert events[-1].type == "response.completed"
    assert (
        upstream.received[0].body["model"] == "gpt-fake"
        and upstream.received[0].headers["Authorization"] == "Bearer sk-openai-secret"
    )
    lines = read_trajectory(trajectory("t1"))
    assert lines[1]["response"]["output"][0]["content"][0]["text"] == "Responses work."
    assert lines[1]["usage"]["output_tokens"] == response.usage.output_tokens


async def test_responses_api_is_404_when_upstream_lacks_it(upstream, serve, open_trial, trajectory):
    async with serve(vllm_config(upstream)) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            with pytest.raises(openai.NotFoundError, match="no Responses API"):
                await client.responses.create(model=MODEL, input="hello")
    assert upstream.received == []
    [line] = read_trajectory(trajectory("t1"))
    assert line["status"] == 404


async def test_count_tokens_estimated_locally(upstream, serve, open_trial, trajectory):
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            short = await client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            long = await client.messages.count_tokens(
                model=MODEL, messages=[{"role": "user", "content": "hello world " * 200}]
            )
    assert 0 < short.input_tokens < long.input_tokens
    assert upstream.received == []
    assert [line["route"] for line in read_trajectory(trajectory("t1"))] == ["local", "local"]


async def test_models_and_root(upstream, serve, open_trial):
    async with serve(vllm_config(upstream)) as gw:
        access = await open_trial(gw, "t1")
        async with openai_client(access) as oa, anthropic_client(access) as an:
            assert [m.id async for m in oa.models.list()] == [MODEL]
            assert [m.id async for m in an.models.list()] == [MODEL]
        async with aiohttp.ClientSession() as session:
            async with session.head(gw.url + "/") as resp:
                assert resp.status == 200


async def test_each_call_once_in_its_own_trial(upstream, serve, open_trial, trajectory):
    async with serve(vllm_config(upstream)) as gw:

        async def agent(trial_id: str) -> None:
            async with openai_client(await open_trial(gw, trial_id)) as client:
                for i in range(4):
                    await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"{trial_id} call {i}"}], stream=i % 2 == 1
                    )

        await asyncio.gather(*(agent(f"t{n}") for n in range(5)))
    for n in range(5):
        lines = read_trajectory(trajectory(f"t{n}"))
        assert [line["seq"] for line in lines] == [0, 1, 2, 3]
        assert [line["request"]["messages"][0]["content"] for line in lines] == [f"t{n} call {i}" for i in range(4)]
        assert {line["trial_id"] for line in lines} == {f"t{n}"}
    assert len(upstream.received) == 20


async def test_fake_upstream_speaks_sse_with_done(upstream):
    """Guard on the double itself: a raw stream ends with `data: [DONE]` like vLLM's."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            upstream.url + "/chat/completions", json={"model": "m", "messages": [], "stream": True}
        ) as resp:
            body = await resp.read()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") >= 4
