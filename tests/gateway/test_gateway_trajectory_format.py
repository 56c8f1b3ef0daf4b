"""The trajectory's delta encoding (schema v2) and its one reader: files grow linearly with a conversation, every
call reads back whole, v1 files still read, damage is reported rather than raised."""

from __future__ import annotations

import os

import orjson
from fake_upstream import Reply
from gateway_testing import BASH_TOOL_ANTHROPIC, MODEL, anthropic_client, openai_client, vllm_config

from evalkit.analysis.reader import read_trajectory as analysis_reader
from evalkit.gateway.trajectory import SCHEMA_VERSION, read_trajectory


def read_all(path) -> tuple[list[dict], list[str]]:
    problems: list[str] = []
    return list(read_trajectory(path, problems)), problems


async def test_a_growing_conversation_is_stored_linearly_and_read_back_whole(upstream, serve, open_trial, trajectory):
    upstream.default = Reply(text="ok " * 50)
    sent: list[list[dict]] = []
    async with serve(vllm_config(upstream)) as gw:
        async with openai_client(await open_trial(gw, "t1")) as client:
            messages = [{"role": "system", "content": "You are a careful agent. " * 40}]
            for step in range(30):
                messages.append({"role": "user", "content": f"step {step}: " + "tool output line\n" * 60})
                sent.append(list(messages))
                answer = await client.chat.completions.create(model=MODEL, messages=messages, stream=step % 2 == 0)
                text = "".join([c.choices[0].delta.content or "" async for c in answer if c.choices]) if step % 2 == 0 else answer.choices[0].message.content
                messages.append({"role": "assistant", "content": text})
    path = trajectory("t1")
    calls, problems = read_all(path)
    assert problems == [] and [c["request"]["messages"] for c in calls] == sent
    raw = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert {line["v"] for line in raw} == {SCHEMA_VERSION}
    assert "request_delta" not in raw[0] and all(line["request_delta"]["base"] == line["seq"] - 1 for line in raw[1:])
    assert all(len(line["request"]["messages"]) == 2 for line in raw[1:]), "only the new messages are stored"
    whole = sum(len(orjson.dumps(c["request"])) for c in calls)  # what v1 stored: every request whole
    last = len(orjson.dumps(calls[-1]["request"]))
    assert path.stat().st_size < 2 * last < whole / 5  # linear in the conversation, not quadratic


async def test_claude_code_shaped_requests_share_system_and_tools_and_subagents_find_their_base(
    upstream, serve, open_trial, trajectory
):
    """Claude Code moves `cache_control` to the newest message each turn and runs subagents whose conversations
    interleave with the main one: each request still refers to its own conversation's last request, and the
    big unchanged fields (`system`, `tools`) are stored once."""
    system = [{"type": "text", "text": "You are Claude Code. " * 60, "cache_control": {"type": "ephemeral"}}]
    tools = [BASH_TOOL_ANTHROPIC | {"description": "Run a command. " * 40}]
    conversations = {"main": [], "sub": []}
    sent = []
    async with serve(vllm_config(upstream)) as gw:
        async with anthropic_client(await open_trial(gw, "t1")) as client:
            for turn in range(4):
                for name, history in conversations.items():
                    for message in history:  # the newest user message alone carries cache_control
                        if isinstance(message["content"], list):
                            message["content"][-1].pop("cache_control", None)
                    history.append({"role": "user", "content": [
                        {"type": "text", "text": f"{name} turn {turn}", "cache_control": {"type": "ephemeral"}}]})
                    request = {"model": MODEL, "max_tokens": 50, "system": system, "tools": tools, "messages": history}
                    sent.append(orjson.loads(orjson.dumps(request)))
                    reply = await client.messages.create(**request)
                    history.append({"role": "assistant", "content": reply.content[0].text})
    calls, problems = read_all(trajectory("t1"))
    assert problems == [] and [c["request"] for c in calls] == sent
    raw = [orjson.loads(line) for line in trajectory("t1").read_bytes().splitlines()]
    deltas = [line.get("request_delta") for line in raw]
    assert deltas[0] is None and deltas[1] == {"base": 0, "keep": 0, "same": ["system", "tools"]}
    for seq in range(4, 8):  # the same conversation's previous request, all but its last message kept
        assert deltas[seq]["base"] == seq - 2 and deltas[seq]["keep"] == len(sent[seq - 2]["messages"]) - 1
        assert "system" not in raw[seq]["request"] and "tools" not in raw[seq]["request"]


