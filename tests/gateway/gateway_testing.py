"""Helpers shared by the gateway tests (fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
from fake_upstream import FakeUpstream

from evalkit.gateway import Gateway, LLMApiConfig, TrialAccess, trajectory

MODEL = "smollm2"


def vllm_config(*upstreams: FakeUpstream, **settings: Any) -> LLMApiConfig:
    """Mode B: the fake replicas as `hosted_vllm/` deployments, named after the replicas."""
    deployments = [{"model": f"hosted_vllm/{MODEL}", "api_base": u.url, "name": u.name} for u in upstreams]
    return LLMApiConfig(model=MODEL, deployments=deployments, **settings)


def anthropic_config(upstream: FakeUpstream, **settings: Any) -> LLMApiConfig:
    """Mode A with a provider whose native protocol is Anthropic's (the fake plays api.anthropic.com); the key
    is read from FAKE_ANTHROPIC_KEY, which the caller sets."""
    deployment = {"model": "anthropic/claude-test", "api_base": upstream.root, "api_key_env": "FAKE_ANTHROPIC_KEY"}
    return LLMApiConfig(model=MODEL, deployments=[deployment], **settings)


def read_trajectory(path: Path) -> list[dict[str, Any]]:
    """Every call, whole, through the public reader; every line must be one complete JSON object."""
    problems: list[str] = []
    calls = list(trajectory.read_trajectory(path, problems))
    assert problems == [] and len(calls) == len(path.read_bytes().splitlines())
    return calls


async def admin_health(gw: Gateway) -> dict[str, Any]:
    """The detailed `/health` (deployment names and counts), which needs the gateway's admin key."""
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {gw.admin_key}"}
        async with session.get(gw.url + "/health", headers=headers) as resp:
            assert resp.status == 200
            return await resp.json()


def openai_client(access: TrialAccess, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=access.base_url, api_key=access.api_key, max_retries=0, **kwargs)


def anthropic_client(access: TrialAccess, **kwargs: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=access.anthropic_base_url, api_key=access.api_key, max_retries=0, **kwargs)


BASH_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "Bash",
        "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}
BASH_TOOL_ANTHROPIC = {
    "name": "Bash",
    "description": "Run a command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}
