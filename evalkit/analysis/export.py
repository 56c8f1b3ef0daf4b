"""`evalkit export JOB_DIR --format atif|otel`: trajectories in formats other tools read.

- **ATIF** (Harbor's Agent Trajectory Interchange Format, v1.4): one JSON file per try. The gateway logs each
  model call with the full request, so the conversation is rebuilt incrementally: messages new since the last
  call become system/user steps, tool results become the observation of the agent step that asked for them, and
  each answer becomes an agent step with its token metrics. A failed call becomes a system step saying so.
- **OTel**: OpenTelemetry GenAI spans in OTLP/JSON (what Langfuse, Phoenix and collectors ingest over HTTP):
  per try an `invoke_agent` span with one `chat` client span per model call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from evalkit.analysis.reader import TRAJECTORY, TryRecord, iter_tries, read_json, read_trajectory, tool_calls_of
from evalkit.errors import ConfigError
from evalkit.results import write_json_atomic

ATIF_VERSION = "ATIF-v1.4"


class ExportResult(BaseModel):
    format: str
    out_dir: Path
    written: list[str]
    skipped: dict[str, str]
    """try directory → why nothing was written (no trajectory, unreadable result)."""
    problems: list[str]


def _text(content: Any) -> str:
    """Text of an OpenAI/Anthropic content value (a string or a list of parts/blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") == "tool_result":
                parts.append(_text(part.get("content")))
        return "\n".join(parts)
    return orjson.dumps(content).decode()


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value or "{}")
        except orjson.JSONDecodeError:
            return {"raw": value}
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    return {} if value is None else {"value": value}


Message = tuple[str, str, str | None]
"""(role, text, tool_call_id) — role is system | user | assistant | tool."""


def request_messages(request: Any) -> list[Message]:
    """The conversation a request carries, in any of the gateway's protocols."""
    if not isinstance(request, dict):
        return []
    out: list[Message] = []
    if request.get("system") is not None:  # Anthropic
        out.append(("system", _text(request["system"]), None))
    if request.get("instructions"):  # Responses
        out.append(("system", _text(request["instructions"]), None))
    items = request.get("messages")
    if items is None and "input" in request:  # Responses
        items = [{"role": "user", "content": request["input"]}] if isinstance(request["input"], str) else request["input"]
    for m in items or []:
        if not isinstance(m, dict):
            continue
        role = m.get("role") or ("tool" if m.get("type") == "function_call_output" else "assistant" if m.get("type") == "function_call" else "user")
        if role in ("system", "developer"):
            out.append(("system", _text(m.get("content")), None))
        elif role == "tool":
            out.append(("tool", _text(m.get("content") if "content" in m else m.get("output")), m.get("tool_call_id") or m.get("call_id")))
        elif role == "user" and isinstance(m.get("content"), list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"]
        ):
            for block in m["content"]:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    out.append(("tool", _text(block.get("content")), block.get("tool_use_id")))
                elif _text([block]):
                    out.append(("user", _text([block]), None))
        else:
            out.append((role if role in ("user", "assistant") else "user", _text(m.get("content")), None))
    return out


def response_parts(response: Any) -> tuple[str, str | None, str | None]:
    """(message text, reasoning text, model) of an answer in any protocol."""
    if not isinstance(response, dict):
        return "", None, None
    model = response.get("model")
    if response.get("choices"):
        message = (response["choices"][0] or {}).get("message") or {}
        return _text(message.get("content")), message.get("reasoning_content"), model
    if isinstance(response.get("content"), list):
        blocks = response["content"]
        text = "\n".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        thinking = "\n".join(b.get("thinking", "") for b in blocks if isinstance(b, dict) and b.get("type") == "thinking")
        return text, thinking or None, model
    if isinstance(response.get("output"), list):
        texts = [_text(item.get("content")) for item in response["output"] if isinstance(item, dict) and item.get("type") == "message"]
        return "\n".join(t for t in texts if t), None, model
    return "", None, model


