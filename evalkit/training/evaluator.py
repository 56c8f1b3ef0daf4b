"""`BenchmarkEvaluator`: score a benchmark every N training steps from inside the training service's own event
loop, and get a `dict[str, float]` back while training goes on.

Two engines, one scorer: verifiers always run in evalkit's containers, and the agent is the built-in `evalkit`
agent with the evaluator's `chat_template` (on `engine="harbor"` another agent may be named instead).
- `engine="harbor"`: the agent reaches the checkpoint over HTTP through the job's gateway, in front of the server
  evalkit starts for `model_path` (Mode B, `llm_api.serve`) or of the endpoint the caller names (`llm_api`).
- any other engine: the live-sampler path. The agent calls the in-process `sampler` directly (no HTTP); every
  call is still written to the trial's trajectory in the gateway's schema.
Each eval is one evalkit job (`<workspace>/jobs/<name>-<run>-step<N>`): re-evaluating a step resumes it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.analysis.reader import read_trajectory
from evalkit.api import prepare_job
from evalkit.config import JobConfig, config_from_dict
from evalkit.job import JobResult
from evalkit.metrics import primary_reward
from evalkit.results import utcnow
from evalkit.training.store import EvalRecord, EvalStore, Rollout

log = logging.getLogger("evalkit")
TRAJECTORY = Path("agent") / "litellm-trajectory.jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


@dataclass
class Benchmark:
    """A benchmark to score: a dataset of Harbor's `registry.json`, or a local directory of tasks."""

    name: str
    """Registry dataset name (`name` or `name@version`); for a local `path`, just its label."""
    path: Path | str | None = None
    """A local directory whose subdirectories are tasks, instead of the registry."""
    version: str | None = None
    registry: str | None = None
    """A `registry.json` path or URL; default: the bundled one."""
    include: list[str] = field(default_factory=list)
    """Task-name globs to keep."""
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, value: Benchmark | str) -> Benchmark:
        if isinstance(value, Benchmark):
            return value
        name, _, version = str(value).partition("@")
        return cls(name=name, version=version or None)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    def dataset(self, limit: int | None) -> dict[str, Any]:
        source: dict[str, Any] = ({"path": str(Path(self.path).absolute())} if self.path is not None else
                                  {"name": self.name, **({"version": self.version} if self.version else {}),
                                   **({"registry": self.registry} if self.registry else {})})
        return {**source, "include": self.include, "exclude": self.exclude, "n_tasks": limit}