def test_the_reader_takes_v1_files_torn_lines_and_missing_bases(tmp_path):
    v1 = {"v": 1, "seq": 0, "request": {"model": "m", "messages": [{"role": "user", "content": "a"}]}}
    orphan = {"v": 2, "seq": 5, "request": {"messages": [{"role": "user", "content": "z"}]},
              "request_delta": {"base": 4, "keep": 3, "same": []}}  # fmt: skip
    path = tmp_path / "try__0" / "agent" / "litellm-trajectory.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps(v1) + b"\n" + orjson.dumps(orphan) + b"\n" + b'{"v": 2, "seq": 6, "requ')
    calls, problems = read_all(path)
    assert calls[0] == v1
    assert calls[1]["messages_incomplete"] is True and calls[1]["request"]["messages"] == [{"role": "user", "content": "z"}]
    assert problems == ["line 2: its request refers to call 4, not in the file", "line 3 is not a JSON object (torn: no newline)"]
    named: list[str] = []
    assert len(list(analysis_reader(path, named))) == 2
    assert named == [f"try__0/agent/litellm-trajectory.jsonl: {p}" for p in problems]


def test_the_reader_never_follows_a_symlink_or_opens_a_fifo(tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(b'{"v": 1, "seq": 0}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    assert read_all(link) == ([], ["not read: it is a symlink"])
    assert read_all(fifo) == ([], ["not read: not a regular file"])  # and it did not hang
    assert read_all(tmp_path / "missing.jsonl") == ([], [])


def test_byte_extended_conversations_and_every_other_shape_read_back_whole(tmp_path):
    """The writer's short cut (a conversation that starts with an earlier request's `messages` bytes is split
    only after them) and its fall-backs: pretty-printed JSON, a number the next request extends, an edited
    message, a resend, an alternating subagent, a non-list `messages`; each request reads back as sent."""
    from evalkit.gateway.bodies import parse
    from evalkit.gateway.trajectory import RequestHistory

    def m(i: int) -> dict:
        return {"role": "user" if i % 2 else "assistant", "content": f"message {i} " * 20}

    main = [[m(i) for i in range(n)] for n in (1, 3, 5)]
    bodies = [orjson.dumps({"model": MODEL, "messages": ms}) for ms in main]
    bodies += [orjson.dumps({"model": MODEL, "messages": main[-1]}),  # resent as it was
               orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "sub"}]}),  # a subagent
               orjson.dumps({"model": MODEL, "messages": [*main[-1], m(5), m(6)]}),  # main, past the subagent
               orjson.dumps({"model": MODEL, "messages": [m(0), {"role": "user", "content": "edited"}, *main[-1][2:]]}),
               b'{"model": "m", "messages": [\n  {"role": "user", "content": "a"} ,\n  {"role": "user", "content": "b"}\n ]}',
               b'{"model": "m", "messages": [\n  {"role": "user", "content": "a"} ,\n  {"role": "user", "content": "b"} , 1 ]}',
               b'{"model": "m", "messages": [{"role": "user", "content": "a"},1]}',
               b'{"model": "m", "messages": [{"role": "user", "content": "a"},12]}',
               b'{"model": "m", "messages": [{"role": "user", "content": "a"},12,{"x":1}]}',
               b'{"model": "m", "messages": "not a list"}']  # fmt: skip
    history = RequestHistory()
    lines, deltas = [], []
    for seq, body in enumerate(bodies, 1):
        request, delta = history.encode(seq, parse(body))
        deltas.append(delta)
        lines.append(orjson.dumps({"v": 2, "seq": seq, "request": request, **({"request_delta": delta} if delta else {})}))
    (tmp_path / "t.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    calls, problems = read_all(tmp_path / "t.jsonl")
    assert problems == [] and [c["request"] for c in calls] == [orjson.loads(b) for b in bodies]
    assert deltas[1] == {"base": 1, "keep": 1, "same": []} and deltas[3] == {"base": 3, "keep": 5, "same": []}
    assert deltas[5] == {"base": 4, "keep": 5, "same": []}, "the main conversation's last request, past the subagent"
    assert deltas[6]["keep"] == 1 and deltas[8]["keep"] == 2 and deltas[10]["keep"] == 1
    assert orjson.loads(lines[3])["request"]["messages"] == [] and orjson.loads(lines[10])["request"]["messages"] == [12]
