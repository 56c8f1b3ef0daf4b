"""The real Harbor registry (43 datasets, 12,833 tasks): every dataset resolves, quirks included."""

from __future__ import annotations

from collections import Counter


from evalkit.adapters.harbor import DatasetConfig, resolve_tasks
from evalkit.adapters.harbor.cache import fetch_plan
from evalkit.adapters.harbor.git import FULL_SHA, SHORT_SHA
from evalkit.adapters.harbor.registry import read_registry
from evalkit.adapters.harbor.resolve import select
from tests.adapters.conftest import REAL_REGISTRY, GitRemote, checkouts, task_files



def kind(commit: str) -> str:
    return "full" if FULL_SHA.fullmatch(commit) else "short" if SHORT_SHA.fullmatch(commit) else commit


def test_every_dataset_resolves():
    registry = read_registry(REAL_REGISTRY)
    assert (len(registry.datasets), sum(len(d.tasks) for d in registry.datasets)) == (43, 12_833)
    commits: Counter[str] = Counter()
    for dataset in registry.datasets:
        config = DatasetConfig(name=dataset.ref)
        assert registry.dataset(*config.dataset_version()) is dataset
        tasks = select(dataset.tasks, config)
        assert tasks == dataset.tasks  # names are unique: nothing dropped
        plan = fetch_plan(tasks)  # every path is safe, every task lands in one fetch group
        assert sum(len(names) for c in plan.values() for paths in c.values() for names in paths.values()) == len(tasks)
        commits.update(kind(c) for commits_ in plan.values() for c, paths in commits_.items()
                       for names in paths.values() for _ in names)
    assert commits == {"full": 10_325, "HEAD": 1_132, "short": 1_376}


def test_quirks_multi_version_shared_path_short_sha_and_a_non_github_url():
    registry = read_registry(REAL_REGISTRY)
    assert list(registry.versions("swe-lancer-diamond")) == ["all", "ic", "manager"]
    assert registry.dataset("swe-lancer-diamond").ref == "swe-lancer-diamond@manager"  # none is PEP 440
    lancer = registry.dataset("swe-lancer-diamond", "all")
    assert fetch_plan(lancer.tasks) == {
        "https://github.com/laude-institute/harbor-datasets.git": {
            "HEAD": {"datasets/swe-lancer": [t.name for t in lancer.tasks]}
        }
    }
    assert len({t.name for t in lancer.tasks}) == 463
    (seta,) = fetch_plan(registry.dataset("seta-env").tasks).values()
    assert list(seta) == ["b186880"]
    assert "https://huggingface.co/datasets/harborframework/harbor-datasets" in fetch_plan(
        registry.dataset("spider2-dbt").tasks
    )
    assert [registry.dataset(name).version for name in ("ds-1000", "mmmlu", "autocodebench")] == ["head", "parity", "lite200"]
    swebench = registry.dataset("swebench-verified").tasks
    few = select(swebench, DatasetConfig(name="swebench-verified", include=["django__*"], n_tasks=3))
    assert [t.name for t in few] == [t.name for t in swebench if t.name.startswith("django__")][:3]  # registry order


async def test_head_and_shared_path_datasets_fetch_for_real_from_local_mirrors(tmp_path, monkeypatch):
    """The registry's own HEAD entries, fetched from file:// mirrors of their repositories (git's
    url.<mirror>.insteadOf), exactly as they would be from GitHub."""
    registry = read_registry(REAL_REGISTRY)
    refs = ["hello-world@1.0", "bixbench@1.5", "swe-lancer-diamond@all", "swe-lancer-diamond@ic", "swe-lancer-diamond@manager"]
    paths: dict[str, set[str]] = {}
    for ref in refs:
        for task in registry.dataset(*ref.split("@")).tasks:
            paths.setdefault(task.git_url, set()).add(task.path)
    mirrors = {}
    for i, (url, needed) in enumerate(paths.items()):
        mirrors[url] = GitRemote(tmp_path, f"mirror{i}")
        mirrors[url].commit({rel: text for path in sorted(needed) for rel, text in task_files(path, path).items()})
        monkeypatch.setenv(f"GIT_CONFIG_KEY_{i}", f"url.{mirrors[url].url}.insteadOf")
        monkeypatch.setenv(f"GIT_CONFIG_VALUE_{i}", url)
    monkeypatch.setenv("GIT_CONFIG_COUNT", str(len(mirrors)))

    for ref in refs:
        config = DatasetConfig(registry=str(REAL_REGISTRY), name=ref, cache_dir=str(tmp_path / "cache"))
        tasks = await resolve_tasks(config, base_dir=tmp_path, job_dir=tmp_path / "jobs" / ref)
        expected = registry.dataset(*ref.split("@")).tasks
        assert [t.name for t in tasks] == [t.name for t in expected]
        for task, entry in zip(tasks, expected):
            assert task.git_commit == mirrors[entry.git_url].commits[-1]
            assert (task.path / "instruction.md").read_text() == f"{entry.path}\n"
        assert (tmp_path / "jobs" / ref / "tasks.lock.json").is_file()
    assert len(checkouts(tmp_path / "cache")) == 1 + 205 + 1  # hello-world, bixbench, swe-lancer shared by 926 tasks