@dataclass
class BenchmarkEvaluator:
    """Score a `Benchmark` against the live sampler (or, with `engine="harbor"`, the checkpoint over HTTP)."""

    name: str
    benchmark: Benchmark | str
    """A `Benchmark`, or a registry dataset name `name@version`."""
    tokenizer: Any = None
    """Kept for the sampler's use; evalkit sends messages, not tokens."""
    run_every: int = 0
    """Evaluate at every step that is a multiple of this (step 0 included); 0 never fires."""
    max_tokens: int = 256
    temperature: float = 0.0
    breakdown_keys: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    """e.g. `["pass@3", "pass^3", "avg"]`; empty → mean reward and pass rate."""
    chat_template: dict[str, Any] = field(default_factory=dict)
    """`system_prompt`, `user_template` (with `{instruction}`), `enable_thinking`: the same on both engines."""
    limit: int | None = None
    """Score only the first N tasks: quick in-loop snapshots of a large benchmark."""
    engine: str = ""
    """`harbor`: the checkpoint over HTTP through the gateway; anything else: the in-process sampler."""
    model_name: str | None = None
    """The model name the agent sends (default: the evaluator's name)."""
    workspace_dir: Any = None
    """The artifacts root: jobs under `<workspace>/jobs/`, the default store under `<workspace>/training/`
    (default: `artifacts`)."""
    num_samples: int = 1
    """Attempts per task (pass@k needs k ≤ num_samples)."""
    n_concurrent: int = 8
    """Trials in flight at once."""
    store: EvalStore | None = None
    """Where each eval is recorded (e.g. `SQLiteStore.for_run(workspace, run_id)`); best-effort."""
    run_id: str | None = None
    benchmark_id: str | None = None
    """The benchmark's id in the store (default: its `name@version`)."""
    # --- beyond the seed's fields
    llm_api: dict[str, Any] | None = None
    """`engine="harbor"`: the job's `llm_api` block (an endpoint already serving the checkpoint); default: serve
    `model_path` (llama.cpp for a `.gguf`, else vLLM)."""
    agent: dict[str, Any] = field(default_factory=dict)
    """More of the built-in agent's block (`model.max_turns`, `env`, `kwargs`); on `engine="harbor"` another
    agent's whole block (`name`: a built-in scaffold or `pkg.module:Class`)."""
    job: dict[str, Any] = field(default_factory=dict)
    """More job config (`environment`, `timeouts`, `retry`, `error_policy`, `min_coverage`)."""
    store_timeout_sec: float = 30.0
    """A store that takes longer is abandoned (and logged): a slow dashboard must not stall training."""

    def __post_init__(self) -> None:
        from evalkit.training.sampler import ChatTemplate

        agent = self.agent.get("name", "evalkit")
        if agent != "evalkit" and (self.chat_template or self.engine != "harbor"):
            raise ValueError(f"evaluator {self.name!r}: agent {agent!r}: chat_template and the live-sampler path drive "
                             "the built-in evalkit agent; another agent needs engine='harbor' and no chat_template")
        self._template = ChatTemplate.model_validate(self.chat_template)
        self._benchmark = Benchmark.of(self.benchmark)

    def is_due(self, step: int) -> bool:
        return self.run_every > 0 and step % self.run_every == 0

    @property
    def workspace(self) -> Path:
        return Path(self.workspace_dir if self.workspace_dir is not None else "artifacts").absolute()

    def job_config(self, *, model_path: str | None = None, step: int | None = None) -> JobConfig:
        """The evalkit job one `evaluate` call runs."""
        label = f"step{step}" if step is not None else utcnow().strftime("%Y%m%dT%H%M%S%f")
        name = _UNSAFE.sub("-", "-".join(p for p in (self.name, self.run_id, label) if p)).strip("-.")
        data: dict[str, Any] = {
            "n_concurrent": self.n_concurrent, **self.job,
            "job_name": name, "jobs_dir": str(self.workspace / "jobs"), "n_attempts": self.num_samples,
            "dataset": self._benchmark.dataset(self.limit), "agent": self._agent_block(),
            "metrics": self.metrics, "breakdown_keys": self.breakdown_keys,
        }
        if self.engine == "harbor":
            data["llm_api"] = self.llm_api or self._serve(model_path)
        return config_from_dict(data, base_dir=self.workspace, source=f"BenchmarkEvaluator({self.name!r})")

    def _agent_block(self) -> dict[str, Any]:
        block = {"name": "evalkit", **self.agent}
        if block["name"] == "evalkit":
            block["model"] = {"max_tokens": self.max_tokens, "temperature": self.temperature, **block.get("model", {})}
        return block

    def _serve(self, model_path: str | None) -> dict[str, Any]:
        if not model_path:
            raise ValueError(f"evaluator {self.name!r}: engine='harbor' needs model_path (or an llm_api block)")
        engine = "llama_cpp" if str(model_path).endswith(".gguf") else "vllm"
        return {"model": self.model_name or self.name, "serve": {"engine": engine, "model": str(model_path)}}

    async def evaluate(self, sampler: Any, *, model_path: str | None = None, step: int | None = None) -> dict[str, float]:
        """Run one eval and return `MetricsReport.flat()`: each metric, its `/se`, `/ci_low`, `/ci_high`, and
        `coverage`. With `store` and `run_id` set, the eval and its rollouts are recorded (best-effort)."""
        config = self.job_config(model_path=model_path, step=step)
        job = await prepare_job(config, **self._builtin_agent(config, sampler))
        try:
            result = await job.run()
        finally:
            job.close()
        metrics = result.summary.metrics
        assert metrics is not None
        flat = metrics.flat()
        if self.store is not None and self.run_id is not None:
            await self._record(result, flat, step)
        return flat

    def _builtin_agent(self, config: JobConfig, sampler: Any) -> dict[str, Any]:
        """The built-in agent made here, with the chat template on its model client, and on the live-sampler path
        `SamplerRoutes` where the gateway would be (`Job(agent=…, model_routes=…)`); {} for another agent."""
        if config.agent.name != "evalkit":
            return {}
        from evalkit.agents import EvalkitAgent, HTTPModelClient, ModelClient
        from evalkit.gateway import TrialAccess
        from evalkit.training.sampler import ChatTemplateClient, SamplerRoutes

        routes = None if self.engine == "harbor" else SamplerRoutes(sampler, self.model_name or self.name)

        def connect(access: TrialAccess) -> ModelClient:
            inner = routes.client(access) if routes else HTTPModelClient(access.base_url, access.api_key, access.model)
            return ChatTemplateClient(inner, self._template)

        agent = config.agent
        return {"agent": lambda: EvalkitAgent(agent, **agent.kwargs, client=connect), "model_routes": routes}

    async def _record(self, result: JobResult, flat: dict[str, float], step: int | None) -> None:
        assert self.store is not None and self.run_id is not None
        try:
            rollouts = await asyncio.to_thread(_rollouts, result)
            record = EvalRecord(run_id=self.run_id, step=step if step is not None else -1,
                                benchmark=self.benchmark_id or self._benchmark.id, metrics=flat,
                                job_dir=result.job_dir, rollouts=rollouts)
            async with asyncio.timeout(self.store_timeout_sec):
                await self.store.record_eval(record)
        except Exception as exc:  # best-effort: a failing store is logged, never fails training
            log.error("evaluator %s: the store did not record step %s: %s: %s", self.name, step, type(exc).__name__, exc)


