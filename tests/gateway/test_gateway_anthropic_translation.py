"""The in-house Anthropic → OpenAI translation (Claude Code on vLLM), with the real `anthropic` SDK and
Claude-Code-shaped requests: system blocks with cache_control, tools, thinking, images, tool results, stop
reasons, usage with cached prompt tokens, upstream errors before and during a stream."""

from __future__ import annotations

import anthropic
import pytest
from fake_upstream import Disconnect, Fail, Reply
from gateway_testing import BASH_TOOL_ANTHROPIC, MODEL, anthropic_client, read_trajectory, vllm_config

from evalkit.gateway.anthropic_to_openai import StreamTranslator

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
CLAUDE_CODE = {
    "model": MODEL,
    "max_tokens": 2048,
    "system": [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}},
    ],
    "tools": [BASH_TOOL_ANTHROPIC],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 8000},
    "stop_sequences": ["</done>"],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
            {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "look first", "signature": "sig"},
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "a.py"}, {"type": "image", "source": {
                    "type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "text", "text": "go on"}]},
    ],
}  # fmt: skip
TOOL = {"name": "Bash", "arguments": {"command": "cat a.py"}}


def expected_upstream_messages() -> list[dict]:
    return [
        {"role": "system", "content": "You are Claude Code.\nBe careful."},
        {"role": "user", "content": "<system-reminder>ctx</system-reminder>\nfix the bug"},
        {"role": "assistant", "content": "Looking.", "reasoning_content": "look first", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a.py"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "text", "text": "go on"}]},
    ]  # fmt: skip


async def test_a_claude_code_request_is_translated_and_answered_in_anthropics_shape(
    upstream, serve, open_trial, trajectory
):
    upstream.script = [Reply(text="Reading it.", reasoning="it is in a.py", tool_calls=[TOOL], cached_tokens=7)]
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            message = await client.messages.create(**CLAUDE_CODE)
    sent = upstream.received[0].body
    assert sent["messages"] == expected_upstream_messages()
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "Bash", "description": "Run a command", "parameters": BASH_TOOL_ANTHROPIC["input_schema"]}}]  # fmt: skip
    assert (sent["tool_choice"], sent["parallel_tool_calls"], sent["reasoning_effort"]) == ("auto", False, "medium")
    assert (sent["max_tokens"], sent["stop"], sent["model"]) == (2048, ["</done>"], MODEL)
    assert "stream" not in sent and "system" not in sent and "thinking" not in sent
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "it is in a.py" and message.content[1].text == "Reading it."
    assert (message.content[2].name, message.content[2].input) == ("Bash", {"command": "cat a.py"})
    assert message.stop_reason == "tool_use" and message.model == MODEL
    assert message.usage.cache_read_input_tokens == 7 and message.usage.output_tokens > 0
    [line] = read_trajectory(trajectory("t1"))
    assert line["route"] == "translated" and line["usage"]["cache_read_tokens"] == 7
    assert line["usage"]["input_tokens"] == message.usage.input_tokens + 7
    assert line["request"] == CLAUDE_CODE  # what the agent sent, not the translation


async def test_a_streamed_answer_reaches_the_sdk_whole(upstream, serve, open_trial, trajectory):
    upstream.script = [Reply(text="Reading it now.", reasoning="it is in a.py", tool_calls=[TOOL], chunks=5,
                             cached_tokens=3)]  # fmt: skip
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            async with client.messages.stream(**CLAUDE_CODE) as stream:
                kinds = [event.type async for event in stream]
                final = await stream.get_final_message()
    assert upstream.received[0].body["stream"] is True
    assert upstream.received[0].body["stream_options"] == {"include_usage": True}
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "thinking" in kinds
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "it is in a.py" and final.content[1].text == "Reading it now."
    assert final.content[2].input == {"command": "cat a.py"} and final.stop_reason == "tool_use"
    assert final.usage.cache_read_input_tokens == 3 and final.usage.input_tokens > 0
    [line] = read_trajectory(trajectory("t1"))
    assert line["error"] is None and line["response"]["content"][2]["input"] == {"command": "cat a.py"}
    assert line["usage"] == {"input_tokens": final.usage.input_tokens + 3, "output_tokens": final.usage.output_tokens,
                             "cache_read_tokens": 3}  # fmt: skip


async def test_each_tool_call_is_one_block_however_its_arguments_are_split(upstream, serve, open_trial):
    """A tool call's argument deltas accumulate into one `tool_use` block in the SDK's stream accumulator; two
    calls in one answer are two blocks, each with its own id and input."""
    second = {"name": "Bash", "arguments": {"command": "grep -n bug a.py", "timeout": 30}}
    upstream.script = [Reply(text="Two looks.", tool_calls=[TOOL, second])]
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            async with client.messages.stream(**{**CLAUDE_CODE, "thinking": {"type": "disabled"}}) as stream:
                starts = [e.content_block.type async for e in stream if e.type == "content_block_start"]
                final = await stream.get_final_message()
    assert starts == ["text", "tool_use", "tool_use"]
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert [b.input for b in final.content[1:]] == [TOOL["arguments"], second["arguments"]]
    assert final.content[1].id != final.content[2].id and final.stop_reason == "tool_use"


async def test_upstream_errors_reach_the_sdk_in_anthropics_shape(upstream, serve, open_trial, trajectory):
    upstream.script = [Fail(400), Disconnect(after_chunks=3)]
    async with serve(vllm_config(upstream, max_retries=0)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            with pytest.raises(anthropic.BadRequestError, match="injected 400"):
                await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
            with pytest.raises(anthropic.APIError, match="upstream broke off the stream"):
                async with client.messages.stream(
                    model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
                ) as stream:
                    async for _ in stream:
                        pass
    bad, broken = read_trajectory(trajectory("t1"))
    assert bad["status"] == 400 and bad["error"] == "injected 400"
    assert broken["status"] == 200 and broken["error"].startswith("upstream broke off the stream")


def test_stop_sequences_errors_and_split_events_in_the_stream():
    """vLLM names the stop string that ended a generation in `stop_reason`; events may be split across reads
    and use CRLF; an error event upstream becomes an Anthropic `error` event."""
    translator = StreamTranslator("m", ["</done>"])
    upstream = (
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"hi"}}]}\r\n\r\n'
        b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":"</done>"}]}\r\n\r\n'
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\r\n\r\ndata: [DONE]\r\n\r\n'
    )
    out = b"".join(translator.feed(upstream[i : i + 7]) for i in range(0, len(upstream), 7)) + translator.end()
    assert out.count(b"event: ") == 6 and translator.finished
    assert b'"stop_reason":"stop_sequence","stop_sequence":"</done>"' in out
    assert b'"usage":{"input_tokens":5,"output_tokens":2,"cache_read_input_tokens":0' in out
    failing = StreamTranslator("m", [])
    out = failing.feed(b'data: {"error":{"message":"overloaded"}}\n\n')
    assert out == b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"overloaded"}}\n\n'
