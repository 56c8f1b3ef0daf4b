"""An optional LLM judge: asks an OpenAI-compatible endpoint to classify failed trials. Off by default.

The key is read from the environment variable the config names, sent only to that endpoint, and never
written anywhere (the analysis config records the variable's name). Each call's token usage is summed, so
the report says what the judge cost.
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import orjson
from pydantic import BaseModel

JUDGE_CATEGORIES = {
    "no_change": "the agent never changed anything",
    "wrong_approach": "the agent misunderstood the task or solved a different problem",
    "incomplete": "the agent made progress but stopped before finishing",
    "buggy_solution": "the agent's change is on track but has a bug the tests catch",
    "environment_issue": "the agent was blocked by the environment (missing tool, network, permissions)",
    "gave_up": "the agent stopped because of an error it could not recover from",
    "other": "none of the above",
}


class JudgeConfig(BaseModel):
    """`analysis.judge`: the LLM judge of failed trials."""

    enabled: bool = False
    """Off by default: analysis costs zero model tokens unless this is on."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL (with `/v1`); a job's gateway or any endpoint."""
    model: str = "judge"
    api_key_env: str | None = None
    """Name of the environment variable holding the key (the key itself is never stored)."""
    max_trials: int = 50
    """Failed trials judged at most (the first ones, in trial order)."""
    timeout_sec: float = 60.0
    max_output_tokens: int = 300


class JudgeVerdict(BaseModel):
    category: str
    """One of JUDGE_CATEGORIES, or `unparsed` when the answer was not the JSON asked for."""
    explanation: str


class JudgeReport(BaseModel):
    """What the judge said and what it cost."""

    model: str
    n_judged: int
    n_call_errors: int
    input_tokens: int
    output_tokens: int
    categories: dict[str, int]
    verdicts: dict[str, JudgeVerdict]
    """trial → verdict."""
    errors: list[str] = []


def _prompt(context: dict[str, Any]) -> list[dict[str, str]]:
    categories = "\n".join(f"- {name}: {text}" for name, text in JUDGE_CATEGORIES.items())
    return [
        {"role": "system", "content": (
            "You classify why an AI agent failed a software task. Answer with one JSON object "
            '{"category": <one of the categories>, "explanation": <one sentence>} and nothing else.\n'
            f"Categories:\n{categories}")},
        {"role": "user", "content": orjson.dumps(context, option=orjson.OPT_INDENT_2).decode()},
    ]


def _verdict(text: str) -> JudgeVerdict:
    match = re.search(r"\{.*\}", text, re.S)
    try:
        data = orjson.loads(match.group(0)) if match else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("category") in JUDGE_CATEGORIES:
        return JudgeVerdict(category=data["category"], explanation=str(data.get("explanation", ""))[:500])
    return JudgeVerdict(category="unparsed", explanation=text[:500])


def judge_failures(config: JudgeConfig, contexts: dict[str, dict[str, Any]]) -> JudgeReport:
    """Classify each failed trial (trial → context the judge sees); call failures are counted, not raised."""
    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    report = JudgeReport(model=config.model, n_judged=0, n_call_errors=0, input_tokens=0, output_tokens=0,
                         categories={}, verdicts={})
    url = config.base_url.rstrip("/") + "/chat/completions"
    with httpx.Client(timeout=config.timeout_sec, headers=headers, trust_env=False) as client:
        for trial, context in list(contexts.items())[: config.max_trials]:
            body = {"model": config.model, "messages": _prompt(context), "temperature": 0,
                    "max_tokens": config.max_output_tokens}
            try:
                response = client.post(url, json=body)
                data = response.json()
                if response.status_code >= 400:
                    raise ValueError(f"HTTP {response.status_code}")
                text = data["choices"][0]["message"]["content"] or ""
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
                report.n_call_errors += 1
                message = f"{trial}: {type(exc).__name__}: {str(exc)[:160]}"
                report.errors.append(message.replace(key, "***") if key else message)
                continue
            usage = data.get("usage") or {}
            report.input_tokens += int(usage.get("prompt_tokens") or 0)
            report.output_tokens += int(usage.get("completion_tokens") or 0)
            verdict = _verdict(text)
            report.verdicts[trial] = verdict
            report.categories[verdict.category] = report.categories.get(verdict.category, 0) + 1
            report.n_judged += 1
    return report