def _rollouts(result: JobResult) -> list[Rollout]:
    out = []
    for trial in result.trials:
        path = result.job_dir / trial.trial_name / TRAJECTORY
        exists = path.is_file() and not path.is_symlink()
        token_ids, logprobs = trajectory_tokens(path) if exists else (None, None)
        usage = trial.agent_outcome.usage
        out.append(Rollout(task=trial.task_name, attempt=trial.attempt, reward=primary_reward(trial.rewards),
                           rewards=trial.rewards, error_kind=trial.error.kind if trial.error else None,
                           error_type=trial.error.type if trial.error else None,
                           trajectory_path=path if exists else None,
                           input_tokens=usage.input_tokens if usage else 0, output_tokens=usage.output_tokens if usage else 0,
                           token_ids=token_ids, logprobs=logprobs))
    return out


def trajectory_tokens(path: Path) -> tuple[list[list[int]] | None, list[list[float]] | None]:
    """Completion token ids and logprobs of each call in a trial's trajectory, where the response carried them
    (the live sampler, vLLM with `return_token_ids`/`logprobs`); None when no call did."""
    ids: list[list[int]] = []
    logprobs: list[list[float]] = []
    for call in read_trajectory(path):
        choices = (call.get("response") or {}).get("choices") if isinstance(call.get("response"), dict) else None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        token_ids = choice.get("token_ids")
        ids.append([int(t) for t in token_ids] if isinstance(token_ids, list) else [])
        content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        logprobs.append([float(t["logprob"]) for t in content if isinstance(t, dict) and "logprob" in t]
                        if isinstance(content, list) else [])
    return (ids if any(ids) else None), (logprobs if any(logprobs) else None)
