"""Multi-step tasks: when to stop after a step, and the task's reward from its steps' — as Harbor decides."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from evalkit.results import StepResult


def min_reward_failure(rewards: dict[str, float] | None, min_reward: float | dict[str, float] | None) -> str | None:
    """Why a step misses its `min_reward` (a float gates `reward`, a table each named key; a missing key
    or no verdict counts as −∞; equal passes), or None when it does not."""
    if min_reward is None:
        return None
    thresholds = {"reward": min_reward} if isinstance(min_reward, (int, float)) else min_reward
    for key, threshold in thresholds.items():
        actual = (rewards or {}).get(key, -math.inf)
        if actual < threshold:
            return f"{key} = {actual:g} is below min_reward {threshold:g}"
    return None


def stop_reason(step: StepResult, min_reward: float | dict[str, float] | None) -> str | None:
    """Why no further step runs after `step`: it failed without a verdict, or missed its `min_reward`."""
    if step.error is not None and step.rewards is None:
        return f"step {step.name!r} failed without a verdict"
    failure = min_reward_failure(step.rewards, min_reward)
    return None if failure is None else f"step {step.name!r}: {failure}"


def combine_rewards(steps: Sequence[StepResult], strategy: Literal["mean", "final"]) -> dict[str, float] | None:
    """The task's reward over the steps that ran. `final`: the last one's verdict, or none if it has none.
    `mean`: per key seen in any verdict, the sum over steps with a verdict (a missing key counts 0) divided
    by how many steps have one; steps without a verdict, and steps that never ran, are not counted."""
    if strategy == "final":
        return steps[-1].rewards if steps else None
    verdicts = [s.rewards for s in steps if s.rewards is not None]
    keys = {key: None for verdict in verdicts for key in verdict}
    if not keys:
        return None
    return {key: sum(v.get(key, 0.0) for v in verdicts) / len(verdicts) for key in keys}
