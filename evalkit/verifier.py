"""The verifier phase: a clean `/tests` and `/logs/verifier`, `tests/test.sh`, and a reward parsed strictly.

The verdict belongs to the verifier. By the time this runs, every process the agent started is dead (the
trial kills them first), so nothing but `test.sh` writes here: `/tests` is removed and uploaded afresh (an
agent-planted `conftest.py` does not survive), `/logs/verifier` starts empty. The reward file is read
from the try's download of `/logs` (or through the Environment): a symlink is never followed, a FIFO or
device never opened, size is capped, and no error message carries more than a short escaped excerpt of what the container wrote.
"""

from __future__ import annotations

import asyncio
import math
import re

import orjson

from evalkit.environments import (
    Environment,
    FileMissingError,
    FileReader,
    FileTooLargeError,
    NotARegularFileError,
)
from evalkit.errors import RewardFileEmptyError, RewardFileMissingError, RewardParseError, VerifierTimeoutError
from evalkit.tasks import VerifierPlan

REWARD_DIR = "/logs/verifier"
TEST_SCRIPT = "test.sh"
REWARD_FILES = ("reward.json", "reward.txt")
MAX_REWARD_BYTES = 64 * 1024
MAX_REWARD_KEYS = 64
MAX_KEY_CHARS = 100
REWARD_BOUND = 1e12
"""Rewards outside ±1e12 are refused: sums and means over any realistic job then stay finite."""
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
"""A plain decimal literal: no `1_0` (Python's float() reads it as 10), no `inf`, `nan` or hex."""
_EXCERPT_CHARS = 60

FRESH_DIRS = ("/tests", REWARD_DIR)
"""Emptied by `Environment.kill_agent_processes(then_empty=...)` before the verifier: nothing the agent
left there (a `conftest.py`, a reward) survives into the verdict."""


async def run_tests(plan: VerifierPlan, env: Environment, *, timeout_sec: float | None) -> None:
    """Upload the tests (the task's `tests/`, then a step's, whose files win; nothing when the verifier's
    image bundles them), run `test.sh` — executed, so its shebang picks the interpreter, as in Harbor —
    and ignore its exit code; the caller reads the reward from its copy of `/logs/verifier`. The caller has
    killed the agent's processes and emptied FRESH_DIRS (one step, as root, so nothing can race it)."""
    for tests in plan.tests_dirs:
        await env.put(tests, "/tests", executable=(TEST_SCRIPT,))  # mode 0755 in the upload: no chmod exec
    if not plan.tests_dirs:  # the verifier's image bundles its tests: make its script runnable there
        prepared = await env.exec(f"chmod +x /tests/{TEST_SCRIPT}", user="0", timeout_sec=60)
        if prepared.exit_code != 0:
            raise RewardFileMissingError(f"/tests/{TEST_SCRIPT} cannot be run: {excerpt(prepared.output)}")
    elif not any(await asyncio.gather(*(asyncio.to_thread((tests / TEST_SCRIPT).is_file) for tests in plan.tests_dirs))):
        raise RewardFileMissingError(f"/tests/{TEST_SCRIPT} cannot be run: the task's tests have no {TEST_SCRIPT}")
    result = await env.exec(
        f"(/tests/test.sh) > {REWARD_DIR}/test-stdout.txt 2>&1",
        timeout_sec=timeout_sec,
        env=plan.env,
        user=None if plan.user is None else str(plan.user),
    )
    if result.timed_out:
        raise VerifierTimeoutError(f"tests/test.sh outlived the verifier timeout of {timeout_sec:g} s")


async def read_reward(files: FileReader) -> dict[str, float]:
    """`reward.json` if it exists, else `reward.txt`; RewardFileMissingError if neither does. Both are read
    at once (one round trip to the engine instead of two, none from a download)."""
    reads = await asyncio.gather(
        *(files.read_file(f"{REWARD_DIR}/{name}", max_bytes=MAX_REWARD_BYTES) for name in REWARD_FILES),
        return_exceptions=True,
    )
    for name, read in zip(REWARD_FILES, reads):
        if isinstance(read, FileMissingError):
            continue
        if isinstance(read, NotARegularFileError):
            raise RewardParseError(f"{name} is a {read.file_type}, not a regular file; refused")
        if isinstance(read, FileTooLargeError):
            raise RewardParseError(f"{name} is larger than {MAX_REWARD_BYTES} bytes ({read.size}); refused")
        if isinstance(read, BaseException):
            raise read
        return parse_reward_json(read) if name == "reward.json" else parse_reward_txt(read)
    raise RewardFileMissingError(f"the verifier wrote neither {REWARD_DIR}/reward.json nor reward.txt")


def parse_reward_txt(raw: bytes) -> dict[str, float]:
    """One decimal number, surrounding whitespace allowed."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise RewardFileEmptyError("reward.txt is empty")
    if not _FLOAT.fullmatch(text):
        raise RewardParseError(f"reward.txt must hold one decimal number, got {excerpt(text)}")
    return {"reward": _bounded("reward.txt", float(text), text)}


def parse_reward_json(raw: bytes) -> dict[str, float]:
    """A flat, non-empty object of at most MAX_REWARD_KEYS finite numbers (`true`/`false` count as 1 and 0,
    as in Harbor, whose check lets booleans through as numbers)."""
    if not raw.strip():
        raise RewardFileEmptyError("reward.json is empty")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RewardParseError(f"reward.json is not valid JSON ({str(exc)[:200]})") from None  # position, no content
    if not isinstance(data, dict) or not data:
        raise RewardParseError(f"reward.json must be a non-empty object of numbers, got {excerpt(raw)}")
    if len(data) > MAX_REWARD_KEYS:
        raise RewardParseError(f"reward.json has {len(data)} keys; at most {MAX_REWARD_KEYS} are allowed")
    rewards = {}
    for key, value in data.items():
        if len(key) > MAX_KEY_CHARS:
            raise RewardParseError(f"reward.json: key {excerpt(key)} is longer than {MAX_KEY_CHARS} characters")
        if not isinstance(value, (int, float)):
            raise RewardParseError(f"reward.json: {excerpt(key)} must be a number, got {_json_type(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        rewards[key] = _bounded(f"reward.json: {excerpt(key)}", number, str(value))
    return rewards


def _bounded(what: str, value: float, text: str) -> float:
    if not math.isfinite(value) or abs(value) > REWARD_BOUND:
        raise RewardParseError(f"{what} must be a finite number within ±{REWARD_BOUND:g}, got {excerpt(text)}")
    return value


def _json_type(value: object) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def excerpt(raw: bytes | str) -> str:
    """At most a short, escaped excerpt of container-written text: never a file's content."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    return repr(text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "…")
