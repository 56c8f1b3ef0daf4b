"""A trial's model calls for the browser: pages of calls, a regex search over a job, two trials side by side.

Calls are read through `evalkit.analysis.reader.read_trajectory` (the one function that knows the file's
encoding) and conversations through the exporter's protocol-neutral `request_messages`/`response_parts`.
Each call shows only the messages that are new since the previous call (a request repeats the whole
history), and every string is clipped so one huge tool output cannot stall the page.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson
import regex

from evalkit.analysis.export import request_messages, response_parts
from evalkit.analysis.reader import read_trajectory, tool_calls_of
from evalkit.dashboard.paths import Refused

TEXT_LIMIT = 20_000
"""Characters of one message, answer or tool call shown inline; the raw file has the rest."""
MAX_PAGE = 200
SEARCH_SECONDS = 5.0
SEARCH_MATCHES = 200
MAX_PATTERN = 500
SNIPPET = 80


def clip(text: Any, limit: int = TEXT_LIMIT) -> str:
    text = text if isinstance(text, str) else "" if text is None else orjson.dumps(text, default=str).decode()
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _seconds(timing: dict[str, Any], key: str) -> float | None:
    start, at = _number(timing.get("start")), _number(timing.get(key))
    return round(at - start, 4) if start is not None and at is not None else None


def call_view(index: int, call: dict[str, Any], messages: list[tuple[str, str, str | None]], n_before: int) -> dict[str, Any]:
    """One call as the trial page shows it; `messages[n_before:]` are the ones new in this request."""
    timing = call.get("timing") if isinstance(call.get("timing"), dict) else {}
    request = call.get("request") if isinstance(call.get("request"), dict) else {}
    text, reasoning, model = response_parts(call.get("response"))
    usage = call.get("usage") if isinstance(call.get("usage"), dict) else {}
    attempts = call.get("attempts") if isinstance(call.get("attempts"), list) else []
    return {
        "index": index,
        "seq": call.get("seq"),
        "endpoint": clip(call.get("endpoint"), 200),
        "protocol": clip(call.get("protocol"), 100),
        "route": clip(call.get("route"), 100),
        "stream": call.get("stream") is True,
        "replica": clip(call.get("deployment"), 300) if call.get("deployment") else None,
        "status": call.get("status") if isinstance(call.get("status"), int) else None,
        "error": clip(call.get("error"), 2000) if call.get("error") is not None else None,
        "attempts": [{"replica": clip(a.get("deployment"), 300), "status": a.get("status"), "error": clip(a.get("error"), 500)}
                     for a in attempts[:20] if isinstance(a, dict)] if len(attempts) > 1 else [],
        "usage": {k: usage.get(k) for k in ("input_tokens", "output_tokens", "cache_read_tokens") if _number(usage.get(k)) is not None},
        "cost_usd": _number(call.get("cost_usd")),
        "start": _number(timing.get("start")),
        "latency_sec": _seconds(timing, "end"),
        "ttfb_sec": _seconds(timing, "first_byte"),
        "model": clip(request.get("model") or model, 200) if (request.get("model") or model) else None,
        "n_messages": len(messages),
        "n_earlier": n_before,
        "messages": [{"role": role, "text": clip(body), "tool_call_id": clip(tid, 200) if tid else None}
                     for role, body, tid in messages[n_before:]],
        "response": {
            "text": clip(text),
            "reasoning": clip(reasoning) if reasoning else None,
            "tool_calls": [{"id": clip(c.get("id"), 200) if c.get("id") else None, "name": clip(c.get("name"), 200),
                            "arguments": clip(c.get("arguments"))} for c in tool_calls_of(call.get("response"))[:100]],
        },
    }


def _new_since(previous: list[tuple[str, str, str | None]], current: list[tuple[str, str, str | None]]) -> int:
    """How many leading messages of `current` the previous request ended with: its whole history for an agent
    that resends everything, the kept part for one that drops old turns (a sliding window); 0 if none."""
    for k in range(min(len(previous), len(current)), 0, -1):
        if current[:k] == previous[len(previous) - k:]:
            return k
    return 0


def views(path: Path, problems: list[str]) -> Iterator[tuple[int, dict[str, Any], Any]]:
    """(index, call, its messages) for every call, with each call's messages diffed against the previous call."""
    previous: list[tuple[str, str, str | None]] = []
    for index, call in enumerate(read_trajectory(path, problems)):
        messages = request_messages(call.get("request"))
        yield index, call, (messages, _new_since(previous, messages))
        previous = messages