def _iso(ts: Any) -> str | None:
    if not isinstance(ts, (int, float)):
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def to_atif(calls: Iterator[dict[str, Any]], *, session_id: str, agent: str, extra: dict[str, Any]) -> dict[str, Any]:
    """One trajectory (the gateway's call records) as an ATIF document."""
    steps: list[dict[str, Any]] = []
    notes: list[str] = []
    seen = 0
    last_agent: dict[str, Any] | None = None
    default_model: str | None = None
    totals = {"total_prompt_tokens": 0, "total_completion_tokens": 0, "total_cached_tokens": 0}
    cost: float | None = None

    def add(step: dict[str, Any]) -> dict[str, Any]:
        step["step_id"] = len(steps) + 1
        steps.append(step)
        return step

    for call in calls:
        request = call.get("request") if isinstance(call.get("request"), dict) else {}
        messages = request_messages(request)
        default_model = default_model or request.get("model")
        if len(messages) < seen:  # the agent rewrote its context (e.g. summarised): take what follows its last answer
            last = max((i for i, m in enumerate(messages) if m[0] == "assistant"), default=-1)
            notes.append(f"call {call.get('seq')}: the agent's context was rewritten; only messages after its last answer are kept")
            new = messages[last + 1 :]
        else:
            new = messages[seen:]
        for role, text, call_id in new:
            if role == "tool" and last_agent is not None:
                ids = {c["tool_call_id"] for c in last_agent.get("tool_calls", [])}
                result: dict[str, Any] = {"content": text}
                if call_id in ids:
                    result["source_call_id"] = call_id
                last_agent.setdefault("observation", {"results": []})["results"].append(result)
            elif role == "assistant":
                last_agent = add({"source": "agent", "message": text})
            else:
                add({"source": "system" if role == "system" else "user", "message": text})
        status = call.get("status")
        timestamp = _iso((call.get("timing") or {}).get("end"))
        if call.get("error") is not None or not isinstance(status, int) or status >= 400 or not isinstance(call.get("response"), dict):
            step = add({"source": "system", "message": f"model call failed (status {status}): {str(call.get('error') or '')[:500]}",
                        "extra": {"seq": call.get("seq"), "status": status}})
            if timestamp:
                step["timestamp"] = timestamp
            seen = len(messages)
            continue
        text, reasoning, model = response_parts(call["response"])
        step = {"source": "agent", "message": text}
        if timestamp:
            step["timestamp"] = timestamp
        if model or request.get("model"):
            step["model_name"] = model or request.get("model")
        if reasoning:
            step["reasoning_content"] = reasoning
        tool_calls = [
            {"tool_call_id": str(c.get("id") or f"call_{call.get('seq')}_{i}"), "function_name": str(c.get("name") or ""),
             "arguments": _arguments(c.get("arguments"))}
            for i, c in enumerate(tool_calls_of(call["response"]))
        ]
        if tool_calls:
            step["tool_calls"] = tool_calls
        usage = call.get("usage") or {}
        metrics = {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
                   "cached_tokens": usage.get("cache_read_tokens"), "cost_usd": call.get("cost_usd")}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        if metrics:
            step["metrics"] = metrics
        for key, field in (("total_prompt_tokens", "prompt_tokens"), ("total_completion_tokens", "completion_tokens"),
                           ("total_cached_tokens", "cached_tokens")):
            totals[key] += int(metrics.get(field) or 0)
        if call.get("cost_usd") is not None:
            cost = (cost or 0.0) + float(call["cost_usd"])
        last_agent = add(step)
        seen = len(messages) + 1
    doc: dict[str, Any] = {
        "schema_version": ATIF_VERSION,
        "session_id": session_id,
        "agent": {"name": agent, "version": "unknown", **({"model_name": default_model} if default_model else {})},
        "steps": steps,
        "final_metrics": {**totals, **({"total_cost_usd": cost} if cost is not None else {}), "total_steps": len(steps)},
        "extra": extra,
    }
    if notes:
        doc["notes"] = "; ".join(notes)
    return doc


