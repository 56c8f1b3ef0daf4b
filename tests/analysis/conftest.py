"""Real jobs to analyse, made once per session: the smoke benchmark with the oracle and with `nop`, and a
job whose scripted host-side agent fails in known ways through a real gateway in front of a scripted upstream."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from evalkit import evaluate
from evalkit.agents import AgentResult
from tests.conftest import BENCHMARKS, HOST_NETWORK, write_task
from tests.gateway.fake_upstream import Fail, FakeUpstream, Reply

RUN = uuid.uuid4().hex[:8]

PYTEST_FAILURE = (
    'echo "============ short test summary info ============"; '
    'echo "FAILED tests/test_out.py::test_content - AssertionError"; '
    'echo "FAILED tests/test_out.py::test_newline"; echo 0 > /logs/verifier/reward.txt'
)
SCRIPTED_TASKS = {
    # task: (what the agent does, the verifier's test.sh or None for the default "done in /tmp/out.txt")
    "solved": ("tools", None),
    "rate-limited": ("ask", None),
    "context-exceeded": ("ask", None),
    "does-nothing": ("chat-only", None),
    "tests-fail": ("tools", PYTEST_FAILURE),
    "wrong-answer": ("tools", "echo 'answer mismatch'; echo 0.25 > /logs/verifier/reward.txt"),
    "times-out": ("timeout", None),
    "crashes": ("crash", None),
}
FAULT_TASKS = ("build-fails", "no-reward", "bad-reward")
EXPECTED_CAUSES = {
    "rate-limited": "agent/rate_limited",
    "context-exceeded": "agent/context_exceeded",
    "does-nothing": "model/no_change",
    "tests-fail": "model/tests_failing",
    "wrong-answer": "model/wrong_answer",
    "times-out": "agent/timeout",
    "crashes": "agent/crash",
    "build-fails": "task/build",
    "no-reward": "verifier/missing_reward",
    "bad-reward": "verifier/invalid_reward",
}


class ContextUpstream(FakeUpstream):
    """The fake upstream, with a real provider's words for a 400: the context window is exceeded."""

    @staticmethod
    def _fail(step, payload):
        if step.status == 400:
            payload = {"error": {"message": "This model's maximum context length is 8192 tokens; your messages "
                                            "resulted in 9000 tokens", "type": "invalid_request_error",
                                 "code": "context_length_exceeded"}}
        return FakeUpstream._fail(step, payload)


def upstream_script(body: dict):
    text = str(body.get("messages"))
    if "rate-limited" in text:
        return Fail(429)
    if "context-exceeded" in text:
        return Fail(400)
    if "does-nothing" in text:
        return Reply(text="I will not change anything.")
    return Reply(text="Running the command.", tool_calls=[{"name": "bash", "arguments": {"cmd": "echo done > /tmp/out.txt"}}])


class ScriptedAgent:
    """A host-side agent whose behaviour is scripted per task; unscripted tasks run their reference solution."""

    name = "scripted"

    async def setup(self, env) -> None:
        pass

    async def run(self, task, env, *, model, timeout_sec) -> AgentResult:
        action = SCRIPTED_TASKS.get(task.name, ("oracle", None))[0]
        if action == "oracle":
            await env.put(task.solution_dir, "/solution")
            result = await env.exec("bash /solution/solve.sh > /logs/agent/oracle.txt 2>&1")
            return AgentResult(exit_code=result.exit_code)
        if action == "crash":
            raise RuntimeError("scripted crash")
        client = openai.AsyncOpenAI(base_url=model.base_url, api_key=model.api_key, max_retries=0)
        try:
            tools = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]
            await client.chat.completions.create(model=model.model, tools=tools,
                                                 messages=[{"role": "user", "content": task.instruction}])
        except openai.APIStatusError:
            return AgentResult(exit_code=1)
        finally:
            await client.close()
        if action in ("tools", "timeout"):
            await env.exec("echo wrong > /tmp/out.txt" if task.name != "solved" else "echo done > /tmp/out.txt")
        return AgentResult(exit_code=0, timed_out=action == "timeout")


@dataclass
class Jobs:
    root: Path
    oracle: Path
    nop: Path
    scripted: Path
    tasks: Path


async def _make_jobs(root: Path) -> Jobs:
    jobs_dir = root / "artifacts" / "jobs"
    registry = str(BENCHMARKS / "registry.json")
    smoke = {"name": "evalkit-smoke@1.0", "registry": registry}
    common = {**HOST_NETWORK, "jobs_dir": str(jobs_dir), "n_concurrent": 4}
    oracle = await evaluate({**common, "job_name": f"analysis-oracle-{RUN}", "n_attempts": 2, "dataset": smoke,
                             "agent": {"name": "oracle"}})
    nop = await evaluate({**common, "job_name": f"analysis-nop-{RUN}", "dataset": smoke, "agent": {"name": "nop"}})
    tasks = root / "tasks"
    for name, (_, test) in SCRIPTED_TASKS.items():
        write_task(tasks, name, **({"test": test} if test else {}))
    for name in FAULT_TASKS:
        shutil.copytree(BENCHMARKS / "evalkit-faults" / name, tasks / name)
    async with ContextUpstream("scripted") as upstream:
        upstream.default = upstream_script
        scripted = await evaluate({
            **common, "job_name": f"analysis-scripted-{RUN}", "dataset": {"path": str(tasks)},
            "agent": {"name": "tests.analysis.conftest:ScriptedAgent"},
            "llm_api": {"model": "smollm2", "max_retries": 0, "cooldown_sec": 0,
                        "deployments": [{"model": "hosted_vllm/smollm2", "api_base": upstream.url}]},
        })
    return Jobs(root=root, oracle=oracle.job_dir, nop=nop.job_dir, scripted=scripted.job_dir, tasks=tasks)


@pytest.fixture(scope="session")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    return asyncio.run(_make_jobs(tmp_path_factory.mktemp("analysis-jobs")))


@pytest.fixture
def job_copy(tmp_path: Path):
    """A private copy of a session job (tests that damage or re-analyse it must not disturb the others)."""

    def copy(job_dir: Path) -> Path:
        target = tmp_path / "artifacts" / "jobs" / job_dir.name
        shutil.copytree(job_dir, target, symlinks=True, ignore=shutil.ignore_patterns("analysis"))
        return target

    return copy
