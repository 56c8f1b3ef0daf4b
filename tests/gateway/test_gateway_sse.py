"""Stream bookkeeping on raw bytes: SSE parsing, reassembly, and withholding the usage event the gateway asked for."""

from __future__ import annotations

import orjson

from evalkit.gateway.protocols import UsageWithholder, reassemble, sse_data, usage_of


def chunk(delta: dict, finish: str | None = None) -> bytes:
    return (
        b"data: "
        + orjson.dumps(
            {"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        )
        + b"\n\n"
    )


USAGE = (
    b"data: "
    + orjson.dumps(
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    )
    + b"\n\n"
)


def test_sse_data_handles_comments_multiline_data_crlf_and_done():
    stream = (
        b'event: x\r\ndata: {"a":1}\r\n\r\n'  # CRLF line ends
        b': keep-alive data: {"no":1}\n\n'  # a comment
        b'data: {"b":\ndata: 2}\n\n'  # data over two lines
        b"data: [DONE]\n\ndata: {broken\n\n"
    )
    assert sse_data(stream) == [{"a": 1}, {"b": 2}]


def test_openai_stream_reassembles_text_and_parallel_tool_calls():
    stream = b"".join(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo", "reasoning_content": "think"}),
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "a", "type": "function", "function": {"name": "Bash", "arguments": ""}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "b", "type": "function", "function": {"name": "Read", "arguments": '{"p'}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "function": {"arguments": '{"c":1}'}},
                        {"index": 1, "function": {"arguments": '":2}'}},
                    ]
                }
            ),
            chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        ]
    )
    message = reassemble("openai_chat", stream)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] == "Hello" and message["message"]["reasoning_content"] == "think"
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message["message"]["tool_calls"]] == [
        ("a", "Bash", '{"c":1}'),
        ("b", "Read", '{"p":2}'),
    ]


def test_anthropic_stream_reassembles_blocks_and_usage():
    def event(kind: str, data: dict) -> bytes:
        return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data}) + b"\n\n"

    stream = b"".join(
        [
            event(
                "message_start",
                {
                    "message": {
                        "id": "m",
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "usage": {"input_tokens": 5, "cache_read_input_tokens": 20, "output_tokens": 1},
                    }
                },
            ),
            event("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
            event(
                "content_block_start",
                {"index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "Bash", "input": {}}},
            ),
            event(
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"command":'}},
            ),
            event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ' "ls"}'}}),
            event("content_block_stop", {"index": 1}),
            event("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            event("message_stop", {}),
        ]
    )
    message = reassemble("anthropic_messages", stream)
    assert message["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": "ls"}},
    ]
    assert message["stop_reason"] == "tool_use"
    usage = usage_of(message)
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (25, 20, 9)


def relay(withholder: UsageWithholder, reads: list[bytes]) -> bytes:
    return b"".join(withholder.feed(read) for read in reads) + withholder.flush()


def test_usage_event_is_withheld_however_the_reads_split_it():
    stream = chunk({"content": "hi"}) + chunk({}, "stop") + USAGE + b"data: [DONE]\n\n"
    expected = chunk({"content": "hi"}) + chunk({}, "stop") + b"data: [DONE]\n\n"
    for line_end in (b"\n", b"\r\n", b"\r"):
        wire = stream.replace(b"\n", line_end)
        for cut in range(1, len(wire)):
            for reads in ([wire[:cut], wire[cut:]], [wire[:cut], wire[cut : cut + 7], wire[cut + 7 :]]):
                withholder = UsageWithholder()
                assert relay(withholder, reads) == expected, (line_end, cut)
                assert b"".join(withholder.withheld) == USAGE
                assert usage_of(reassemble("openai_chat", b"".join(withholder.withheld))).input_tokens == 7


def test_withholding_forwards_whole_events_as_soon_as_they_are_complete():
    withholder = UsageWithholder()
    first = chunk({"content": "a"})
    assert withholder.feed(first + first[:10]) == first  # the half event waits for the rest
    assert withholder.feed(first[10:]) == first
    assert withholder.feed(chunk({"content": "choices:[]"})) == chunk({"content": "choices:[]"})  # text, not usage
    assert withholder.flush() == b"" and withholder.withheld == []


def test_streams_off_the_protocol_do_not_raise():
    broken = b'event: content_block_delta\ndata: {"type": "message_start", "message": {"content": 5}}\n\n'
    assert reassemble("anthropic_messages", broken) is None
    assert reassemble("openai_chat", b'data: {"choices": [{"delta": 3}]}\n\n') is None
    assert reassemble("openai_chat", b"not sse at all") is None