def _hex_id(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[: size * 2]


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": str(v)} for v in value]}}}
    return {"key": key, "value": {"stringValue": str(value)}}


def _ns(ts: Any) -> str:
    return str(int(float(ts) * 1e9)) if isinstance(ts, (int, float)) else "0"


def to_otel(calls: Iterator[dict[str, Any]], *, trace_key: str, agent: str, extra: dict[str, Any]) -> dict[str, Any]:
    """One trajectory as OTLP/JSON: an `invoke_agent` span with a `chat` span per model call."""
    trace_id, root_id = _hex_id(trace_key, 16), _hex_id(trace_key + "/root", 8)
    spans, start, end = [], None, None
    for call in calls:
        timing = call.get("timing") or {}
        request = call.get("request") if isinstance(call.get("request"), dict) else {}
        response = call.get("response") if isinstance(call.get("response"), dict) else {}
        usage = call.get("usage") or {}
        status = call.get("status")
        failed = call.get("error") is not None or not isinstance(status, int) or status >= 400
        model = request.get("model") or ""
        provider = "anthropic" if str(call.get("protocol", "")).startswith("anthropic") else "openai"
        finish = [c.get("finish_reason") for c in response.get("choices") or [] if isinstance(c, dict) and c.get("finish_reason")]
        if response.get("stop_reason"):
            finish.append(response["stop_reason"])
        attrs = [_attr("gen_ai.operation.name", "chat"), _attr("gen_ai.provider.name", provider),
                 _attr("gen_ai.request.model", model)]
        attrs += [_attr(k, v) for k, v in (
            ("gen_ai.response.model", response.get("model")), ("gen_ai.response.id", response.get("id")),
            ("gen_ai.usage.input_tokens", usage.get("input_tokens")), ("gen_ai.usage.output_tokens", usage.get("output_tokens")),
            ("gen_ai.response.finish_reasons", finish or None), ("http.response.status_code", status),
            ("error.type", str(status) if failed else None), ("evalkit.cost_usd", call.get("cost_usd")),
        ) if v is not None]
        spans.append({
            "traceId": trace_id, "spanId": _hex_id(f"{trace_key}/{call.get('seq')}", 8), "parentSpanId": root_id,
            "name": f"chat {model}".strip(), "kind": 3, "startTimeUnixNano": _ns(timing.get("start")),
            "endTimeUnixNano": _ns(timing.get("end")), "attributes": attrs,
            "status": {"code": 2, "message": str(call.get("error") or status)[:200]} if failed else {"code": 1},
        })
        if isinstance(timing.get("start"), (int, float)):
            start = timing["start"] if start is None else min(start, timing["start"])
        if isinstance(timing.get("end"), (int, float)):
            end = timing["end"] if end is None else max(end, timing["end"])
    root = {"traceId": trace_id, "spanId": root_id, "name": f"invoke_agent {agent}", "kind": 1,
            "startTimeUnixNano": _ns(start), "endTimeUnixNano": _ns(end),
            "attributes": [_attr("gen_ai.operation.name", "invoke_agent"), _attr("gen_ai.agent.name", agent)]
            + [_attr(f"evalkit.{k}", v) for k, v in extra.items() if v is not None], "status": {"code": 0}}
    return {"resourceSpans": [{
        "resource": {"attributes": [_attr("service.name", "evalkit")]},
        "scopeSpans": [{"scope": {"name": "evalkit.analysis.export", "version": "1"}, "spans": [root, *spans]}],
    }]}


def export_job(job_dir: Path, fmt: Literal["atif", "otel"], out_dir: Path | None = None) -> ExportResult:
    """Write every try's trajectory of a job in `fmt` (default `<job>/export/<fmt>/`)."""
    job_dir = Path(job_dir)
    if fmt not in ("atif", "otel"):
        raise ConfigError(f"--format: expected atif or otel, got {fmt!r}")
    if not job_dir.is_dir():
        raise ConfigError(f"job directory not found: {job_dir}")
    out = out_dir or job_dir / "export" / fmt
    job_id = ""
    try:
        job_id = str(read_json(job_dir / "job.json").get("job_id") or "")
    except (OSError, ValueError, AttributeError):
        pass
    result = ExportResult(format=fmt, out_dir=out, written=[], skipped={}, problems=[])
    for t in iter_tries(job_dir):
        if not isinstance(t, TryRecord):
            result.skipped[t.dir.name] = t.reason
            continue
        path = t.dir / TRAJECTORY
        if not path.is_file() or path.is_symlink() or path.stat().st_size == 0:
            result.skipped[t.dir.name] = "no model calls (no trajectory, or an empty one)"
            continue
        extra = {"job": job_dir.name, "job_id": job_id or None, "trial": t.trial, "try": t.dir.name, "task": t.task,
                 "attempt": t.attempt, "reward": t.reward, "error": t.error_type}
        calls = read_trajectory(path, result.problems)
        agent = t.agent or "unknown"
        if fmt == "atif":
            doc = to_atif(calls, session_id=f"{job_id or job_dir.name}/{t.dir.name}", agent=agent, extra=extra)
            name = f"{t.dir.name}.json"
        else:
            doc = to_otel(calls, trace_key=f"{job_id or job_dir.name}/{t.dir.name}", agent=agent, extra=extra)
            name = f"{t.dir.name}.otlp.json"
        write_json_atomic(out / name, doc)
        result.written.append(name)
    return result
