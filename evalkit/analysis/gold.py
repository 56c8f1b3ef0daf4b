"""The gold dataset: per-instance reference data at `artifacts/datasets/<gold_base>/<id>/tests/config.json`.

Built on demand by an adapter (reference data read from the task directory: instruction, metadata, test and
solution files, environment) and a tagger (language, domain and repository tags from the task's files and
metadata). Instances already on disk are reused. What cannot be built is reported, never raised: analysis
then skips the parts that need it.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from evalkit.analysis.reader import read_json, read_task_toml
from evalkit.results import utcnow, write_json_atomic

GOLD_SCHEMA_VERSION = 1
MAX_FILES = 5000
"""Files looked at per task directory at most (a vendored repository must not stall analysis)."""

LANGUAGES = {
    ".py": "python", ".sh": "shell", ".bash": "shell", ".js": "javascript", ".mjs": "javascript",
    ".ts": "typescript", ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c",
    ".cc": "c++", ".cpp": "c++", ".hpp": "c++", ".rb": "ruby", ".php": "php", ".cs": "c#", ".swift": "swift",
    ".scala": "scala", ".r": "r", ".jl": "julia", ".lua": "lua", ".awk": "awk", ".sql": "sql", ".hs": "haskell",
}
_BASE_IMAGES = {"python": "python", "golang": "go", "node": "javascript", "rust": "rust", "openjdk": "java",
                "eclipse-temurin": "java", "ruby": "ruby", "php": "php", "gcc": "c"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")


class GoldTags(BaseModel):
    """Tags the tagger adds."""

    language: list[str] = []
    """Programming languages, most files first (from file extensions, the base image and `metadata.language`)."""
    domain: list[str] = []
    """`metadata.domain`, `metadata.category` and `metadata.tags`, in that order."""
    repository: str | None = None
    """`metadata.repo` / `metadata.repository`, or the task's git URL."""


class GoldInstance(BaseModel):
    """`<id>/tests/config.json`: reference data of one instance (task)."""

    schema_version: int = GOLD_SCHEMA_VERSION
    instance_id: str
    task_name: str
    source: dict[str, Any]
    """Where the task came from (as the trial recorded it)."""
    instruction_chars: int
    instruction_excerpt: str
    """The first 500 characters of `instruction.md`."""
    metadata: dict[str, Any]
    """`task.toml` `[metadata]` as written."""
    test_files: list[str]
    solution_files: list[str]
    environment: dict[str, Any]
    """`dockerfile` / `compose` (bool), `docker_image` (prebuilt image or None)."""
    tags: GoldTags
    built_at: str


@dataclass
class Gold:
    """The gold dataset as far as it could be had."""

    base: str
    dir: Path
    instances: dict[str, GoldInstance] = field(default_factory=dict)
    """task name → instance."""
    built: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    """task name → why no instance could be had."""
    note: str | None = None

    @property
    def available(self) -> bool:
        return bool(self.instances)


def _files(root: Path) -> list[str]:
    """Relative paths of regular files under root, never following symlinks, capped at MAX_FILES."""
    if not root.is_dir() or root.is_symlink():
        return []
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".git"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not path.is_symlink() and path.is_file():
                out.append(str(path.relative_to(root)))
                if len(out) >= MAX_FILES:
                    return out
    return out


