"""Harbor's `registry.json`: load it from a file or a URL, and pick one dataset version by name."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from evalkit.adapters.harbor.config import TaskSpec
from evalkit.errors import ConfigError, InfrastructureError, read_user_file
from evalkit.results import write_json_atomic

log = logging.getLogger(__name__)

BUNDLED_REGISTRY = Path(__file__).resolve().parents[3] / "benchmarks" / "registry.json"
"""The registry shipped with evalkit, used when a config or command names none."""

DOWNLOAD_TIMEOUT_SEC = 60.0


class RegistryTask(TaskSpec):
    """A task as Harbor lists it. Keys Harbor may add later are ignored, so they never break loading."""

    model_config = ConfigDict(extra="ignore")
    name: str


class Dataset(BaseModel):
    """One (name, version) entry of the registry."""

    model_config = ConfigDict(extra="ignore")
    name: str
    version: str
    description: str = ""
    tasks: list[RegistryTask]
    metrics: list[dict[str, Any]] = []

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


_DATASETS = TypeAdapter(list[Dataset])


class Registry:
    """The datasets of one registry file, indexed by name and version."""

    def __init__(self, datasets: list[Dataset], *, location: str, task_root: Path | None) -> None:
        self.datasets = datasets
        self.location = location
        """Where it was loaded from, for messages."""
        self.task_root = task_root
        """Directory that local (non-git) task paths are relative to; None for a registry from a URL."""
        self._index: dict[str, dict[str, Dataset]] = {}
        for dataset in datasets:
            versions = self._index.setdefault(dataset.name, {})
            if dataset.version in versions:
                raise ConfigError(f"registry {location} lists dataset {dataset.ref} twice")
            versions[dataset.version] = dataset

    def names(self) -> list[str]:
        return list(self._index)

    def versions(self, name: str) -> dict[str, Dataset]:
        """The versions of a dataset in registry order; an unknown name gets the closest names."""
        versions = self._index.get(name)
        if versions is None:
            raise ConfigError(f"unknown dataset {name!r} in registry {self.location}; {self._suggest(name)}")
        return versions

    def dataset(self, name: str, version: str | None = None) -> Dataset:
        versions = self.versions(name)
        chosen = default_version(versions) if version is None else version
        if chosen not in versions:
            raise ConfigError(
                f"dataset {name!r} has no version {chosen!r} in registry {self.location}; "
                f"versions: {', '.join(versions)}"
            )
        return versions[chosen]

    def _suggest(self, name: str) -> str:
        by_lower = {known.lower(): known for known in self._index}
        close = difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.6)
        if close:
            return f"did you mean: {', '.join(by_lower[c] for c in close)}?"
        return f"`evalkit datasets list --registry {self.location}` lists its {len(self._index)} datasets"


def default_version(versions: dict[str, Dataset] | list[str]) -> str:
    """`head` if present, else the highest PEP 440 version, else the lexically last (Harbor's rule)."""
    if "head" in versions:
        return "head"
    parsed = []
    for version in versions:
        try:
            parsed.append((Version(version), version))
        except InvalidVersion:
            continue
    return max(parsed)[1] if parsed else max(versions)


def parse_registry(data: bytes, *, location: str, task_root: Path | None) -> Registry:
    try:
        datasets = _DATASETS.validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_entry(data, err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)[:3]
        )
        raise ConfigError(f"registry {location} is not a Harbor registry.json: {problems}") from None
    if task_root is None:  # from a URL: whoever serves it must not point git at local or ssh repositories
        for dataset in datasets:
            for i, task in enumerate(dataset.tasks):
                if task.git_url is not None and not task.git_url.startswith("https://"):
                    raise ConfigError(
                        f"registry {location}: dataset {dataset.ref}, task entry {i} ({task.name!r}): git_url "
                        f"{task.git_url!r} is refused; a registry loaded from a URL may only name https:// repositories"
                    )
    return Registry(datasets, location=location, task_root=task_root)


def _entry(data: bytes, loc: tuple[int | str, ...]) -> str:
    """An error location, naming the dataset and task entry when the raw JSON allows (`[0].tasks[3]` →
    `dataset d@1.0, task entry 3`)."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    try:
        entry = orjson.loads(data)[loc[0]]
        named = f"dataset {entry['name']}@{entry['version']}"
    except (orjson.JSONDecodeError, LookupError, TypeError):
        return where
    if len(loc) >= 3 and loc[1] == "tasks" and isinstance(loc[2], int):
        return f"{named}, task entry {loc[2]}" + (f": {'.'.join(map(str, loc[3:]))}" if loc[3:] else "")
    return f"{named} ({where})"


def read_registry(path: Path) -> Registry:
    data = read_user_file(path, "registry file")
    return parse_registry(data, location=str(path), task_root=path.parent)


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


async def load_registry(location: str | None, *, base_dir: Path, cache_dir: Path) -> Registry:
    """`location`: a path relative to `base_dir`, an http(s) URL, or None for the bundled registry.

    A downloaded registry is kept in `cache_dir`, so a job still starts when the URL is unreachable."""
    if location is None:
        return await asyncio.to_thread(read_registry, BUNDLED_REGISTRY)
    if not is_url(location):
        return await asyncio.to_thread(read_registry, Path(os.path.abspath(base_dir / Path(location).expanduser())))
    copy = cache_dir / "registries" / f"{hashlib.sha256(location.encode()).hexdigest()[:16]}.json"
    try:
        data, downloaded = await _download(location), True
    except InfrastructureError as exc:
        if not copy.exists():
            raise
        log.warning("%s; using the copy cached at %s", exc, copy)
        data, downloaded = copy.read_bytes(), False
    registry = await asyncio.to_thread(parse_registry, data, location=location, task_root=None)
    if downloaded:
        await asyncio.to_thread(write_json_atomic, copy, orjson.Fragment(data))
    return registry


async def _download(url: str) -> bytes:
    import httpx  # a tenth of a second to import: only registries from URLs pay it

    try:
        async with httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_SEC, follow_redirects=True) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise InfrastructureError(f"cannot reach registry {url}: {str(exc) or type(exc).__name__}") from None
    if response.status_code >= 500:
        raise InfrastructureError(f"cannot fetch registry {url}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise ConfigError(f"cannot fetch registry {url}: HTTP {response.status_code}")
    return response.content

