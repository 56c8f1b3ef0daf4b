"""Fixtures: a fake upstream on 127.0.0.1, gateways in front of it, and trials with their own trajectories."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from fake_upstream import FakeUpstream
from gateway_testing import anthropic_config

from evalkit.gateway import Gateway, LLMApiConfig, TrialAccess

GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream("up0") as server:
        yield server


@pytest.fixture
def anthropic_mode(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> LLMApiConfig:
    """Mode A: the fake plays api.anthropic.com; Anthropic clients pass through, OpenAI clients are translated."""
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "sk-ant-upstream-secret")
    return anthropic_config(upstream)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def serve(artifacts: Path) -> GatewayFactory:
    """`async with serve(config) as gw:` — the job's artifacts go under tmp_path."""

    def start(config: LLMApiConfig, job_name: str = "job") -> contextlib.AbstractAsyncContextManager[Gateway]:
        return Gateway.serve(config, job_name=job_name, artifacts_dir=artifacts)

    return start


@pytest.fixture
def open_trial(tmp_path: Path) -> Callable[[Gateway, str], Awaitable[TrialAccess]]:
    """Open a trial whose trajectory is `tmp_path/jobs/<trial>/agent/litellm-trajectory.jsonl`."""

    async def open_(gw: Gateway, trial_id: str) -> TrialAccess:
        (tmp_path / "jobs" / trial_id).mkdir(parents=True, exist_ok=True)
        return await gw.open_trial(trial_id, tmp_path / "jobs" / trial_id / "agent" / "litellm-trajectory.jsonl")

    return open_


@pytest.fixture
def trajectory(tmp_path: Path) -> Callable[[str], Path]:
    return lambda trial_id: tmp_path / "jobs" / trial_id / "agent" / "litellm-trajectory.jsonl"
