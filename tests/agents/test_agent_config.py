"""The `agent:` block's bad inputs, each with its exact message and nothing left behind (no job directory, no
container), checked once before the first trial; and a crashing agent binary, typed, with the verifier after it."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from evalkit import evaluate
from evalkit.errors import ConfigError
from evalkit.config import AgentConfig, load_config
from evalkit.runtimes import SCAFFOLDS, STAMP_FILE, RuntimeStamp
from tests.agents.conftest import answer_task, job_config
from tests.agents.scripted import solver
from tests.conftest import REPO, job_containers, run_cli, write_config
from tests.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.docker

CLAUDE = SCAFFOLDS["claude-code"]


async def refused(tmp_path: Path, agent: dict, *, with_model: bool = True, **extra) -> str:
    """The ConfigError a job with this agent block (in `tmp_path/config.yaml`) stops with, after checking it
    left nothing behind."""
    answer_task(tmp_path / "tasks")
    async with FakeUpstream("unused") as upstream:
        config = job_config(tmp_path, agent, upstream, **extra)
        if not with_model:
            del config["llm_api"]
        with pytest.raises(ConfigError) as caught:
            await evaluate(write_config(tmp_path / "config.yaml", config))
    assert not (tmp_path / "artifacts" / "jobs" / config["job_name"]).exists()
    assert await job_containers(config["job_name"]) == []
    assert upstream.received == []
    return str(caught.value)


async def test_an_unknown_agent_name_lists_the_known_ones(tmp_path: Path):
    assert await refused(tmp_path, {"name": "claude"}) == (
        "agent.name: unknown agent 'claude'; known: oracle, nop, evalkit, claude-code, opencode, openhands-sdk, "
        "or an import path like 'my_package.agents:MyAgent'"
    )


def test_the_cli_says_the_same_with_exit_code_2(tmp_path: Path):
    answer_task(tmp_path / "tasks")
    config = write_config(tmp_path / "config.yaml", {"job_name": "agents-cli-unknown", "dataset": {"path": "tasks"},
                                                     "agent": {"name": "claude"}})
    cli = run_cli("run", str(config))
    assert cli.returncode == 2
    assert "agent.name: unknown agent 'claude'; known: oracle, nop, evalkit, claude-code" in cli.stderr
    assert not (tmp_path / "artifacts").exists()


async def test_a_missing_runtime_says_to_build_it(tmp_path: Path):
    missing = tmp_path / "nowhere"
    assert await refused(tmp_path, {"name": "claude-code", "runtime_host_path": str(missing)}) == (
        f"the claude-code runtime is not built: {missing} does not exist. Run `evalkit runtime build claude-code`."
    )


async def test_a_half_built_runtime_is_never_used(tmp_path: Path):
    tree = tmp_path / "half"
    (tree / "bin").mkdir(parents=True)
    shutil.copy(CLAUDE.runtime_host_path / "bin" / "evalkit-forward", tree / "bin")
    (tree / "bin" / "claude").write_bytes(b"\x7fELF half")
    assert await refused(tmp_path, {"name": "claude-code", "runtime_host_path": "half"}) == (  # relative to the config
        f"the claude-code runtime at {tree} is incomplete (no valid {STAMP_FILE}). "
        "Run `evalkit runtime build claude-code` to replace it."
    )


async def test_a_version_without_a_build_names_the_pinned_one(tmp_path: Path):
    assert await refused(tmp_path, {"name": "opencode", "version": "0.1.0"}) == (
        f"opencode 0.1.0 has no runtime build: this evalkit builds opencode {SCAFFOLDS['opencode'].version} "
        f"(set agent.version to {SCAFFOLDS['opencode'].version})"
    )
    assert await refused(tmp_path, {"name": "opencode", "runtime_image": "mine:1"}) == (
        f"agent.runtime_image: this evalkit builds opencode as {SCAFFOLDS['opencode'].runtime_image}, "
        "not 'mine:1' (leave it out, or set it to that)"
    )


async def test_runtime_fields_on_an_agent_without_a_runtime_are_refused(tmp_path: Path):
    assert await refused(tmp_path, {"name": "oracle", "runtime_host_path": "x"}) == (
        "agent.runtime_host_path: only in-container scaffolds (claude-code, opencode, openhands-sdk) have a runtime; "
        "agent 'oracle' takes none"
    )
    assert await refused(tmp_path, {"name": "evalkit", "version": "2"}) == (
        "agent.version: the evalkit agent runs on the host and takes no runtime"
    )


async def test_a_model_agent_needs_llm_api_and_valid_options(tmp_path: Path):
    assert await refused(tmp_path, {"name": "opencode"}, with_model=False) == (
        "agent.name: the opencode agent calls a model: the config needs an llm_api block"
    )
    message = await refused(tmp_path, {"name": "evalkit", "kwargs": {"max_turns": 3}})
    assert message.startswith("agent.kwargs: invalid options for agent 'evalkit': ")
    assert "max_turns" in message


async def test_a_public_task_without_a_network_on_this_engine_is_a_config_error(tmp_path: Path):
    answer_task(tmp_path / "tasks", task_toml="[agent]\ntimeout_sec = 60\n")
    async with FakeUpstream("unused") as upstream:
        config = job_config(tmp_path, {"name": "evalkit"}, upstream)
        with pytest.raises(ConfigError) as caught:
            await evaluate(config)
    assert str(caught.value) == (
        "<config>: environment.network_mode: task 'answer' needs the internet (network_mode = \"public\" in its "
        "task.toml) and this engine has no bridge network to give it; set environment.network_mode: host (the "
        "container then shares this machine's network, its loopback services included) or none (the task runs offline)"
    )
    assert await job_containers(config["job_name"]) == []


async def test_on_the_host_network_an_in_container_agent_uses_the_gateway_port(tmp_path: Path):
    answer_task(tmp_path / "tasks", task_toml="[agent]\ntimeout_sec = 120\n")
    async with FakeUpstream("scripted") as upstream:
        upstream.default = solver()
        result = await evaluate(job_config(tmp_path, {"name": "opencode"}, upstream, environment={"network_mode": "host"}))
    trial = result.trials[0]
    assert (trial.environment.network_mode, trial.error, trial.reward) == ("host", None, 1.0)
    agent_dir = result.job_dir / trial.trial_name / "agent"
    assert not (agent_dir / "evalkit-forward.log").exists()  # no forwarder: the host's loopback is the container's


def crashing_tree(root: Path) -> Path:
    """A complete, stamped claude-code tree whose executable dies of SIGSEGV."""
    tree = root / "crashing-claude"
    (tree / "bin").mkdir(parents=True)
    shutil.copy(CLAUDE.runtime_host_path / "bin" / "evalkit-forward", tree / "bin")
    (tree / "bin" / "claude").write_text("#!/bin/bash\necho 'about to crash' >&2\nkill -SEGV $$\n")
    (tree / "bin" / "claude").chmod(0o755)
    stamp = RuntimeStamp(name="claude-code", version=CLAUDE.version, dockerfile_digest="test", image_id="test",
                         built_at=datetime.now(timezone.utc))
    (tree / STAMP_FILE).write_text(stamp.model_dump_json())
    return tree


async def test_a_crashing_agent_is_a_typed_agent_error_and_the_verifier_still_runs(tmp_path: Path):
    answer_task(tmp_path / "tasks")
    tree = crashing_tree(tmp_path)
    async with FakeUpstream("scripted") as upstream:
        result = await evaluate(job_config(tmp_path, {"name": "claude-code", "runtime_host_path": str(tree)}, upstream))
    trial = result.trials[0]
    assert (trial.error.type, trial.error.kind, trial.error.phase) == ("AgentCrashError", "agent", "agent")
    assert trial.error.message == "claude-code crashed: killed by SIGSEGV (exit code 139)"
    assert trial.rewards == {"reward": 0.0}  # the verifier ran
    assert trial.agent_outcome.exit_code == 139 and not trial.will_retry
    assert (result.job_dir / trial.trial_name / "agent" / "claude-code.stderr").read_text() == "about to crash\n"


def test_switching_agent_on_the_command_line_leaves_the_old_agent_s_options_behind():
    default = load_config(REPO / "config.yaml")
    assert default.agent.name == "evalkit" and default.agent.kwargs == {"tool_calling": False, "command_timeout_sec": 15}
    assert load_config(REPO / "config.yaml", {"agent.name": "oracle"}).agent == AgentConfig(name="oracle")
    assert load_config(REPO / "config.yaml", {"agent.name": "evalkit"}).agent == default.agent
