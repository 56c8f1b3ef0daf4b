"""ATIF and OpenTelemetry export of real trajectories, validated against ATIF v1.4 as Harbor's RFC defines it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson

from evalkit.analysis.export import export_job, to_atif
from tests.conftest import run_cli

SCHEMA = json.loads((Path(__file__).parent / "atif-v1.4.schema.json").read_text())
AGENT_ONLY = {"model_name", "reasoning_effort", "reasoning_content", "tool_calls", "metrics"}


def validate_atif(doc: dict) -> None:
    """The schema, plus the RFC's cross-field rules (Harbor's validators check the same)."""
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert [s["step_id"] for s in doc["steps"]] == list(range(1, len(doc["steps"]) + 1))
    for step in doc["steps"]:
        if step["source"] != "agent":
            assert not AGENT_ONLY & step.keys(), step
        ids = {c["tool_call_id"] for c in step.get("tool_calls", [])}
        for result in step.get("observation", {}).get("results", []):
            assert result.get("source_call_id") is None or result["source_call_id"] in ids
    assert doc["final_metrics"]["total_steps"] == len(doc["steps"])


def test_atif_export_of_real_trajectories_validates(jobs, tmp_path: Path):
    result = export_job(jobs.scripted, "atif", tmp_path / "atif")
    assert sorted(result.written) == sorted(f"{t}__0.json" for t in
                                            ("solved", "rate-limited", "context-exceeded", "does-nothing", "tests-fail", "wrong-answer", "times-out"))
    assert set(result.skipped) == {"crashes__0", "build-fails__0", "no-reward__0", "bad-reward__0"}
    for name in result.written:
        validate_atif(json.loads((tmp_path / "atif" / name).read_text()))
    solved = json.loads((tmp_path / "atif" / "solved__0.json").read_text())
    assert solved["schema_version"] == "ATIF-v1.4" and solved["agent"]["name"] == "scripted"
    user, agent = solved["steps"]
    assert (user["source"], user["message"]) == ("user", "Task solved.\n")
    assert agent["source"] == "agent" and agent["message"] == "Running the command."
    assert agent["tool_calls"][0]["function_name"] == "bash"
    assert agent["tool_calls"][0]["arguments"] == {"cmd": "echo done > /tmp/out.txt"}
    call = orjson.loads((jobs.scripted / "solved__0" / "agent" / "litellm-trajectory.jsonl").read_bytes().splitlines()[0])
    assert agent["metrics"]["prompt_tokens"] == call["usage"]["input_tokens"]
    assert solved["final_metrics"]["total_completion_tokens"] == call["usage"]["output_tokens"]
    assert solved["extra"]["reward"] == 1.0 and solved["extra"]["task"] == "solved"
    limited = json.loads((tmp_path / "atif" / "rate-limited__0.json").read_text())
    assert limited["steps"][-1]["source"] == "system" and limited["steps"][-1]["message"].startswith("model call failed (status 429)")


def test_multi_turn_conversation_links_tool_results_to_their_calls():
    def call(seq: int, messages: list, response: dict) -> dict:
        return {"seq": seq, "status": 200, "error": None, "protocol": "openai_chat",
                "usage": {"input_tokens": 10 * (seq + 1), "output_tokens": 5, "cache_read_tokens": 0},
                "timing": {"start": 1764000000.0 + seq, "end": 1764000000.5 + seq},
                "request": {"model": "m", "messages": messages}, "response": response}

    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "list files"}]
    answer1 = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": '{"path": "/"}'}}]}
    second = first + [answer1, {"role": "tool", "tool_call_id": "c1", "content": "bin etc"}]
    calls = [
        call(0, first, {"model": "m", "choices": [{"message": answer1, "finish_reason": "tool_calls"}]}),
        call(1, second, {"model": "m", "choices": [{"message": {"role": "assistant", "content": "bin and etc"}}]}),
    ]
    doc = to_atif(iter(calls), session_id="s", agent="a", extra={})
    validate_atif(doc)
    assert [s["source"] for s in doc["steps"]] == ["system", "user", "agent", "agent"]
    assert doc["steps"][2]["observation"] == {"results": [{"content": "bin etc", "source_call_id": "c1"}]}
    assert doc["steps"][3]["message"] == "bin and etc"
    assert doc["final_metrics"]["total_prompt_tokens"] == 30


def test_otel_export_and_the_cli(jobs, tmp_path: Path):
    cli = run_cli("export", str(jobs.scripted), "--format", "otel", "--out", str(tmp_path / "otel"))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"wrote 7 otel file(s) to {tmp_path / 'otel'}; skipped 4")
    doc = json.loads((tmp_path / "otel" / "solved__0.otlp.json").read_text())
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    root, chat = spans
    assert root["name"] == "invoke_agent scripted" and chat["parentSpanId"] == root["spanId"]
    assert len(root["traceId"]) == 32 and len(chat["spanId"]) == 16 and chat["traceId"] == root["traceId"]
    attrs = {a["key"]: a["value"] for a in chat["attributes"]}
    assert attrs["gen_ai.operation.name"] == {"stringValue": "chat"} and attrs["gen_ai.request.model"] == {"stringValue": "smollm2"}
    assert int(attrs["gen_ai.usage.input_tokens"]["intValue"]) > 0 and chat["status"] == {"code": 1}
    limited = json.loads((tmp_path / "otel" / "rate-limited__0.otlp.json").read_text())
    assert limited["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["status"]["code"] == 2
    bad = run_cli("export", str(tmp_path / "nope"))
    assert (bad.returncode, bad.stderr) == (2, f"evalkit: error: job directory not found: {tmp_path / 'nope'}\n")
