"""Artifacts and collect hooks, as Harbor handles them: what leaves the agent's environment, and — for a
separate verifier — the only things of it that reach grading.

After the agent, `[[verifier.collect]]` hooks run in the agent's container (a failure is only logged), then
every declared artifact (task `artifacts`, then a step's) is copied out through the Environment to the try's
`artifacts/` (at its `destination`, else its source path mirrored there). A separate verifier then receives
exactly `/logs/artifacts` and those artifacts, each re-created at its *source* path. Everything crosses
through the host with the download rules (regular files and directories only, capped), so a symlink or
device the agent planted never reaches the verifier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from evalkit.environments import Environment, FileMissingError, FileReadError, NotARegularFileError
from evalkit.results import DownloadReport
from evalkit.tasks import ArtifactConfig, CollectConfig

logger = logging.getLogger(__name__)
CONVENTION_DIR = "/logs/artifacts"


@dataclass(frozen=True)
class Collected:
    """One artifact on the host, and where it goes back in a verifier's environment."""

    host_path: Path
    source: str


async def run_collect_hooks(env: Environment, hooks: tuple[CollectConfig, ...]) -> None:
    """Each hook in the main container; a failing one is logged and changes nothing else (as in Harbor)."""
    for hook in hooks:
        user = None if hook.user is None else str(hook.user)
        result = await env.exec(hook.command, timeout_sec=hook.timeout_sec, user=user)
        if result.timed_out or result.exit_code != 0:
            logger.warning("collect hook %r %s", hook.command,
                           "timed out" if result.timed_out else f"exited with code {result.exit_code}")


def host_path(artifacts_dir: Path, artifact: ArtifactConfig) -> Path:
    """Harbor's host layout: the `destination` under the try's artifacts, else the source path mirrored."""
    relative = artifact.destination or artifact.source
    return artifacts_dir.joinpath(*(p for p in PurePosixPath(relative).parts if p not in ("/", "", "..")))


async def collect_artifacts(
    env: Environment, artifacts: tuple[ArtifactConfig, ...], artifacts_dir: Path, *, max_bytes: int, max_files: int
) -> tuple[list[Collected], dict[str, DownloadReport]]:
    """Copy each declared artifact out (best effort, as in Harbor: a missing one is reported, not an error).
    Returns what arrived and a report per artifact, keyed `artifact <source>`."""
    collected, reports = [], {}
    for artifact in artifacts:
        target = host_path(artifacts_dir, artifact)
        report = await _collect_one(env, artifact.source, target, max_bytes=max_bytes, max_files=max_files)
        reports[f"artifact {artifact.source}"] = report
        if report.error is None and await asyncio.to_thread(os.path.lexists, target):
            collected.append(Collected(host_path=target, source=artifact.source))
    return collected, reports


async def _collect_one(env: Environment, source: str, target: Path, *, max_bytes: int, max_files: int) -> DownloadReport:
    try:
        data = await env.read_file(source, max_bytes=max_bytes)
    except NotARegularFileError as exc:
        if exc.file_type != "directory":
            return DownloadReport(error=str(exc))
        return await env.download(source, target, max_bytes=max_bytes, max_files=max_files)
    except FileMissingError:
        return DownloadReport(error=f"{source} does not exist")
    except FileReadError as exc:
        return DownloadReport(error=str(exc))
    try:
        await asyncio.to_thread(_write_new, target, data)
    except FileExistsError:
        return DownloadReport(skipped=[f"{source}: already present on the host; kept"], n_skipped=1)
    return DownloadReport(files=1, bytes=len(data))


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


async def upload_artifacts(env: Environment, convention: Path | None, collected: list[Collected], staging_root: Path) -> None:
    """Re-create `/logs/artifacts` (from `convention`, a host copy of the agent's) and each collected
    artifact at its source path in a verifier's environment. A directory target is emptied first."""
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".verifier-upload-", dir=staging_root))
    try:
        if convention is not None and await asyncio.to_thread(convention.is_dir):
            await env.put(convention, CONVENTION_DIR)
        for index, item in enumerate(collected):
            if await asyncio.to_thread(item.host_path.is_dir):
                await _as_root(env, f"rm -rf {shlex.quote(item.source)} && mkdir -p {shlex.quote(item.source)}")
                await env.put(item.host_path, item.source)
            else:
                parent = PurePosixPath(item.source).parent.as_posix()
                holder = staging / str(index)
                await asyncio.to_thread(_stage_file, item.host_path, holder / PurePosixPath(item.source).name)
                await _as_root(env, f"mkdir -p {shlex.quote(parent)}")
                await env.put(holder, parent)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


def _stage_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target, follow_symlinks=False)


async def _as_root(env: Environment, command: str) -> None:
    result = await env.exec(command, user="0", timeout_sec=60)
    if result.exit_code != 0:
        raise RuntimeError(f"preparing the verifier's environment failed ({command}): {result.output.strip()[-200:]}")
