"""Registry loading (file, URL, cached copy), version choice, and errors that help."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from evalkit.adapters.harbor import DatasetConfig, load_registry, resolve_tasks
from evalkit.adapters.harbor.registry import default_version, read_registry
from evalkit.errors import ConfigError, InfrastructureError
from tests.adapters.conftest import write_registry


@pytest.mark.parametrize(("versions", "chosen"), [
    (["1.0", "head", "2.0"], "head"),
    (["1.0", "2.0", "10.0"], "10.0"),  # PEP 440, not text: 10 > 2
    (["parity", "1.0rc1", "1.0"], "1.0"),  # a non-PEP 440 version loses to any PEP 440 one
    (["all", "ic", "manager"], "manager"),  # none is PEP 440: the lexically last
])
def test_the_default_version(versions, chosen):
    assert default_version(versions) == chosen


def registry_of(tmp_path: Path, *entries: tuple[str, str]) -> Path:
    data = [{"name": name, "version": version, "description": f"{name} {version}", "tasks": []} for name, version in entries]
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data))
    return path


def test_an_unknown_dataset_suggests_the_closest_names(tmp_path):
    path = registry_of(tmp_path, ("swebench-verified", "1.0"), ("swebenchpro", "1.0"), ("terminal-bench", "2.0"))
    registry = read_registry(path)
    with pytest.raises(ConfigError) as caught:
        registry.dataset("swebench-verifed")
    assert str(caught.value) == f"unknown dataset 'swebench-verifed' in registry {path}; did you mean: swebench-verified, swebenchpro?"
    with pytest.raises(ConfigError) as caught:
        registry.dataset("mmlu-pro")
    assert str(caught.value) == (
        f"unknown dataset 'mmlu-pro' in registry {path}; `evalkit datasets list --registry {path}` lists its 3 datasets"
    )


def test_an_unknown_version_lists_the_versions(tmp_path):
    path = registry_of(tmp_path, ("lancer", "all"), ("lancer", "ic"), ("lancer", "manager"))
    with pytest.raises(ConfigError) as caught:
        read_registry(path).dataset("lancer", "2.0")
    assert str(caught.value) == f"dataset 'lancer' has no version '2.0' in registry {path}; versions: all, ic, manager"


def test_broken_registries_are_refused_with_the_place_of_the_problem(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text('[{"name": "x", "version": "1.0", "tasks": [{"name": "t"}]}]')
    with pytest.raises(ConfigError, match=r"is not a Harbor registry.json: dataset x@1\.0, task entry 0: path: Field required$"):
        read_registry(path)
    path.write_text("[{")
    with pytest.raises(ConfigError, match="is not a Harbor registry.json: : Invalid JSON"):
        read_registry(path)
    path.write_text(json.dumps([{"name": "x", "version": "1", "tasks": []}] * 2))
    with pytest.raises(ConfigError, match=rf"^registry {path} lists dataset x@1 twice$"):
        read_registry(path)
    with pytest.raises(ConfigError, match=rf"^registry file not found: {tmp_path / 'absent.json'}$"):
        read_registry(tmp_path / "absent.json")


def test_unknown_keys_from_newer_harbor_registries_are_ignored(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps([{"name": "x", "version": "1", "owner": "o", "tasks": [{"name": "t", "path": "p", "size": 3}]}]))
    assert read_registry(path).dataset("x").tasks[0].task_name == "t"


@pytest.fixture
async def registry_server(tmp_path):
    """Serves `tmp_path/served.json` at /registry.json on 127.0.0.1; `.stop()` takes it offline."""
    async def served(_: web.Request) -> web.FileResponse:
        return web.FileResponse(tmp_path / "served.json")

    app = web.Application()
    app.router.add_get("/registry.json", served)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", stop=runner.cleanup)
    await runner.cleanup()


async def test_a_registry_from_a_url_is_cached_for_offline_runs(tmp_path, registry_server, caplog):
    write_registry(tmp_path / "served.json", [{"name": "t", "git_url": "https://git.example/r.git", "git_commit_id": "HEAD", "path": "t"}])
    url = f"{registry_server.url}/registry.json"
    cache_dir = tmp_path / "cache"
    registry = await load_registry(url, base_dir=tmp_path, cache_dir=cache_dir)
    assert (registry.location, registry.task_root, registry.dataset("gitbench").ref) == (url, None, "gitbench@1.0")
    await registry_server.stop()
    with caplog.at_level(logging.WARNING):
        offline = await load_registry(url, base_dir=tmp_path, cache_dir=cache_dir)
    assert offline.dataset("gitbench").tasks == registry.dataset("gitbench").tasks
    assert f"cannot reach registry {url}: All connection attempts failed; using the copy cached at" in caplog.text
    with pytest.raises(InfrastructureError) as caught:
        await load_registry(url, base_dir=tmp_path, cache_dir=tmp_path / "empty-cache")
    assert str(caught.value) == f"cannot reach registry {url}: All connection attempts failed"


async def test_a_missing_registry_url_and_local_tasks_in_a_url_registry_are_config_errors(tmp_path, registry_server):
    with pytest.raises(ConfigError, match=rf"^cannot fetch registry {registry_server.url}/nope.json: HTTP 404$"):
        await load_registry(f"{registry_server.url}/nope.json", base_dir=tmp_path, cache_dir=tmp_path)
    write_registry(tmp_path / "served.json", [{"name": "mine", "git_url": None, "git_commit_id": None, "path": "/etc"}])
    config = DatasetConfig(registry=f"{registry_server.url}/registry.json", name="gitbench", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        await resolve_tasks(config, base_dir=tmp_path)
    assert str(caught.value) == "task 'mine' has no git_url, and a registry loaded from a URL has no local tasks"


@pytest.mark.parametrize("git_url", ["file:///srv/private.git", "ssh://git@host/r.git", "http://git.example/r.git", "/srv/r.git"])
async def test_a_registry_from_a_url_names_only_https_repositories(tmp_path, registry_server, git_url):
    write_registry(tmp_path / "served.json", [{"name": "t", "git_url": git_url, "git_commit_id": "HEAD", "path": "t"}])
    url = f"{registry_server.url}/registry.json"
    with pytest.raises(ConfigError) as caught:
        await load_registry(url, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert str(caught.value) == (
        f"registry {url}: dataset gitbench@1.0, task entry 0 ('t'): git_url {git_url!r} is refused; "
        "a registry loaded from a URL may only name https:// repositories"
    )
    assert not (tmp_path / "cache").exists()  # nothing cached, nothing fetched
