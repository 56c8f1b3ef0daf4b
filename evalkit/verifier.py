"""The verifier phase: upload `tests/`, run `tests/test.sh`, turn the reward file into numbers.

The reward files land in the trial directory through the /logs/verifier bind mount, so they are read on
the host, with no copy out of the container.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from evalkit.environments import Environment
from evalkit.errors import RewardFileEmptyError, RewardFileMissingError, RewardParseError, VerifierTimeoutError
from evalkit.tasks import Task

REWARD_FILES = ("reward.json", "reward.txt")


def clear_reward_files(verifier_dir: Path) -> None:
    """Stale rewards (a reused directory, an agent writing one) must never be mistaken for a verdict."""
    for name in REWARD_FILES:
        (verifier_dir / name).unlink(missing_ok=True)


def reward_from_files(verifier_dir: Path) -> dict[str, float]:
    """`reward.json` (a flat object of finite numbers) if present, else `reward.txt` (one float)."""
    json_path, txt_path = (verifier_dir / name for name in REWARD_FILES)
    if json_path.exists():
        raw = json_path.read_bytes()
        if not raw.strip():
            raise RewardFileEmptyError("reward.json is empty")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RewardParseError(f"reward.json is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise RewardParseError(f"reward.json must be a non-empty object of numbers, got {_preview(raw)}")
        rewards = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RewardParseError(f"reward.json: {key!r} must be a finite number, got {value!r}")
            rewards[key] = float(value)
        return rewards
    if txt_path.exists():
        raw = txt_path.read_bytes()
        if not raw.strip():
            raise RewardFileEmptyError("reward.txt is empty")
        try:
            value = float(raw.decode("utf-8", errors="replace").strip())
        except ValueError:
            raise RewardParseError(f"reward.txt must hold one number, got {_preview(raw)}") from None
        if not math.isfinite(value):
            raise RewardParseError(f"reward.txt must hold a finite number, got {value}")
        return {"reward": value}
    raise RewardFileMissingError("the verifier wrote neither /logs/verifier/reward.json nor reward.txt")


def _preview(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return repr(text if len(text) <= 80 else text[:77] + "...")


async def run_verifier(task: Task, env: Environment, verifier_dir: Path, *, timeout_sec: float | None) -> dict[str, float]:
    clear_reward_files(verifier_dir)
    await env.put(task.tests_dir, "/tests")
    result = await env.exec(
        "bash /tests/test.sh > /logs/verifier/test-stdout.txt 2>&1",
        timeout_sec=timeout_sec,
        env=task.config.verifier.env,
        user=task.config.verifier.user,
    )
    if result.timed_out:
        raise VerifierTimeoutError(f"tests/test.sh outlived the verifier timeout of {timeout_sec:g} s")
    return reward_from_files(verifier_dir)