def tag(task_dir: Path, metadata: dict[str, Any], source: dict[str, Any], files: list[str]) -> GoldTags:
    """Language, domain and repository tags of one task."""
    counts = Counter(LANGUAGES[ext] for f in files if (ext := Path(f).suffix.lower()) in LANGUAGES)
    languages = [lang for lang, _ in counts.most_common()]
    dockerfile = task_dir / "environment" / "Dockerfile"
    if dockerfile.is_file() and not dockerfile.is_symlink():
        for line in dockerfile.read_text(encoding="utf-8", errors="replace").splitlines()[:200]:
            if match := re.match(r"\s*FROM\s+(?:--\S+\s+)*(?:[\w.-]+/)*([\w.-]+)", line, re.I):
                lang = _BASE_IMAGES.get(match.group(1).lower())
                if lang and lang not in languages:
                    languages.append(lang)
    declared = metadata.get("language") or metadata.get("languages")
    for lang in [declared] if isinstance(declared, str) else declared or []:
        lang = str(lang).lower()
        languages = [lang] + [x for x in languages if x != lang]
    domain: list[str] = []
    for key in ("domain", "category", "tags"):
        value = metadata.get(key)
        for item in value if isinstance(value, list) else [value] if value else []:
            if str(item) not in domain:
                domain.append(str(item))
    repository = metadata.get("repo") or metadata.get("repository") or source.get("git_url")
    return GoldTags(language=languages, domain=domain, repository=str(repository) if repository else None)


def adapt(task_name: str, task_dir: Path, source: dict[str, Any]) -> GoldInstance:
    """Reference data of one task directory (raises OSError when the directory is unusable)."""
    if not (task_dir / "task.toml").is_file():
        raise OSError(f"no task.toml in {task_dir}")
    config = read_task_toml(task_dir)
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    instruction_path = task_dir / "instruction.md"
    instruction = "" if instruction_path.is_symlink() else instruction_path.read_text(encoding="utf-8", errors="replace") if instruction_path.is_file() else ""
    files = _files(task_dir)
    environment = config.get("environment") if isinstance(config.get("environment"), dict) else {}
    return GoldInstance(
        instance_id=task_name,
        task_name=task_name,
        source=source,
        instruction_chars=len(instruction),
        instruction_excerpt=instruction[:500],
        metadata=metadata,
        test_files=[f.removeprefix("tests/") for f in files if f.startswith("tests/")],
        solution_files=[f.removeprefix("solution/") for f in files if f.startswith("solution/")],
        environment={
            "dockerfile": "environment/Dockerfile" in files,
            "compose": any(f.startswith("environment/docker-compose") for f in files),
            "docker_image": environment.get("docker_image"),
        },
        tags=tag(task_dir, metadata, source, files),
        built_at=utcnow().isoformat(),
    )


def instance_path(gold_dir: Path, instance_id: str) -> Path:
    return gold_dir / instance_id / "tests" / "config.json"


def ensure_gold(gold_dir: Path, base: str, tasks: dict[str, tuple[dict[str, Any], Path | None]], *, build: bool = True) -> Gold:
    """Read the instances of `tasks` (name → (source, local task dir or None)), building the missing ones."""
    gold = Gold(base=base, dir=gold_dir)
    for name, (source, task_dir) in tasks.items():
        if not _SAFE_ID.match(name) or ".." in name:
            gold.missing[name] = "task name is not usable as a directory name"
            continue
        path = instance_path(gold_dir, name)
        try:
            gold.instances[name] = GoldInstance.model_validate(read_json(path))
            continue
        except FileNotFoundError:
            pass
        except (OSError, ValueError, ValidationError) as exc:
            if not build:
                gold.missing[name] = f"unreadable instance: {str(exc).splitlines()[0][:160]}"
                continue
        if not build:
            gold.missing[name] = "not in the gold dataset (building is off)"
        elif task_dir is None:
            gold.missing[name] = "task directory not found (removed from disk, or not in the task cache)"
        else:
            try:
                instance = adapt(name, task_dir, source)
                write_json_atomic(path, instance)
            except (OSError, ValueError) as exc:
                gold.missing[name] = f"could not build: {str(exc).splitlines()[0][:160]}"
                continue
            gold.instances[name] = instance
            gold.built.append(name)
    if not gold.instances:
        gold.note = (
            f"gold dataset {base!r} unavailable at {gold_dir} ({len(gold.missing)} task(s) without an instance); "
            "gold-dependent parts (tagger tags, instance reference features) were skipped"
        )
    elif gold.missing:
        gold.note = f"{len(gold.missing)} task(s) have no gold instance; their gold-dependent fields are empty"
    return gold