def page(path: Path, offset: int, limit: int) -> dict[str, Any]:
    """Calls `offset … offset+limit-1` of one trajectory; `has_more` says whether any follow."""
    offset, limit = max(0, offset), max(1, min(MAX_PAGE, limit))
    problems: list[str] = []
    calls: list[dict[str, Any]] = []
    has_more = False
    for index, call, (messages, n_before) in views(path, problems):
        if index < offset:
            continue
        if len(calls) == limit:
            has_more = True
            break
        calls.append(call_view(index, call, messages, n_before))
    return {"offset": offset, "limit": limit, "calls": calls, "has_more": has_more, "problems": problems[:20]}


def aligned(a: Path | None, b: Path | None, offset: int, limit: int) -> dict[str, Any]:
    """Two trajectories step by step: row i holds call i of each (None where one has fewer calls)."""
    pa = page(a, offset, limit) if a else {"calls": [], "has_more": False, "problems": []}
    pb = page(b, offset, limit) if b else {"calls": [], "has_more": False, "problems": []}
    rows = [{"step": offset + i, "a": ca, "b": cb} for i, (ca, cb) in enumerate(zip_longest(pa["calls"], pb["calls"]))]
    return {"offset": offset, "limit": limit, "rows": rows, "has_more": pa["has_more"] or pb["has_more"],
            "problems": pa["problems"] + pb["problems"]}


def compile_pattern(pattern: str, ignore_case: bool) -> regex.Pattern[str]:
    if not pattern:
        raise Refused("search: the pattern is empty")
    if len(pattern) > MAX_PATTERN:
        raise Refused(f"search: the pattern is longer than {MAX_PATTERN} characters")
    try:
        return regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)
    except regex.error as exc:
        raise Refused(f"search: invalid regular expression: {exc}") from None


def _searchable(call: dict[str, Any], messages: list[tuple[str, str, str | None]], n_before: int) -> Iterator[tuple[str, str]]:
    for role, text, _ in messages[n_before:]:
        yield f"message ({role})", text
    text, reasoning, _ = response_parts(call.get("response"))
    yield "response", text
    if reasoning:
        yield "reasoning", reasoning
    for c in tool_calls_of(call.get("response")):
        yield f"tool call {clip(c.get('name'), 100)}", clip(c.get("arguments"), 10**7)
    if call.get("error") is not None:
        yield "error", clip(call.get("error"), 10**5)


def search(trajectories: list[tuple[str, Path]], rx: regex.Pattern[str], *, seconds: float = SEARCH_SECONDS,
           max_matches: int = SEARCH_MATCHES) -> dict[str, Any]:
    """Matches of `rx` in the calls of `(try name, trajectory path)` pairs, in order; stops at `max_matches` or
    after `seconds` (a single pathological match is cut off by the regex engine's own timeout)."""
    deadline = time.monotonic() + seconds
    matches: list[dict[str, Any]] = []
    n_calls = n_trials = 0
    truncated = timed_out = False
    for try_name, path in trajectories:
        if truncated or timed_out:
            break
        n_trials += 1
        for index, call, (messages, n_before) in views(path, []):
            n_calls += 1
            for where, text in _searchable(call, messages, n_before):
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                try:
                    m = rx.search(text, timeout=left)
                except TimeoutError:
                    timed_out = True
                    break
                if m is None:
                    continue
                start = max(0, m.start() - SNIPPET)
                matches.append({"try": try_name, "index": index, "seq": call.get("seq"), "where": where,
                                "before": text[start:m.start()], "match": clip(m.group(0), 500),
                                "after": text[m.end():m.end() + SNIPPET]})
                if len(matches) >= max_matches:
                    truncated = True
                    break
            if truncated or timed_out:
                break
    return {"matches": matches, "truncated": truncated, "timed_out": timed_out, "searched_trials": n_trials,
            "searched_calls": n_calls, "seconds": seconds, "max_matches": max_matches}
